"""Engine sidecars and where an engine runs: the sidecar of a trtexec engine and its CLI, the GPU it records
(cuda-python, pycuda, nvidia-smi), the runtime's CUDA backend fallback, and the DLA placement a sidecar reports.

Usage: ``pytest tests/test_trt_sidecar.py`` (``-m trt`` for the real build; it skips here with the reason).
"""

from __future__ import annotations

import json
import logging
import sys
import types
from dataclasses import asdict

import pytest

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes import tensorrt_build, tensorrt_rt
from runtimes.tensorrt_build import tensorrt_status, write_sidecar
from runtimes.tensorrt_commands import settings_args
from runtimes.tensorrt_placement import describe_placement, layer_placement
from runtimes.tensorrt_settings import BuildSettings

try:
    from tests.trt_onnx import tiny_qdq
except ImportError:  # pytest's rootdir-relative import mode
    from trt_onnx import tiny_qdq

TRT_OK, TRT_REASON = tensorrt_status()


def _as_json(value: object) -> object:
    """``value`` as the sidecar's JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A ``tensorrt`` module with only a version, and a known GPU: what the sidecar writer reads."""
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    monkeypatch.setattr(tensorrt_build, "gpu_info", lambda: dict(gpu))
    return {"version": module.__version__, "gpu": gpu}


def test_write_sidecar_for_a_trtexec_engine_is_accepted_by_the_runtime(tmp_path, fake_tensorrt):
    from foundation.io import sha256_file

    onnx_path = tiny_qdq(tmp_path / "m.onnx", "fp32")
    settings = BuildSettings("int8", 512, strongly_typed=False, timing_cache="timing.cache")
    with pytest.raises(ArtifactError, match=r"m\.engine is missing or empty.*build it first"):
        write_sidecar(onnx_path, tmp_path / "m.engine", settings)
    assert not (tmp_path / "m.engine.json").exists()
    (tmp_path / "m.engine").write_bytes(b"plan")  # what trtexec --saveEngine wrote
    sidecar = write_sidecar(onnx_path, tmp_path / "m.engine", settings, {"graph": "full", "precision": "int8"})
    again = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert again == json.loads(json.dumps(sidecar))
    tensorrt_rt.check_compatible(again, fake_tensorrt["version"], fake_tensorrt["gpu"])
    assert again["source_sha256"] == sha256_file(onnx_path) and again["build"] == _as_json(asdict(settings))
    assert again["builder"] == "trtexec" and again["precision"] == "int8" and again["gpu"] == fake_tensorrt["gpu"]
    with pytest.raises(ArtifactError, match="TensorRT 10.3.0 but this machine has TensorRT 10.4.0"):
        tensorrt_rt.check_compatible(again, "10.4.0", fake_tensorrt["gpu"])


def test_sidecar_only_cli_records_the_trtexec_settings(tmp_path, fake_tensorrt, capsys):
    onnx_path = tiny_qdq(tmp_path / "m.onnx", "fp16")
    settings = BuildSettings("int8", 1024, strongly_typed=True, dla_core=None, timing_cache="timing.cache")
    argv = ["--sidecar-only", f"--onnx={onnx_path}", f"--engine={tmp_path / 'm.engine'}"]
    argv += settings_args(settings)
    assert tensorrt_build.main(argv) == 2
    assert "m.engine is missing or empty" in capsys.readouterr().err
    (tmp_path / "m.engine").write_bytes(b"plan")
    assert tensorrt_build.main(argv) == 0
    sidecar = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert sidecar["build"] == _as_json(asdict(settings))
    assert sidecar["quantization"]["float_remainder"] == "fp16"  # the ONNX's own description
    tensorrt_rt.check_compatible(sidecar, fake_tensorrt["version"], fake_tensorrt["gpu"])


def _fake_pycuda(monkeypatch, name: str = "Orin", cc: tuple[int, int] = (8, 7)) -> None:
    """``pycuda`` with a driver API that reports one device, and ``pycuda.autoinit``."""

    class Device:
        def __init__(self, ordinal: int) -> None:
            self.ordinal = ordinal

        def name(self) -> str:
            return name

        def compute_capability(self) -> tuple[int, int]:
            return cc

    class Context:
        @staticmethod
        def get_device() -> Device:
            return Device(0)

    class Stream:
        handle = 7

    package, driver, autoinit = (types.ModuleType(n) for n in ("pycuda", "pycuda.driver", "pycuda.autoinit"))
    driver.init, driver.Device, driver.Context, driver.Stream = (lambda: None), Device, Context, Stream
    package.driver, package.autoinit = driver, autoinit
    for module in (package, driver, autoinit):
        monkeypatch.setitem(sys.modules, module.__name__, module)


