"""One variant in its own process: the parent starts ``python -m pipeline.preflight worker REQUEST``, logs each step
as the worker reports it, polls the worker's RSS and stops it at ``--max-rss-gb`` or ``--timeout``; a worker that was
stopped or died is a ``killed`` row naming its step and the memory it had reached. :func:`worker_main` is the
worker's side."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from foundation.io import atomic_write_json
from pipeline.preflight.measure import MIB, read_progress, run_variant, status_kib
from pipeline.preflight.plan import STEP_TITLES, PreflightOptions, VariantRun
from pipeline.preflight.render import gib

log = logging.getLogger(__name__)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def run_isolated(run: VariantRun, progress: Path, log_path: Path) -> tuple[str | None, float | None]:
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
    root = str(Path(__file__).resolve().parents[2])  # the project root, where `pipeline` is
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
                rss = status_kib("VmRSS", proc.pid)
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
            peak = "" if row.get("peak_rss_mb") is None else f", peak RSS {gib(row['peak_rss_mb'])} GiB"
            log.info("preflight %s: %s %s%s%s", variant, STEP_TITLES[row["step"]], row["status"], took, peak)
    if running and f"start {running['step']}" not in seen:
        seen.add(f"start {running['step']}")
        log.info("preflight %s: %s ...", variant, STEP_TITLES[running["step"]])


def stopped_row(running: dict[str, Any] | None, why: str, seen_rss: float | None) -> dict[str, Any]:
    """The ``killed`` row of a worker stopped (or dead) while ``running`` ran: why, and the largest RSS seen."""
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
