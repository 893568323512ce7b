"""The report's figures: one row per artifact joined from the stage results, INT8 verdicts, targets, Pareto front.

Usage: ``rep = assemble(validation, bench, quant_figures, context)``; :func:`benchmarks.report.write_report` writes it.

Inputs are the JSON results of the ``validate`` and ``bench`` stages (see :mod:`pipeline.stages.validate` and
:mod:`pipeline.stages.bench`) and the ``quantize`` stage's figures (the nodes returned to float). Every artifact that
was asked for gets a row, whatever happened to it: ``ok``, ``validation failed`` (over the mIoU budget),
``unavailable: <reason>`` (backend not installed here, e.g. TensorRT on a CPU host) or ``error: <message>``.

The three headline figures follow NNCF's examples: the mIoU drop against the re-run PyTorch FP32 reference (points,
with its paired bootstrap 95% CI), the size ratio against the FP32 artifact of the same format, and the speed-up
against PyTorch FP32 eager on the same inputs in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REFERENCE = "pytorch-fp32"
POINTS = 100.0  # metrics are fractions; the report speaks in points (1 point = 0.01 mIoU)
SPEEDUP_TARGET = 2.5
EXPRESSION_TARGET = 0.35
INT8_SIZE_TARGET = 0.35
PAYOFF_MIN_SPEEDUP = 1.05  # INT8 "paid off" only if at least 5% faster than FP32 of the same runtime, and valid
STATUS_COLOURS = {"ok": "#1a7f37", "validation failed": "#cf222e", "unavailable": "#6e7781", "error": "#9a6700"}


def status_kind(status: str) -> str:
    """``ok``, ``validation failed``, ``unavailable`` or ``error``: a status without its reason."""
    return status.split(":", 1)[0].strip()


def _row_status(val: dict[str, Any] | None, bench: dict[str, Any] | None) -> str:
    """Worst of validation and bench status; unavailable wins over everything (nothing could run)."""
    statuses = [s for s in ((val or {}).get("status"), (bench or {}).get("status")) if s]
    for kind in ("unavailable", "error", "validation failed"):
        for s in statuses:
            if status_kind(s) == kind:
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


def _artifact_row(
    name: str,
    val: dict[str, Any] | None,
    ben: dict[str, Any] | None,
    meta: dict[str, dict[str, Any]],
    ref_lat: float | None,
    quant_figures: dict[str, Any],
) -> dict[str, Any]:
    """One artifact's row: its status, metrics, drops in points, size ratio, latency, speed-up and float fallback."""
    info = meta[name]
    lat = (ben or {}).get("latency") or {}
    size = info.get("size_bytes")
    ratio, ratio_ref = _size_ratio(name, meta, size)
    p50 = lat.get("p50_ms")
    return {
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
        "roofline": (ben or {}).get("roofline"),
    }


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
    rows = [_artifact_row(n, v_art.get(n), b_art.get(n), meta, ref_lat, quant_figures) for n in names]
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
        "peaks": bench.get("peaks", {}),
        "rows": rows,
        "kinds": kinds,
        "splits": splits,
    }
    report["int8"] = int8_verdicts(rows)
    report["targets"] = targets(rows)
    # the front is drawn over deployable artifacts only: a failed INT8 row may be fast, but it is not an option
    points = plot_points(rows)
    deployable = [p if status_kind(r["status"]) == "ok" else None for r, p in zip(rows, points, strict=True)]
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
        valid = status_kind(i8["status"]) == "ok"
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
        if r["speedup"] and r["name"] != REFERENCE and status_kind(r["status"]) == "ok" and r["runtime"] != "tensorrt"
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


def plot_points(rows: list[dict[str, Any]]) -> list[tuple[float, float] | None]:
    """``(latency p50 ms, mIoU)`` per row, or None for a row without both figures."""
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
