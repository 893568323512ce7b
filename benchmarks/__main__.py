"""Benchmark tools outside the pipeline: screenshot a report with Chromium.

Usage: ``python -m benchmarks screenshot runs/demo/devices/x86-cpu/report/report.html [--png report.png]``.

The pipeline's ``bench`` / ``report`` stages (``make bench``, ``make report``) write the reports, and
``python -m pipeline report`` re-renders one from the finished stages of a run (e.g. after editing the report code);
``screenshot`` renders the HTML the way a reader sees it (needs ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """Path of a Chromium / Chrome binary, or None."""
    return next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2000, timeout: float = 120) -> Path:
    """Render ``html`` with headless Chromium into ``png`` (no network, no profile state).

    Raises:
        FileNotFoundError: no Chromium binary (install it: ``apt-get install -y chromium``).
        RuntimeError: Chromium ran but wrote no PNG.
    """
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary found; install it with `apt-get install -y chromium`")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--screenshot={png.resolve()}",
        f"--window-size={width},{height}", html.resolve().as_uri(),
    ]  # fmt: skip
    png.unlink(missing_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return png


def _screenshot(args: argparse.Namespace) -> int:
    html = Path(args.html)
    png = Path(args.png) if args.png else html.with_suffix(".png")
    try:
        print(screenshot(html, png, args.width, args.height))
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="render a report.html to PNG with headless Chromium")
    shot.add_argument("html")
    shot.add_argument("--png", default=None, help="output PNG (default: beside the HTML)")
    shot.add_argument("--width", type=int, default=1280)
    shot.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    return {"screenshot": _screenshot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
