"""The build stage: trtexec script and compatibility check everywhere, an engine where TensorRT and a GPU exist.

Usage: ``pytest tests/test_trt.py`` (``-m trt`` for the real builds; they skip here with the reason).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from foundation.errors import ArtifactError, ConfigError, RuntimeUnavailable
from pipeline.config import load_config
from runtimes import tensorrt_build, tensorrt_rt
from runtimes.tensorrt_build import (
    PRECISIONS,
    BuildSettings,
    default_strongly_typed,
    device_settings,
    float_remainder,
    fp32_layer_names,
    layer_placement,
    tensorrt_status,
    trtexec_command,
    trtexec_table,
    unknown_trtexec_options,
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


def _as_json(value: object) -> object:
    """``value`` as the sidecar's JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


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
        # AGX Orin (DLA core 0): DLA does not run explicit Q/DQ INT8, so the INT8 engine is a GPU build
        ("jetson-agx-orin", "fp16", [], ["--stronglyTyped"], ["--int8", "--fp16", "--useDLACore", "--exportLayerInfo"]),
        (
            "jetson-agx-orin",
            "fp32",
            [],
            ["--int8", "--fp16"],
            ["--stronglyTyped", "--useDLACore", "--allowGPUFallback"],
        ),
        # TensorRT 8.5 (JetPack 5): weakly typed, --buildOnly (its trtexec has no --skipInference, no --stronglyTyped)
        ("jetson-xavier-nx-jp5", "fp16", [], ["--int8", "--fp16", "--buildOnly"], ["--stronglyTyped", "--skip"]),
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
    assert not unknown_trtexec_options(shlex.split(lines[trtexec[0]]), cfg.device.trt_version)
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
    from foundation.io import sha256_file

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
    assert again["source_sha256"] == sha256_file(onnx_path) and again["build"] == _as_json(asdict(settings))
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


def test_trtexec_command_matches_settings():
    cmd = trtexec_command(
        "m.onnx", "m.engine", BuildSettings("fp16", 1024, strongly_typed=False, timing_cache="t.cache")
    )
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--fp16" in cmd and "--memPoolSize=workspace:1024" in cmd and "--timingCacheFile=t.cache" in cmd
    from foundation.errors import ConfigError

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


# ---- trtexec options per TensorRT version (review #1, #8) ---------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "runtimes" / "data"
STRONGLY_TYPED_ONLY_GONE = ("--int8", "--fp16", "--best", "--precisionConstraints", "--layerPrecisions")


def _tables() -> dict[tuple[int, int], dict]:
    """The trtexec option tables, read here without the code under test."""
    tables = {}
    for path in DATA.glob("trtexec_*.json"):
        table = json.loads(path.read_text())
        assert path.name == f"trtexec_{table['tensorrt']}.json"
        tables[tuple(int(p) for p in table["tensorrt"].split(".")[:2])] = table
    return tables


def _options_for(version: str | None) -> set[str]:
    """The options of the newest table at or below ``version`` (None: the newest 10.x)."""
    tables = _tables()
    key = (10, 99) if version is None else tuple(int(p) for p in version.split(".")[:2])
    return set(tables[max(k for k in tables if k <= key)]["options"])


def _tensorrt_profiles() -> list[str]:
    return sorted(
        p.stem
        for p in (ROOT / "configs" / "devices").glob("*.yaml")
        if load_config(None, device=p.stem).device.backend == "tensorrt"
    )


