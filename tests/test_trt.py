"""The build stage: trtexec script and compatibility check everywhere, an engine where TensorRT and a GPU exist.

Usage: ``pytest tests/test_trt.py`` (``-m trt`` for the real builds; they skip here with the reason).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from pipeline.config import load_config
from runtimes.tensorrt_build import BuildSettings, tensorrt_status, trtexec_command

try:
    from tests.test_export import make_ctx
except ImportError:
    from test_export import make_ctx

TRT_OK, TRT_REASON = tensorrt_status()


def _tiny_qdq(path: Path) -> Path:
    """A one-MatMul Q/DQ graph with the artifact description the pipeline writes."""
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
    set_onnx_metadata(model, {"graph": "full", "precision": "int8"})
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("device", "flags", "absent"),
    [
        ("jetson-orin-nano", ["--stronglyTyped"], ["--int8", "--useDLACore"]),
        ("jetson-agx-orin", ["--stronglyTyped", "--useDLACore=0", "--allowGPUFallback"], ["--int8"]),
        ("jetson-xavier-nx-jp5", ["--int8", "--fp16"], ["--stronglyTyped"]),
    ],
)
def test_build_stage_writes_script_and_reports_unavailable(tmp_path, device, flags, absent):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}"], device=device)
    _tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx")
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    script = (tmp_path / "build" / "build_engine.sh").read_text()
    assert "trtexec --onnx=full_int8_qdq.onnx --saveEngine=full_int8_qdq.engine" in script
    for flag in flags:
        assert flag in script, flag
    for flag in absent:
        assert flag not in script, flag
    assert figures["trt_compat"]["ok"], figures["trt_compat"]["errors"]
    json.dumps(figures)  # manifest-ready
    if not TRT_OK:
        assert figures["status"] == f"unavailable: {TRT_REASON}"
        assert not list((tmp_path / "build").glob("*.engine"))


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
