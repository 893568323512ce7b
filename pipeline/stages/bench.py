"""The ``bench`` stage: latency of every artifact, each in its own worker process, plus split-graph cost, peak RSS,
size and machine info.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages bench [--set bench.runs=100]``.

One real evaluation frame and ``max(bench.expressions)`` real sentences are pre-processed once; every runtime then
runs the same batch-1 inputs. Each artifact's full graph and split-graph pipelines ("encode the frame once, then k ×
(encode text + decode)") run in a worker process of their own, with the same thread count for every runtime
(``bench.threads``, else the device profile's, else the usable cores); the workers take turns in blocks of calls
within ONE run (:func:`benchmarks.latency.time_isolated`), so the speed-up against PyTorch FP32 eager and the cost per
extra expression compare numbers measured side by side, without one runtime's idle threads slowing another.
Pre- and post-processing are timed once (they are shared). Peak RSS is measured per artifact in a fresh process.

Writes ``results.json`` (summaries per artifact, machine, settings), ``raw_ms.json`` (every timed run) and
``inputs.npz`` (the benchmark's inputs). Rows that cannot run here have status ``unavailable: <reason>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.layout import RESULTS, TOKENIZER
from pipeline.stage import CODE_MEASURING, MEASURED_UPSTREAM, StageContext, stage
from runtimes.formats import FORMATS, MASK_OUTPUT, REFERENCE, SPLIT_GRAPHS

log = logging.getLogger(__name__)


def pick_inputs(refer: Any, splits: list[str], n_sentences: int) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """The first evaluation frame of the first split, and ``n_sentences`` distinct real sentences (repeated if few)."""
    samples = [s for split in splits for s in refer.samples(split)]
    if not samples:
        raise ValueError(f"no evaluation samples in splits {splits}")
    first = samples[0]
    texts = list(dict.fromkeys(s.text for s in samples if s.image_id == first.image_id))
    texts += [t for t in dict.fromkeys(s.text for s in samples[:500]) if t not in texts]
    texts = (texts * n_sentences)[:n_sentences]
    rgb = refer.image(first.image_id)
    return rgb, texts, {"image_id": first.image_id, "split": first.split, "size": list(rgb.shape[:2])}


def split_pipeline(
    enc: Any, txt: Any, dec: Any, image: dict[str, np.ndarray], texts: list[dict[str, np.ndarray]]
) -> dict[str, Callable[[], Any]]:
    """Timing callables of one artifact's split graphs: components, and "encode once + k expressions" per k."""
    feats = enc.infer(image)
    text0 = txt.infer(texts[0])
    dec_feed = {n: {**feats, **text0, **texts[0]}[n] for n in dec.inputs}

    def run_k(k: int) -> None:
        encoded = enc.infer(image)
        for t in texts[:k]:
            words = txt.infer(t)
            dec.infer({n: {**encoded, **words, **t}[n] for n in dec.inputs})

    fns: dict[str, Callable[[], Any]] = {
        "encode_image": lambda: enc.infer(image),
        "encode_text": lambda: txt.infer(texts[0]),
        "decode": lambda: dec.infer(dec_feed),
    }
    for k in range(1, len(texts) + 1):
        fns[f"k={k}"] = lambda k=k: run_k(k)
    return fns


def _load_split(art: Any, full_rt: Any, threads: int | None) -> tuple[Any, Any, Any]:
    from benchmarks.latency import load_timed

    if art.runtime == "torch":  # one checkpoint, three graphs sharing its weights
        return full_rt.graph("image_encoder"), full_rt.graph("text_encoder"), full_rt.graph("decoder")
    return tuple(load_timed(art.runtime, art.split[g], art.device, threads) for g in SPLIT_GRAPHS)