def test_trtexec_tables_record_their_source_and_the_facts_the_builds_rely_on():
    tables = {t["tensorrt"]: t for t in _tables().values()}
    assert {"8.5", "8.6", "10.3", "10.16"} <= set(tables) and any(v.startswith("11.") for v in tables)
    for table in tables.values():
        src = table["source"]
        assert src["repository"] == "NVIDIA/TensorRT" and src["file"] == "samples/common/sampleOptions.cpp"
        assert len(src["commit"]) == 40 and src["ref"]
        assert table["options"] == sorted(set(table["options"])) and "--onnx" in table["options"]
        assert table["strongly_typed_only"] is table["tensorrt"].startswith("11.")
    opts = {v: set(t["options"]) for v, t in tables.items()}
    assert "--buildOnly" in opts["8.5"] and "--skipInference" not in opts["8.5"]  # review #1
    assert {"--buildOnly", "--skipInference"} <= opts["8.6"]
    assert "--buildOnly" not in opts["10.3"] and "--skipInference" in opts["10.3"]
    assert "--stronglyTyped" not in opts["8.5"] | opts["8.6"] and "--stronglyTyped" in opts["10.3"]  # review #8
    for v in (v for v in opts if v.startswith("11.")):
        assert not opts[v] & set(STRONGLY_TYPED_ONLY_GONE), v
    for v, o in opts.items():  # what every build line may use
        assert {"--memPoolSize", "--saveEngine", "--timingCacheFile", "--useDLACore", "--allowGPUFallback"} <= o, v
        assert {"--exportLayerInfo", "--profilingVerbosity"} <= o, v


@pytest.mark.parametrize(
    ("version", "table"),
    [("8.5", "8.5"), ("8.5.2.2", "8.5"), ("8.6", "8.6"), ("9.2", "8.6"), ("10.3", "10.3"), ("10.7", "10.3")]
    + [("10.16.1", "10.16"), ("11.0", "11.0"), ("11.4.1", "11.1"), (None, "10.16")],
)
def test_a_version_between_tables_takes_the_nearest_lower_one(version, table):
    assert trtexec_table(version)["tensorrt"] == table


def test_a_version_older_than_every_table_is_refused():
    with pytest.raises(ConfigError, match=r"TensorRT 8\.4: tables exist for 8\.5, 8\.6, 10\.3"):
        trtexec_table("8.4")
    with pytest.raises(ConfigError, match="'ten' is not of the form"):
        trtexec_table("ten")


def test_every_profile_and_precision_gives_a_command_its_trtexec_parses():
    """Every device profile, every precision, typing and float remainder: each trtexec line uses only options of the
    profile's trtexec (the table of its TensorRT version), or the settings are refused with the reason."""
    checked = 0
    for name in _tensorrt_profiles():
        dev = load_config(None, device=name).device
        version, m = dev.trt_version, int(str(dev.trt_version or "10").split(".")[0])
        known = _options_for(version)
        for precision in PRECISIONS:
            for typing in ("auto", "on", "off"):
                for remainder in (None, "fp32", "fp16") if precision == "int8" else (None,):
                    for fallback in (True, False):
                        kwargs = {"dla_core": dev.dla_core, "strongly_typed": typing, "remainder": remainder}
                        kwargs |= {"gpu_fallback": fallback, "timing_cache": "t.cache", "fp32_layers": ("a", "b:c")}
                        if (typing == "on" and m < 9) or (typing == "off" and m >= 11):
                            with pytest.raises(ConfigError, match=f"build.strongly_typed='{typing}'"):
                                device_settings(precision, version, **kwargs)
                            continue
                        settings = device_settings(precision, version, **kwargs)
                        cmd = trtexec_command("m.onnx", "m.engine", settings, version)
                        unknown = [a for a in cmd[1:] if a.split("=", 1)[0] not in known]
                        assert not unknown, (name, precision, typing, remainder, cmd)
                        flags = [a.split("=", 1)[0] for a in cmd]
                        assert flags.count("--skipInference") + flags.count("--buildOnly") == 1, cmd
                        if m >= 11:  # strongly typed only: no precision flags at all
                            assert not set(flags) & {*STRONGLY_TYPED_ONLY_GONE, "--stronglyTyped"}, cmd
                        if m < 9:
                            assert "--stronglyTyped" not in flags, cmd
                        if precision == "int8" or settings.dla_core is None:
                            assert "--useDLACore" not in flags, cmd  # DLA does not run explicit Q/DQ INT8
                        checked += 1
    assert checked > 50


