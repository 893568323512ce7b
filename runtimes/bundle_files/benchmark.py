#!/usr/bin/env python3
"""Latency of the engine on this device: p50 / p90 / p99 over timed runs after a warm-up.

Usage: ``python3 benchmark.py [--backend tensorrt] [--precision int8] [--runs 200]``; ``python3 benchmark.py
--power-modes`` prints this module's power modes and the command that selects the fastest one.

On a Jetson, select the maximum power mode and lock the clocks first, or the figures wander with DVFS:
``sudo nvpmodel -m <id> && sudo jetson_clocks``. Mode 0 is not the maximum on every module: on an Orin Nano it is
15 W (MAXN_SUPER, JetPack 6.2+, has another id), on a Xavier NX it is 15 W with 2 cores (20 W with 6 cores is mode
8). The script reads the modes from ``/etc/nvpmodel.conf`` (``< POWER_MODEL ID=n NAME=... >`` lines) and the current
one from ``nvpmodel -q``, takes MAXN_SUPER, else MAXN, else the mode with the most watts (then cores) as the maximum,
and warns when another mode is active. It reads the GPU's devfreq node (``/sys/class/devfreq/*`` or
``/sys/devices/*/devfreq/*`` named after the GPU: ga10b on Orin, gv11b on Xavier, gp10b on TX2, or ``*gpu*``) and
reports the clocks locked when its min_freq equals its max_freq (what jetson_clocks does) or its governor is
``performance``; without such a node the state is unknown.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import BACKENDS, Bundle, PipelineError, fail

log = logging.getLogger("bundle.benchmark")

DEVFREQ_GLOBS = ("sys/class/devfreq/*", "sys/devices/*/devfreq/*")
GPU_DEVFREQ_NAMES = ("ga10b", "gv11b", "gp10b", "gpu")
NVPMODEL_CONF = "etc/nvpmodel.conf"  # under the root: the power modes of this module
NVPMODEL_STATUS = "var/lib/nvpmodel/status"  # under the root: `pmode:0002`, the active mode's id
# `< POWER_MODEL ID=2 NAME=MAXN_SUPER >` (nvpmodel.conf), `POWER_MODEL: ID=2 NAME=MAXN_SUPER` (nvpmodel -p --verbose)
_POWER_MODEL = re.compile(r"^[<\s]*POWER_MODEL\b:?(?P<attrs>[^>]*)", re.MULTILINE)


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
    except (OSError, UnicodeDecodeError) as exc:
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


def clock_note(locked: bool | None, root: Path = Path("/"), state: dict[str, object] | None = None) -> str | None:
    """What to tell the user about the clocks (None when they are locked)."""
    if locked is True:
        return None
    if locked is False:
        command = power_mode_command(state or {}).split("  #")[0]
        return f"warning: clocks are not locked; run `{command}` first (`python3 benchmark.py --power-modes`)"
    node = gpu_devfreq_node(root)
    where = (
        f"{node} is not readable" if node else "no GPU devfreq node under /sys/class/devfreq or /sys/devices/*/devfreq"
    )
    return f"note: GPU clock state unknown ({where}); on a Jetson, lock the clocks for stable figures"


def power_modes(text: str) -> dict[int, str]:
    """``{id: name}`` of the POWER_MODEL entries in an nvpmodel.conf (or ``nvpmodel -p --verbose`` output)."""
    modes = {}
    for match in _POWER_MODEL.finditer(text):
        attrs = dict(re.findall(r"\b(ID|NAME)=([^\s>]+)", match.group("attrs")))
        if attrs.get("ID", "").isdigit() and "NAME" in attrs:
            modes[int(attrs["ID"])] = attrs["NAME"]
    return modes


def max_power_mode(modes: dict[int, str]) -> tuple[int, str] | None:
    """The fastest mode: MAXN_SUPER, else MAXN, else the most watts then cores in the name (``MODE_20W_6CORE``);
    None when no name says (then the user has to pick it from the list)."""

    def figure(name: str, unit: str) -> int:
        found = re.search(rf"(\d+)\s*{unit}", name.upper())
        return int(found.group(1)) if found else -1

    for wanted in ("MAXN_SUPER", "MAXN"):
        for mode_id, name in sorted(modes.items()):
            if name.upper().replace(" ", "_").startswith(wanted):
                return mode_id, name
    rated = [(figure(name, "W"), figure(name, "CORE"), -mode_id, name) for mode_id, name in modes.items()]
    rated = [r for r in rated if r[0] >= 0]
    if not rated:
        return None
    *_, neg_id, name = max(rated)
    return -neg_id, name


def current_power_mode(query: str) -> tuple[int, str] | None:
    """The active mode from ``nvpmodel -q`` output: ``NV Power Mode: <name>`` then a line with the id."""
    found = re.search(r"NV Power Mode:\s*(\S+)\s*\n(?:\s*NVPM[^\n]*\n)*\s*(\d+)\s*$", query, re.MULTILINE)
    return (int(found.group(2)), found.group(1)) if found else None


def status_power_mode(status: str, modes: dict[int, str]) -> tuple[int, str] | None:
    """The active mode from nvpmodel's status file (``pmode:0002 fmode:quiet``), named from ``modes``."""
    found = re.search(r"pmode:0*(\d+)", status)
    return (int(found.group(1)), modes.get(int(found.group(1)), found.group(1))) if found else None


