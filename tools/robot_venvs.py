"""Create (once) the small venvs that run the deploy bundle under a robot's Python: 3.8 (JetPack 5), 3.10 (JetPack 6).

Usage: python3 tools/robot_venvs.py [--python 3.8 ...] [--print-path] [--strict]

Each venv holds the JetPack's pins from :mod:`pipeline.jetpack` (numpy, Pillow, tokenizers, onnxruntime; no
cuda-python, the tests have no GPU) for an interpreter found through pyenv (``$PYENV_ROOT``, ``pyenv root``,
``~/.pyenv``), ``$S2RM_PYTHON38``-style variables or ``PATH``. It lives in the cache folder of the main venv
(``$S2RM_CACHE`` or ``~/.cache/s2rm-edge``) under a name keyed by the interpreter and the pins, and is built in a
temporary folder that is renamed into place once pip has finished, so a half-built venv is never used; only
``bin/python -m pip`` is used inside it, never its entry-point scripts (they name the temporary folder).

A missing interpreter or an unreachable package index is a skip, printed with the reason (exit status 0, or 3 with
``--strict``); any other pip failure (a pin with no wheel) is an error (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.jetpack import JETPACKS, JetPackPython  # noqa: E402  (stdlib only: runs under a bare python3)

# pip's words for "no network" (urllib3 / requests / DNS), as opposed to a pin that does not exist
NETWORK_ERRORS = (
    "Could not fetch URL",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Connection refused",
    "SSLError",
    "HTTP error",
    "RemoteDisconnected",
    "IncompleteRead",
)


class Unavailable(Exception):
    """The venv cannot be built here for a reason that is not the project's fault (a skip, with the reason)."""


def robot_pythons() -> dict[str, JetPackPython]:
    """``{python minor: JetPack entry}`` of the tested JetPack lines (the first entry of each Python)."""
    found: dict[str, JetPackPython] = {}
    for entry in JETPACKS:
        if entry.tested:
            found.setdefault(entry.python, entry)
    return found


def _pyenv_roots() -> list[Path]:
    roots = [os.environ.get("PYENV_ROOT", "")]
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip())
    roots.append(str(Path.home() / ".pyenv"))
    return list(dict.fromkeys(Path(r) for r in roots if r))