def test_typing_a_version_lacks_is_refused_with_the_valid_values():
    with pytest.raises(ConfigError, match=r"TensorRT 8\.5 has no strongly typed.*valid here: 'auto', 'off'"):
        trtexec_command("m.onnx", "m.engine", BuildSettings("fp16", strongly_typed=True), "8.5")
    with pytest.raises(ConfigError, match=r"TensorRT 11\.4\.1 builds strongly typed networks only.*'auto', 'on'"):
        trtexec_command("m.onnx", "m.engine", BuildSettings("int8", strongly_typed=False), "11.4.1")
    with pytest.raises(ConfigError, match="'maybe' is not one of auto, on, off"):
        device_settings("int8", "10.3", strongly_typed="maybe")
    # TensorRT 11: strongly typed, no --stronglyTyped (a deprecated no-op there), no precision flags
    cmd = trtexec_command("m.onnx", "m.engine", device_settings("int8", "11.4.1", remainder="fp32"), "11.4.1")
    assert cmd[-1] == "--skipInference" and not {"--stronglyTyped", "--int8", "--fp16"} & set(cmd)


def test_build_stage_refuses_strong_typing_on_tensorrt_8(tmp_path):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", "build.strongly_typed='on'"], device="jetson-xavier-nx-jp5")
    _tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp16")
    with pytest.raises(ConfigError, match=r"TensorRT 8\.5 has no strongly typed networks"):
        run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))


# ---- FP32 islands in weakly typed builds (review #6) --------------------------------------------------------------


