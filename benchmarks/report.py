"""The accuracy-vs-latency report: one row per artifact, in Markdown, self-contained HTML, JSON, and a Pareto plot.

Usage: ``rep = assemble(validation, bench, quant_figures, context); write_report(rep, out_dir)``.

Inputs are the JSON results of the ``validate`` and ``bench`` stages (see :mod:`pipeline.stages.validate` and
:mod:`pipeline.stages.bench`) and the ``quantize`` stage's figures (the nodes returned to float). Every artifact that
was asked for gets a row, whatever happened to it: ``ok``, ``validation failed`` (over the mIoU budget),
``unavailable: <reason>`` (backend not installed here, e.g. TensorRT on a CPU host) or ``error: <message>``.

The three headline figures follow NNCF's examples: the mIoU drop against the re-run PyTorch FP32 reference (points,
with its paired bootstrap 95% CI), the size ratio against the FP32 artifact of the same format, and the speed-up
against PyTorch FP32 eager on the same inputs in the same run. Latency is batch 1 model time (``infer`` only);
pre- and post-processing are shared by every runtime and reported once, beside the table.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.io import atomic_write_bytes, atomic_write_json, atomic_write_text

REFERENCE = "pytorch-fp32"
POINTS = 100.0  # metrics are fractions; the report speaks in points (1 point = 0.01 mIoU)
SPEEDUP_TARGET = 2.5
EXPRESSION_TARGET = 0.35
INT8_SIZE_TARGET = 0.35
PAYOFF_MIN_SPEEDUP = 1.05  # INT8 "paid off" only if at least 5% faster than FP32 of the same runtime, and valid
STATUS_COLOURS = {"ok": "#1a7f37", "validation failed": "#cf222e", "unavailable": "#6e7781", "error": "#9a6700"}


# ---------------------------------------------------------------------------------------------------------------------
# Assembling rows from the stage results
# ---------------------------------------------------------------------------------------------------------------------


def _status_kind(status: str) -> str:
    return status.split(":", 1)[0].strip()


def _row_status(val: dict[str, Any] | None, bench: dict[str, Any] | None) -> str:
    """Worst of validation and bench status; unavailable wins over everything (nothing could run)."""
    statuses = [s for s in ((val or {}).get("status"), (bench or {}).get("status")) if s]
    for kind in ("unavailable", "error", "validation failed"):
        for s in statuses:
            if _status_kind(s) == kind:
                return s
    return "ok" if statuses else "error: no validation or benchmark result"


def _drop_points(cmp: dict[str, Any] | None, metric: str = "mIoU") -> dict[str, float] | None:
    """Turn ``compare()``'s ``a − b`` (candidate − reference, fractions) into a drop in points (positive = worse)."""
    if not cmp or metric not in cmp or cmp[metric].get("diff") is None:
        return None
    m = cmp[metric]
    return {"drop": -m["diff"] * POINTS, "lower": -m["upper"] * POINTS, "upper": -m["lower"] * POINTS}


def _size_ratio(name: str, rows: dict[str, dict[str, Any]], size: int | None) -> tuple[float | None, str | None]:
    ref = rows.get(name, {}).get("size_reference")
    if not size or not ref or ref not in rows:
        return None, None
    ref_size = rows[ref].get("size_bytes")
    return (size / ref_size, ref) if ref_size else (None, None)