def _version_of(python: Path) -> str | None:
    """``X.Y.Z`` of an interpreter that runs and has the venv module; None otherwise (a pyenv shim of a missing
    version, a broken link)."""
    try:
        proc = subprocess.run(
            [str(python), "-c", "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def candidates(minor: str) -> list[Path]:
    """Where a ``python<minor>`` may be: ``$S2RM_PYTHON<digits>``, pyenv's versions (newest patch first), PATH."""
    found = [Path(p) for p in [os.environ.get("S2RM_PYTHON" + minor.replace(".", ""), "")] if p]
    for root in _pyenv_roots():
        pattern = re.compile(rf"{re.escape(minor)}\.\d+")  # 3.8.18, not 3.8-dev or 3.80.1
        versions = [v for v in (root / "versions").glob(f"{minor}.*") if pattern.fullmatch(v.name)]
        for version in sorted(versions, key=lambda v: int(v.name.rsplit(".", 1)[1]), reverse=True):
            found.append(version / "bin" / f"python{minor}")
    on_path = shutil.which(f"python{minor}")
    if on_path:
        found.append(Path(on_path))
    return list(dict.fromkeys(found))


def find_interpreter(minor: str) -> tuple[Path, str]:
    """The first working interpreter of a Python minor version and its full version.

    Raises:
        Unavailable: none found; the message lists where it looked.
    """
    looked = candidates(minor)
    for python in looked:
        version = _version_of(python)
        if version and version.startswith(minor + "."):
            return python, version
    where = ", ".join(str(p) for p in looked) or "nowhere"
    raise Unavailable(
        f"no working Python {minor} interpreter (looked at: {where}; install it with `pyenv install {minor}` or "
        f"set S2RM_PYTHON{minor.replace('.', '')}=/path/to/python{minor})"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("S2RM_CACHE", Path.home() / ".cache" / "s2rm-edge"))


def venv_path(minor: str, python: Path, version: str, requirements: list[str]) -> Path:
    """The venv's folder: keyed by the interpreter (path and full version) and the pins."""
    key = json.dumps([str(python.resolve()), version, sorted(requirements)])
    return cache_dir() / f"robot-py{minor}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip_failure(venv: Path, proc: subprocess.CompletedProcess) -> Exception:
    output = (proc.stdout or "") + (proc.stderr or "")
    tail = "\n".join(output.strip().splitlines()[-6:])
    if any(marker in output for marker in NETWORK_ERRORS):
        return Unavailable(f"pip cannot reach the package index while building {venv.name}: {tail}")
    return RuntimeError(f"pip failed while building {venv.name} (exit status {proc.returncode}):\n{tail}")


def build(venv: Path, python: Path, requirements: list[str], log=print) -> Path:
    """Make the venv unless a complete one is there; returns its python.

    The venv is created and filled in ``.<name>.tmp-<pid>`` beside it, then renamed: a venv folder with its
    ``.complete`` marker exists only once pip has succeeded. A racing builder that renamed first wins; ours is dropped.

    Raises:
        Unavailable: pip cannot reach the package index.
        RuntimeError: pip failed otherwise (a pin without a wheel for this Python).
    """
    if (venv / ".complete").is_file():
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = venv.parent / f".{venv.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    log(f"[robot-venv] building {venv} with {python} ({' '.join(requirements)})")
    try:
        subprocess.run([str(python), "-m", "venv", str(tmp)], check=True, capture_output=True, text=True, timeout=300)
        pip = [str(venv_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        cmd = [*pip, "--timeout", "20", "--retries", "1", "--only-binary=:all:", *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise _pip_failure(venv, proc)
        (tmp / ".complete").write_text(json.dumps({"python": str(python), "requirements": requirements}, indent=1))
        if venv.exists() and not (venv / ".complete").is_file():  # left by an older, non-atomic build
            shutil.rmtree(venv)
        try:
            tmp.rename(venv)
        except OSError:
            if not (venv / ".complete").is_file():  # not a racing builder's finished venv: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[robot-venv] {venv.name} ready in {time.perf_counter() - started:.0f} s")
    return venv_python(venv)


def ensure(minor: str, log=print) -> Path:
    """The python of the robot venv for a Python minor version, built if needed.

    Raises:
        Unavailable: no interpreter, or no package index.
        KeyError: no tested JetPack uses that Python.
    """
    entry = robot_pythons()[minor]
    python, version = find_interpreter(minor)
    requirements = entry.test_requirements()
    return build(venv_path(minor, python, version, requirements), python, requirements, log=log)


def existing(minor: str) -> Path | None:
    """The python of an already complete robot venv for that Python, None when there is none (nothing is built)."""
    try:
        python, version = find_interpreter(minor)
    except Unavailable:
        return None
    venv = venv_path(minor, python, version, robot_pythons()[minor].test_requirements())
    return venv_python(venv) if (venv / ".complete").is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", choices=sorted(robot_pythons()), help="default: every one")
    parser.add_argument("--print-path", action="store_true", help="print each venv's python (or why none) and stop")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a venv is skipped")
    args = parser.parse_args()
    skipped = 0
    for minor in args.python or sorted(robot_pythons(), key=lambda m: tuple(map(int, m.split(".")))):
        try:
            if args.print_path:
                entry = robot_pythons()[minor]
                python, version = find_interpreter(minor)
                print(minor, venv_python(venv_path(minor, python, version, entry.test_requirements())))
            else:
                print(minor, ensure(minor, log=lambda msg: print(msg, file=sys.stderr)))
        except Unavailable as exc:
            skipped += 1
            print(f"[robot-venv] skipped Python {minor}: {exc}", file=sys.stderr)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"[robot-venv] error: Python {minor}: {exc}", file=sys.stderr)
            return 1
    return 3 if skipped and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
