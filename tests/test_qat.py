"""The ``qat`` stage on the tiny run: which INT8 paths it fine-tunes, and the QAT artifacts it writes for each path
(the OpenVINO INT8 IR through NNCF, the explicit Q/DQ ONNX through the torch fake-quant recipe), judged like PTQ's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.stages.qat import paths_to_tune, run_qat

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

QAT = ["quant.qat.steps=3", "quant.qat.batch_size=2", "quant.qat.calibration_samples=4", "quant.qat.log_every=1"]


def _ptq(qdq_drop: float, ov_drop: float | None, target: float = 0.5) -> dict[str, Any]:
    out = {"full_int8_qdq.onnx": {"miou_drop_points": qdq_drop, "within_target": qdq_drop <= target}}
    if ov_drop is not None:
        out["full_int8.xml"] = {"miou_drop_points": ov_drop, "within_target": ov_drop <= target}
    return out


def test_auto_tunes_only_the_paths_over_target():
    cfg = load_config(None, ["quant.target_miou=0.5"])
    assert paths_to_tune(cfg, _ptq(0.2, 0.3)) == {}
    chosen = paths_to_tune(cfg, _ptq(0.9, 0.3))
    assert list(chosen) == ["qdq"] and "0.90 > target 0.5" in chosen["qdq"]
    assert list(paths_to_tune(cfg, _ptq(0.9, None))) == ["qdq"]  # no OpenVINO artifact on this device
    always = load_config(None, ["quant.qat.mode=always"])
    assert set(paths_to_tune(always, _ptq(0.0, 0.0))) == {"qdq", "openvino"}


def _qat_ctx(quantized: dict[str, Any], tmp_path: Path, overrides: list[str]) -> Any:
    """A qat stage context over the tiny run, with the PTQ figures the quantize stage returned as its manifest's."""
    try:
        from tests.test_export import TINY, make_ctx
    except ImportError:  # pytest's rootdir-relative import mode
        from test_export import TINY, make_ctx

    root = quantized["root"]
    cfg = load_config(None, [f"run.root={root}", "run.name=tiny", *TINY, *QAT, *overrides])
    ptq = tmp_path / "quantize"
    ptq.mkdir()
    (ptq / "manifest.json").write_text(json.dumps({"figures": quantized["quantize"]}, default=str))
    ctx = make_ctx(cfg, "qat", tmp_path, ())
    ctx.upstream_dirs = {name: root / name for name in ("data", "train", "export", "calibrate")} | {"quantize": ptq}
    return ctx


def test_nothing_to_do_when_ptq_is_within_target(quantized, tmp_path):
    figures = run_qat(_qat_ctx(quantized, tmp_path, ["quant.target_miou=1000", "quant.budget_miou=1000"]))
    assert figures["tuned"] == {} and not list((tmp_path / "qat").glob("*.onnx"))


@pytest.mark.slow
def test_qat_writes_both_int8_artifacts_judged_like_ptq(quantized, tmp_path):
    from quantize.trt_compat import known_versions
    from runtimes import get_runtime

    figures = run_qat(_qat_ctx(quantized, tmp_path, ["quant.qat.mode=always"]))
    assert set(figures["tuned"]) == {"qdq", "openvino"}
    for name, runtime in (("full_int8_qdq_qat.onnx", "onnxruntime"), ("full_int8_qat.xml", "openvino")):
        entry = figures[name]
        assert entry["runtime"] == runtime and entry["size_ratio"] < 1.0
        assert entry["miou_drop_points"] == pytest.approx((entry["reference_miou"] - entry["miou"]) * 100)
        assert [p["step"] for p in entry["fine_tuning"]["curve"]] == [1, 2, 3]
        assert set(entry["ptq"]) >= {"miou_drop_points", "within_target"}
        rt = get_runtime(runtime).load(tmp_path / "qat" / name)
        assert rt.metadata["precision"] == "int8" and list(rt.inputs) == ["image", "input_ids", "attention_mask"]
    qdq = figures["full_int8_qdq_qat.onnx"]
    assert set(qdq["trt_compat"]["all_versions"]) == set(known_versions()) and qdq["trt_compat"]["profile"]["ok"]
    # this x86 run exports at the default opset; TensorRT 8.5 / 8.6 parse opset 17 at most, which a TensorRT 8.x
    # profile's QAT export uses (tests/test_qat_torch.py checks that file against every version)
    assert all(ok for v, ok in qdq["trt_compat"]["all_versions"].items() if not v.startswith("8."))
    assert qdq["qdq"]["quantized_nodes"] > 0


@pytest.mark.slow
def test_the_nncf_route_writes_an_openvino_ir_from_the_torch_quantizer(quantized, tmp_path):
    from runtimes import get_runtime

    overrides = ["quant.qat.mode=always", "quant.qat.openvino_from=nncf", "quant.qdq=false"]
    ctx = _qat_ctx(quantized, tmp_path, overrides)
    figures = run_qat(ctx)
    assert "full_int8_qdq_qat.onnx" not in figures  # only the OpenVINO path is made, through NNCF
    entry = figures["full_int8_qat.xml"]
    assert entry["method"].startswith("qat (NNCF") and [p["step"] for p in entry["fine_tuning"]["curve"]] == [1, 2, 3]
    rt = get_runtime("openvino").load(tmp_path / "qat" / "full_int8_qat.xml")
    assert rt.metadata["quantization"]["tool"] == "nncf" and rt.metadata["quantization"]["fake_quantize_ops"] > 0
