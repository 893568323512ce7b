"""Benchmark tools outside the pipeline: re-render a report from stage results, screenshot a report with Chromium.

Usage: ``python -m benchmarks report --run runs/demo --device x86-cpu [--out DIR]``;
``python -m benchmarks screenshot runs/demo/devices/x86-cpu/report/report.html [--png report.png]``.

The pipeline's ``bench`` / ``report`` stages (``make bench``, ``make report``) are the normal way; ``report`` here
rebuilds the files from existing ``results.json`` files without re-running anything (e.g. after editing the report
code), and ``screenshot`` renders the HTML the way a reader sees it (needs ``apt-get install chromium``).
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


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import assemble, load_json, write_report
    from pipeline.stages.report import fallback_nodes, stage_figures

    dev = Path(args.run) / "devices" / args.device
    validation = load_json(dev / "validate" / "results.json")
    bench = load_json(dev / "bench" / "results.json")
    if validation is None and bench is None:
        print(f"error: neither {dev / 'validate'} nor {dev / 'bench'} has results.json", file=sys.stderr)
        return 2
    quant = {"fallback": fallback_nodes(stage_figures(Path(args.run) / "quantize"))}
    rep = assemble(validation, bench, quant, {"run": Path(args.run).name, "device": args.device})
    out = Path(args.out) if args.out else Path(args.run) / "devices" / args.device / "report-rerendered"
    for path in write_report(rep, out).values():
        print(path)
    return 0


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
    rep = sub.add_parser("report", help="re-render report files from a run's validate/bench results")
    rep.add_argument("--run", required=True, help="run folder, e.g. runs/demo")
    rep.add_argument("--device", default="x86-cpu")
    rep.add_argument("--out", default=None, help="output folder (default: <run>/devices/<device>/report-rerendered)")
    shot = sub.add_parser("screenshot", help="render a report.html to PNG with headless Chromium")
    shot.add_argument("html")
    shot.add_argument("--png", default=None, help="output PNG (default: beside the HTML)")
    shot.add_argument("--width", type=int, default=1280)
    shot.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    return {"report": _report, "screenshot": _screenshot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
