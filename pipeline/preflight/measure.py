"""The step runner: one variant's steps in this process, each timed (``perf_counter``) and its peak RSS measured
(the kernel's ``VmHWM`` reset at the step's start, see :mod:`pipeline.preflight`), with ``begin`` / ``start`` /
``done`` events appended to a progress file that the parent reads even when this process is killed."""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.preflight.plan import NEEDS, STEP_TITLES, STEPS, CheckFailed, VariantRun
from pipeline.preflight.steps import STEP_FUNCS

log = logging.getLogger(__name__)

MIB = 2**20


# memory --------------------------------------------------------------------------------------------------------------
def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A field of ``/proc/<pid>/status`` in KiB (``VmRSS``, ``VmHWM``); None where it cannot be read."""
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
        self.exact = _reset_peak() and status_kib("VmHWM") is not None
        self.method = "VmHWM reset per step (exact)" if self.exact else "ru_maxrss: process peak so far (upper bound)"

    def start(self) -> float | None:
        """Begin a step: reset the high-water mark; returns the RSS now (MiB; None where unknown)."""
        gc.collect()
        if self.exact:
            _reset_peak()
        now = status_kib("VmRSS")
        return None if now is None else now / 1024.0

    def peak(self) -> float:
        """Peak RSS (MiB) since :meth:`start`."""
        hwm = status_kib("VmHWM") if self.exact else None
        return hwm / 1024.0 if hwm is not None else _maxrss_mib()


# steps and their progress events --------------------------------------------------------------------------------------
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