def _read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None


def _nvpmodel_query() -> str | None:
    if not shutil.which("nvpmodel"):
        return None
    try:
        return subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvpmodel -q failed: %s", exc)
        return None


def power_mode_state(root: Path = Path("/"), query: str | None = None) -> dict[str, object]:
    """``{"modes", "max", "current", "at_max"}`` from ``<root>/etc/nvpmodel.conf`` and the active mode from
    ``nvpmodel -q`` (run when ``query`` is None), else from nvpmodel's status file; None where unknown (not a
    Jetson)."""
    modes = power_modes(_read_file(root / NVPMODEL_CONF) or "")
    best = max_power_mode(modes)
    current = current_power_mode(query if query is not None else (_nvpmodel_query() or ""))
    if current is None:
        current = status_power_mode(_read_file(root / NVPMODEL_STATUS) or "", modes)
    at_max = None if best is None or current is None else current[0] == best[0]
    return {"modes": modes, "max": best, "current": current, "at_max": at_max}


def power_mode_command(state: dict[str, object]) -> str:
    """The command that selects the maximum mode (with a placeholder when it is not known)."""
    best = state.get("max")
    if best:
        return f"sudo nvpmodel -m {best[0]} && sudo jetson_clocks  # {best[1]}"
    return (
        "sudo nvpmodel -m <id> && sudo jetson_clocks  # <id>: the MAXN mode in /etc/nvpmodel.conf "
        "(grep POWER_MODEL /etc/nvpmodel.conf); mode 0 is not the maximum on every module"
    )


def power_mode_note(state: dict[str, object]) -> str | None:
    """A warning when the active mode is not the maximum (None when it is, or when nothing is known)."""
    if state.get("at_max") is False:
        current = state["current"]
        return (
            f"warning: power mode {current[1]} (id {current[0]}) is not this module's maximum; "
            f"run `{power_mode_command(state).split('  #')[0]}` first"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorrt", choices=BACKENDS)
    parser.add_argument("--precision", default=None, help="int8 / fp16 / fp32 (default: the profile's)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--power-modes", action="store_true", help="print the power modes and the fastest one; exit")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        return fail(ValueError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}"))
    power = power_mode_state()
    if args.power_modes:
        return print_power_modes(power)
    locked = clocks_locked()
    for note in (power_mode_note(power), clock_note(locked, state=power)):
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
        "power_mode": {key: power[key] for key in ("current", "max", "at_max")},
        "gpu_devfreq": str(node) if (node := gpu_devfreq_node()) else None,
    }
    clocks = {True: "clocks locked", False: "clocks NOT locked", None: "clock state unknown"}[locked]
    print(
        f"{args.backend} {precision}: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms ({1e3 / p50:.1f} FPS; "
        f"{clocks})"
    )
    print(json.dumps(result))
    return 0


def print_power_modes(state: dict[str, object]) -> int:
    """``--power-modes``: the modes, the active one and the command for the fastest; 1 when there are none."""
    modes: dict[int, str] = state["modes"]  # type: ignore[assignment]
    if not modes:
        print(f"no POWER_MODEL entries in /{NVPMODEL_CONF}: not a Jetson (or see `nvpmodel -p --verbose`)")
        return 1
    lines: list[str] = [f"  {mode_id}: {name}" for mode_id, name in sorted(modes.items())]
    print("power modes (/" + NVPMODEL_CONF + "):\n" + "\n".join(lines))
    current = state["current"]
    print(f"current: {current[1]} (id {current[0]})" if current else "current: unknown (nvpmodel -q gave nothing)")
    print("fastest: " + power_mode_command(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
