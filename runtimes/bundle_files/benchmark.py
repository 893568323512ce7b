#!/usr/bin/env python3
"""Latency of the engine on this device: p50 / p90 / p99 over timed runs after a warm-up.

Usage: ``python3 benchmark.py [--backend tensorrt] [--precision int8] [--runs 200]``

On a Jetson, lock the clocks first or the figures wander with DVFS:
``sudo nvpmodel -m 0 && sudo jetson_clocks`` (mode 0 is the maximum-power mode of most modules). The script reads the
GPU's devfreq node (``/sys/class/devfreq/*`` or ``/sys/devices/*/devfreq/*`` named after the GPU: ga10b on Orin,
gv11b on Xavier, gp10b on TX2, or ``*gpu*``) and reports the clocks locked when its min_freq equals its max_freq
(what jetson_clocks does) or its governor is ``performance``; without such a node the state is unknown.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import BACKENDS, Bundle, PipelineError, fail

log = logging.getLogger("bundle.benchmark")

DEVFREQ_GLOBS = ("sys/class/devfreq/*", "sys/devices/*/devfreq/*")
GPU_DEVFREQ_NAMES = ("ga10b", "gv11b", "gp10b", "gpu")


def gpu_devfreq_node(root: Path = Path("/")) -> Path | None:
    """The GPU's devfreq folder under ``root`` (a Jetson's integrated GPU), None when there is none."""
    for pattern in DEVFREQ_GLOBS:
        for node in sorted(root.glob(pattern)):
            if any(key in node.name.lower() for key in GPU_DEVFREQ_NAMES) and node.is_dir():
                return node
    return None


def _read(node: Path, name: str) -> str | None:
    try:
        return (node / name).read_text().strip()
    except OSError as exc:
        log.debug("cannot read %s: %s", node / name, exc)
        return None


def clocks_locked(root: Path = Path("/")) -> bool | None:
    """True when the GPU clock is pinned (min_freq == max_freq, or the ``performance`` governor), False when it
    scales, None when unknown (no GPU devfreq node under ``root``, or nothing readable in it)."""
    node = gpu_devfreq_node(root)
    if node is None:
        return None
    lo, hi, governor = _read(node, "min_freq"), _read(node, "max_freq"), _read(node, "governor")
    if governor == "performance" or (lo is not None and lo == hi):
        return True
    if governor is None and (lo is None or hi is None):
        return None
    return False


def clock_note(locked: bool | None, root: Path = Path("/")) -> str | None:
    """What to tell the user about the clocks (None when they are locked)."""
    if locked is True:
        return None
    if locked is False:
        return "warning: clocks are not locked; run `sudo nvpmodel -m 0 && sudo jetson_clocks` first"
    node = gpu_devfreq_node(root)
    where = (
        f"{node} is not readable" if node else "no GPU devfreq node under /sys/class/devfreq or /sys/devices/*/devfreq"
    )
    return f"note: GPU clock state unknown ({where}); on a Jetson, lock the clocks for stable figures"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorrt", choices=BACKENDS)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        return fail(ValueError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}"))
    locked = clocks_locked()
    note = clock_note(locked)
    if note:
        print(note, file=sys.stderr)
    try:
        bundle = Bundle.here()
        precision = args.precision or bundle.precisions[0]
        rt = bundle.runtime(args.backend, precision, args.threads)
        golden = np.load(bundle.root / bundle.meta["golden"]["inputs"])
        feeds = {name: golden[name][:1] for name in golden.files}
        for _ in range(args.warmup):
            rt.infer(feeds)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            rt.infer(feeds)
            times.append((time.perf_counter() - started) * 1e3)
    except PipelineError as exc:
        return fail(exc)
    p50, p90, p99 = (float(np.percentile(times, q)) for q in (50, 90, 99))
    result = {
        "backend": args.backend,
        "precision": precision,
        "runs": args.runs,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "fps": 1e3 / p50,
        "machine": platform.node(),
        "clocks_locked": locked,
        "gpu_devfreq": str(node) if (node := gpu_devfreq_node()) else None,
    }
    clocks = {True: "clocks locked", False: "clocks NOT locked", None: "clock state unknown"}[locked]
    print(
        f"{args.backend} {precision}: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms ({1e3 / p50:.1f} FPS; "
        f"{clocks})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
