"""Latency harness, accuracy against FP32, artifact discovery, the gate, and (slow) the validate/bench/report stages.

Fast tests use fake runtimes and hand-made results; ``test_stages_end_to_end_on_tiny`` runs the real stage bodies on
a tiny model (export + SynRef, ~1-2 min) and is marked slow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy import SampleMeta, evaluate, miou_drop_points, summarize
from benchmarks.artifacts import artifact_size, find_artifacts, load_artifact
from benchmarks.latency import ISOLATION, Worker, artifact_worker, expression_cost, time_interleaved, time_isolated
from benchmarks.latency import summarize as lat_summary
from benchmarks.machine import cpu_info, describe_machine, machine_info
from foundation.errors import RuntimeUnavailable, StageError
from pipeline.stage import StageContext
from runtimes.formats import REFERENCE

# ---------------------------------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------------------------------


def test_summary_percentiles_and_throughput():
    s = lat_summary([float(x) for x in range(1, 101)])
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["throughput_fps"] == pytest.approx(1000 / 50.5)
    assert lat_summary([]) == {"n": 0}


def test_time_interleaved_rotates_order_and_turns_errors_into_statuses():
    calls: list[str] = []

    def broken():
        calls.append("bad")
        if len([c for c in calls if c == "bad"]) > 2:
            raise RuntimeError("device lost")

    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": broken}
    times, errors = time_interleaved(fns, warmup=1, runs=4)
    assert len(times["a"]) == len(times["b"]) == 4
    assert errors == {"bad": "RuntimeError: device lost"}
    timed = [c for c in calls[3:] if c != "bad"]  # after the warm-up: rounds rotate who goes first
    assert timed[:2] == ["a", "b"] and timed[2] == "b"
    assert all(t >= 0 for t in times["a"])


def test_time_interleaved_measures_time():
    times, _ = time_interleaved({"sleep": lambda: time.sleep(0.002)}, warmup=0, runs=3)
    assert all(1.5 <= t < 50 for t in times["sleep"])


def _matmul_onnx(path: Path, layers: int) -> Path:
    """A tiny foreign ONNX graph: ``layers`` × (MatMul 64×64, Relu) on a (1, 64) input ``x``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(layers)
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [out])]
        last = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


FEEDS = {"x": np.ones((1, 64), np.float32)}


def test_time_isolated_runs_each_artifact_in_its_own_process_with_explicit_threads(tmp_path):
    from runtimes import get_runtime

    small, big = _matmul_onnx(tmp_path / "small.onnx", 1), _matmul_onnx(tmp_path / "big.onnx", 4)
    workers = {"ort-small": Worker(artifact_worker, ("onnxruntime", small, FEEDS)),
               "ort-big": Worker(artifact_worker, ("onnxruntime", big, FEEDS))}  # fmt: skip
    if get_runtime("openvino").is_available():
        workers["ov-small"] = Worker(artifact_worker, ("openvino", small, FEEDS))
    times, errors, info = time_isolated(workers, warmup=1, runs=5, threads=1, block=2)
    assert errors == {}
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys(workers, 5)
    assert all(lat_summary(v)["p50_ms"] > 0 for v in times.values())
    assert (info["isolation"], info["threads"], info["block"], info["rounds"]) == (ISOLATION, 1, 2, 3)
    pids = {w["pid"] for w in info["workers"].values()}
    assert len(pids) == len(workers) and os.getpid() not in pids  # no two runtimes share a process, nor this one
    ort = info["workers"]["ort-big"]["runtime_settings"]
    assert ort["intra_op_num_threads"] == 1 and ort["config"]["session.force_spinning_stop"] == "1"
    if "ov-small" in workers:
        ov = info["workers"]["ov-small"]["runtime_settings"]
        assert ov["INFERENCE_NUM_THREADS"] == 1 and ov["ENABLE_CPU_PINNING"] is False


def _stamping_worker(log: str, *, threads: int):
    """Worker factory whose one callable appends ``pid start end`` (monotonic ns) to ``log``."""

    def call() -> None:
        start = time.monotonic_ns()
        time.sleep(0.002)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {start} {time.monotonic_ns()}\n")

    return {"full": call}, {"threads_seen": threads}


