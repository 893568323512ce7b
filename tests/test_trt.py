"""The build stage: trtexec script and compatibility check everywhere, an engine where TensorRT and a GPU exist.

Usage: ``pytest tests/test_trt.py`` (``-m trt`` for the real builds; they skip here with the reason).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from pipeline.config import load_config
from pipeline.errors import ArtifactError, ConfigError, RuntimeUnavailable
from runtimes import tensorrt_build, tensorrt_rt
from runtimes.tensorrt_build import (
    BuildSettings,
    default_strongly_typed,
    float_remainder,
    tensorrt_status,
    trtexec_command,
    write_sidecar,
)

try:
    from tests.test_export import make_ctx
except ImportError:
    from test_export import make_ctx

TRT_OK, TRT_REASON = tensorrt_status()


def _tiny_qdq(path: Path, remainder: str | None = "fp32") -> Path:
    """A one-MatMul Q/DQ graph with the artifact description the pipeline writes (``remainder``: the recorded
    ``quantization.float_remainder``; None records no quantization block)."""
    from runtimes.export import set_onnx_metadata

    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("MatMul", ["dq", "w"], ["mask_logits"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"graph": "full", "precision": "int8"}
    if remainder is not None:
        meta["quantization"] = {"format": "qdq", "float_remainder": remainder}
    set_onnx_metadata(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def _script_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize(
    ("device", "remainder", "overrides", "flags", "absent"),
    [
        # ModelOpt Q/DQ (FP16 remainder) on TensorRT 10, GPU only: the graph carries every type, strongly typed
        ("jetson-orin-nano", "fp16", [], ["--stronglyTyped"], ["--int8", "--fp16", "--useDLACore"]),
        # ONNX Runtime Q/DQ (FP32 remainder): weakly typed, or every non-quantized layer would run in FP32
        ("jetson-orin-nano", "fp32", [], ["--int8", "--fp16"], ["--stronglyTyped", "--useDLACore"]),
        ("jetson-orin-nano", None, [], ["--int8", "--fp16"], ["--stronglyTyped"]),
        # DLA core 0: DLA needs the FP16/INT8 flags, which strongly typed networks forbid on TensorRT 10
        (
            "jetson-agx-orin",
            "fp16",
            [],
            ["--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback"],
            ["--stronglyTyped"],
        ),
        ("jetson-xavier-nx-jp5", "fp16", [], ["--int8", "--fp16"], ["--stronglyTyped"]),
        # build.strongly_typed on/off is used as given
        ("jetson-orin-nano", "fp32", ["build.strongly_typed='on'"], ["--stronglyTyped"], ["--int8"]),
        ("jetson-orin-nano", "fp16", ["build.strongly_typed='off'"], ["--int8", "--fp16"], ["--stronglyTyped"]),
    ],
)
def test_build_stage_writes_script_and_reports_unavailable(tmp_path, device, remainder, overrides, flags, absent):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device=device)
    _tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx", remainder)
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    script_path = tmp_path / "build" / "build_engine.sh"
    script = script_path.read_text()
    lines = _script_lines(script)
    trtexec = [i for i, line in enumerate(lines) if line.startswith("trtexec ")]
    assert len(trtexec) == 1, script
    assert lines[trtexec[0]].startswith("trtexec --onnx=full_int8_qdq.onnx --saveEngine=full_int8_qdq.engine")
    for flag in flags:
        assert flag in lines[trtexec[0]].split(), flag
    for flag in absent:
        assert not [f for f in lines[trtexec[0]].split() if f.startswith(flag)], flag
    # the sidecar step follows trtexec, with the same settings (the runtime refuses an engine without a sidecar)
    sidecar_line = lines[trtexec[0] + 1]
    assert sidecar_line == figures["sidecar"]
    assert "-m runtimes.tensorrt_build --sidecar-only --onnx=full_int8_qdq.onnx --engine=full_int8_qdq.engine" in (
        sidecar_line
    )
    typed = "--strongly-typed" if "--stronglyTyped" in flags else "--weakly-typed"
    assert typed in sidecar_line.split() and "--precision=int8" in sidecar_line.split()
    assert figures["float_remainder"] == remainder
    assert subprocess.run(["bash", "-n", str(script_path)], capture_output=True).returncode == 0
    assert figures["trt_compat"]["ok"], figures["trt_compat"]["errors"]
    json.dumps(figures)  # manifest-ready
    if not TRT_OK:
        assert figures["status"] == f"unavailable: {TRT_REASON}"
        assert not list((tmp_path / "build").glob("*.engine"))


@pytest.mark.parametrize(
    ("precision", "version", "remainder", "dla", "expected"),
    [
        ("int8", "8.5", "fp16", None, False),  # before 10: weakly typed (flags)
        ("fp16", "8.5", None, None, False),
        ("int8", "10.3", "fp16", None, True),  # the graph carries the types that should run
        ("int8", "10.3", "fp32", None, False),  # FP32 remainder: --int8 --fp16 lets it run in half
        ("int8", "10.3", None, None, False),  # unrecorded remainder: taken as FP32
        ("fp16", "10.3", None, None, True),
        ("fp16", "10.3", None, 0, False),  # DLA needs the precision flags
        ("int8", "10.3", "fp16", 1, False),
        ("fp32", "10.3", None, None, False),
        ("int8", None, "fp16", None, True),  # unknown version: as 10.x
        ("int8", None, "fp32", None, False),
        ("int8", None, "fp16", 0, False),
        ("int8", "11.0", "fp32", None, True),  # 11: strong typing is the only mode
        ("fp16", "11.4", None, 0, True),
        ("fp32", "11.0", None, None, True),
    ],
)
def test_default_strongly_typed_rule(precision, version, remainder, dla, expected):
    assert default_strongly_typed(precision, version, remainder, dla) is expected


def test_float_remainder_reads_the_onnx_description(tmp_path):
    from runtimes.export import read_onnx_metadata

    assert float_remainder(read_onnx_metadata(_tiny_qdq(tmp_path / "a.onnx", "fp16"))) == "fp16"
    assert float_remainder(read_onnx_metadata(_tiny_qdq(tmp_path / "b.onnx", "fp32"))) == "fp32"
    assert float_remainder(read_onnx_metadata(_tiny_qdq(tmp_path / "c.onnx", None))) is None
    assert float_remainder(None) is None
    with pytest.raises(ConfigError, match="'bf16'.*fp32, fp16"):
        float_remainder({"quantization": {"float_remainder": "bf16"}})
    with pytest.raises(ConfigError, match="'int4'"):
        default_strongly_typed("int8", "10.3", "int4")


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
    from pipeline.io import sha256_file

    onnx_path = _tiny_qdq(tmp_path / "m.onnx", "fp32")
    settings = BuildSettings("int8", 512, strongly_typed=False, timing_cache="timing.cache")
    with pytest.raises(ArtifactError, match=r"m\.engine is missing or empty.*build it first"):
        write_sidecar(onnx_path, tmp_path / "m.engine", settings)
    assert not (tmp_path / "m.engine.json").exists()
    (tmp_path / "m.engine").write_bytes(b"plan")  # what trtexec --saveEngine wrote
    sidecar = write_sidecar(onnx_path, tmp_path / "m.engine", settings, {"graph": "full", "precision": "int8"})
    again = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert again == json.loads(json.dumps(sidecar))
    tensorrt_rt.check_compatible(again, fake_tensorrt["version"], fake_tensorrt["gpu"])
    assert again["source_sha256"] == sha256_file(onnx_path) and again["build"] == asdict(settings)
    assert again["builder"] == "trtexec" and again["precision"] == "int8" and again["gpu"] == fake_tensorrt["gpu"]
    with pytest.raises(ArtifactError, match="TensorRT 10.3.0 but this machine has TensorRT 10.4.0"):
        tensorrt_rt.check_compatible(again, "10.4.0", fake_tensorrt["gpu"])


def test_sidecar_only_cli_records_the_trtexec_settings(tmp_path, fake_tensorrt, capsys):
    onnx_path = _tiny_qdq(tmp_path / "m.onnx", "fp16")
    settings = BuildSettings("int8", 1024, strongly_typed=True, dla_core=None, timing_cache="timing.cache")
    argv = ["--sidecar-only", f"--onnx={onnx_path}", f"--engine={tmp_path / 'm.engine'}"]
    argv += tensorrt_build.settings_args(settings)
    assert tensorrt_build.main(argv) == 2
    assert "m.engine is missing or empty" in capsys.readouterr().err
    (tmp_path / "m.engine").write_bytes(b"plan")
    assert tensorrt_build.main(argv) == 0
    sidecar = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert sidecar["build"] == asdict(settings)
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


def test_trtexec_command_matches_settings():
    cmd = trtexec_command(
        "m.onnx", "m.engine", BuildSettings("fp16", 1024, strongly_typed=False, timing_cache="t.cache")
    )
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--fp16" in cmd and "--memPoolSize=workspace:1024" in cmd and "--timingCacheFile=t.cache" in cmd
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8 only"):
        BuildSettings("fp32", dla_core=0)


@pytest.mark.trt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
def test_build_engine_writes_engine_and_sidecar(tmp_path):
    from runtimes.tensorrt_build import build_engine, read_sidecar_json

    onnx_path = _tiny_qdq(tmp_path / "m.onnx")
    settings = BuildSettings("int8", 256, strongly_typed=True, timing_cache=str(tmp_path / "t.cache"))
    sidecar = build_engine(onnx_path, tmp_path / "m.engine", settings, {"graph": "full"})
    assert (tmp_path / "m.engine").stat().st_size > 0 and (tmp_path / "t.cache").is_file()
    again = read_sidecar_json(tmp_path / "m.engine")
    assert again["tensorrt_version"] == sidecar["tensorrt_version"] and again["build"]["strongly_typed"] is True
    assert again["source_sha256"] and again["gpu"]["compute_capability"]
