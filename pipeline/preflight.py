"""Pre-flight: will a variant export, quantize and pass a device's TensorRT op check — before anyone trains it?

Usage: ``python -m pipeline preflight --device jetson-orin-nano [--variant edge]`` (``make preflight DEVICE=...``).

For each variant (default ``paper`` and ``edge``), built with random weights (no checkpoint, no pretrained weights;
``create_model`` does no weight I/O), in numbered steps:

1. ``build``: the model from the variant registry (the profile's ``device.img_size`` when it sets one).
2. ``summary``: parameters and GFLOPs per part (:func:`model.summary.summarize`, batch 1).
3. ``export``: the FP32 ONNX of the full graph at the profile's opset (:func:`runtimes.export.export_onnx`), LayerNorm
   decomposed for a parser without it, as the export stage does.
4. ``quantize``: the Q/DQ INT8 ONNX for the profile (:func:`quantize.qdq.quantize_qdq_int8`, mask head in float, the
   backend and float remainder the quantize stage would pick) calibrated on a few random inputs: accuracy is not the
   point here, whether the graph quantizes and what it costs is.
5. ``opcheck``: :func:`quantize.trt_compat.check_trt_compat` of the profile's TensorRT version on both ONNX files; a
   failure names the ops and nodes the parser would reject (the engine will not build on that device).
6. ``parity``: ONNX Runtime vs PyTorch on random inputs: the FP32 ONNX within ``parity_atol + parity_rtol·max|ref|``;
   the Q/DQ ONNX runs and gives finite outputs (its difference is recorded, not judged).

A step whose input is missing (an earlier step failed) is a ``skipped`` row; every failure is a row with the reason.
Results: ``runs/preflight/<device>/<variant>/preflight.json`` and ``preflight.md`` (written atomically), the worker's
log beside them, and the ONNX files with ``--keep-onnx``. The exit status is 1 when any step of any variant failed.

Time is wall-clock (``perf_counter``) per step. Memory is the resident set size (RSS) of the variant's process, which
counts native allocations (PyTorch, ONNX Runtime, protobuf), not only Python objects. Each variant runs in its own
fresh process, so one variant's peak never hides in another's. The per-step peak is the kernel's high-water mark
``VmHWM``, reset to the current RSS when the step starts (``/proc/self/clear_refs``, Linux ≥ 4.0): an exact peak, not
a sample. It includes what earlier steps left resident (the PyTorch model stays loaded for the parity step), so each
row also gives the RSS when the step started. Where the reset is not possible the peak is the process's peak so far
(``ru_maxrss``), an upper bound, and the JSON says so. A variant killed by the kernel (out of memory), by
``--max-rss-gb`` or by ``--timeout`` is reported with the step it was in and the memory it had reached.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ConfigError, PipelineError, choice_error
from foundation.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# 1. constants -------------------------------------------------------------------------------------------------------
DEFAULT_VARIANTS = ("paper", "edge")
DEFAULT_OUT = Path("runs/preflight")
STEPS = ("imports", "build", "summary", "export", "quantize", "opcheck", "parity")
STEP_TITLES = {
    "imports": "import torch, timm, ONNX, ORT",
    "build": "build model (random weights)",
    "summary": "params / GFLOPs",
    "export": "export FP32 ONNX",
    "quantize": "Q/DQ INT8 ONNX",
    "opcheck": "TensorRT op check",
    "parity": "ONNX Runtime parity",
}
# what a step needs from the earlier ones; missing -> the step is a "skipped" row
NEEDS = {
    "imports": (),
    "build": (),
    "summary": ("model",),
    "export": ("model",),
    "quantize": ("fp32",),
    "opcheck": ("fp32",),
    "parity": ("model", "fp32"),
}
SETTABLE_SECTIONS = ("export", "quant", "device")  # the model is the registered variant, not a config's
FP32_ONNX, QDQ_ONNX = "full.onnx", "full_int8_qdq.onnx"
RESULT_JSON, RESULT_MD, WORKER_LOG = "preflight.json", "preflight.md", "preflight.log"
PARITY_SEED = 100  # parity inputs differ from the export's example inputs (seed 0) and the calibration's (1..n)
MAX_ERRORS_KEPT = 200
MIB = 2**20


@dataclass
class PreflightOptions:
    """Knobs of a pre-flight run (the device, export and quant settings come from the config).

    Attributes:
        calib_samples: random calibration inputs of the Q/DQ quantizer.
        parity_samples: random inputs of the parity step.
        parity_rtol: FP32 parity tolerance relative to max|PyTorch output| (``export.parity_atol`` is the absolute).
        keep_onnx: keep the ONNX files beside the results.
        timeout_s: seconds per variant before its process is killed (None: no limit).
        max_rss_gb: kill a variant's process whose RSS exceeds this (None: only the kernel's OOM killer).
        isolate: each variant in a fresh process (honest per-variant memory; crash and OOM reported as rows).
    """

    calib_samples: int = 4
    parity_samples: int = 2
    parity_rtol: float = 1e-4
    keep_onnx: bool = False
    timeout_s: float | None = 3600.0
    max_rss_gb: float | None = None
    isolate: bool = True


class CheckFailed(PipelineError):
    """A step ran but its check did not hold; ``figures`` keeps what it measured."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


