"""The accuracy-vs-latency report: rows and statuses, Pareto front, INT8 verdicts, files, and a browser rendering."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from benchmarks import report_plot as rep_mod
from benchmarks.report import write_report
from benchmarks.report_assembly import assemble, pareto_front
from benchmarks.report_markdown import render_markdown


def _val(name, label, runtime, precision, miou, diff, status="ok", gated=False, size=None, size_ref=None):
    metrics = {
        "overall": {"n": 100, "mIoU": miou, "oIoU": miou + 0.01, "prec@0.5": 0.9},
        "by_split": {"val": {"n": 60, "mIoU": miou}, "testA": {"n": 40, "mIoU": miou - 0.02}},
        "by_kind": {"attribute": {"n": 50, "mIoU": miou + 0.01}, "relation": {"n": 50, "mIoU": miou - 0.01}},
    }
    cmp = {"n": 100, "mIoU": {"diff": diff, "lower": diff - 0.004, "upper": diff + 0.004},
           "oIoU": {"diff": diff, "lower": diff - 0.003, "upper": diff + 0.003}}  # fmt: skip
    return name, {
        "label": label, "runtime": runtime, "precision": precision, "status": status, "gated": gated,
        "metrics": metrics, "drop_vs_reference": cmp, "agreement": {"mean_iou": 0.99}, "passed": status == "ok",
        "size_bytes": size, "size_reference": size_ref,
    }  # fmt: skip


def _bench(p50, size=None, status="ok", split=False):
    out = {"status": status, "size_bytes": size}
    if p50:
        out["latency"] = {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3, "throughput_fps": 1000 / p50}
        out["peak_rss_mb"] = 300.0
    if split:
        out["split_graph"] = {
            "status": "ok",
            "components": {"encode_image": {"p50_ms": p50 * 0.7}, "encode_text": {"p50_ms": 1.0},
                           "decode": {"p50_ms": p50 * 0.2}},
            "k": {"1": {"p50_ms": p50}, "4": {"p50_ms": p50 * 1.6}, "8": {"p50_ms": p50 * 2.4}},
            "cost": {"per_extra_ms": p50 * 0.2, "ratio_to_full": 0.2},
        }  # fmt: skip
    return out


def _demo_results() -> tuple[dict, dict]:
    """``validate`` and ``bench`` results.json of a demo run."""
    rows = [
        _val("pytorch-fp32", "PyTorch FP32", "torch", "fp32", 0.80, 0.0, size=40_000_000, size_ref="pytorch-fp32"),
        _val("onnxruntime-fp32", "ONNX Runtime FP32", "onnxruntime", "fp32", 0.80, 0.0, size=40_000_000,
             size_ref="onnxruntime-fp32"),
        _val("onnxruntime-int8", "ONNX Runtime INT8 (Q/DQ)", "onnxruntime", "int8", 0.78, -0.02,
             status="validation failed", gated=True, size=11_000_000, size_ref="onnxruntime-fp32"),
        _val("openvino-fp32", "OpenVINO FP32", "openvino", "fp32", 0.80, 0.0, size=40_000_000,
             size_ref="openvino-fp32"),
        _val("openvino-int8", "OpenVINO INT8", "openvino", "int8", 0.797, -0.003, gated=True, size=11_000_000,
             size_ref="openvino-fp32"),
    ]  # fmt: skip
    validation = {"artifacts": dict(rows), "budget_miou_points": 1.0, "n_samples": 100}
    validation["artifacts"]["tensorrt-int8"] = {
        "label": "TensorRT INT8", "runtime": "tensorrt", "precision": "int8", "gated": True,
        "status": "unavailable: tensorrt is not installed; pip install .[trt]",
    }  # fmt: skip
    bench = {
        "machine": {"cpu": {"model": "Test CPU", "usable_cores": 2, "flags": ["avx2", "avx512_vnni"],
                            "int8_hardware": ["avx512_vnni"]}, "libraries": {"numpy": "2"}},
        "settings": {"warmup": 5, "runs": 50, "expressions": [1, 4, 8]},
        "artifacts": {
            "pytorch-fp32": _bench(100.0, split=True),
            "onnxruntime-fp32": _bench(50.0, split=True),
            "onnxruntime-int8": _bench(30.0),
            "openvino-fp32": _bench(40.0, split=True),
            "openvino-int8": _bench(39.0),
            "tensorrt-int8": {"status": "unavailable: tensorrt is not installed"},
        },
    }  # fmt: skip
    return validation, bench


@pytest.fixture
def demo_report():
    validation, bench = _demo_results()
    quant = {"fallback": {"onnxruntime-int8": ["/decoder/head/Conv", "/s2rm/MatMul_3"], "openvino-int8": []}}
    return assemble(validation, bench, quant, {"run": "demo", "device": "x86-cpu", "commands": ["make report"]})


def test_rows_statuses_and_figures(demo_report):
    rows = {r["name"]: r for r in demo_report["rows"]}
    assert list(rows) == [
        "pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8", "tensorrt-int8"
    ]  # fmt: skip
    assert rows["tensorrt-int8"]["status"].startswith("unavailable: tensorrt is not installed")
    assert rows["onnxruntime-int8"]["status"] == "validation failed"
    assert rows["onnxruntime-fp32"]["speedup"] == pytest.approx(2.0)
    assert rows["openvino-int8"]["size_ratio"] == pytest.approx(11 / 40)
    # drop = reference − candidate, in points; the CI flips with the sign
    assert rows["openvino-int8"]["drop"] == pytest.approx({"drop": 0.3, "lower": -0.1, "upper": 0.7})
    assert rows["onnxruntime-int8"]["fallback_nodes"] == ["/decoder/head/Conv", "/s2rm/MatMul_3"]
    assert demo_report["targets"]["speedup"]["artifact"] == "openvino-int8"  # the faster Q/DQ one failed
    assert demo_report["targets"]["speedup"]["met"] is True
    assert demo_report["targets"]["expression_cost"]["met"] is True


def test_int8_verdicts(demo_report):
    verdicts = {v["runtime"]: v for v in demo_report["int8"]}
    assert verdicts["openvino"]["paid_off"] is False and "keep FP32" in verdicts["openvino"]["why"]
    assert verdicts["onnxruntime"]["paid_off"] is False and "validation failed" in verdicts["onnxruntime"]["why"]


def test_pareto_front():
    pts = [(100.0, 0.80), (50.0, 0.80), (30.0, 0.78), (40.0, 0.80), (39.0, 0.797), None, (45.0, 0.70)]
    assert pareto_front(pts) == [2, 4, 3]
    assert pareto_front([None]) == []
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # ties dominate nobody


def test_markdown_has_every_row_and_section(demo_report):
    md = render_markdown(demo_report)
    for text in ("PyTorch FP32", "ONNX Runtime INT8 (Q/DQ)", "OpenVINO INT8", "unavailable: tensorrt",
                 "INT8 paid off on this machine", "mIoU per expression kind", "prec@X per split", "Split graph",
                 "Test CPU", "+0.30 [-0.10, +0.70]", "2: /decoder/head/Conv", "make report"):  # fmt: skip
        assert text in md, text


def test_an_artifact_scored_on_a_subset_says_so(demo_report):
    row = next(r for r in demo_report["rows"] if r["name"] == "openvino-fp32")
    row["metrics"] = dict(row["metrics"], n=30)  # validate.fp32_max_samples: 30 of the reference's 100
    md = render_markdown(demo_report)
    assert "| OpenVINO FP32 | ok | 80.00 (n=30) |" in md and "| PyTorch FP32 | ok | 80.00 |" in md


def test_write_report_files_are_self_contained(demo_report, tmp_path):
    paths = write_report(demo_report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "report.md", "report.html", "report.json", "latency_vs_miou.png", "latency_vs_miou.svg"
    }  # fmt: skip
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "<svg" in page and "<style>" in page
    # nothing is fetched: no stylesheet links, scripts, or src/href/url() pointing outside the file
    assert "<link" not in page and "<script" not in page
    assert not re.search(r"(src|href)=[\"'](https?:|//)|url\((https?:|//)", page)
    assert json.loads(paths["json"].read_text())["rows"][0]["name"] == "pytorch-fp32"


def test_report_without_bench_or_validation(tmp_path):
    rep = assemble({"artifacts": {"a": {"label": "A", "status": "ok", "metrics": {}}}}, None)
    write_report(rep, tmp_path)
    assert "not recorded" in (tmp_path / "report.md").read_text()
    empty = assemble(None, None)
    assert empty["rows"] == [] and empty["pareto"] == []
    rep_mod.plot(empty)


def test_rerendered_report_reads_the_run_layout_and_keeps_the_fallback_nodes(tmp_path, capsys):
    """``python -m pipeline report`` reads the device's own quantize stage (``runs/<run>/devices/<device>/quantize``,
    not ``runs/<run>/quantize``), so the nodes returned to float survive a re-render, as the stage wrote them."""
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.stages.report import build_report

    validation, bench = _demo_results()
    device = tmp_path.resolve() / "demo" / "devices" / "x86-cpu"  # the runner resolves run.root
    for stage, results in (("validate", validation), ("bench", bench)):
        (device / stage).mkdir(parents=True)
        (device / stage / "results.json").write_text(json.dumps(results))
    figures = {
        "full_int8_qdq.onnx": {"mask_head": ["/decoder/head/Conv"],
                               "fallback": {"excluded": ["/decoder/head/Conv", "/s2rm/MatMul_3"]}},
        "full_int8.xml": {"quantization": {"ignored": ["/s2rm/Add_1"]}},
    }  # fmt: skip
    (device / "quantize").mkdir()
    (device / "quantize" / "manifest.json").write_text(json.dumps({"figures": figures}))

    assert main(["report", "--set", f"run.root={tmp_path}", "--device", "x86-cpu"]) == 0
    out = device / "report-rerendered"
    assert str(out / "report.md") in capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["onnxruntime-int8"]["fallback_nodes"] == ["/s2rm/MatMul_3"]  # the mask head is float by policy
    assert rows["openvino-int8"]["fallback_nodes"] == ["/s2rm/Add_1"]
    assert "/s2rm/MatMul_3" in (out / "report.md").read_text()
    # the same report the report stage assembles from the same folders
    cfg = load_config(None, [f"run.root={tmp_path}"], device="x86-cpu")
    staged = build_report(cfg, device / "validate", device / "bench", device / "quantize", device / "report")
    written = json.loads((out / "report.json").read_text())
    assert json.dumps(written, sort_keys=True) == json.dumps(staged, sort_keys=True, default=str)

    assert main(["report", "--set", f"run.root={tmp_path / 'empty'}", "--device", "x86-cpu"]) == 2
    assert "has results.json" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(demo_report, tmp_path):
    paths = write_report(demo_report, tmp_path)
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--screenshot={shot}",
           "--window-size=1280,2000", paths["html"].resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a blank page is a few kB
