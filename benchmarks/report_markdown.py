"""The report as GitHub Markdown: the tables, the plot as a relative image link, the gallery's pictures.

Usage: ``text = render_markdown(rep, plot_name="latency_vs_miou.png")``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.report_int8_debug import diagnostic_sections
from benchmarks.report_tables import (
    GALLERY_NOTE,
    GALLERY_TITLE,
    gallery_entries,
    gallery_table,
    group_table,
    int8_lines,
    machine_lines,
    notes,
    split_graph_table,
    split_metrics_table,
    table_rows,
    target_lines,
)


def _md_table(head: list[str], body: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in body]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines)


def render_markdown(rep: dict[str, Any], plot_name: str = "latency_vs_miou.png") -> str:
    """The report as GitHub Markdown (tables, the plot as a relative image link)."""
    ctx = rep.get("context", {})
    parts = [
        f"# Accuracy vs latency: run `{ctx.get('run', '?')}`, device `{ctx.get('device', '?')}`",
        "",
        *machine_lines(rep),
        "",
        "## Artifacts",
        "",
        _md_table(*table_rows(rep)),
        "",
        f"![latency vs mIoU]({plot_name})",
        "",
        "## Did INT8 pay off here?",
        "",
        *int8_lines(rep),
        "",
        "## Targets",
        "",
        *target_lines(rep),
        "",
    ]
    if rep["kinds"]:
        parts += ["## mIoU per expression kind (Δ = drop against PyTorch FP32, points)", "",
                  _md_table(*group_table(rep, "by_kind", rep["kinds"])), ""]
    if rep["splits"]:
        parts += ["## oIoU, mIoU and prec@X per split (points)", "", _md_table(*split_metrics_table(rep)), ""]
    sg_head, sg_body = split_graph_table(rep)
    if sg_body:
        parts += ["## Split graph: one encoded frame, k expressions (p50 ms)", "", _md_table(sg_head, sg_body), ""]
    parts += _gallery_markdown(rep)
    for section in diagnostic_sections(rep):
        parts += [f"## {section.title}", "", *section.lines, ""]
        if section.body:
            parts += [_md_table(section.head, section.body), ""]
        if section.picture:
            parts += [f"![{section.title}]({section.picture})", ""]
    parts += ["## How these figures were measured", "", *notes(rep)]
    if ctx.get("commands"):
        parts += ["", "Reproduce:", "", "```", *ctx["commands"], "```"]
    return "\n".join(parts) + "\n"


def _gallery_markdown(rep: dict[str, Any]) -> list[str]:
    rows = gallery_entries(rep)
    if not rows:
        return []
    parts = [f"## {GALLERY_TITLE}", "", GALLERY_NOTE, "", _md_table(*gallery_table(rep)), ""]
    parts += [f"![{r['sample_id']}](gallery/{r['file']})" for r in rows]
    return [*parts, ""]
