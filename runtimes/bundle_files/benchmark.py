#!/usr/bin/env python3
"""Latency of the engine on this device: p50 / p90 / p99 over timed runs after a warm-up.

Usage: ``python3 benchmark.py [--backend tensorrt] [--precision int8] [--runs 200]``

On a Jetson, lock the clocks first or the figures wander with DVFS:
``sudo nvpmodel -m 0 && sudo jetson_clocks`` (mode 0 is the maximum-power mode of most modules).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import BACKENDS, Bundle, PipelineError, fail


def clocks_locked() -> bool | None:
    """True/False on a Jetson (from jetson_clocks' effect on the GPU governor), None elsewhere."""
    gov = Path("/sys/devices/gpu.0/devfreq/17000000.ga10b/governor")
    if not Path("/etc/nv_tegra_release").exists():
        return None
    try:
        return gov.read_text().strip() == "performance"
    except OSError:
        return False


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
    if clocks_locked() is False:
        print("warning: clocks are not locked; run `sudo nvpmodel -m 0 && sudo jetson_clocks` first", file=sys.stderr)
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
        "clocks_locked": clocks_locked(),
    }
    print(f"{args.backend} {precision}: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms ({1e3 / p50:.1f} FPS)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