def test_time_isolated_alternates_blocks_and_never_overlaps_workers(tmp_path):
    log = tmp_path / "calls.log"
    workers = {"a": Worker(_stamping_worker, (str(log),)), "b": Worker(_stamping_worker, (str(log),))}
    times, errors, info = time_isolated(workers, warmup=0, runs=6, threads=3, block=3)
    assert errors == {} and len(times["a"]) == len(times["b"]) == 6
    assert info["workers"]["a"]["threads_seen"] == 3
    calls = sorted((int(t0), int(t1), int(pid)) for pid, t0, t1 in (ln.split() for ln in log.read_text().splitlines()))
    # one worker computes at a time: every call ends before the next one starts
    assert all(end <= nxt for (_, end, _), (nxt, _, _) in zip(calls, calls[1:], strict=False))
    a, b = info["workers"]["a"]["pid"], info["workers"]["b"]["pid"]
    runs: list[list[int]] = []  # consecutive calls by the same worker
    for _, _, pid in calls:
        if runs and runs[-1][0] == pid:
            runs[-1][1] += 1
        else:
            runs.append([pid, 1])
    assert runs == [[a, 3], [b, 6], [a, 3]]  # round 1: a then b; round 2 rotated: b then a


def _crashing_worker(*, threads: int):
    calls = []

    def call() -> None:
        calls.append(1)
        if len(calls) > 1:  # after the warm-up call
            os._exit(3)

    return {"full": call}, {}


def _hanging_worker(*, threads: int):
    return {"full": lambda: time.sleep(600)}, {}


def test_time_isolated_names_a_failing_worker_and_does_not_hang(tmp_path):
    good = _matmul_onnx(tmp_path / "good.onnx", 1)
    workers = {"onnxruntime-fp32": Worker(artifact_worker, ("onnxruntime", good, FEEDS)),
               "onnxruntime-int8": Worker(artifact_worker, ("onnxruntime", tmp_path / "missing.onnx", FEEDS)),
               "crashes": Worker(_crashing_worker), "hangs": Worker(_hanging_worker)}  # fmt: skip
    start = time.perf_counter()
    times, errors, _ = time_isolated(workers, warmup=1, runs=4, threads=1, block=2, timeout=5)
    assert time.perf_counter() - start < 60
    assert len(times["onnxruntime-fp32"]) == 4 and "onnxruntime-fp32" not in errors
    assert errors["onnxruntime-int8"].startswith("worker 'onnxruntime-int8' failed while loading: ArtifactError")
    assert "missing.onnx does not exist" in errors["onnxruntime-int8"]
    assert errors["crashes"] == "worker 'crashes' exited with code 3 during round 1 of 2"
    assert errors["hangs"] == "worker 'hangs' did not finish loading and warm-up within 5 s; it was stopped"


