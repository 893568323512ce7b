"""The diagnose stage on the tiny run (sensitivity and first divergence of both INT8 artifacts) and what the report
makes of it, with the roofline and QAT sections: tested for content, not only for existence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

DIAG = ["quant.diagnose.samples=4", "quant.diagnose.max_groups=4", "quant.diagnose.divergence_samples=2"]


@pytest.fixture(scope="module")
def diagnosed(quantized: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipeline.stages.diagnose import run_diagnose

    try:
        from tests.test_export import TINY, make_ctx
    except ImportError:  # pytest's rootdir-relative import mode
        from test_export import TINY, make_ctx

    root = quantized["root"]
    cfg = load_config(None, [f"run.root={root}", "run.name=tiny", *TINY, *DIAG])
    work = tmp_path_factory.mktemp("diagnose")
    ctx = make_ctx(cfg, "diagnose", work, ())
    ctx.upstream_dirs = {name: root / name for name in ("data", "export", "calibrate", "quantize")}
    figures = run_diagnose(ctx)
    found = json.loads((work / "diagnose" / "diagnose.json").read_text())
    return {"figures": figures, "dir": work / "diagnose", "json": found}


def test_diagnose_covers_both_int8_artifacts(diagnosed):
    arts = diagnosed["json"]["artifacts"]
    assert set(arts) == {"onnxruntime-int8", "openvino-int8"}
    for name, entry in arts.items():
        s, d = entry["sensitivity"], entry["divergence"]
        assert 1 <= len(s["groups"]) <= 4 and s["samples"] == 4
        recoveries = [g["recovery"] for g in s["groups"] if g["recovery"] is not None]
        assert recoveries == sorted(recoveries, reverse=True)  # ranked, most sensitive first
        assert (diagnosed["dir"] / s["picture"]).is_file()
        assert d["compared"] > 0 and d["samples"] == 2 and d["final"]["tensor"]
        if d["first_divergence"] is not None:  # the first layer below the threshold, in graph order
            finite = [la for la in d["layers"] if la["sqnr_db"] not in ("inf", None)]
            below = [la for la in finite if float(la["sqnr_db"]) < d["threshold_db"]]
            assert below and d["first_divergence"]["index"] == min(la["index"] for la in below)
        assert diagnosed["figures"][name]["most_sensitive"] == s["groups"][0]["name"]


def _report(diagnosed: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A report over hand-made validate/bench results plus the tiny run's real diagnostics."""
    from benchmarks.report import write_report
    from benchmarks.report_assembly import assemble

    drop = {"mIoU": {"diff": -0.004, "lower": -0.006, "upper": -0.002}}
    val = {"order": ["pytorch-fp32", "onnxruntime-int8", "onnxruntime-int8-qat"], "artifacts": {
        "pytorch-fp32": {"label": "PyTorch FP32", "runtime": "torch", "precision": "fp32", "status": "ok"},
        "onnxruntime-int8": {"label": "ONNX Runtime INT8", "runtime": "onnxruntime", "precision": "int8",
                             "status": "ok", "drop_vs_reference": drop},
        "onnxruntime-int8-qat": {"label": "ONNX Runtime INT8 (Q/DQ, QAT)", "runtime": "onnxruntime",
                                 "precision": "int8", "status": "ok",
                                 "drop_vs_reference": {"mIoU": {"diff": -0.001, "lower": -0.002, "upper": 0.0}},
                                 "agreement": {"mean_iou": 0.981}}}}  # fmt: skip
    roof = {"gflops": 2.5, "int8_share": 0.98, "p50_ms": 10.0, "achieved_gflops": 250.0, "floor_ms": 1.25,
            "floor_ratio": 0.125}  # fmt: skip
    bench = {"peaks": {"threads": 2, "fp32_gflops": 120.0, "fp32_method": "ort", "int8_gops": 1500.0,
                       "int8_method": "ort"},
             "artifacts": {"onnxruntime-int8": {"latency": {"p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0},
                                                "roofline": roof}}}  # fmt: skip
    rep = assemble(val, bench, {}, {"run": "t", "device": "x86-cpu"})
    rep["gallery"] = []
    rep["qat"] = {"mode": "always", "tuned": {"qdq": "asked"}, "full_int8_qdq_qat.onnx": {
        "runtime": "onnxruntime", "method": "qat (torch fake-quant)", "miou_drop_points": 0.1,
        "ptq": {"miou_drop_points": 0.4}, "fine_tuning": {"steps": 3, "seconds": 2.0, "curve": [
            {"step": 3, "loss": 0.5, "task": 0.4, "kd": 0.1}]}}}  # fmt: skip
    rep["diagnostics"] = diagnosed["json"]
    paths = write_report(rep, tmp_path, None, diagnosed["dir"])
    return {"md": paths["md"].read_text(), "html": paths["html"].read_text(), "paths": paths}


def test_report_shows_roofline_qat_sensitivity_and_divergence(diagnosed, tmp_path):
    out = _report(diagnosed, tmp_path)
    md, page = out["md"], out["html"]
    assert "## Roofline: distance from this machine's GEMM floor" in md and "| 12.5% |" in md
    assert "## QAT against PTQ" in md and "+0.40 [+0.20, +0.60]" in md and "+0.10 [+0.00, +0.20]" in md
    for entry in diagnosed["json"]["artifacts"].values():
        top = entry["sensitivity"]["groups"][0]["name"]
        assert top in md and top in page
        first = entry["divergence"]["first_divergence"]
        if first is not None:
            assert f"`{first['layer']}`" in md
        picture = entry["sensitivity"]["picture"]
        assert f"]({picture})" in md and (tmp_path / picture).is_file()
    assert md.count("## INT8 sensitivity per layer group") == 2 and md.count("## First divergence from FP32") == 2
    assert page.count("data:image/png;base64") >= 2  # the sensitivity plots, inline
