"""The accuracy-vs-latency report: one row per artifact, in Markdown, self-contained HTML, JSON, and a Pareto plot.

Usage::

    rep = assemble(validation, bench, quant_figures, context)   # benchmarks.report_assembly
    write_report(rep, out_dir)                                  # report.md, report.html, report.json, the plot

The report is built in steps, one module each: :mod:`benchmarks.report_assembly` joins the ``validate``, ``bench``
and ``quantize`` results into rows, INT8 verdicts, targets and the Pareto front; :mod:`benchmarks.report_tables`
turns them into table cells and list lines; :mod:`benchmarks.report_markdown` and :mod:`benchmarks.report_html`
render those, and :mod:`benchmarks.report_plot` draws latency against mIoU. This module writes the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.report_html import render_html
from benchmarks.report_int8_debug import diagnostic_sections
from benchmarks.report_markdown import render_markdown
from benchmarks.report_plot import plot
from benchmarks.report_tables import gallery_entries
from foundation.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def write_report(
    rep: dict[str, Any],
    out_dir: str | Path,
    gallery_dir: str | Path | None = None,
    pictures_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``report.json``, ``latency_vs_miou.png`` and ``.svg`` into ``out_dir``,
    the mask gallery's pictures (``rep["gallery"]``, PNGs read from ``gallery_dir``) under ``out_dir/gallery/``, and
    the diagnostics' plots (read from ``pictures_dir``, the diagnose stage's folder) beside the report.

    Returns:
        Name → path of each file written.
    """
    out = Path(out_dir)
    pictures: dict[str, bytes] = {}
    for row in gallery_entries(rep):
        source = Path(gallery_dir or ".") / row["file"]
        if not source.is_file():
            raise FileNotFoundError(f"gallery picture {source} named in gallery.json is missing")
        pictures[row["file"]] = source.read_bytes()
    paths = {
        "md": out / "report.md",
        "html": out / "report.html",
        "json": out / "report.json",
        "png": out / "latency_vs_miou.png",
        "svg": out / "latency_vs_miou.svg",
    }
    png, svg = plot(rep, paths["png"], paths["svg"])
    atomic_write_text(paths["md"], render_markdown(rep, paths["png"].name))
    for name, data in pictures.items():
        paths[f"gallery/{name}"] = out / "gallery" / name
        atomic_write_bytes(paths[f"gallery/{name}"], data)
    plots = {}
    for section in diagnostic_sections(rep):
        source = Path(pictures_dir or ".") / (section.picture or "")
        if section.picture and source.is_file():
            plots[section.picture] = source.read_bytes()
            paths[section.picture] = out / section.picture
            atomic_write_bytes(paths[section.picture], plots[section.picture])
    atomic_write_text(paths["html"], render_html(rep, svg=svg, png=png, gallery=pictures, pictures=plots))
    atomic_write_json(paths["json"], rep)
    return paths


def load_json(path: str | Path) -> dict[str, Any] | None:
    """Read a stage's JSON result, or None when the file does not exist."""
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None
