"""Create (once) the project's virtual environment, keyed by the hash of its dependency pins.

Usage: python3 tools/ensure_venv.py [--venv PATH] [--print-path]

The venv lives in a cache folder (``$S2RM_CACHE`` or ``~/.cache/s2rm-edge``) so fresh clones reuse it; a venv is only
taken as complete once its ``.complete`` marker is written, so an interrupted install is redone, never half-used.
Only the dependencies are installed: the project's own code runs from the checkout (``python -m pipeline``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# torch and torchvision are pinned together: looser pins pull a CUDA build or a torchvision that fails to import.
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith(("torch>", "torch<", "torchvision"))]
    return TORCH_PINS + deps + project["optional-dependencies"]["dev"]


def no_deps_requirements() -> list[str]:
    """Packages installed without their dependencies (weight files whose metadata pins an ancient torch)."""
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["s2rm-edge"]["no-deps"])


def default_path(reqs: list[str]) -> Path:
    digest = hashlib.sha256(json.dumps([sys.version_info[:2], reqs]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("S2RM_CACHE", Path.home() / ".cache" / "s2rm-edge"))
    return cache / f"venv-{digest}"


def ensure(venv: Path, reqs: list[str], no_deps: list[str]) -> None:
    marker = venv / ".complete"
    if marker.exists():
        return
    if venv.exists():
        print(f"[venv] {venv} is incomplete (an earlier install was interrupted); rebuilding", file=sys.stderr)
        shutil.rmtree(venv)
    print(f"[venv] creating {venv} (one pip command, about 2 minutes on first use)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *reqs], check=True)
    if no_deps:
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", *no_deps], check=True)
    marker.write_text(json.dumps(reqs + no_deps, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default="", help="use this venv path instead of the cache folder")
    parser.add_argument("--print-path", action="store_true", help="print the venv path and do nothing else")
    args = parser.parse_args()
    reqs, no_deps = requirements(), no_deps_requirements()
    venv = Path(args.venv).resolve() if args.venv else default_path(reqs + no_deps)
    if args.print_path:
        print(venv)
        return
    ensure(venv, reqs, no_deps)


if __name__ == "__main__":
    main()