def assemble(
    validation: dict[str, Any] | None,
    bench: dict[str, Any] | None,
    quant_figures: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Join validation, benchmark and quantization results into one JSON-ready report.

    Args:
        validation: ``validate`` stage results (``results.json``); None if the stage did not run.
        bench: ``bench`` stage results (``results.json``); None if the stage did not run.
        quant_figures: ``quantize`` stage figures; per-artifact lists of nodes kept in float are read from
            ``fallback`` (``{artifact: [node, ...]}``) or ``<artifact>.fallback_nodes``.
        context: Run name, device profile, config digest, commands (copied into the report as they are).

    Returns:
        ``{"rows": [...], "machine", "int8", "targets", "kinds", "splits", ...}``.
    """
    validation, bench, quant_figures = validation or {}, bench or {}, quant_figures or {}
    v_art = validation.get("artifacts", {})
    b_art = bench.get("artifacts", {})
    # JSON files are written with sorted keys: the stages record their row order separately
    names = list(dict.fromkeys([*validation.get("order", []), *bench.get("order", []), *v_art, *b_art]))
    names = [n for n in names if n in v_art or n in b_art]
    meta = {n: {**b_art.get(n, {}), **v_art.get(n, {})} for n in names}
    ref_lat = (b_art.get(REFERENCE, {}).get("latency") or {}).get("p50_ms")
    rows = []
    for name in names:
        val, ben, info = v_art.get(name), b_art.get(name), meta[name]
        lat = (ben or {}).get("latency") or {}
        size = info.get("size_bytes")
        ratio, ratio_ref = _size_ratio(name, meta, size)
        p50 = lat.get("p50_ms")
        rows.append(
            {
                "name": name,
                "label": info.get("label", name),
                "runtime": info.get("runtime"),
                "precision": info.get("precision"),
                "gated": bool(info.get("gated", False)),
                "status": _row_status(val, ben),
                "path": info.get("path"),
                "metrics": (val or {}).get("metrics", {}).get("overall"),
                "by_split": (val or {}).get("metrics", {}).get("by_split", {}),
                "by_kind": (val or {}).get("metrics", {}).get("by_kind", {}),
                "drop": _drop_points((val or {}).get("drop_vs_reference")),
                "drop_oiou": _drop_points((val or {}).get("drop_vs_reference"), "oIoU"),
                "drop_by_kind": {k: _drop_points(c) for k, c in ((val or {}).get("drop_by_kind") or {}).items()},
                "drop_by_split": {k: _drop_points(c) for k, c in ((val or {}).get("drop_by_split") or {}).items()},
                "agreement": (val or {}).get("agreement"),
                "passed": (val or {}).get("passed"),
                "size_bytes": size,
                "size_ratio": ratio,
                "size_reference": ratio_ref,
                "latency": lat or None,
                "speedup": (ref_lat / p50) if ref_lat and p50 else None,
                "peak_rss_mb": ((ben or {}).get("peak_rss") or {}).get("peak_rss_mb"),
                "split_graph": (ben or {}).get("split_graph"),
                "fallback_nodes": _fallback(name, quant_figures),
            }
        )
    kinds = sorted({k for r in rows for k in r["by_kind"]})
    splits = list(dict.fromkeys(s for r in rows for s in r["by_split"]))
    report = {
        "context": context or {},
        "reference": REFERENCE,
        "budget_miou_points": validation.get("budget_miou_points"),
        "target_miou_points": validation.get("target_miou_points"),
        "protocol": validation.get("protocol"),
        "n_samples": validation.get("n_samples"),
        "machine": bench.get("machine") or validation.get("machine") or {},
        "bench_settings": bench.get("settings", {}),
        "processing": bench.get("processing", {}),
        "rows": rows,
        "kinds": kinds,
        "splits": splits,
    }
    report["int8"] = int8_verdicts(rows)
    report["targets"] = targets(rows)
    # the front is drawn over deployable artifacts only: a failed INT8 row may be fast, but it is not an option
    points = _plot_points(rows)
    deployable = [p if _status_kind(r["status"]) == "ok" else None for r, p in zip(rows, points, strict=True)]
    report["pareto"] = [rows[i]["name"] for i in pareto_front(deployable)]
    return report


def _fallback(name: str, quant: dict[str, Any]) -> list[str] | None:
    fb = quant.get("fallback")
    if isinstance(fb, dict) and name in fb:
        return list(fb[name])
    entry = quant.get(name)
    if isinstance(entry, dict) and "fallback_nodes" in entry:
        return list(entry["fallback_nodes"])
    return None


def int8_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each runtime with an INT8 and an FP32 row: did INT8 pay off on this machine (faster by ≥5% and valid)?"""
    by_rt: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["precision"] in ("int8", "fp32") and r["runtime"]:
            by_rt.setdefault(r["runtime"], {}).setdefault(r["precision"], r)
    verdicts = []
    for runtime, pair in by_rt.items():
        if "int8" not in pair or "fp32" not in pair:
            continue
        i8, f32 = pair["int8"], pair["fp32"]
        t8 = (i8["latency"] or {}).get("p50_ms")
        t32 = (f32["latency"] or {}).get("p50_ms")
        if not t8 or not t32:
            verdicts.append(
                {"runtime": runtime, "int8": i8["name"], "fp32": f32["name"], "speedup": None, "paid_off": None,
                 "why": f"not measured ({i8['status']} / {f32['status']})"}
            )
            continue
        speed = t32 / t8
        valid = _status_kind(i8["status"]) == "ok"
        paid = speed >= PAYOFF_MIN_SPEEDUP and valid
        if paid:
            why = f"{speed:.2f}x faster than FP32 and within the accuracy budget"
        elif not valid:
            why = f"{speed:.2f}x vs FP32 but {i8['status']}"
        else:
            why = f"only {speed:.2f}x vs FP32 (< {PAYOFF_MIN_SPEEDUP}x): keep FP32 on this machine"
        verdicts.append(
            {"runtime": runtime, "int8": i8["name"], "fp32": f32["name"], "speedup": speed, "paid_off": paid,
             "why": why}
        )
    return verdicts


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DESIGN §9 targets measured in this run: best CPU speed-up, cost per extra expression, INT8 drop and size."""
    # deployable CPU artifacts only: a failed INT8 graph or a GPU engine does not answer "how fast on this CPU"
    ok = [
        r
        for r in rows
        if r["speedup"] and r["name"] != REFERENCE and _status_kind(r["status"]) == "ok" and r["runtime"] != "tensorrt"
    ]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    split = [r for r in rows if (r["split_graph"] or {}).get("cost", {}).get("ratio_to_full") is not None]
    cheapest = min(split, key=lambda r: r["split_graph"]["cost"]["ratio_to_full"], default=None)
    int8 = [r for r in rows if r["precision"] == "int8" and r["drop"]]
    ov_int8 = [r for r in rows if r["precision"] == "int8" and r["runtime"] == "openvino" and r["size_ratio"]]
    out: dict[str, Any] = {
        "speedup": {
            "target": SPEEDUP_TARGET,
            "artifact": best["name"] if best else None,
            "value": best["speedup"] if best else None,
            "met": (best["speedup"] >= SPEEDUP_TARGET) if best else None,
        },
        "expression_cost": {
            "target": EXPRESSION_TARGET,
            "artifact": cheapest["name"] if cheapest else None,
            "value": cheapest["split_graph"]["cost"]["ratio_to_full"] if cheapest else None,
            "met": (cheapest["split_graph"]["cost"]["ratio_to_full"] <= EXPRESSION_TARGET) if cheapest else None,
        },
        "int8_drop": [
            {"artifact": r["name"], "drop": r["drop"]["drop"], "upper": r["drop"]["upper"], "passed": r["passed"]}
            for r in int8
        ],
        "int8_size": [
            {"artifact": r["name"], "ratio": r["size_ratio"], "met": r["size_ratio"] <= INT8_SIZE_TARGET}
            for r in ov_int8
        ],
    }
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Pareto front and plot
# ---------------------------------------------------------------------------------------------------------------------


def _plot_points(rows: list[dict[str, Any]]) -> list[tuple[float, float] | None]:
    pts: list[tuple[float, float] | None] = []
    for r in rows:
        p50 = (r["latency"] or {}).get("p50_ms")
        miou = (r["metrics"] or {}).get("mIoU")
        pts.append((float(p50), float(miou)) if p50 and miou is not None else None)
    return pts


def pareto_front(points: Sequence[tuple[float, float] | None]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal latency and higher-or-equal mIoU, one strictly.

    Args:
        points: ``(latency, miou)`` per row, or None for rows without both figures.

    Returns:
        Indices on the front, by increasing latency.
    """
    idx = [i for i, p in enumerate(points) if p is not None]
    front = []
    for i in idx:
        li, mi = points[i]  # type: ignore[misc]
        dominated = any(
            points[j][0] <= li and points[j][1] >= mi and (points[j][0] < li or points[j][1] > mi)  # type: ignore[index]
            for j in idx
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])  # type: ignore[index]


