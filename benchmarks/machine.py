"""Machine information recorded with every latency figure: CPU model, cores and the instruction-set flags that decide
INT8 (and BF16) kernel support, memory, OS, Python, library versions, thread settings, and on a Jetson the L4T release
and power mode.

Usage: ``info = machine_info(threads=2, isolation=ISOLATION); describe_machine(info)`` (one line for a report).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

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


def read_system_file(path: str) -> str:
    """A system file's text (``/proc``, ``/sys``, ``/etc``); empty where it cannot be read."""
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
    text = read_system_file("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
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
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": usable_cores(),
        "flags": known,
        "int8_hardware": [f for f in INT8_FLAGS if f in flags],
    }


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's CPU set), the benchmark's thread count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def jetson_info() -> dict[str, Any] | None:
    """L4T release and power mode on a Jetson (None elsewhere), so a report names the clocks it measured under."""
    release = read_system_file("/etc/nv_tegra_release").strip()
    if not release:
        return None
    model = read_system_file("/proc/device-tree/model").strip("\x00 \n")
    power = ""
    try:
        power = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        power = "unknown (nvpmodel not found)"
    return {"l4t": release.splitlines()[0], "model": model, "power_mode": power}


def machine_info(threads: int | None = None, isolation: str | None = None) -> dict[str, Any]:
    """Everything a reader needs to know which machine a latency figure belongs to.

    Args:
        threads: The thread count the benchmark asked each runtime for (None: the runtime's default).
        isolation: How the timed artifacts were kept apart (:data:`benchmarks.latency.ISOLATION`; None: not recorded).

    Returns:
        JSON-ready dict: cpu (model, cores, flags), memory, OS, Python, library versions, thread settings, Jetson.
    """
    mem_kb = 0
    for line in read_system_file("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    governor = read_system_file("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or None
    return {
        "cpu": cpu_info(),
        "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
        "threads": {
            "requested": threads,
            "isolation": isolation,
            **{k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        },
        "cpu_governor": governor,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "jetson": jetson_info(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line naming the machine, e.g. ``Intel Xeon (2 cores; avx2 avx512_vnni amx_int8), 24 GB, threads: 2``.

    The thread entry also names the isolation when recorded: ``threads: 2 per runtime, process per artifact``.
    """
    cpu = info.get("cpu", {})
    flags = " ".join(f for f in cpu.get("flags", []) if f in ("avx2", "avx512f", *INT8_FLAGS, "amx_bf16")) or "none"
    thread_info = info.get("threads", {})
    threads = thread_info.get("requested") or "default"
    if thread_info.get("isolation"):
        threads = f"{threads} per runtime, {thread_info['isolation']}"
    jetson = info.get("jetson")
    where = f"{jetson['model']} ({jetson['l4t']}), " if jetson else ""
    load = info.get("load_average")
    busy = f", load average {load[0]:.1f} when measured" if load else ""
    return (
        f"{where}{cpu.get('model', '?')} ({cpu.get('usable_cores', '?')} usable cores; {flags}), "
        f"{info.get('memory_gb', '?')} GB RAM, threads: {threads}{busy}"
    )
