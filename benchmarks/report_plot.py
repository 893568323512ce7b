"""The report's plot: latency (log scale) against mIoU, one point per measured artifact, the Pareto front ringed.

Usage: ``png_bytes, svg_text = plot(rep, png=out / "latency_vs_miou.png", svg=out / "latency_vs_miou.svg")``.

matplotlib is imported inside :func:`plot` (Agg backend, headless), so importing this module costs nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from benchmarks.report_assembly import POINTS, STATUS_COLOURS, plot_points, status_kind
from foundation.io import atomic_write_bytes, atomic_write_text


def plot(report: dict[str, Any], png: Path | None = None, svg: Path | None = None) -> tuple[bytes, str]:
    """Latency (log scale) vs mIoU, one point per measured artifact, the Pareto front joined and ringed.

    Args:
        report: Output of :func:`benchmarks.report_assembly.assemble`.
        png: Where to write the PNG (skipped when None).
        svg: Where to write the SVG (skipped when None).

    Returns:
        ``(png_bytes, svg_text)``.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless; a report never opens a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = report["rows"]
    pts = plot_points(rows)
    front = set(report.get("pareto", []))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    shown = [(r, p) for r, p in zip(rows, pts, strict=True) if p is not None]
    offsets = [(6, 6), (6, -12), (6, 16), (6, -22)]  # neighbours in latency get different label heights
    by_latency = {id(r): i for i, (r, _p) in enumerate(sorted(shown, key=lambda rp: rp[1][0]))}
    for r, (lat, miou) in shown:
        colour = STATUS_COLOURS.get(status_kind(r["status"]), "#333333")
        marker = "s" if r["precision"] == "int8" else "o"
        ax.scatter([lat], [miou * POINTS], s=60, color=colour, marker=marker, zorder=3)
        if r["name"] in front:
            ax.scatter([lat], [miou * POINTS], s=220, facecolors="none", edgecolors="#0969da", linewidths=1.8, zorder=4)
        ax.annotate(r["label"], (lat, miou * POINTS), textcoords="offset points", fontsize=8,
                    xytext=offsets[by_latency[id(r)] % len(offsets)])  # fmt: skip
    line = sorted((p for r, p in shown if r["name"] in front), key=lambda p: p[0])
    if len(line) > 1:
        xs, ys = zip(*[(lat, m * POINTS) for lat, m in line], strict=True)
        ax.step(xs, ys, where="post", color="#0969da", linewidth=1.2, alpha=0.7, label="Pareto front", zorder=2)
        ax.legend(loc="lower right", fontsize=8)
    if shown:  # never zoom into sub-point noise: show at least 2 points of mIoU, without an offset label
        ys = [m * POINTS for _r, (_lat, m) in shown]
        mid, half = (max(ys) + min(ys)) / 2, max((max(ys) - min(ys)) / 2 * 1.3, 1.0)
        ax.set_ylim(mid - half, mid + half)
        xs = [lat for _r, (lat, _m) in shown]
        ax.set_xlim(min(xs) / 1.25, max(xs) * 1.6)  # room for the labels right of the points
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # "30", not "3×10¹"
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("latency p50, ms (batch 1, log scale)")
    ax.set_ylabel("mIoU (points)")
    machine = report.get("machine", {}).get("cpu", {}).get("model", "")
    ax.set_title(f"Accuracy vs latency ({machine})" if machine else "Accuracy vs latency", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if not shown:
        ax.text(0.5, 0.5, "no artifact has both latency and mIoU", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    png_buf, svg_buf = io.BytesIO(), io.StringIO()
    fig.savefig(png_buf, format="png", metadata={"Software": None})
    fig.savefig(svg_buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    if png is not None:
        atomic_write_bytes(png, png_buf.getvalue())
    if svg is not None:
        atomic_write_text(svg, svg_buf.getvalue())
    return png_buf.getvalue(), svg_buf.getvalue()
