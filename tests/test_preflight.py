"""Pre-flight (`python -m pipeline preflight`) on the `tiny` variant through the same code path as `paper` / `edge`.

The Jetson Xavier profile (TensorRT 8.5, opset 17) keeps the export on the fast TorchScript exporter and exercises the
LayerNorm decomposition; a profile whose TensorRT op list lacks an op of the graph is crafted by adding an op list.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.preflight.driver import preflight
from pipeline.preflight.measure import StepMemory, read_progress
from pipeline.preflight.plan import RESULT_JSON, RESULT_MD, STEPS, PreflightOptions
from pipeline.preflight.render import HEADER, failures, format_table, table_rows

DEVICE = "jetson-xavier-nx-jp5"
FAST = ["--variant", "tiny", "--calib-samples", "2", "--parity-samples", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> dict:
    out = tmp_path_factory.mktemp("preflight")
    cfg = load_config(None, device=DEVICE)
    options = PreflightOptions(calib_samples=2, parity_samples=1, isolate=False)
    results = preflight(cfg, ["tiny"], out, options, command="python -m pipeline preflight --variant tiny")
    return {"out": out, "results": results, "folder": out / DEVICE / "tiny"}


def test_table_has_every_step_with_time_and_peak_memory(tiny_run):
    (result,) = tiny_run["results"]
    assert result["status"] == "ok", failures(tiny_run["results"])
    rows = table_rows(tiny_run["results"])
    assert [r[2] for r in rows] == ["ok"] * len(STEPS)
    for row in rows:
        seconds, peak, start = float(row[3]), float(row[4]), float(row[5])
        assert seconds >= 0 and peak > 0.05 and start > 0.05  # GiB: a Python process with torch loaded
        assert peak >= start - 0.01  # the high-water mark was reset to the RSS at the step's start
    by_step = {r["step"]: r for r in result["steps"]}
    assert "@64, 12 tokens" in by_step["build"]["detail"]
    assert by_step["summary"]["figures"]["params_m"] == pytest.approx(by_step["build"]["figures"]["params_m"])
    assert by_step["summary"]["figures"]["gflops"] > 0
    export = by_step["export"]["figures"]
    assert export["opset"] == 17 and export["layernorm_decomposed"] > 0  # TensorRT 8.5 has no LayerNorm importer
    assert by_step["quantize"]["figures"]["qdq"]["zero_points_all_zero"]
    assert by_step["quantize"]["figures"]["mask_head"]  # the head stays float, as in the quantize stage
    opcheck = by_step["opcheck"]["figures"]
    assert opcheck["op_list"] == "8.5" and opcheck["full.onnx"]["ok"] and opcheck["full_int8_qdq.onnx"]["ok"]
    assert opcheck["full_int8_qdq.onnx"]["qdq_nodes"] > 0
    parity = by_step["parity"]["figures"]
    assert parity["fp32_max_abs_diff"] <= parity["tolerance"] and parity["qdq_finite"]
    text = format_table(tiny_run["results"])
    assert text.splitlines()[0].split() == " ".join(HEADER).split()
    assert "TensorRT 8.5 (list 8.5): full.onnx ok" in text and "Q/DQ runs, finite" in text


def test_results_are_written_as_json_and_markdown(tiny_run):
    folder = tiny_run["folder"]
    saved = json.loads((folder / RESULT_JSON).read_text())
    assert saved["variant"] == "tiny" and saved["device"]["name"] == DEVICE and saved["status"] == "ok"
    assert [r["step"] for r in saved["steps"]] == list(STEPS)
    assert saved["steps"] == json.loads(json.dumps(tiny_run["results"][0]["steps"], default=str))
    assert saved["machine"]["cpu"] and saved["memory_method"]
    md = (folder / RESULT_MD).read_text()
    assert "| step | status | time (s) | peak RSS (GiB) |" in md and "**Status: ok**" in md
    assert "python -m pipeline preflight --variant tiny" in md
    # no ONNX kept without --keep-onnx, no temporary files or work folders left behind
    assert sorted(p.name for p in folder.iterdir()) == [RESULT_JSON, RESULT_MD]
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]


@pytest.mark.skipif(not StepMemory().exact, reason="needs Linux /proc/self/clear_refs to reset the RSS peak")
def test_step_peak_is_exact_and_reset_per_step():
    import numpy as np

    memory = StepMemory()
    memory.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    big = memory.peak()
    del block
    start = memory.start()
    assert memory.peak() < big - 32  # the 64 MiB are gone and the reset forgot them
    assert start is not None and memory.peak() >= start - 1


@pytest.fixture
def op_list_without_erf(monkeypatch, tmp_path):
    """TensorRT "8.4": the 8.5 op list without Erf (the GELU of Swin and BERT), as a profile could name it."""
    from quantize import trt_compat

    data = tmp_path / "op_lists"
    shutil.copytree(trt_compat.DATA_DIR, data)
    listed = json.loads((data / "trt_ops_8.5.json").read_text())
    listed["supported"] = [op for op in listed["supported"] if op != "Erf"]
    (data / "trt_ops_8.4.json").write_text(json.dumps(listed))
    trt_compat.load_op_list.cache_clear()
    monkeypatch.setattr(trt_compat, "DATA_DIR", data)
    yield "8.4"
    trt_compat.load_op_list.cache_clear()


def test_op_check_failure_names_the_ops_and_nodes_and_exits_1(op_list_without_erf, tmp_path, capsys, one_torch_thread):
    args = ["preflight", "--device", DEVICE, "--set", f"device.trt_version='{op_list_without_erf}'", *FAST]
    code = main([*args, "--in-process", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "preflight FAILED for jetson-xavier-nx-jp5" in err
    assert "TensorRT op check: the engine will not build on jetson-xavier-nx-jp5" in err
    assert re.search(r"Erf \(not supported by the TensorRT 8.4 ONNX parser\): (\d+) in full.onnx, \1 in full_int8", err)
    saved = json.loads((tmp_path / DEVICE / "tiny" / RESULT_JSON).read_text())
    assert saved["status"] == "failed"
    steps = {r["step"]: r for r in saved["steps"]}
    assert steps["opcheck"]["status"] == "failed"
    errors = steps["opcheck"]["figures"]["full.onnx"]["errors"]
    assert errors and {e["op"] for e in errors} == {"Erf"}
    assert errors[0]["node"] in steps["opcheck"]["detail"]  # the user is told which nodes
    assert steps["parity"]["status"] == "ok"  # a failed check does not hide the other figures
    assert "device.trt_version=" in saved["command"] and saved["device"]["trt_version"] == "8.4"


def test_a_killed_variant_is_a_row_naming_its_step_and_memory(tmp_path, capsys):
    # a fresh worker process (the default) stopped by --max-rss-gb while it imports torch
    code = main(["preflight", "--device", DEVICE, *FAST, "--max-rss-gb", "0.15", "--out", str(tmp_path)])
    assert code == 1
    saved = json.loads((tmp_path / DEVICE / "tiny" / RESULT_JSON).read_text())
    killed = [r for r in saved["steps"] if r["status"] == "killed"]
    assert len(killed) == 1 and killed[0]["step"] in ("imports", "build")
    assert "--max-rss-gb 0.15" in killed[0]["detail"] and killed[0]["peak_rss_mb"] > 150
    assert saved["steps"][-1]["status"] == "not run" and len(saved["steps"]) == len(STEPS)
    assert (tmp_path / DEVICE / "tiny" / "preflight.log").is_file()
    assert "--max-rss-gb 0.15" in capsys.readouterr().err


def test_progress_survives_a_line_cut_by_a_kill(tmp_path):
    progress = tmp_path / "progress.jsonl"
    progress.write_text(
        '{"event": "begin", "memory_method": "m"}\n'
        '{"event": "start", "step": "imports"}\n'
        '{"event": "done", "step": "imports", "status": "ok"}\n'
        '{"event": "start", "step": "build", "start_rss_mb": 700}\n'
        '{"event": "done", "step": "bu'
    )
    begin, rows, running = read_progress(progress)
    assert begin == {"memory_method": "m"} and [r["step"] for r in rows] == ["imports"]
    assert running == {"step": "build", "start_rss_mb": 700}


def test_bad_variant_and_model_settings_exit_2(tmp_path, capsys):
    assert main(["preflight", "--device", DEVICE, "--variant", "edgy", "--out", str(tmp_path)]) == 2
    assert "did you mean 'edge'" in capsys.readouterr().err
    assert main(["preflight", "--device", DEVICE, "--set", "model.img_size=96", "--out", str(tmp_path)]) == 2
    assert "registered variant" in capsys.readouterr().err
    assert main(["preflight", "--device", "jetson-orin-nan", "--out", str(tmp_path)]) == 2
    assert "did you mean 'jetson-orin-nano'" in capsys.readouterr().err
    assert not any(Path(tmp_path).iterdir())


@pytest.mark.slow
def test_isolated_run_through_the_command_line(tmp_path, capsys):
    code = main(["preflight", "--device", DEVICE, *FAST, "--keep-onnx", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    folder = tmp_path / DEVICE / "tiny"
    saved = json.loads((folder / RESULT_JSON).read_text())
    assert saved["isolation"] == "fresh process per variant" and saved["status"] == "ok"
    assert (folder / "full.onnx").is_file() and (folder / "full_int8_qdq.onnx").is_file()
    assert "import torch" in out and "ONNX Runtime parity" in out