def _tiny_ln_softmax(path: Path, remainder: str | None = "fp32", fp16: bool = False) -> Path:
    """Q/DQ MatMul, a LayerNorm decomposed as for TensorRT 8.5, then a biased softmax: the islands to keep FP32
    (``fp16``: the FP16 ONNX of it, with the converter's Casts)."""
    from quantize.trt_compat import decompose_layernorm
    from runtimes.export import export_fp16_onnx, set_onnx_metadata

    inits = [
        numpy_helper.from_array(np.full((8, 8), 0.1, np.float32), "w"),
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        numpy_helper.from_array(np.full((1, 1, 8), -1e4, np.float32), "mask_bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("MatMul", ["dq", "w"], ["h"], name="mm"),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["ln"], axis=-1, name="norm1"),
        helper.make_node("MatMul", ["ln", "w"], ["scores"], name="scores_mm"),
        helper.make_node("Add", ["scores", "mask_bias"], ["logits"], name="mask_add"),
        helper.make_node("Softmax", ["logits"], ["mask_logits"], axis=-1, name="attn_softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4, 8])],
        inits,
    )
    model, count = decompose_layernorm(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert count == 1
    meta = {"graph": "full", "precision": "int8"}
    if remainder is not None:
        meta["quantization"] = {"format": "qdq", "float_remainder": remainder}
    set_onnx_metadata(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    if fp16:
        export_fp16_onnx(path, path)
    return path


LN_ISLAND = tuple(f"norm1_dec0_{n}" for n in ("mean_n", "sub", "sq", "var_n", "adde", "sqrt", "div"))


def test_fp32_layer_names_finds_the_decomposed_layernorm_and_the_softmax_input(tmp_path):
    names = fp32_layer_names(_tiny_ln_softmax(tmp_path / "m.onnx"))
    assert names == (*LN_ISLAND, "mask_add", "attn_softmax")  # not the scale/bias, not the MatMuls, not Q/DQ
    # the FP16 ONNX wraps the FP32 ops in Casts: the island keeps them too, so it stays FP32 across them
    half = fp32_layer_names(_tiny_ln_softmax(tmp_path / "h.onnx", fp16=True))
    assert set(names) <= set(half) and all(n.endswith("_node") for n in set(half) - set(names)), half
    # a native LayerNormalization (TensorRT 8.6+) computes in FP32 on its own: nothing listed for it
    native = helper.make_node("LayerNormalization", ["x", "g"], ["y"], name="ln")
    graph = helper.make_graph(
        [native],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.ones(8, np.float32), "g")],
    )
    assert fp32_layer_names(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == ()


def test_fp32_island_survives_in_the_tensorrt_8_5_command(tmp_path):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}"], device="jetson-xavier-nx-jp5")
    _tiny_ln_softmax(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp32")
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    line = next(
        x for x in _script_lines((tmp_path / "build" / "build_engine.sh").read_text()) if x.startswith("trtexec ")
    )
    argv = shlex.split(line)
    expected = ",".join(f"{n}:fp32" for n in (*LN_ISLAND, "mask_add", "attn_softmax"))
    assert {"--int8", "--fp16", "--precisionConstraints=obey", "--buildOnly"} <= set(argv)
    assert f"--layerPrecisions={expected}" in argv and f"--layerOutputTypes={expected}" in argv
    assert not unknown_trtexec_options(argv, "8.5")
    assert figures["settings"]["fp32_layers"] == (*LN_ISLAND, "mask_add", "attn_softmax")
    # the sidecar step records the same settings
    sidecar = shlex.split(figures["sidecar"])
    assert [a for a in sidecar if a.startswith("--fp32-layer=")] == [
        f"--fp32-layer={n}" for n in figures["settings"]["fp32_layers"]
    ]


@pytest.mark.parametrize(
    ("device", "overrides"),
    [("jetson-orin-nano", []), ("jetson-xavier-nx-jp5", []), ("jetson-orin-nano", ["build.strongly_typed='on'"])],
)
def test_nothing_is_added_for_strongly_typed_builds(tmp_path, device, overrides):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device=device)
    _tiny_ln_softmax(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp16")  # ModelOpt-style: FP16 remainder
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    argv = shlex.split(figures["trtexec"])
    if figures["settings"]["strongly_typed"]:
        assert "--stronglyTyped" in argv and figures["settings"]["fp32_layers"] == ()
        assert not [a for a in argv if a.startswith(("--precisionConstraints", "--layer"))]
        assert "--fp32-layer" not in figures["sidecar"]
    else:  # TensorRT 8.5 has no strong typing: the islands stay
        assert device == "jetson-xavier-nx-jp5" and "--precisionConstraints=obey" in argv


def test_layer_names_trtexec_cannot_split_are_quoted_or_left_out(caplog):
    settings = BuildSettings("fp16", strongly_typed=False, fp32_layers=["a/b.c", "x:y", "p,q", "it's"])
    assert settings.fp32_layers == ("a/b.c", "x:y", "p,q", "it's")
    with caplog.at_level(logging.WARNING, logger="runtimes.tensorrt_build"):
        cmd = trtexec_command("m.onnx", "m.engine", settings, "8.5")
    assert "--layerPrecisions=a/b.c:fp32,'x:y':fp32" in cmd and "cannot name 2 FP32 layers" in caplog.text
    with pytest.raises(ConfigError, match="not the string"):
        BuildSettings("fp16", fp32_layers="abc")


# ---- DLA on AGX Orin (review #4) ----------------------------------------------------------------------------------


def test_only_the_fp16_engine_goes_to_dla_and_reports_its_layers():
    int8 = device_settings("int8", "10.3", dla_core=0, remainder="fp16")
    assert int8.dla_core is None and int8.strongly_typed  # Q/DQ INT8 on the GPU: strongly typed there
    fp16 = device_settings("fp16", "10.3", dla_core=0, gpu_fallback=False, fp32_layers=("n",))
    assert fp16.dla_core == 0 and not fp16.strongly_typed and fp16.fp32_layers == ("n",)
    cmd = trtexec_command("models/m.onnx", "engines/m.engine", fp16, "10.3")
    assert {"--fp16", "--useDLACore=0", "--profilingVerbosity=detailed"} <= set(cmd)
    assert "--exportLayerInfo=engines/m.engine.layers.json" in cmd and "--allowGPUFallback" not in cmd
    assert "--useDLACore" not in " ".join(trtexec_command("m.onnx", "m.engine", int8, "10.3"))
    # TensorRT 11.4.1 (JetPack 7.2.2+, AGX Orin) has DLA again, strongly typed: no --fp16
    cmd = trtexec_command("m.onnx", "m.engine", device_settings("fp16", "11.4.1", dla_core=0), "11.4.1")
    assert "--useDLACore=0" in cmd and "--fp16" not in cmd and not unknown_trtexec_options(cmd, "11.4.1")
    with pytest.raises(ConfigError, match=r"TensorRT 10\.16 has no DLA.*device\.dla_core to null"):
        device_settings("fp16", "10.16", dla_core=0)


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
    assert plain["unknown"] == 2 and "no layer types" in tensorrt_build.describe_placement(plain | {"dla_core": 0})
    gpu_only = layer_placement({"Layers": [{"Name": "x", "LayerType": "CaskConvolution"}]}) | {"dla_core": 0}
    assert "nothing runs on DLA core 0" in tensorrt_build.describe_placement(gpu_only)


def test_sidecar_only_cli_records_where_a_dla_engine_runs(tmp_path, fake_tensorrt, capsys):
    onnx_path = _tiny_qdq(tmp_path / "m.onnx", "fp16")
    settings = BuildSettings("fp16", 1024, strongly_typed=False, dla_core=0, fp32_layers=("a", "b:c"))
    (tmp_path / "m.engine").write_bytes(b"plan")
    layers = {"Layers": [{"Name": "{ForeignNode[a...b]}", "LayerType": "DlaLayer"}, {"Name": "c", "LayerType": "X"}]}
    (tmp_path / "m.engine.layers.json").write_text(json.dumps(layers))
    argv = ["--sidecar-only", f"--onnx={onnx_path}", f"--engine={tmp_path / 'm.engine'}"]
    assert tensorrt_build.main(argv + tensorrt_build.settings_args(settings)) == 0
    sidecar = tensorrt_rt.read_sidecar(tmp_path / "m.engine")
    assert sidecar["build"] == _as_json(asdict(settings))
    assert sidecar["placement"]["dla"] == 1 and sidecar["placement"]["gpu"] == 1
    assert "1 of 2 engine layers on DLA core 0, 1 on the GPU" in capsys.readouterr().out


# ---- the bundle: build.* settings, DLA placement, a trtexec that knows its options (review #4, #10) ---------------


def test_bundle_stage_is_stale_when_the_build_section_changes(tmp_path):
    from pipeline.runner import Runner, _digest
    from pipeline.stage import get_stage

    bundle = get_stage("bundle")
    assert "build" in bundle.sections
    keys = set()
    for overrides in ([], ["build.gpu_fallback=false"], ["build.workspace_mb=512"], ["build.strongly_typed='off'"]):
        cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device="jetson-agx-orin")
        keys.add(_digest(Runner(cfg).key_parts(bundle)))
    assert len(keys) == 4


FAKE_TRTEXEC = """#!{python}
'''trtexec as far as build_engine.sh needs it: the options of one TensorRT version only (else "Unknown option" and
exit 1, as trtexec.cpp does), --saveEngine written, --exportLayerInfo written as a detailed DLA build would.'''
import json, os, sys

known = set(json.load(open(os.environ["FAKE_TRTEXEC_TABLE"]))["options"])
unknown = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in known]
if unknown:
    print("[E] Unknown option: " + " ".join(unknown), file=sys.stderr)
    sys.exit(1)
args = dict(a.split("=", 1) if "=" in a else (a, "") for a in sys.argv[1:])
open(args["--saveEngine"], "w").write("plan")
if "--exportLayerInfo" in args:
    layers = [
        {{"Name": "image to nvm", "LayerType": "Reformat"}},
        {{"Name": "{{ForeignNode[/vision/stem/Conv.../vision/stem/Relu]}}", "LayerType": "DlaLayer"}},
        {{"Name": "feat from nvm", "LayerType": "Reformat"}},
        {{"Name": "{{ForeignNode[/attn/MatMul.../attn/Softmax]}}", "LayerType": "Myelin"}},
        {{"Name": "/head/Conv", "LayerType": "CaskConvolution"}},
    ]
    json.dump({{"Layers": layers, "Bindings": ["image", "mask_logits"]}}, open(args["--exportLayerInfo"], "w"))
open("trtexec.log", "a").write(" ".join(sys.argv[1:]) + "\\n")
"""


def test_agx_bundle_uses_the_build_section_and_reports_dla_placement(quantized, tmp_path):
    """The AGX Orin bundle: the build.* settings reach every trtexec line; the INT8 engine is a GPU build and the FP16
    one a DLA build that exports its layer information; build_engine.sh runs with a trtexec that fails on any option
    TensorRT 10.3 lacks, and the sidecar step records and prints where the DLA engine's layers ran."""
    import logging as logging_

    from pipeline.bundle import extract_bundle
    from pipeline.stage import StageContext
    from pipeline.stages.bundle import run_bundle

    overrides = ["build.workspace_mb=512", "build.gpu_fallback=false", "build.timing_cache=false"]
    agx = load_config(None, overrides, device="jetson-agx-orin")
    cfg = quantized["cfg"].model_copy(update={"device": agx.device, "build": agx.build})
    upstream = {u: quantized["root"] / u for u in ("data", "export", "quantize")}
    ctx = StageContext("bundle", cfg, tmp_path / "stage", tmp_path, upstream, logging_.getLogger("test.bundle"))
    ctx.out.mkdir()
    run_bundle(ctx)
    bundle = extract_bundle(ctx.out / "bundle.tar.gz", tmp_path / "robot")
    meta = json.loads((bundle / "metadata.json").read_text())
    lines = {}
    for line in _script_lines((bundle / "build_engine.sh").read_text()):
        if line.startswith("trtexec "):
            argv = shlex.split(line)
            lines[next(p for p, e in meta["models"].items() if f"--saveEngine={e['engine']}" in argv)] = argv
    for argv in lines.values():
        assert "--memPoolSize=workspace:512" in argv and "--allowGPUFallback" not in argv, argv
        assert not [a for a in argv if a.startswith("--timingCacheFile")], argv
        assert not unknown_trtexec_options(argv, "10.3"), argv
    assert not [a for a in lines["int8"] if a.startswith(("--useDLACore", "--exportLayerInfo"))]
    fp16 = meta["models"]["fp16"]
    assert {"--fp16", "--useDLACore=0", "--profilingVerbosity=detailed"} <= set(lines["fp16"])
    assert f"--exportLayerInfo={fp16['engine']}.layers.json" in lines["fp16"]
    assert fp16["build"]["dla_core"] == 0 and meta["models"]["int8"]["build"]["dla_core"] is None
    assert fp16["build"]["fp32_layers"] == fp16["fp32_layers"] and fp16["fp32_layers"]  # weakly typed: islands kept
    assert meta["tensorrt"] | {"version_floor": None} == {
        "version_floor": None,
        "workspace_mb": 512,
        "dla_core": 0,
        "strongly_typed": "auto",
        "gpu_fallback": False,
        "timing_cache": False,
    }
    # build_engine.sh on the "robot": a trtexec with TensorRT 10.3's options, a tensorrt module with its version
    fake_bin, fake_py = tmp_path / "bin", tmp_path / "py" / "tensorrt"
    fake_bin.mkdir()
    fake_py.mkdir(parents=True)
    (fake_py / "__init__.py").write_text('__version__ = "10.3.0"\n')
    (fake_bin / "trtexec").write_text(FAKE_TRTEXEC.format(python=sys.executable))
    (fake_bin / "trtexec").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PATH": f"{fake_bin}:{env['PATH']}", "PYTHON": sys.executable, "PYTHONPATH": str(fake_py.parent)}
    env["FAKE_TRTEXEC_TABLE"] = str(DATA / "trtexec_10.3.json")
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "1 of 5 engine layers on DLA core 0, 2 on the GPU (2 DLA transfers)" in proc.stdout, proc.stdout
    sidecar = tensorrt_rt.read_sidecar(bundle / fp16["engine"])
    assert sidecar["placement"]["dla"] == 1 and sidecar["build"] == fp16["build"]
    assert "placement" not in tensorrt_rt.read_sidecar(bundle / meta["models"]["int8"]["engine"])
    # the same script under TensorRT 8.5's trtexec stops at the first option it lacks
    env["FAKE_TRTEXEC_TABLE"] = str(DATA / "trtexec_8.5.json")
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Unknown option: " in proc.stderr
