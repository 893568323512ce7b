"""The driver: every variant of a pre-flight in turn (in a worker process or in this one), its rows completed when
the process stopped early, and its results written (``preflight.json``, ``preflight.md``, the worker's log, the ONNX
files with ``--keep-onnx``)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from foundation.errors import choice_error
from foundation.io import atomic_write_json, atomic_write_text
from pipeline.preflight.measure import read_progress, run_variant
from pipeline.preflight.plan import (
    DEFAULT_OUT,
    DEFAULT_VARIANTS,
    FP32_ONNX,
    QDQ_ONNX,
    RESULT_JSON,
    RESULT_MD,
    STEPS,
    WORKER_LOG,
    PreflightOptions,
    VariantRun,
    op_list_version,
)
from pipeline.preflight.render import markdown
from pipeline.preflight.steps import qdq_settings
from pipeline.preflight.worker import run_isolated, stopped_row


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
    from benchmarks.machine import describe_machine, machine_info
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
                why, seen_rss = run_isolated(run, progress, log_path)
            else:
                why, seen_rss = None, None
                run_variant(run, progress)
                run.state.clear()
            begin, rows, running = read_progress(progress)
            if why is not None or running is not None:
                rows.append(stopped_row(running, why or "stopped", seen_rss))
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
