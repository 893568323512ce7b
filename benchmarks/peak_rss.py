"""Peak RSS of one artifact, measured in a fresh subprocess that loads it and runs it a few times.

Usage: ``peak_rss_subprocess("onnxruntime", "full.onnx", "inputs.npz", threads=2)`` starts
``python -m benchmarks.peak_rss rss ...`` and returns what it prints. A fresh process per artifact, because in one
process that holds every runtime the peak belongs to all of them at once. The subprocess imports only the artifact's
runtime, so an ONNX Runtime row does not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import load_timed
from benchmarks.machine import read_system_file


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` of ``/proc/self/status`` where it exists: Linux keeps ``ru_maxrss`` across ``execve``, so a subprocess
    started from a big parent would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    for line in read_system_file("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def peak_rss_subprocess(
    runtime: str,
    artifact: str | Path,
    inputs: str | Path,
    threads: int | None = None,
    runs: int = 3,
    timeout: float = 600,
) -> dict[str, Any]:
    """Load one artifact in a fresh Python process, run it ``runs`` times, and report its peak RSS.

    Args:
        runtime: Registry name of the runtime (``get_runtime(name)``).
        artifact: Path the runtime loads.
        inputs: ``.npz`` file with the named inputs of one batch-1 sample.
        threads: Thread count for the runtime.
        runs: Inferences after loading.
        timeout: Seconds before the subprocess is killed.

    Returns:
        ``{"peak_rss_mb", "before_load_mb", "torch_imported"}``, or ``{"error": message}`` when the subprocess
        failed.
    """
    cmd = [sys.executable, "-m", "benchmarks.peak_rss", "rss", "--runtime", runtime, "--artifact", str(artifact)]
    cmd += ["--inputs", str(inputs), "--runs", str(runs)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), *sys.path])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"peak-RSS subprocess timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"peak-RSS subprocess exited {done.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def _rss_main(args: argparse.Namespace) -> int:
    import runtimes.base  # noqa: F401  the runtime registry, counted before loading: it pulls in no backend yet

    before = rss_mb()
    rt = load_timed(args.runtime, args.artifact, threads=args.threads)
    with np.load(args.inputs) as data:
        feed = {k: data[k] for k in data.files}
    for _ in range(args.runs):
        rt.infer(feed)
    print(json.dumps({"peak_rss_mb": rss_mb(), "before_load_mb": before, "torch_imported": "torch" in sys.modules}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the peak-RSS helper subprocess (``python -m benchmarks.peak_rss rss ...``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peak_rss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rss = sub.add_parser("rss", help="load one artifact, run it, print its peak RSS as JSON")
    rss.add_argument("--runtime", required=True)
    rss.add_argument("--artifact", required=True)
    rss.add_argument("--inputs", required=True, help=".npz of named inputs")
    rss.add_argument("--threads", type=int, default=None)
    rss.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    return _rss_main(args)


if __name__ == "__main__":
    sys.exit(main())