def test_expression_cost_is_the_slope_over_k():
    cost = expression_cost({1: 12.0, 4: 18.0, 8: 26.0}, full_p50_ms=10.0)
    assert cost["per_extra_ms"] == pytest.approx(2.0) and cost["fixed_ms"] == pytest.approx(10.0)
    assert cost["ratio_to_full"] == pytest.approx(0.2)
    assert expression_cost({1: 3.0}, 1.0)["per_extra_ms"] is None


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU part\t: 0xd42
"""


def test_cpu_info_parses_model_cores_and_int8_flags():
    info = cpu_info(CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["physical_cores"] == 1
    assert {"avx2", "avx512_vnni", "amx_int8"} <= set(info["flags"]) and "fpu" not in info["flags"]
    assert info["int8_hardware"] == ["avx512_vnni", "amx_int8"]
    arm = cpu_info(ARM_CPUINFO)
    assert "asimddp" in arm["int8_hardware"] and "fphp" in arm["flags"]


def test_machine_info_names_libraries_and_threads():
    info = machine_info(threads=2)
    assert info["threads"]["requested"] == 2 and "numpy" in info["libraries"]
    assert info["cpu"]["usable_cores"] >= 1
    line = describe_machine(info)
    assert "threads: 2" in line and "GB RAM" in line
    isolated = describe_machine(machine_info(threads=2, isolation=ISOLATION))
    assert f"threads: 2 per runtime, {ISOLATION}" in isolated


# ---------------------------------------------------------------------------------------------------------------------
# accuracy against the FP32 reference
# ---------------------------------------------------------------------------------------------------------------------


class FakeRuntime:
    """Returns fixed logits per sample (keyed by the image's first value); optionally fails after n calls."""

    def __init__(self, logits_by_key: dict[float, np.ndarray], fail_after: int | None = None):
        self.logits, self.calls, self.fail_after = logits_by_key, 0, fail_after

    def infer(self, feeds):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("kernel crashed")
        return {"mask_logits": self.logits[float(feeds["image"].flat[0])]}


def _samples(n: int = 40, seed: int = 0):
    """Ground truth = left half of an 8x8 image (kind a) or top half (kind b); logits match it with some noise."""
    rng = np.random.default_rng(seed)
    items, good = [], {}
    for i in range(n):
        gt = np.zeros((8, 8), bool)
        kind = "a" if i % 2 else "b"
        if kind == "a":
            gt[:, :4] = True
        else:
            gt[:4, :] = True
        logits = np.where(gt, 2.0, -2.0) + rng.normal(0, 1.5, (8, 8))
        good[float(i)] = logits[None, None].astype(np.float32)
        items.append(({"image": np.full((1, 3, 4, 4), float(i), np.float32)}, gt, SampleMeta(f"s{i}", "val", kind)))
    return items, good


def test_evaluate_lockstep_drop_ci_agreement_and_kinds():
    items, good = _samples()
    worse = {k: np.where(np.arange(8)[None, None, None, :] == 0, -5.0, v).astype(np.float32) for k, v in good.items()}
    rts = {REFERENCE: FakeRuntime(good), "same": FakeRuntime(good), "worse": FakeRuntime(worse)}
    summary = summarize(evaluate(rts, iter(items), REFERENCE), REFERENCE, n_boot=200)
    assert summary[REFERENCE]["agreement"]["mean_iou"] == 1.0
    same, bad = summary["same"], summary["worse"]
    assert same["drop_vs_reference"]["mIoU"]["diff"] == 0.0 and same["agreement"]["mean_iou"] == 1.0
    drop, low, high = miou_drop_points(bad)
    assert drop > 0 and low <= drop <= high  # removing a column of pixels costs mIoU, and the CI brackets it
    assert bad["agreement"]["mean_iou"] < 1.0 and len(bad["agreement_worst"]) == 5
    assert set(bad["metrics"]["by_kind"]) == {"a", "b"} and set(bad["drop_by_kind"]) == {"a", "b"}
    assert bad["metrics"]["overall"]["n"] == 40 and "prec@0.9" in bad["metrics"]["overall"]


def test_evaluate_scores_a_limited_runtime_on_its_subset_and_pairs_the_drop_with_it():
    items, good = _samples()
    worse = {k: np.where(np.arange(8)[None, None, None, :] == 0, -5.0, v).astype(np.float32) for k, v in good.items()}
    rts = {REFERENCE: FakeRuntime(good), "fp32-export": FakeRuntime(good), "int8": FakeRuntime(worse)}
    subset = [f"s{i}" for i in range(0, 40, 4)]
    results = evaluate(rts, iter(items), REFERENCE, only={"fp32-export": subset})
    assert rts["fp32-export"].calls == 10 and rts["int8"].calls == 40  # the time goes to the INT8 artifact
    summary = summarize(results, REFERENCE, n_boot=100)
    limited = summary["fp32-export"]
    assert limited["n"] == 10 and limited["drop_vs_reference"]["n"] == 10
    assert limited["drop_vs_reference"]["mIoU"]["diff"] == 0.0 and limited["agreement"]["n"] == 10
    assert summary["int8"]["drop_vs_reference"]["n"] == 40
    with pytest.raises(ValueError, match="reference"):
        evaluate(rts, iter(items), REFERENCE, only={REFERENCE: subset})


def test_evaluate_turns_a_crashing_runtime_into_an_error_row():
    items, good = _samples(10)
    rts = {REFERENCE: FakeRuntime(good), "flaky": FakeRuntime(good, fail_after=3)}
    summary = summarize(evaluate(rts, iter(items), REFERENCE), REFERENCE, n_boot=100)
    assert summary["flaky"]["status"] == "error: RuntimeError: kernel crashed"
    assert summary[REFERENCE]["n"] == 10


# ---------------------------------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------------------------------


def test_find_artifacts_lists_every_row_with_a_status(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "full.onnx").write_bytes(b"x" * 100)
    (tmp_path / "export" / "full.xml").write_bytes(b"x" * 10)
    (tmp_path / "export" / "full.bin").write_bytes(b"x" * 90)
    for g in ("image_encoder", "text_encoder", "decoder"):
        (tmp_path / "export" / f"{g}.onnx").write_bytes(b"x")
    arts = {a.name: a for a in find_artifacts({"export": tmp_path / "export"})}
    assert list(arts) == [REFERENCE, "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8",
                          "tensorrt-int8"]  # fmt: skip
    assert arts["onnxruntime-fp32"].status is None and set(arts["onnxruntime-fp32"].split) == {
        "image_encoder", "text_encoder", "decoder"}  # fmt: skip
    assert arts["openvino-fp32"].split == {} and artifact_size(arts["openvino-fp32"].path) == 100
    assert arts["onnxruntime-int8"].status.startswith("unavailable: not produced") and arts["onnxruntime-int8"].gated
    assert arts[REFERENCE].status.startswith("unavailable")
    trt = arts["tensorrt-int8"]
    assert trt.status.startswith("unavailable: ") and trt.runtime == "tensorrt"
    with pytest.raises(RuntimeUnavailable):
        load_artifact(trt)
    (tmp_path / "export" / "full.xml").unlink()
    jetson = {a.name: a for a in find_artifacts({"export": tmp_path / "export"}, openvino_made=False)}
    assert "not made for this device" in jetson["openvino-fp32"].status
    assert "not made for this device" in jetson["openvino-int8"].status
    assert jetson["onnxruntime-int8"].status.startswith("unavailable: not produced")


# ---------------------------------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------------------------------


def _ctx(tmp_path: Path, upstream: dict[str, Path]) -> StageContext:
    from pipeline.config import load_config

    cfg = load_config(None, [f"run.root={tmp_path}"])
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return StageContext("gate", cfg, out, tmp_path, upstream, logging.getLogger("t"))


def test_gate_fails_after_the_report_with_a_summary(tmp_path):
    from pipeline.stages.report import run_gate
    from pipeline.stages.validate import gate_verdict

    bad = {"drop_vs_reference": {"mIoU": {"diff": -0.023, "lower": -0.029, "upper": -0.018}}}
    ok = {"drop_vs_reference": {"mIoU": {"diff": -0.003, "lower": -0.012, "upper": 0.004}}}
    assert not gate_verdict(bad, 1.0, "estimate") and gate_verdict(ok, 1.0, "estimate")
    assert not gate_verdict(ok, 1.0, "upper_ci")  # the CI's pessimistic end is 1.2 points
    val = tmp_path / "validate"
    val.mkdir()
    results = {"budget_miou_points": 1.0, "gate_on": "estimate", "artifacts": {
        "onnxruntime-int8": {"label": "ONNX Runtime INT8 (Q/DQ)", "gated": True, "status": "validation failed", **bad},
        "openvino-int8": {"label": "OpenVINO INT8", "gated": True, "status": "ok", **ok}}}  # fmt: skip
    (val / "results.json").write_text(json.dumps(results))
    ctx = _ctx(tmp_path, {"validate": val, "report": tmp_path / "report"})
    with pytest.raises(StageError, match=r"ONNX Runtime INT8 \(Q/DQ\): mIoU drop \+2.30 points \[95% CI \+1.80, "
                                         r"\+2.90\] > budget 1.0") as err:  # fmt: skip
        run_gate(ctx)
    assert "report.md" in str(err.value) and "OpenVINO" not in str(err.value)
    results["artifacts"]["onnxruntime-int8"]["status"] = "ok"
    (val / "results.json").write_text(json.dumps(results))
    assert run_gate(ctx)["passed"] is True


# ---------------------------------------------------------------------------------------------------------------------
# the stages on a tiny model (slow)
# ---------------------------------------------------------------------------------------------------------------------


def _broken_copy(src: Path, dst: Path, shift: float = -60.0) -> None:
    """The FP32 graph with a constant added to the logits: a stand-in INT8 artifact that fails the budget."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0]
    old = out.name
    for node in model.graph.node:
        node.output[:] = [f"{old}_raw" if o == old else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(shift, np.float32), "shift_const"))
    model.graph.node.append(helper.make_node("Add", [f"{old}_raw", "shift_const"], [old]))
    onnx.save(model, str(dst))


def _tiny_run_artifacts(cfg, run: Path) -> dict[str, Path]:
    """The ``data`` stage of ``cfg`` run for real, then by hand: a tiny checkpoint that predicts the whole frame, its
    FP32 ONNX / OpenVINO exports, a broken Q/DQ "INT8" copy and an OpenVINO "INT8" identical to FP32. Returns the
    stage folders under ``run``."""
    import torch

    from model import create_model
    from model.graphs import graph_specs
    from model.weights import save_checkpoint
    from pipeline.runner import Runner
    from runtimes.export import copy_tokenizer, export_onnx, export_openvino

    Runner(cfg).run(["data"])
    dirs = {"data": run / "data", "train": run / "train", "export": run / "export", "quantize": run / "quantize"}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
    with torch.no_grad():  # a random model scores ~0: make it predict the whole frame so a worse one can drop
        head.bias += 20.0
    save_checkpoint(model, dirs["train"] / "best")
    spec = model.spec
    meta = {"variant": "tiny", "img_size": spec.img_size, "max_tokens": spec.max_tokens, "threshold": 0.5,
            "image_mean": list(spec.image_mean), "image_std": list(spec.image_std),
            "tokenizer_dir": str(dirs["export"] / "tokenizer")}  # fmt: skip
    g = graph_specs(model)["full"]
    export_onnx(g.module, dict(zip(g.input_names, g.example_inputs(), strict=True)), g.output_names,
                dirs["export"] / "full.onnx", metadata=meta)  # fmt: skip
    export_openvino(dirs["export"] / "full.onnx", dirs["export"] / "full.xml")
    copy_tokenizer(spec.text_dir, dirs["export"] / "tokenizer")
    _broken_copy(dirs["export"] / "full.onnx", dirs["quantize"] / "full_int8_qdq.onnx")
    for ext in (".xml", ".bin"):  # an "INT8" IR identical to FP32: passes with drop 0
        shutil.copy(dirs["export"] / f"full{ext}", dirs["quantize"] / f"full_int8{ext}")
    (dirs["quantize"] / "manifest.json").write_text(json.dumps({"figures": {"full_int8_qdq.onnx": {
        "mask_head": ["/head/Conv"], "fallback": {"excluded": ["/head/Conv", "/s2rm/MatMul_7"]}}}}))  # fmt: skip
    return dirs


@pytest.mark.slow
def test_stages_end_to_end_on_tiny(tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.bench import run_bench
    from pipeline.stages.report import run_gate, run_report
    from pipeline.stages.validate import run_validate

    small = ["data.synref.images={train: 4, val: 4, testA: 3, testB: 3}", "data.synref.min_side=96",
             "data.synref.max_side=128", "model.variant=tiny", "validate.max_samples=8", "validate.bootstrap=200",
             "bench.runs=3", "bench.warmup=1", "bench.threads=1", "bench.expressions=[1,4,8]"]  # fmt: skip
    cfg = load_config("configs/demo.yaml", [f"run.root={tmp_path}", "run.name=t", *small])
    run = tmp_path / "t"
    dirs = _tiny_run_artifacts(cfg, run)

    def ctx(name: str, up: dict[str, Path]) -> StageContext:
        out = run / "devices" / "x86-cpu" / name
        out.mkdir(parents=True)
        return StageContext(name, cfg, out, run, up, logging.getLogger(name))

    from pipeline.data.dataset import open_dataset
    from pipeline.layout import TUNING_IDS

    val = open_dataset(cfg, dirs["data"]).samples("val")
    tuned = [f"val:{s.ref_id}:{s.sent_id}" for s in val[:3]]  # what the INT8 fallback tuned on stays out of the gate
    (dirs["quantize"] / TUNING_IDS).write_text(json.dumps({"split": "val", "ids": tuned}))
    v = run_validate(ctx("validate", dirs))
    gated = json.loads((run / "devices" / "x86-cpu" / "validate" / "samples" / f"{REFERENCE}.json").read_text())
    assert not set(tuned) & set(gated["sample_id"]) and len(gated["sample_id"]) == v["n_samples"]
    assert [s for s in gated["sample_id"] if s.startswith("val:")]  # the rest of val is still measured
    assert v["failed"] == ["onnxruntime-int8"]
    assert v["statuses"]["openvino-int8"] == "ok" and v["statuses"]["tensorrt-int8"].startswith("unavailable: ")
    assert v["drop_points"]["openvino-fp32"] == pytest.approx(0.0, abs=1e-9)
    b = run_bench(ctx("bench", dirs))
    assert b["p50_ms"][REFERENCE] > 0 and b["speedup"]["onnxruntime-fp32"] > 0
    bench = json.loads((run / "devices" / "x86-cpu" / "bench" / "results.json").read_text())
    torch_split = bench["artifacts"][REFERENCE]["split_graph"]
    assert torch_split["status"] == "ok" and set(torch_split["k"]) == {"1", "4", "8"}
    assert bench["artifacts"]["onnxruntime-fp32"]["split_graph"]["status"].startswith("unavailable")
    assert bench["artifacts"]["openvino-fp32"]["peak_rss"]["torch_imported"] is False
    # the roofline column: FLOPs of each graph against the GEMM peaks the stage measured here
    assert bench["peaks"]["fp32_gflops"] > 0 and bench["peaks"]["int8_gops"] > 0 and bench["peaks"]["threads"] == 1
    roof = {n: e["roofline"] for n, e in bench["artifacts"].items() if "roofline" in e}
    assert roof["pytorch-fp32"]["gflops"] == pytest.approx(roof["onnxruntime-fp32"]["gflops"])
    assert roof["openvino-int8"]["int8_share"] == 0.0 and 0 < roof["openvino-fp32"]["floor_ratio"] < 1.5
    dev = run / "devices" / "x86-cpu"
    r = run_report(ctx("report", {"validate": dev / "validate", "bench": dev / "bench", "quantize": dirs["quantize"]}))
    assert r["statuses"]["onnxruntime-int8"] == "validation failed"
    md = (dev / "report" / "report.md").read_text()
    assert "TensorRT INT8" in md and "unavailable" in md and "1: /s2rm/MatMul_7" in md
    assert "## Roofline: distance from this machine's GEMM floor" in md
    # the mask gallery: 8 samples, the broken Q/DQ copy's worst disagreements first, a panel per scored artifact
    gallery = json.loads((dev / "validate" / "gallery" / "gallery.json").read_text())
    assert len(gallery["rows"]) == 8
    for row in gallery["rows"]:  # the FP32 exports match PyTorch: only the reference and the INT8 artifacts are drawn
        assert [p["title"] for p in row["panels"]] == ["ground truth", REFERENCE, "onnxruntime-int8", "openvino-int8"]
    worst = [row["min_agreement"] for row in gallery["rows"]]
    assert worst == sorted(worst) and worst[0] < 1.0
    assert "## Mask gallery" in md and (dev / "report" / "gallery" / "00.png").is_file()
    assert (dev / "report" / "report.html").read_text().count("data:image/png;base64,") >= 8
    with pytest.raises(StageError, match="ONNX Runtime INT8"):
        run_gate(ctx("gate", {"validate": dev / "validate", "report": dev / "report"}))