def plot(report: dict[str, Any], png: Path | None = None, svg: Path | None = None) -> tuple[bytes, str]:
    """Latency (log scale) vs mIoU, one point per measured artifact, the Pareto front joined and ringed.

    Args:
        report: Output of :func:`assemble`.
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
    pts = _plot_points(rows)
    front = set(report.get("pareto", []))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    shown = [(r, p) for r, p in zip(rows, pts, strict=True) if p is not None]
    offsets = [(6, 6), (6, -12), (6, 16), (6, -22)]  # neighbours in latency get different label heights
    by_latency = {id(r): i for i, (r, _p) in enumerate(sorted(shown, key=lambda rp: rp[1][0]))}
    for r, (lat, miou) in shown:
        colour = STATUS_COLOURS.get(_status_kind(r["status"]), "#333333")
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


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{suffix}"


def _signed(x: float) -> str:
    return f"{round(x, 2) + 0.0:+.2f}"  # + 0.0 turns -0.00 into +0.00


def _drop_text(d: dict[str, float] | None) -> str:
    return "–" if d is None else f"{_signed(d['drop'])} [{_signed(d['lower'])}, {_signed(d['upper'])}]"


def _size_text(r: dict[str, Any]) -> str:
    if not r["size_bytes"]:
        return "–"
    mb = r["size_bytes"] / 2**20
    if r["size_ratio"] is None or r["size_reference"] == r["name"]:
        return f"{mb:.1f} MB"
    return f"{mb:.1f} MB ({r['size_ratio']:.2f}×)"


def _fallback_text(r: dict[str, Any]) -> str:
    nodes = r["fallback_nodes"]
    if nodes is None:
        return "–"
    return f"{len(nodes)}" + (f": {', '.join(nodes[:2])}{' …' if len(nodes) > 2 else ''}" if nodes else "")


def _table_rows(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "Artifact", "Status", "mIoU", "ΔmIoU vs FP32, pts [95% CI]", "Agreement",
        "Size (ratio)", "p50 / p90 / p99 ms", "FPS", "Speed-up", "Peak RSS MB", "Float fallback",
    ]  # fmt: skip
    body = []
    ref_n = next((((r["metrics"] or {}).get("n")) for r in rep["rows"] if r["name"] == rep["reference"]), None)
    for r in rep["rows"]:
        m, lat, agr = r["metrics"] or {}, r["latency"] or {}, r["agreement"] or {}
        miou = m.get("mIoU")
        # an artifact scored on a subset (validate.fp32_max_samples) says so: its mIoU is not the reference's samples'
        subset = f" (n={m['n']})" if ref_n and m.get("n") and m["n"] != ref_n else ""
        body.append(
            [
                r["label"],
                r["status"],
                _f(None if miou is None else miou * POINTS) + subset,
                "reference" if r["name"] == rep["reference"] else _drop_text(r["drop"]),
                _f(agr.get("mean_iou"), ".4f"),
                _size_text(r),
                "–" if not lat.get("p50_ms") else f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f}",
                _f(lat.get("throughput_fps"), ".1f"),
                _f(r["speedup"], ".2f", "×"),
                _f(r["peak_rss_mb"], ".0f"),
                _fallback_text(r),
            ]
        )
    return head, body


def _group_table(rep: dict[str, Any], key: str, groups: list[str]) -> tuple[list[str], list[list[str]]]:
    """mIoU per group (expression kind or split) and, for candidates, the drop against FP32 on that group."""
    head = ["Artifact", *[f"{g}: mIoU (Δ pts)" for g in groups]]
    drops = "drop_" + key
    body = []
    for r in rep["rows"]:
        cells = [r["label"]]
        for g in groups:
            miou = (r[key].get(g) or {}).get("mIoU")
            d = (r.get(drops) or {}).get(g)
            delta = "" if d is None or r["name"] == rep["reference"] else f" ({_signed(d['drop'])})"
            cells.append("–" if miou is None else f"{miou * POINTS:.2f}{delta}")
        body.append(cells)
    return head, body


def _split_metrics_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    prec = [f"prec@{t}" for t in ("0.5", "0.6", "0.7", "0.8", "0.9")]
    head = ["Artifact", "Split", "n", "oIoU", "mIoU", *prec]
    body = []
    for r in rep["rows"]:
        groups = [("all", r["metrics"] or {}), *((s, r["by_split"].get(s) or {}) for s in rep["splits"])]
        if not r["metrics"]:
            continue
        for split, m in groups:
            cells = [r["label"], split, str(m.get("n", "–"))]
            cells += [_f(None if m.get(k) is None else m[k] * POINTS) for k in ("oIoU", "mIoU", *prec)]
            body.append(cells)
    return head, body


def _split_graph_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    ks = rep.get("bench_settings", {}).get("expressions", [1, 4, 8])
    head = ["Artifact", "encode image", "encode text", "decode", *[f"k={k}" for k in ks], "per extra expr.",
            "÷ full forward", "÷ full, cached text", "status"]  # fmt: skip
    body = []
    for r in rep["rows"]:
        sg = r["split_graph"]
        if not sg:
            continue
        comp = sg.get("components", {})
        cost = sg.get("cost", {})
        body.append(
            [
                r["label"],
                *[_f((comp.get(c) or {}).get("p50_ms")) for c in ("encode_image", "encode_text", "decode")],
                *[_f((sg.get("k", {}).get(str(k)) or {}).get("p50_ms")) for k in ks],
                _f(cost.get("per_extra_ms"), ".2f", " ms"),
                _f(None if cost.get("ratio_to_full") is None else cost["ratio_to_full"] * 100, ".0f", "%"),
                _f(None if cost.get("cached_text_ratio") is None else cost["cached_text_ratio"] * 100, ".0f", "%"),
                sg.get("status", "ok"),
            ]
        )
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in body]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines)


def _machine_lines(rep: dict[str, Any]) -> list[str]:
    from benchmarks.latency import describe_machine

    mach = rep.get("machine") or {}
    if not mach:
        return ["- machine: not recorded (bench did not run)"]
    libs = ", ".join(f"{k} {v}" for k, v in (mach.get("libraries") or {}).items())
    cpu = mach.get("cpu", {})
    lines = [
        f"- machine: {describe_machine(mach)}",
        f"- CPU flags: {' '.join(cpu.get('flags', [])) or 'none of interest'}; INT8 dot-product hardware: "
        f"{', '.join(cpu.get('int8_hardware', [])) or 'none (INT8 is not expected to pay off)'}",
        f"- OS: {mach.get('os')}; Python {mach.get('python')}; CPU governor: {mach.get('cpu_governor') or 'n/a'}",
        *(
            [f"- **busy host**: load average {mach['load_average'][0]:.1f} on {cpu.get('usable_cores')} cores "
             "when the benchmark started: absolute latencies are pessimistic; interleaving keeps the ratios fairer, "
             "but re-measure on an idle machine before trusting them"]
            if mach.get("load_average") and cpu.get("usable_cores")
            and mach["load_average"][0] > 1.5 * cpu["usable_cores"] else []
        ),  # fmt: skip
        f"- libraries: {libs}",
    ]
    if mach.get("jetson"):
        j = mach["jetson"]
        lines.append(f"- Jetson: {j.get('model')}; {j.get('l4t')}; power mode: {j.get('power_mode')}")
    return lines


def _int8_lines(rep: dict[str, Any]) -> list[str]:
    if not rep["int8"]:
        return ["- no runtime has both an FP32 and an INT8 row measured here"]
    out = []
    for v in rep["int8"]:
        verdict = {True: "**yes**", False: "**no**", None: "unknown"}[v["paid_off"]]
        out.append(f"- {v['runtime']}: INT8 paid off on this machine: {verdict} ({v['why']})")
    return out


def _target_lines(rep: dict[str, Any]) -> list[str]:
    t = rep["targets"]
    yes = {True: "met", False: "NOT met", None: "not measured"}
    sp, ex = t["speedup"], t["expression_cost"]
    lines = [
        f"- fastest deployable CPU artifact vs PyTorch FP32 eager: {_f(sp['value'], '.2f', '×')} "
        f"({sp['artifact'] or '–'}); target ≥ {SPEEDUP_TARGET}×: {yes[sp['met']]}",
        f"- cost per extra expression on an encoded frame: "
        f"{_f(None if ex['value'] is None else ex['value'] * 100, '.0f', '%')} of a full forward "
        f"({ex['artifact'] or '–'}, variant {rep.get('context', {}).get('variant', '?')}; the target is set for the "
        f"edge variant); target ≤ {EXPRESSION_TARGET:.0%}: {yes[ex['met']]}",
    ]
    for d in t["int8_drop"]:
        lines.append(
            f"- {d['artifact']}: mIoU drop {_signed(d['drop'])} pts (95% CI upper {_signed(d['upper'])}); "
            f"target ≤ 0.5, budget ≤ {rep.get('budget_miou_points')}: {'passed' if d['passed'] else 'FAILED'}"
        )
    for s in t["int8_size"]:
        lines.append(f"- {s['artifact']}: {s['ratio']:.0%} of FP32 size; target ≤ {INT8_SIZE_TARGET:.0%}: "
                     f"{yes[s['met']]}")  # fmt: skip
    return lines


def _notes(rep: dict[str, Any]) -> list[str]:
    settings, proc = rep.get("bench_settings", {}), rep.get("processing", {})
    lines = [
        f"- accuracy: {rep.get('n_samples') or '?'} (referent, sentence) samples; protocol: "
        f"{rep.get('protocol') or 'original resolution, sigmoid ≥ threshold'}; drop = FP32 − candidate in mIoU "
        f"points (positive = worse), paired bootstrap 95% CI over samples; agreement = mean IoU between the "
        "candidate's and PyTorch FP32's masks.",
        f"- latency: batch 1, model time only (`infer`), {settings.get('warmup', '?')} warm-up runs then "
        f"{settings.get('runs', '?')} timed runs per artifact interleaved across artifacts (perf_counter); speed-up = "
        "PyTorch FP32 eager p50 / artifact p50; peak RSS measured per artifact in a fresh process.",
    ]
    if proc:
        lines.append(
            f"- shared pre-processing (resize, normalize, tokenize) p50 {_f(proc.get('pre', {}).get('p50_ms'))} ms; "
            f"post-processing (upsample, threshold) p50 {_f(proc.get('post', {}).get('p50_ms'))} ms; the same for "
            "every runtime and not in the latency columns."
        )
    lines.append("- size ratio: against the FP32 artifact of the same format (ONNX → ONNX FP32, IR → IR FP32).")
    lines.append(
        "- split graph: encode the frame once, then k × (encode text + decode); per extra expression = least-squares "
        "slope of p50 over k, divided by the artifact's full-graph p50; 'cached text' = decode only (fixed commands "
        "whose text embedding is cached)."
    )
    return lines


def render_markdown(rep: dict[str, Any], plot_name: str = "latency_vs_miou.png") -> str:
    """The report as GitHub Markdown (tables, the plot as a relative image link)."""
    ctx = rep.get("context", {})
    parts = [
        f"# Accuracy vs latency: run `{ctx.get('run', '?')}`, device `{ctx.get('device', '?')}`",
        "",
        *_machine_lines(rep),
        "",
        "## Artifacts",
        "",
        _md_table(*_table_rows(rep)),
        "",
        f"![latency vs mIoU]({plot_name})",
        "",
        "## Did INT8 pay off here?",
        "",
        *_int8_lines(rep),
        "",
        "## Targets",
        "",
        *_target_lines(rep),
        "",
    ]
    if rep["kinds"]:
        parts += ["## mIoU per expression kind (Δ = drop against PyTorch FP32, points)", "",
                  _md_table(*_group_table(rep, "by_kind", rep["kinds"])), ""]
    if rep["splits"]:
        parts += ["## oIoU, mIoU and prec@X per split (points)", "", _md_table(*_split_metrics_table(rep)), ""]
    sg_head, sg_body = _split_graph_table(rep)
    if sg_body:
        parts += ["## Split graph: one encoded frame, k expressions (p50 ms)", "", _md_table(sg_head, sg_body), ""]
    parts += _gallery_markdown(rep)
    parts += ["## How these figures were measured", "", *_notes(rep)]
    if ctx.get("commands"):
        parts += ["", "Reproduce:", "", "```", *ctx["commands"], "```"]
    return "\n".join(parts) + "\n"


GALLERY_TITLE = "Mask gallery: the samples where INT8 departs most from FP32 first"
GALLERY_NOTE = (
    "Each row: the image, the ground truth (green), then each artifact's mask (red) with its IoU against the ground "
    "truth and its agreement (agr, IoU) with the FP32 mask."
)


def _gallery_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    return ((rep.get("gallery") or {}).get("rows")) or []


def _gallery_cell(panel: dict[str, Any]) -> str:
    figures = [f"IoU {panel['iou_gt']:.2f}" if panel.get("iou_gt") is not None else None,
               f"agr {panel['agreement']:.2f}" if panel.get("agreement") is not None else None]  # fmt: skip
    return ", ".join(f for f in figures if f) or "–"


def _gallery_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = _gallery_rows(rep)
    names = [p["title"] for p in rows[0]["panels"][1:]] if rows else []
    body = [[r["sample_id"], r["sentence"], *[_gallery_cell(p) for p in r["panels"][1:]]] for r in rows]
    return ["sample", "sentence", *names], body


def _gallery_markdown(rep: dict[str, Any]) -> list[str]:
    rows = _gallery_rows(rep)
    if not rows:
        return []
    parts = [f"## {GALLERY_TITLE}", "", GALLERY_NOTE, "", _md_table(*_gallery_table(rep)), ""]
    parts += [f"![{r['sample_id']}](gallery/{r['file']})" for r in rows]
    return [*parts, ""]


def _gallery_html(rep: dict[str, Any], pictures: dict[str, bytes]) -> list[str]:
    rows = _gallery_rows(rep)
    if not rows:
        return []
    parts = [f"<h2>{html.escape(GALLERY_TITLE)}</h2>", f"<p>{html.escape(GALLERY_NOTE)}</p>",
             _html_table(*_gallery_table(rep))]  # fmt: skip
    for r in rows:
        data = pictures.get(r["file"])
        if data:
            parts.append(f'<div><img alt="{html.escape(r["sample_id"])}" '
                         f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></div>')  # fmt: skip
    return parts


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


def render_html(
    rep: dict[str, Any], svg: str | None = None, png: bytes | None = None, gallery: dict[str, bytes] | None = None
) -> str:
    """A self-contained HTML page: inline CSS, the plot inline (SVG, or base64 PNG), the gallery's pictures inline
    (``gallery``: file name -> PNG bytes), no external resources."""
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
        _html_list(_machine_lines(rep)),
        "<h2>Artifacts</h2>",
        _html_table(*_table_rows(rep), status_col=1, bold=front),
        "<p>Bold rows are on the Pareto front: no other artifact that passed validation is both faster and more "
        "accurate.</p>",
        f"<div class='plot'>{figure}</div>",
        "<h2>Did INT8 pay off here?</h2>",
        _html_list(_int8_lines(rep)),
        "<h2>Targets</h2>",
        _html_list(_target_lines(rep)),
    ]
    if rep["kinds"]:
        parts += ["<h2>mIoU per expression kind (Δ = drop against PyTorch FP32, points)</h2>",
                  _html_table(*_group_table(rep, "by_kind", rep["kinds"]))]
    if rep["splits"]:
        parts += ["<h2>oIoU, mIoU and prec@X per split (points)</h2>", _html_table(*_split_metrics_table(rep))]
    sg_head, sg_body = _split_graph_table(rep)
    if sg_body:
        parts += ["<h2>Split graph: one encoded frame, k expressions (p50 ms)</h2>", _html_table(sg_head, sg_body)]
    parts += _gallery_html(rep, gallery or {})
    parts += ["<h2>How these figures were measured</h2>", _html_list(_notes(rep))]
    if ctx.get("commands"):
        parts += ["<p>Reproduce:</p><pre>", html.escape("\n".join(ctx["commands"])), "</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(rep: dict[str, Any], out_dir: str | Path, gallery_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``report.json``, ``latency_vs_miou.png`` and ``.svg`` into ``out_dir``,
    and the mask gallery's pictures (``rep["gallery"]``, PNGs read from ``gallery_dir``) under ``out_dir/gallery/``.

    Returns:
        Name → path of each file written.
    """
    out = Path(out_dir)
    pictures: dict[str, bytes] = {}
    for row in _gallery_rows(rep):
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
    atomic_write_text(paths["html"], render_html(rep, svg=svg, png=png, gallery=pictures))
    atomic_write_json(paths["json"], rep)
    return paths


def load_json(path: str | Path) -> dict[str, Any] | None:
    """Read a stage's JSON result, or None when the file does not exist."""
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None