def _no_cuda_python(monkeypatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if cuda-python were not installed


def test_gpu_info_falls_back_to_pycuda_and_logs_what_failed(monkeypatch, caplog):
    _no_cuda_python(monkeypatch)
    monkeypatch.setattr(tensorrt_build.shutil, "which", lambda name: None)
    _fake_pycuda(monkeypatch, "Xavier", (7, 2))
    assert tensorrt_build.gpu_info() == {"name": "Xavier", "compute_capability": "7.2"}
    for name in ("pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.DEBUG, logger="runtimes.tensorrt_build"):
        assert tensorrt_build.gpu_info() == {}
    failed = caplog.text
    assert "cuda-python gave no GPU" in failed and "pycuda gave no GPU" in failed and "nvidia-smi gave no GPU" in failed


def _cuda_python_newer_than_driver(monkeypatch) -> None:
    """cuda-python that imports but whose first call fails (a wheel newer than the driver)."""
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaStreamCreate = lambda: (35, None)
    runtime.cudaGetErrorString = lambda err: (0, b"CUDA driver version is insufficient for CUDA runtime version")
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = runtime, bindings
    for module in (cuda, bindings, runtime):
        monkeypatch.setitem(sys.modules, module.__name__, module)


def test_cuda_backend_falls_back_to_pycuda_on_any_failure(monkeypatch):
    _cuda_python_newer_than_driver(monkeypatch)
    _fake_pycuda(monkeypatch)
    backend = tensorrt_rt._cuda()
    assert isinstance(backend, tensorrt_rt._PyCuda)
    assert backend.device() == {"name": "Orin", "compute_capability": "8.7"} and backend.handle() == 7


def test_cuda_backend_error_names_both_failures(monkeypatch):
    _cuda_python_newer_than_driver(monkeypatch)
    for name in ("pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeUnavailable, match="no usable CUDA backend") as err:
        tensorrt_rt._cuda()
    assert "cuda-python: RuntimeError" in str(err.value) and "driver version is insufficient" in str(err.value)
    assert "pycuda: ModuleNotFoundError" in str(err.value)
    _no_cuda_python(monkeypatch)
    with pytest.raises(RuntimeUnavailable, match="neither cuda-python nor pycuda is installed"):
        tensorrt_rt._cuda()


@pytest.mark.trt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
def test_build_engine_writes_engine_and_sidecar(tmp_path):
    from runtimes.tensorrt_build import build_engine, read_sidecar_json

    onnx_path = tiny_qdq(tmp_path / "m.onnx")
    settings = BuildSettings("int8", 256, strongly_typed=True, timing_cache=str(tmp_path / "t.cache"))
    sidecar = build_engine(onnx_path, tmp_path / "m.engine", settings, {"graph": "full"})
    assert (tmp_path / "m.engine").stat().st_size > 0 and (tmp_path / "t.cache").is_file()
    again = read_sidecar_json(tmp_path / "m.engine")
    assert again["tensorrt_version"] == sidecar["tensorrt_version"] and again["build"]["strongly_typed"] is True
    assert again["source_sha256"] and again["gpu"]["compute_capability"]


def test_layer_placement_counts_dla_and_gpu_layers():
    info = {
        "Layers": [
            {"Name": "image to nvm", "LayerType": "Reformat"},
            {"Name": "{ForeignNode[/conv1/Conv.../act/Relu]}", "LayerType": "DlaLayer"},
            {"Name": "feat from nvm", "LayerType": "Reformat"},
            {"Name": "feat copy finish", "LayerType": "Signal"},
            {"Name": "{ForeignNode[/attn/MatMul.../attn/Softmax]}", "LayerType": "Myelin"},
            {"Name": "/head/Conv", "LayerType": "CaskConvolution"},
        ],
        "Bindings": ["image", "mask_logits"],
    }
    placement = layer_placement(info)
    assert placement | {"layer_types": None} == {
        "layers": 6,
        "dla": 1,
        "gpu": 2,
        "dla_transfers": 3,
        "unknown": 0,
        "dla_layers": ["{ForeignNode[/conv1/Conv.../act/Relu]}"],
        "layer_types": None,
    }
    assert placement["layer_types"]["Reformat"] == 2
    plain = layer_placement({"Layers": ["a", "b"]})  # not detailed: no types
    assert plain["unknown"] == 2 and "no layer types" in describe_placement(plain | {"dla_core": 0})
    gpu_only = layer_placement({"Layers": [{"Name": "x", "LayerType": "CaskConvolution"}]}) | {"dla_core": 0}
    assert "nothing runs on DLA core 0" in describe_placement(gpu_only)


def test_sidecar_only_cli_records_where_a_dla_engine_runs(tmp_path, fake_tensorrt, capsys):
    onnx_path = tiny_qdq(tmp_path / "m.onnx", "fp16")
    settings = BuildSettings("fp16", 1024, strongly_typed=False, dla_core=0, fp32_layers=("a", "b:c"))
    (tmp_path / "m.engine").write_bytes(b"plan")
    layers = {"Layers": [{"Name": "{ForeignNode[a...b]}", "LayerType": "DlaLayer"}, {"Name": "c", "LayerType": "X"}]}
    (tmp_path / "m.engine.layers.json").write_text(json.dumps(layers))
    argv = ["--sidecar-only", f"--onnx={onnx_path}", f"--engine={tmp_path / 'm.engine'}"]
    assert tensorrt_build.main(argv + settings_args(settings)) == 0
    sidecar = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert sidecar["build"] == _as_json(asdict(settings))
    assert sidecar["placement"]["dla"] == 1 and sidecar["placement"]["gpu"] == 1
    assert "1 of 2 engine layers on DLA core 0, 1 on the GPU" in capsys.readouterr().out