# 2. memory ----------------------------------------------------------------------------------------------------------
def _status_kib(field: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (``clear_refs`` 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


class StepMemory:
    """Peak RSS of one step: the kernel high-water mark reset at the step's start (see the module docstring)."""

    def __init__(self) -> None:
        self.exact = _reset_peak() and _status_kib("VmHWM") is not None
        self.method = "VmHWM reset per step (exact)" if self.exact else "ru_maxrss: process peak so far (upper bound)"

    def start(self) -> float | None:
        """Begin a step: reset the high-water mark; returns the RSS now (MiB; None where unknown)."""
        gc.collect()
        if self.exact:
            _reset_peak()
        now = _status_kib("VmRSS")
        return None if now is None else now / 1024.0

    def peak(self) -> float:
        """Peak RSS (MiB) since :meth:`start`."""
        hwm = _status_kib("VmHWM") if self.exact else None
        return hwm / 1024.0 if hwm is not None else _maxrss_mib()


# 3. the steps (run inside the variant's process) ------------------------------------------------------------------
@dataclass
class VariantRun:
    """What the steps of one variant share: its settings and what earlier steps produced (``state``)."""

    variant: str
    cfg: Any  # pipeline.config.Config
    workdir: Path
    options: PreflightOptions
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def trt(self) -> str | None:
        """The TensorRT op list the profile is checked against (None: not a TensorRT device)."""
        return op_list_version(self.cfg)


def op_list_version(cfg: Any) -> str | None:
    """The listed TensorRT version a config's device is checked against; None for a device without TensorRT."""
    from quantize.trt_compat import resolve_version

    return resolve_version(cfg.device.trt_version) if cfg.device.backend == "tensorrt" else None


def _random_feeds(graph: Any, seeds: range) -> list[dict[str, np.ndarray]]:
    """Batch-1 numpy feeds of the full graph (int32 tokens, as the artifacts take them), one per seed."""
    feeds = []
    for seed in seeds:
        tensors = graph.example_inputs(seed=seed)
        feeds.append(
            {
                name: t.numpy().astype(np.int32) if not t.is_floating_point() else t.numpy()
                for name, t in zip(graph.input_names, tensors, strict=True)
            }
        )
    return feeds


def step_imports(run: VariantRun) -> tuple[dict[str, Any], str]:
    """The libraries every later step needs, so that their import cost is not counted in the model build."""
    import importlib

    versions = {}
    for name in ("torch", "timm", "transformers", "onnx", "onnxruntime", "onnxscript", "onnxslim", "model"):
        versions[name] = getattr(importlib.import_module(name), "__version__", None)
    versions = {k: v for k, v in versions.items() if v}
    return {"versions": versions}, ", ".join(f"{k} {v}" for k, v in versions.items())


def step_build(run: VariantRun) -> tuple[dict[str, Any], str]:
    from model import create_model, graph_specs

    overrides = {"img_size": run.cfg.device.img_size} if run.cfg.device.img_size else {}
    model = create_model(run.variant, **overrides).eval()
    run.state["model"] = model
    run.state["graph"] = graph_specs(model)["full"]
    spec = model.spec
    params = sum(p.numel() for p in model.parameters()) / 1e6
    figures = {"img_size": spec.img_size, "max_tokens": spec.max_tokens, "vision": spec.vision, "params_m": params}
    return figures, f"{spec.vision} @{spec.img_size}, {spec.max_tokens} tokens, {params:.1f} M params"


def step_summary(run: VariantRun) -> tuple[dict[str, Any], str]:
    from model.summary import summarize

    parts = summarize(run.state["model"])
    total = parts["total"]
    split = ", ".join(f"{p} {v['gflops']:.2f}" for p, v in parts.items() if p != "total")
    return {"parts": parts, **total}, f"{total['params_m']:.1f} M params, {total['gflops']:.2f} GFLOPs ({split})"


def step_export(run: VariantRun) -> tuple[dict[str, Any], str]:
    import onnx

    from quantize.trt_compat import decompose_layernorm, load_op_list
    from runtimes.export import export_onnx, file_size

    model, graph = run.state["model"], run.state["graph"]
    spec = model.spec
    opset = run.cfg.export.opset or run.cfg.device.opset
    example = dict(zip(graph.input_names, graph.example_inputs(), strict=True))
    meta = {
        "graph": "full",
        "variant": spec.name,
        "img_size": spec.img_size,
        "max_tokens": spec.max_tokens,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "token_dtype": "int32",
        "spec": spec.to_dict(),
        "weights": "random (preflight: not a trained model)",
    }
    path = export_onnx(graph.module, example, graph.output_names, run.workdir / FP32_ONNX, opset=opset, metadata=meta)
    decomposed = 0
    if run.trt is not None and "LayerNormalization" not in load_op_list(run.trt)["supported"]:
        proto, decomposed = decompose_layernorm(onnx.load(str(path)))  # as the export stage does for TensorRT 8.5
        onnx.save(proto, str(path))
        del proto
    proto = onnx.load(str(path), load_external_data=False)
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    figures = {
        "opset_requested": opset,
        "opset": got,
        "nodes": len(proto.graph.node),
        "size_mb": round(file_size(path) / 1e6, 2),
        "layernorm_decomposed": decomposed,
    }
    del proto
    run.state["fp32"] = path
    ln = f", {decomposed} LayerNorm decomposed" if decomposed else ""
    return figures, f"opset {got}, {figures['nodes']} nodes, {figures['size_mb']:.1f} MB{ln}"


def qdq_settings(cfg: Any, trt: str | None) -> tuple[str, str]:
    """Q/DQ backend and float remainder the quantize stage picks for this config (its step 3b)."""
    from pipeline.config import qdq_float_dtype
    from quantize.qdq import resolve_backend
    from quantize.trt_compat import load_op_list

    max_opset = load_op_list(trt)["opset_max"] if trt else None
    backend = resolve_backend(cfg.quant.qdq_backend, max_opset)
    return backend, qdq_float_dtype(cfg, backend)


def step_quantize(run: VariantRun) -> tuple[dict[str, Any], str]:
    from quantize.qdq import head_nodes, inspect_qdq, quantize_qdq_int8
    from runtimes.export import file_size

    fp32 = run.state["fp32"]
    feeds = _random_feeds(run.state["graph"], range(1, 1 + run.options.calib_samples))
    calib = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}  # N, ... per input
    backend, float_dtype = qdq_settings(run.cfg, run.trt)
    heads = head_nodes(fp32)
    path = quantize_qdq_int8(
        fp32,
        run.workdir / QDQ_ONNX,
        calib,
        exclude=heads,
        backend=backend,
        float_dtype=float_dtype,
        metadata={"calibration": f"{len(feeds)} random inputs (preflight: scales are not meaningful)"},
    )
    qdq = inspect_qdq(path)
    figures = {
        "backend": backend,
        "float_remainder": float_dtype,
        "calibration_samples": len(feeds),
        "mask_head": heads,
        "size_mb": round(file_size(path) / 1e6, 2),
        "size_ratio": round(file_size(path) / file_size(fp32), 3),
        "qdq": qdq,
    }
    run.state["qdq"] = path
    return figures, (
        f"{backend}, {qdq['quantized_nodes']} nodes INT8, float {float_dtype}, "
        f"{figures['size_mb']:.1f} MB ({figures['size_ratio']:.0%} of FP32)"
    )


def describe_problems(reports: list[Any]) -> str:
    """The failed checks of several files, grouped by (op, reason): node counts per file and the first node names."""
    groups: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        for e in report.errors:
            groups[(e["op"], e["reason"])][Path(report.artifact).name].append(e["node"])
    parts = []
    for (op, reason), per_file in groups.items():
        counts = ", ".join(f"{len(nodes)} in {name}" for name, nodes in per_file.items())
        first = next(iter(per_file.values()))
        more = f" and {len(first) - 3} more" if len(first) > 3 else ""
        parts.append(f"{op} ({reason}): {counts}; nodes {', '.join(first[:3])}{more}")
    return " | ".join(parts)


def step_opcheck(run: VariantRun) -> tuple[dict[str, Any], str]:
    from quantize.trt_compat import check_trt_compat

    dev = run.cfg.device
    if run.trt is None:
        return {"skipped": True}, f"device backend {dev.backend}: no TensorRT parser to check against"
    files = [run.state["fp32"], *([run.state["qdq"]] if "qdq" in run.state else [])]
    figures: dict[str, Any] = {"tensorrt": dev.trt_version, "op_list": run.trt}
    failed, notes = [], []
    for path in files:
        report = check_trt_compat(path, dev.trt_version)
        entry = report.to_dict()
        entry["errors"] = entry["errors"][:MAX_ERRORS_KEPT]
        entry["error_count"] = len(report.errors)
        figures[path.name] = entry
        warned = len(report.warnings)
        notes.append(f"{path.name} {'ok' if report.ok else 'FAILED'} ({warned} warning{'' if warned == 1 else 's'})")
        if not report.ok:
            failed.append(report)
    if "qdq" not in run.state:
        notes.append(f"{QDQ_ONNX} not checked (quantize failed)")
    if failed:
        raise CheckFailed(
            f"the engine will not build on {dev.name}: the TensorRT {dev.trt_version} ONNX parser (op list "
            f"{run.trt}) rejects {describe_problems(failed)}",
            figures,
        )
    return figures, f"TensorRT {dev.trt_version} (list {run.trt}): " + ", ".join(notes)


def step_parity(run: VariantRun) -> tuple[dict[str, Any], str]:
    from pipeline.stages.export import torch_outputs
    from runtimes import get_runtime

    graph = run.state["graph"]
    feeds = _random_feeds(graph, range(PARITY_SEED, PARITY_SEED + run.options.parity_samples))
    refs = [torch_outputs(graph, f) for f in feeds]
    scale = max(float(np.max(np.abs(r[k]))) for r in refs for k in r)
    atol = run.cfg.export.parity_atol + run.options.parity_rtol * scale
    threads = run.cfg.device.threads

    def worst(path: Path) -> tuple[float, bool]:
        rt = get_runtime("onnxruntime").load(path, threads=threads)
        diff, finite = 0.0, True
        for feed, ref in zip(feeds, refs, strict=True):
            got = rt.infer(feed)
            for k in ref:
                out = got[k].astype(np.float32)
                finite = finite and bool(np.all(np.isfinite(out)))
                diff = max(diff, float(np.max(np.abs(out - ref[k]))))
        return diff, finite

    fp32_diff, fp32_finite = worst(run.state["fp32"])
    figures: dict[str, Any] = {
        "samples": len(feeds),
        "max_abs_ref": scale,
        "tolerance": atol,
        "fp32_max_abs_diff": fp32_diff,
        "fp32_finite": fp32_finite,
    }
    failures = []
    if not fp32_finite or fp32_diff > atol:
        failures.append(f"FP32 ONNX differs from PyTorch by {fp32_diff:.2e} (tol {atol:.2e}, max|ref| {scale:.2f})")
    detail = f"FP32 max|diff| {fp32_diff:.1e} (tol {atol:.0e}, max|out| {scale:.2g})"
    if "qdq" in run.state:
        qdq_diff, qdq_finite = worst(run.state["qdq"])
        figures |= {"qdq_max_abs_diff": qdq_diff, "qdq_finite": qdq_finite}
        detail += f"; Q/DQ runs, {'finite' if qdq_finite else 'NOT finite'}, max|diff| {qdq_diff:.2e} (not judged)"
        if not qdq_finite:
            failures.append("the Q/DQ ONNX gives non-finite outputs in ONNX Runtime")
    else:
        detail += f"; {QDQ_ONNX} not run (quantize failed)"
    if failures:
        raise CheckFailed("; ".join(failures), figures)
    return figures, detail


STEP_FUNCS: dict[str, Callable[[VariantRun], tuple[dict[str, Any], str]]] = {
    "imports": step_imports,
    "build": step_build,
    "summary": step_summary,
    "export": step_export,
    "quantize": step_quantize,
    "opcheck": step_opcheck,
    "parity": step_parity,
}


def _emit(progress: Path, event: dict[str, Any]) -> None:
    """Append one event line; the parent reads it even when this process dies later (OOM kill)."""
    with open(progress, "a") as fh:
        fh.write(json.dumps(event, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_variant(run: VariantRun, progress: Path) -> list[dict[str, Any]]:
    """Run the steps of one variant in this process, appending ``start``/``done`` events to ``progress``."""
    memory = StepMemory()
    _emit(progress, {"event": "begin", "variant": run.variant, "memory_method": memory.method, "pid": os.getpid()})
    rows = []
    for step in STEPS:
        missing = [need for need in NEEDS[step] if need not in run.state]
        if missing:
            row = {"step": step, "status": "skipped", "detail": f"needs {', '.join(missing)} from a failed step"}
            rows.append(row)
            _emit(progress, {"event": "done", **row})
            continue
        start_rss = memory.start()
        _emit(progress, {"event": "start", "step": step, "start_rss_mb": start_rss, "time": time.time()})
        log.info("preflight %s: %s ...", run.variant, STEP_TITLES[step])
        started = time.perf_counter()
        figures: dict[str, Any] = {}
        try:
            figures, detail = STEP_FUNCS[step](run)
            status = "ok"
        except CheckFailed as exc:
            status, detail, figures = "failed", str(exc), exc.figures
        except Exception as exc:  # a row with the reason, never a crash: the next steps say what they lacked
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("preflight %s: %s failed", run.variant, step)
        row = {
            "step": step,
            "status": status,
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(memory.peak(), 1),
            "start_rss_mb": None if start_rss is None else round(start_rss, 1),
            "detail": detail,
            "figures": figures,
        }
        rows.append(row)
        _emit(progress, {"event": "done", **row})
    return rows


# 4. one variant in its own process ---------------------------------------------------------------------------------
def read_progress(progress: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """``(begin event, finished rows, the step running when the events stop or None)`` from a progress file."""
    begin: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    running = None
    if progress.is_file():
        for line in progress.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            kind = event.pop("event", None)
            if kind == "begin":
                begin = event
            elif kind == "start":
                running = event
            elif kind == "done":
                rows.append(event)
                running = None
    return begin, rows, running


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _run_isolated(run: VariantRun, progress: Path, log_path: Path) -> tuple[str | None, float | None]:
    """Run one variant in a fresh ``python -m pipeline.preflight worker`` process.

    Returns:
        ``(why it was stopped or None, largest RSS seen by polling in MiB)``.
    """
    request = run.workdir / "request.json"
    atomic_write_json(
        request,
        {
            "variant": run.variant,
            "config": run.cfg.to_dict(),
            "options": dataclasses.asdict(run.options),
            "workdir": str(run.workdir),
            "progress": str(progress),
        },
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pipeline.preflight", "worker", str(request)]
    limit = run.options.max_rss_gb * 1024 if run.options.max_rss_gb else None
    deadline = time.monotonic() + run.options.timeout_s if run.options.timeout_s else None
    seen_rss, why, announced = 0.0, None, set()
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                _announce(run.variant, progress, announced)
                rss = _status_kib("VmRSS", proc.pid)
                seen_rss = max(seen_rss, (rss or 0) / 1024.0)
                if limit is not None and rss is not None and rss / 1024.0 > limit:
                    why = f"stopped: RSS {rss / MIB:.1f} GiB went over --max-rss-gb {run.options.max_rss_gb:g}"
                elif deadline is not None and time.monotonic() > deadline:
                    why = f"stopped: still running after --timeout {run.options.timeout_s:g} s"
                if why:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.2)
        except BaseException:  # Ctrl-C: never leave the worker running
            proc.kill()
            proc.wait()
            raise
    _announce(run.variant, progress, announced)
    code = proc.returncode
    if why is None and code is not None and code < 0:
        sig = signal.Signals(-code).name
        oom = " (most likely the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ""
        why = f"killed by {sig}{oom}"
    elif why is None and code not in (0, None):
        why = f"worker exited with status {code}: {_tail(log_path, 3)}"
    return why, seen_rss or None


def _announce(variant: str, progress: Path, seen: set[str]) -> None:
    """Log each step of the worker as it starts and ends (``seen``: the events already logged)."""
    _begin, rows, running = read_progress(progress)
    for row in rows:
        if f"done {row['step']}" not in seen:
            seen.add(f"done {row['step']}")
            took = "" if row.get("seconds") is None else f" in {row['seconds']:.1f} s"
            peak = "" if row.get("peak_rss_mb") is None else f", peak RSS {_gib(row['peak_rss_mb'])} GiB"
            log.info("preflight %s: %s %s%s%s", variant, STEP_TITLES[row["step"]], row["status"], took, peak)
    if running and f"start {running['step']}" not in seen:
        seen.add(f"start {running['step']}")
        log.info("preflight %s: %s ...", variant, STEP_TITLES[running["step"]])


def _stopped_row(running: dict[str, Any] | None, why: str, seen_rss: float | None) -> dict[str, Any]:
    step = running["step"] if running else "startup"
    started = running.get("time") if running else None
    rss = f"; largest RSS seen {seen_rss / 1024:.2f} GiB" if seen_rss else ""
    return {
        "step": step,
        "status": "killed",
        "seconds": round(time.time() - started, 1) if started else None,
        "peak_rss_mb": round(seen_rss, 1) if seen_rss else None,  # polled every 0.2 s: a lower bound of the peak
        "start_rss_mb": running.get("start_rss_mb") if running else None,
        "detail": f"{why} during '{STEP_TITLES.get(step, step)}'{rss}",
        "figures": {},
    }


def worker_main(request_path: str) -> int:
    """Entry of the worker process: run one variant from a request file written by the parent."""
    from pipeline.config import build_config

    _setup_worker_logging()
    request = json.loads(Path(request_path).read_text())
    run = VariantRun(
        request["variant"],
        build_config(request["config"]),
        Path(request["workdir"]),
        PreflightOptions(**request["options"]),
    )
    run_variant(run, Path(request["progress"]))
    return 0


def _setup_worker_logging() -> None:
    from pipeline.logs import CHATTY_LOGGERS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# 5. the driver: every variant, results, tables ---------------------------------------------------------------------
def preflight(
    cfg: Any,
    variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS,
    out_root: str | Path = DEFAULT_OUT,
    options: PreflightOptions | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Pre-flight every variant for ``cfg.device``; writes each variant's JSON and Markdown and returns the results.

    Args:
        cfg: a :class:`pipeline.config.Config` with the device profile merged (``load_config(None, device=...)``).
        variants: registered variant names, run in this order.
        out_root: results go to ``<out_root>/<device>/<variant>/``.
        options: see :class:`PreflightOptions`.
        command: the command line recorded with the results.
    """
    from benchmarks.latency import describe_machine, machine_info
    from model import list_variants

    options = options or PreflightOptions()
    for variant in variants:
        if variant not in list_variants():
            raise choice_error("model variant", variant, list_variants())
    # settings errors (no op list for the TensorRT version, a Q/DQ backend the target cannot take) fail here, once
    qdq_settings(cfg, op_list_version(cfg))
    machine = machine_info(threads=cfg.device.threads)
    results = []
    for variant in variants:
        out = Path(out_root) / cfg.device.name / variant
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{variant}-work-", dir=out.parent))
        progress, log_path = work / "progress.jsonl", work / WORKER_LOG
        run = VariantRun(variant, cfg, work, options)
        started = time.perf_counter()
        try:
            if options.isolate:
                why, seen_rss = _run_isolated(run, progress, log_path)
            else:
                why, seen_rss = None, None
                run_variant(run, progress)
                run.state.clear()
            begin, rows, running = read_progress(progress)
            if why is not None or running is not None:
                rows.append(_stopped_row(running, why or "stopped", seen_rss))
                done = {r["step"] for r in rows}
                rows += [{"step": s, "status": "not run", "detail": "process stopped"} for s in STEPS if s not in done]
            result = {
                "device": cfg.device.model_dump(mode="json"),
                "variant": variant,
                "status": "ok" if rows and all(r["status"] in ("ok",) for r in rows) else "failed",
                "steps": rows,
                "total_seconds": round(time.perf_counter() - started, 1),
                "memory_method": begin.get("memory_method", "unknown (the worker did not start)"),
                "isolation": "fresh process per variant" if options.isolate else "in-process",
                "options": dataclasses.asdict(options),
                "export_opset": cfg.export.opset or cfg.device.opset,
                "machine": machine,
                "machine_line": describe_machine(machine),
                "command": command,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            }
            _write_results(out, work, result, options.keep_onnx)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append(result)
    return results


def _write_results(out: Path, work: Path, result: dict[str, Any], keep_onnx: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in (FP32_ONNX, QDQ_ONNX):
        (out / name).unlink(missing_ok=True)  # never leave a previous run's model beside this run's results
        if keep_onnx and (work / name).is_file():
            os.replace(work / name, out / name)
    (out / WORKER_LOG).unlink(missing_ok=True)
    if (work / WORKER_LOG).is_file():
        os.replace(work / WORKER_LOG, out / WORKER_LOG)
    atomic_write_json(out / RESULT_JSON, result)
    atomic_write_text(out / RESULT_MD, markdown(result))


def _gib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.2f}"


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """The cells of the step table: variant, step, status, seconds, peak RSS and RSS at start (GiB), detail."""
    cells = []
    for res in results:
        for row in res["steps"]:
            seconds = row.get("seconds")
            cells.append(
                [
                    res["variant"],
                    STEP_TITLES.get(row["step"], row["step"]),
                    row["status"],
                    "-" if seconds is None else f"{seconds:.1f}",
                    _gib(row.get("peak_rss_mb")),
                    _gib(row.get("start_rss_mb")),
                    row.get("detail", ""),
                ]
            )
    return cells


HEADER = ["variant", "step", "status", "time (s)", "peak RSS (GiB)", "RSS at start (GiB)", "detail"]


def format_table(results: list[dict[str, Any]], width: int = 110) -> str:
    """A plain-text table for the terminal (details cut to ``width`` characters)."""
    cells = [
        [*row[:-1], row[-1] if len(row[-1]) <= width else row[-1][: width - 3] + "..."] for row in table_rows(results)
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *cells, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of one variant."""
    dev = result["device"]
    lines = [
        f"# Pre-flight: `{result['variant']}` for `{dev['name']}`",
        "",
        f"{dev.get('description', '')}; backend {dev['backend']}, TensorRT {dev.get('trt_version') or '-'}, "
        f"opset {result['export_opset'] or 'exporter default'}. Random weights: the figures say whether the model "
        "exports, quantizes and passes the op check, and what that costs; not how accurate it is.",
        "",
        f"**Status: {result['status']}** in {result['total_seconds']:.0f} s. Machine: {result['machine_line']}.",
        "",
        "| step | status | time (s) | peak RSS (GiB) | RSS at start (GiB) | detail |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in table_rows([result]):
        detail = row[-1].replace("|", "\\|")
        lines.append(f"| {row[1]} | {row[2]} | {row[3]} | {row[4]} | {row[5]} | {detail} |")
    lines += [
        "",
        f"Memory: RSS of the variant's process ({result['isolation']}); {result['memory_method']}. A step's peak "
        "includes what earlier steps left resident (the PyTorch model stays loaded until the parity step).",
        "",
        f"Reproduce: `{result['command'] or 'python -m pipeline preflight'}`",
        "",
    ]
    return "\n".join(lines)


def failures(results: list[dict[str, Any]]) -> list[str]:
    """One line per failed or killed step: ``variant: step: reason``."""
    return [
        f"{res['variant']}: {STEP_TITLES.get(row['step'], row['step'])}: {row.get('detail', '')}"
        for res in results
        for row in res["steps"]
        if row["status"] in ("failed", "killed")
    ]


# 6. command line -----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``preflight`` sub-command's options (see :func:`cmd_preflight`)."""
    parser.add_argument("--device", required=True, help="device profile from configs/devices/ (see `s2rm devices`)")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help=f"model variant (repeatable or comma-separated; default: {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an export.*, quant.* or device.* setting, e.g. --set export.opset=17 (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results go to OUT/<device>/<variant>/")
    defaults = PreflightOptions()
    parser.add_argument("--calib-samples", type=int, default=defaults.calib_samples, help="random calibration inputs")
    parser.add_argument("--parity-samples", type=int, default=defaults.parity_samples, help="random parity inputs")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per variant (0: no limit)")
    parser.add_argument("--max-rss-gb", type=float, default=None, help="stop a variant whose RSS exceeds this")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the FP32 and Q/DQ ONNX beside the results")
    parser.add_argument(
        "--in-process", action="store_true", help="no process per variant (peaks then include earlier variants)"
    )


def _variants(values: list[str] | None) -> list[str]:
    if not values:
        return list(DEFAULT_VARIANTS)
    names = [v.strip() for text in values for v in text.split(",") if v.strip()]
    return list(dict.fromkeys(names))


def _command(args: argparse.Namespace, variants: list[str]) -> str:
    """The command line that reproduces this run (recorded with the results)."""
    parts = ["python -m pipeline preflight", "--device", args.device, "--variant", ",".join(variants)]
    for assignment in args.overrides:
        parts += ["--set", assignment]
    defaults = PreflightOptions()
    if args.calib_samples != defaults.calib_samples:
        parts += ["--calib-samples", str(args.calib_samples)]
    if args.parity_samples != defaults.parity_samples:
        parts += ["--parity-samples", str(args.parity_samples)]
    if args.in_process:
        parts.append("--in-process")
    return " ".join(parts[:1] + [_quote(p) for p in parts[1:]])


def _quote(word: str) -> str:
    """Shell quoting that stays readable for ``key='8.4'`` (double quotes where single quotes are inside)."""
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def cmd_preflight(args: argparse.Namespace) -> int:
    """Run the pre-flight, print the table, return 0 when every step of every variant passed, else 1."""
    from pipeline.config import load_config

    for assignment in args.overrides:
        section = assignment.partition("=")[0].split(".")[0]
        if section not in SETTABLE_SECTIONS:
            raise ConfigError(
                f"--set {assignment!r}: preflight takes {', '.join(SETTABLE_SECTIONS)} settings; the model is the "
                "registered variant (--variant)"
            )
    for name in ("calib_samples", "parity_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = load_config(None, args.overrides, device=args.device)
    options = PreflightOptions(
        calib_samples=args.calib_samples,
        parity_samples=args.parity_samples,
        keep_onnx=args.keep_onnx,
        timeout_s=args.timeout or None,
        max_rss_gb=args.max_rss_gb,
        isolate=not args.in_process,
    )
    variants = _variants(args.variant)
    results = preflight(cfg, variants, args.out, options, command=_command(args, variants))
    print(format_table(results))
    for res in results:
        print(f"{res['variant']}: {res['status']} -> {Path(args.out) / cfg.device.name / res['variant'] / RESULT_MD}")
    bad = failures(results)
    if bad:
        print(f"preflight FAILED for {cfg.device.name}:", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(worker_main(sys.argv[2]))
        sys.exit(130)
    print("usage: python -m pipeline preflight --device NAME (this module's own entry is the worker)", file=sys.stderr)
    sys.exit(2)
