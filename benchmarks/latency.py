"""Latency benchmarks: interleaved timing with ``perf_counter``, percentiles, split-graph cost, peak RSS, machine info.

Usage: ``times = time_interleaved({"ort": lambda: rt.infer(x)}, warmup=5, runs=50); summarize(times["ort"])``.

Why interleaved: timing artifact A for 50 runs and then artifact B for 50 runs lets thermal state, frequency scaling
and other processes on a shared host bias one of them. Here every round runs each artifact once, in an order rotated
per round, so slow phases of the machine hit every artifact alike. Warm-up runs (first-call allocation, lazy
compilation, caches) are discarded. Latency is batch 1; throughput is ``1000 / mean_ms`` frames per second.

Peak RSS is measured per artifact in a fresh subprocess (``python -m benchmarks.latency rss ...``): in one process
that holds every runtime the peak belongs to all of them at once. The subprocess imports only the artifact's runtime,
so an ONNX Runtime row does not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# CPU features that decide whether INT8 (and BF16) kernels have hardware support.
X86_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "fphp", "sve", "sve2", "i8mm", "bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt", "nncf", "onnx", "tokenizers")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OV_CPU_THREADS_NUM")


# ---------------------------------------------------------------------------------------------------------------------
# Machine information
# ---------------------------------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """CPU model, core counts and the instruction-set flags that matter for INT8, from ``/proc/cpuinfo``.

    Args:
        cpuinfo_text: Content of ``/proc/cpuinfo`` (read from the system when None; tests pass their own).

    Returns:
        ``{"model", "logical_cores", "physical_cores", "usable_cores", "flags", "int8_hardware"}``; ``flags`` lists
        only the flags of :data:`X86_FLAGS` / :data:`ARM_FLAGS` the CPU has.
    """
    text = _read("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
    model, flags, cores = "", set(), set()
    phys = core = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    if not model:
        model = platform.processor() or platform.machine()
    known = [f for f in (*X86_FLAGS, *ARM_FLAGS) if f in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": usable,
        "flags": known,
        "int8_hardware": [f for f in INT8_FLAGS if f in flags],
    }


def jetson_info() -> dict[str, Any] | None:
    """L4T release and power mode on a Jetson (None elsewhere), so a report names the clocks it measured under."""
    release = _read("/etc/nv_tegra_release").strip()
    if not release:
        return None
    model = _read("/proc/device-tree/model").strip("\x00 \n")
    power = ""
    try:
        power = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        power = "unknown (nvpmodel not found)"
    return {"l4t": release.splitlines()[0], "model": model, "power_mode": power}


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Everything a reader needs to know which machine a latency figure belongs to.

    Args:
        threads: The thread count the benchmark asked each runtime for (None: the runtime's default).

    Returns:
        JSON-ready dict: cpu (model, cores, flags), memory, OS, Python, library versions, thread settings, Jetson.
    """
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or None
    return {
        "cpu": cpu_info(),
        "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
        "threads": {"requested": threads, **{k: os.environ[k] for k in THREAD_ENV if k in os.environ}},
        "cpu_governor": governor,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "jetson": jetson_info(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line naming the machine, e.g. ``Intel Xeon (2 cores; avx2 avx512_vnni amx_int8), 24 GB, 2 threads``."""
    cpu = info.get("cpu", {})
    flags = " ".join(f for f in cpu.get("flags", []) if f in ("avx2", "avx512f", *INT8_FLAGS, "amx_bf16")) or "none"
    threads = info.get("threads", {}).get("requested") or "default"
    jetson = info.get("jetson")
    where = f"{jetson['model']} ({jetson['l4t']}), " if jetson else ""
    load = info.get("load_average")
    busy = f", load average {load[0]:.1f} when measured" if load else ""
    return (
        f"{where}{cpu.get('model', '?')} ({cpu.get('usable_cores', '?')} usable cores; {flags}), "
        f"{info.get('memory_gb', '?')} GB RAM, threads: {threads}{busy}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def summarize(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / mean / std / min / max of latencies in ms, with throughput (frames/s at batch 1).

    Percentiles use numpy's default linear interpolation; with 50 runs p99 is close to the maximum, so read it as
    "the worst you saw", not as a tail estimate.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    mean = float(x.mean())
    return {
        "n": int(x.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min_ms": float(x.min()),
        "max_ms": float(x.max()),
        "throughput_fps": 1000.0 / mean if mean > 0 else None,
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int = 5, runs: int = 50
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Warm up each callable, then time ``runs`` rounds in which every callable runs once, order rotated per round.

    Args:
        fns: Name → zero-argument callable doing one batch-1 inference.
        warmup: Untimed calls per callable before timing.
        runs: Timed rounds; each callable gets ``runs`` samples.

    Returns:
        ``(times_ms, errors)``: per-name lists of latencies in ms, and per-name error messages for callables that
        raised (they are dropped from later rounds; their row gets an ``error`` status instead of a crash).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    errors: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # a broken backend becomes a row with a status, never a crash
            errors[name] = f"{type(exc).__name__}: {exc}"
    names = [n for n in fns if n not in errors]
    for r in range(runs):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            try:
                start = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - start) * 1000.0)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
    return times, errors


def expression_cost(k_p50_ms: dict[int, float], full_p50_ms: float) -> dict[str, Any]:
    """Cost of each extra expression on an encoded frame: least-squares slope of p50 latency over k.

    Args:
        k_p50_ms: k (expressions answered on one encoded frame) → p50 ms of "encode image once + k × (encode text +
            decode)".
        full_p50_ms: p50 ms of one full-graph forward (image + one expression), the baseline.

    Returns:
        ``{"per_extra_ms", "fixed_ms", "ratio_to_full"}``: slope and intercept of the fit, and slope / full forward.
    """
    ks = sorted(k_p50_ms)
    if len(ks) < 2:
        return {"per_extra_ms": None, "fixed_ms": None, "ratio_to_full": None}
    slope, intercept = np.polyfit(np.array(ks, dtype=np.float64), np.array([k_p50_ms[k] for k in ks]), 1)
    return {
        "per_extra_ms": float(slope),
        "fixed_ms": float(intercept),
        "ratio_to_full": float(slope / full_p50_ms) if full_p50_ms > 0 else None,
    }


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` of ``/proc/self/status`` where it exists: Linux keeps ``ru_maxrss`` across ``execve``, so a subprocess
    started from a big parent would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    for line in _read("/proc/self/status").splitlines():
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
    cmd = [sys.executable, "-m", "benchmarks.latency", "rss", "--runtime", runtime, "--artifact", str(artifact)]
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
    from runtimes.base import get_runtime  # the runtime registry: importing it pulls in no backend yet

    rt_cls = get_runtime(args.runtime)
    before = rss_mb()
    rt = rt_cls() if isinstance(rt_cls, type) else rt_cls
    rt.load(args.artifact, threads=args.threads)
    with np.load(args.inputs) as data:
        feed = {k: data[k] for k in data.files}
    for _ in range(args.runs):
        rt.infer(feed)
    print(json.dumps({"peak_rss_mb": rss_mb(), "before_load_mb": before, "torch_imported": "torch" in sys.modules}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the peak-RSS helper subprocess (``python -m benchmarks.latency rss ...``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
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