def bench_worker(
    art: Any,
    feeds: dict[str, np.ndarray],
    image: dict[str, np.ndarray],
    texts: list[dict[str, np.ndarray]],
    split_keys: list[str] | None,
    *,
    threads: int,
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """Worker factory (:class:`benchmarks.latency.Worker`) of one artifact: its full graph and split-graph pipelines.

    Runs in the artifact's own process. ``split_keys`` names the split-graph callables to time (None: no split-graph
    timing). Returns the callables and ``{"runtime_settings", "split_status"}``; a split graph that does not load or
    run is a status, the full graph is still timed.
    """
    from benchmarks.latency import load_timed

    rt = load_timed(art.runtime, art.path, art.device, threads)
    fns: dict[str, Callable[[], Any]] = {"full": lambda: rt.infer(feeds)}
    info: dict[str, Any] = {"runtime_settings": getattr(rt, "settings", {})}
    if split_keys is None:
        return fns, info
    if not art.split:
        info["split_status"] = "unavailable: no split graphs in this run"
        return fns, info
    try:
        enc, txt, dec = _load_split(art, rt, threads)
        parts = split_pipeline(enc, txt, dec, image, texts)
    except Exception as exc:  # a split graph that does not load or run is a status, not a crash
        info["split_status"] = f"error: {type(exc).__name__}: {exc}"
        return fns, info
    fns |= {key: fn for key, fn in parts.items() if key in split_keys}
    info["split_status"] = "ok"
    return fns, info


@stage(
    "bench",
    upstream=MEASURED_UPSTREAM,
    sections=("data", "model", "bench", "device"),
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers", "onnxruntime", "openvino", "tensorrt"),
    code=(*CODE_MEASURING, "benchmarks.roofline"),
    per_device=True,
)
def run_bench(ctx: StageContext) -> dict[str, Any]:
    """Time every artifact and write ``results.json``."""
    from benchmarks.artifacts import find_artifacts, load_runnable
    from benchmarks.latency import BENCH_OPTIONS, ISOLATION, Worker, summarize, time_isolated
    from benchmarks.machine import describe_machine, machine_info, usable_cores
    from foundation.io import atomic_write_json

    cfg, b = ctx.cfg, ctx.cfg.bench
    threads = cfg.timing_threads() or usable_cores()  # explicit and the same for every runtime
    ks = sorted(set(b.expressions))
    machine = machine_info(threads, ISOLATION)
    log.info("bench: %s", describe_machine(machine))
    # 1. artifacts, runtimes, inputs
    arts = find_artifacts(ctx.upstream_dirs, cfg.device.precision, cfg.openvino_artifacts(cfg.export.openvino))
    loaded, statuses = load_runnable(arts, threads)
    if not loaded:
        log.warning("bench: no artifact can run here: %s", statuses)
    inputs = bench_inputs(ctx, loaded, max(ks))
    # 2. shared pre- and post-processing, once, in this process (no runtime thread pool involved)
    proc_times = time_processing(inputs, loaded, b.warmup, b.runs)
    # 3. one run, one worker process per artifact (full graph and split-graph pipelines), workers taking turns
    split_keys = ["encode_image", "encode_text", "decode", *(f"k={k}" for k in ks)] if b.split_graph else None
    workers = {
        art.name: Worker(bench_worker, (art, inputs.feeds, inputs.image, inputs.text_feeds, split_keys))
        for art in arts
        if art.name in loaded
    }
    loaded.clear()  # the workers load their own copies; these only told which artifacts can run
    log.info("bench: %d artifacts, %d warm-up + %d runs each, %s, %d threads", len(workers), b.warmup, b.runs,
             ISOLATION, threads)  # fmt: skip
    timed = time_isolated(workers, warmup=b.warmup, runs=b.runs, threads=threads)
    # 4. rows, results, figures; the roofline column (FLOPs of each graph against this machine's GEMM peaks)
    rows = bench_rows(ctx, arts, statuses, set(workers), timed, ks, threads)
    times, timing = timed[0], timed[2]
    peaks = add_roofline(ctx, arts, rows, threads)
    out = {
        "machine": machine,
        "settings": {"warmup": b.warmup, "runs": b.runs, "threads": threads,
                     "threads_source": "bench.threads / device.threads" if cfg.timing_threads() else "usable cores",
                     "expressions": ks, "interleaved": True, "isolation": timing["isolation"],
                     "start_method": timing["start_method"], "block": timing["block"], "rounds": timing["rounds"],
                     "runtime_options": BENCH_OPTIONS, "batch": 1, "timer": "time.perf_counter"},
        "frame": {**inputs.frame, "sentences": inputs.texts},
        "processing": {k: summarize(v) for k, v in proc_times.items()},
        "peaks": peaks,
        "artifacts": rows,
        "order": [a.name for a in arts],
    }  # fmt: skip
    atomic_write_json(ctx.out / RESULTS, out)
    atomic_write_json(ctx.out / "raw_ms.json", {k: [round(x, 4) for x in v] for k, v in times.items()})
    return bench_figures(rows, describe_machine(machine))


def add_roofline(ctx: StageContext, arts: list[Any], rows: dict[str, Any], threads: int) -> dict[str, Any]:
    """Each timed artifact's FLOPs and its distance from the hardware floor (``rows[name]["roofline"]``); the GEMM
    peaks measured here (after the timing, so they do not disturb it) are returned for the results."""
    from benchmarks.roofline import count_flops, measure_peaks, roofline_row
    from foundation.errors import PipelineError

    timed = [a for a in arts if (rows[a.name].get("latency") or {}).get("p50_ms") and a.runtime != "tensorrt"]
    if not timed:
        return {}
    peaks = measure_peaks(threads)
    exported = ctx.upstream("export") / FORMATS["onnxruntime-fp32"].file
    for art in timed:
        try:
            flops = count_flops(art.path, exported_onnx=exported)
        except PipelineError as exc:  # a graph whose shapes are not static: a status, not a crash
            rows[art.name]["roofline"] = {"status": f"error: {exc}"}
            continue
        rows[art.name]["roofline"] = roofline_row(flops, rows[art.name]["latency"]["p50_ms"], peaks, art.precision)
    return peaks


@dataclass
class BenchInputs:
    """The benchmark's batch-1 inputs: one real frame, real sentences, and their pre-processed feeds."""

    proc: Any
    rgb: np.ndarray
    texts: list[str]
    frame: dict[str, Any]
    feeds: dict[str, np.ndarray]
    image: dict[str, np.ndarray]
    text_feeds: list[dict[str, np.ndarray]]


def bench_inputs(ctx: StageContext, loaded: dict[str, Any], n_sentences: int) -> BenchInputs:
    """The first evaluation frame and ``n_sentences`` real sentences, pre-processed once (saved as ``inputs.npz``)."""
    from pipeline.data.dataset import open_dataset
    from runtimes.processing import Processing

    refer = open_dataset(ctx.cfg, ctx.upstream("data"))
    rgb, texts, frame = pick_inputs(refer, list(ctx.cfg.data.eval_splits), n_sentences)
    tok_dir = ctx.upstream("export") / TOKENIZER
    any_rt = loaded.get(REFERENCE) or next(iter(loaded.values()), None)
    proc = Processing.from_metadata(any_rt.metadata if any_rt else {"img_size": 1, "max_tokens": 2},
                                    tok_dir if tok_dir.is_dir() else None)  # fmt: skip
    feeds = proc(rgb, texts[0])
    np.savez(ctx.out / "inputs.npz", **feeds)
    return BenchInputs(proc, rgb, texts, frame, feeds, proc.image(rgb), [proc.text(t) for t in texts])


def time_processing(inputs: BenchInputs, loaded: dict[str, Any], warmup: int, runs: int) -> dict[str, list[float]]:
    """Pre-processing (and post-processing of one artifact's logits) timed interleaved in this process."""
    from benchmarks.latency import time_interleaved

    proc, rgb, text = inputs.proc, inputs.rgb, inputs.texts[0]
    logits = next(iter(loaded.values())).infer(inputs.feeds)[MASK_OUTPUT] if loaded else None
    fns: dict[str, Callable[[], Any]] = {"pre": lambda: proc(rgb, text)}
    if logits is not None:
        fns["post"] = lambda: proc.postprocess(logits, rgb.shape[:2])
    return time_interleaved(fns, warmup=warmup, runs=runs)[0]


def bench_rows(
    ctx: StageContext,
    arts: list[Any],
    statuses: dict[str, str],
    workers: set[str],
    timed: tuple[Any, ...],
    ks: list[int],
    threads: int,
) -> dict[str, Any]:
    """One row per artifact: status, runtime settings, latency summary, peak RSS, split-graph costs.

    ``workers`` names the artifacts that had a worker; ``timed`` is :func:`benchmarks.latency.time_isolated`'s
    ``(times, errors, timing)``.
    """
    from benchmarks.latency import summarize
    from benchmarks.peak_rss import peak_rss_subprocess

    times, errors, timing = timed
    rows: dict[str, Any] = {}
    for art in arts:
        entry: dict[str, Any] = {**art.describe(), "status": statuses.get(art.name, "ok")}
        if art.name in errors:
            entry["status"] = f"error: {errors[art.name]}"
        reported = timing["workers"].get(art.name)
        if reported is not None:
            entry["runtime_settings"] = reported.get("runtime_settings", {})
        if entry["status"] == "ok":
            entry["latency"] = summarize(times[art.name])
            if ctx.cfg.bench.peak_rss:
                entry["peak_rss"] = peak_rss_subprocess(art.runtime, art.path, ctx.out / "inputs.npz", threads)
        split_status = None
        if art.name in workers and "split_status" in (reported or {}):
            split_status = reported["split_status"]
        elif art.name in workers and ctx.cfg.bench.split_graph and art.name in errors:
            split_status = f"error: {errors[art.name]}"  # the worker itself failed
        if split_status is not None:
            entry["split_graph"] = _split_entry(art.name, split_status, times, errors, ks, entry)
        rows[art.name] = entry
    return rows


def bench_figures(rows: dict[str, Any], machine: str) -> dict[str, Any]:
    """The manifest's figures: p50 and speed-up against PyTorch FP32 per artifact, the cost of one more expression."""
    ref_p50 = (rows.get(REFERENCE, {}).get("latency") or {}).get("p50_ms")
    figures: dict[str, Any] = {"machine": machine, "p50_ms": {}, "speedup": {}, "expression_cost": {}}
    for name, e in rows.items():
        p50 = (e.get("latency") or {}).get("p50_ms")
        figures["p50_ms"][name] = p50
        figures["speedup"][name] = (ref_p50 / p50) if ref_p50 and p50 else None
        cost = (e.get("split_graph") or {}).get("cost", {})
        if cost.get("ratio_to_full") is not None:
            figures["expression_cost"][name] = cost["ratio_to_full"]
        log.info("bench: %-18s %-12s p50 %s ms", name, e["status"][:12], "–" if p50 is None else f"{p50:.2f}")
    return figures


def _split_entry(
    name: str, status: str, times: dict[str, list[float]], errors: dict[str, str], ks: list[int], row: dict[str, Any]
) -> dict[str, Any]:
    from benchmarks.latency import expression_cost, summarize

    keys = [f"{name}/{c}" for c in ("encode_image", "encode_text", "decode")] + [f"{name}/k={k}" for k in ks]
    broken = [errors[k] for k in keys if k in errors]
    if status != "ok" or broken:
        return {"status": status if status != "ok" else f"error: {broken[0]}"}
    comp = {c: summarize(times[f"{name}/{c}"]) for c in ("encode_image", "encode_text", "decode")}
    per_k = {str(k): summarize(times[f"{name}/k={k}"]) for k in ks}
    full = (row.get("latency") or {}).get("p50_ms") or 0.0
    cost = expression_cost({k: per_k[str(k)]["p50_ms"] for k in ks}, full)
    cost["cached_text_ratio"] = comp["decode"]["p50_ms"] / full if full else None  # fixed commands: decode only
    return {"status": "ok", "components": comp, "k": per_k, "cost": cost}
