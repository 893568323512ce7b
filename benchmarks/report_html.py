"""The report as one self-contained HTML page: inline CSS, the plot inline, the gallery's pictures inline.

Usage: ``page = render_html(rep, svg=svg_text, png=png_bytes, gallery={file_name: png_bytes})``.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from benchmarks.report_assembly import STATUS_COLOURS
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

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#1f2328;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-size:11.5px}
td.status,td.wrap{text-align:left;white-space:normal;max-width:260px}.why{font-size:11px;color:#57606a}
.pareto{font-weight:600}.plot svg{max-width:100%;height:auto}ul{padding-left:20px}code{background:#f6f8fa}
"""


def _html_table(head: list[str], body: list[list[str]], status_col: int | None = None, bold: set[int] = ()) -> str:
    out = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in head], "</tr></thead><tbody>"]
    for i, row in enumerate(body):
        cls = ' class="pareto"' if i in bold else ""
        out.append(f"<tr{cls}>")
        for j, cell in enumerate(row):
            if j == status_col:
                kind, _, why = cell.partition(":")
                colour = STATUS_COLOURS.get(kind.strip(), "#333")
                note = f'<div class="why">{html.escape(why.strip())}</div>' if why.strip() else ""
                out.append(f'<td class="status"><span class="badge" style="background:{colour}">'
                           f"{html.escape(kind.strip())}</span>{note}</td>")  # fmt: skip
            elif j == len(row) - 1 and status_col is not None:
                out.append(f'<td class="wrap">{html.escape(cell)}</td>')
            else:
                out.append(f"<td>{html.escape(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _md_inline(text: str) -> str:
    """Escape a Markdown list line for HTML, keeping **bold** and `code`."""
    out = html.escape(text)
    for mark, tag in (("**", "b"), ("`", "code")):
        pieces = out.split(mark)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return out


def _html_list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_md_inline(ln.removeprefix('- '))}</li>" for ln in lines) + "</ul>"


def _gallery_html(rep: dict[str, Any], pictures: dict[str, bytes]) -> list[str]:
    rows = gallery_entries(rep)
    if not rows:
        return []
    parts = [f"<h2>{html.escape(GALLERY_TITLE)}</h2>", f"<p>{html.escape(GALLERY_NOTE)}</p>",
             _html_table(*gallery_table(rep))]  # fmt: skip
    for r in rows:
        data = pictures.get(r["file"])
        if data:
            parts.append(f'<div><img alt="{html.escape(r["sample_id"])}" '
                         f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></div>')  # fmt: skip
    return parts


def _diagnostics_html(rep: dict[str, Any], pictures: dict[str, bytes]) -> list[str]:
    parts = []
    for section in diagnostic_sections(rep):
        parts += [f"<h2>{html.escape(section.title)}</h2>", *(f"<p>{_md_inline(line)}</p>" for line in section.lines)]
        if section.body:
            parts.append(_html_table(section.head, section.body))
        if section.picture in pictures:
            data = base64.b64encode(pictures[section.picture]).decode()
            parts.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
    return parts


def render_html(
    rep: dict[str, Any],
    svg: str | None = None,
    png: bytes | None = None,
    gallery: dict[str, bytes] | None = None,
    pictures: dict[str, bytes] | None = None,
) -> str:
    """A self-contained HTML page: inline CSS, the plot inline (SVG, or base64 PNG), the gallery's pictures inline
    (``gallery``: file name -> PNG bytes), the diagnostics' plots inline (``pictures``), no external resources."""
    ctx = rep.get("context", {})
    front = {i for i, r in enumerate(rep["rows"]) if r["name"] in set(rep.get("pareto", []))}
    if svg:
        figure = svg[svg.find("<svg") :] if "<svg" in svg else svg
    elif png:
        figure = f'<img alt="latency vs mIoU" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    else:
        figure = "<p>(no plot)</p>"
    title = f"Accuracy vs latency: run {ctx.get('run', '?')}, device {ctx.get('device', '?')}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _html_list(machine_lines(rep)),
        "<h2>Artifacts</h2>",
        _html_table(*table_rows(rep), status_col=1, bold=front),
        "<p>Bold rows are on the Pareto front: no other artifact that passed validation is both faster and more "
        "accurate.</p>",
        f"<div class='plot'>{figure}</div>",
        "<h2>Did INT8 pay off here?</h2>",
        _html_list(int8_lines(rep)),
        "<h2>Targets</h2>",
        _html_list(target_lines(rep)),
    ]
    if rep["kinds"]:
        parts += ["<h2>mIoU per expression kind (Δ = drop against PyTorch FP32, points)</h2>",
                  _html_table(*group_table(rep, "by_kind", rep["kinds"]))]
    if rep["splits"]:
        parts += ["<h2>oIoU, mIoU and prec@X per split (points)</h2>", _html_table(*split_metrics_table(rep))]
    sg_head, sg_body = split_graph_table(rep)
    if sg_body:
        parts += ["<h2>Split graph: one encoded frame, k expressions (p50 ms)</h2>", _html_table(sg_head, sg_body)]
    parts += _gallery_html(rep, gallery or {})
    parts += _diagnostics_html(rep, pictures or {})
    parts += ["<h2>How these figures were measured</h2>", _html_list(notes(rep))]
    if ctx.get("commands"):
        parts += ["<p>Reproduce:</p><pre>", html.escape("\n".join(ctx["commands"])), "</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
