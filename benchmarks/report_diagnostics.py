"""The report's INT8 diagnostics: how far each runtime is from the hardware floor (roofline), QAT against PTQ, which
layer groups cost accuracy (sensitivity) and where each INT8 graph first departs from FP32 (first divergence).

Usage: ``roofline_section(rep)``, ``qat_section(rep)``; all sections in reading order:
:func:`benchmarks.report_int8_debug.diagnostic_sections` (the Markdown and HTML reports render them).

Each section is a title, a few lines of text, an optional table (header, rows) and an optional picture (a PNG beside
the report). The data come from the bench results (``roofline``, ``peaks``), the ``qat`` stage's figures and the
``diagnose`` stage's results, put into the report by :func:`pipeline.stages.report.build_report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """One diagnostics section of the report."""

    title: str
    lines: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    body: list[list[str]] = field(default_factory=list)
    picture: str | None = None  # a PNG's file name, beside the report


def _f(x: Any, fmt: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–" if x is None else ("+∞" if x > 0 else "−∞")
    return f"{x:{fmt}}{suffix}"


def roofline_section(rep: dict[str, Any]) -> Section | None:
    """FLOPs per artifact, achieved GFLOP/s and the ratio of the floor (this machine's measured GEMM peaks) to p50."""
    rows = [r for r in rep["rows"] if (r.get("roofline") or {}).get("gflops") is not None]
    if not rows:
        return None
    peaks = rep.get("peaks") or {}
    fp32, int8 = _f(peaks.get("fp32_gflops"), ".0f"), _f(peaks.get("int8_gops"), ".0f")
    lines = [
        f"Peaks measured here with {peaks.get('threads', '?')} threads: FP32 GEMM {fp32} GFLOP/s "
        f"({peaks.get('fp32_method', '?')}), INT8 GEMM {int8} GOP/s ({peaks.get('int8_method', '?')}). The floor is "
        "the time those peaks need for the artifact's GEMM work (its INT8 share at the INT8 peak, the rest at the "
        "FP32 peak); % of floor = floor / p50, so 100% would be a runtime at the hardware limit. Elementwise work "
        "is left out, so the floor is optimistic."
    ]
    head = ["Artifact", "GFLOPs", "INT8 share", "p50 ms", "Achieved GFLOP/s", "Floor ms", "% of floor"]
    body = []
    for r in rows:
        f = r["roofline"]
        ratio = f.get("floor_ratio")
        body.append([r["label"], _f(f["gflops"], ".2f"), _f(100 * f.get("int8_share", 0.0), ".0f", "%"),
                     _f(f.get("p50_ms")), _f(f.get("achieved_gflops"), ".1f"), _f(f.get("floor_ms"), ".3f"),
                     _f(None if ratio is None else 100 * ratio, ".1f", "%")])  # fmt: skip
    return Section("Roofline: distance from this machine's GEMM floor", lines, head, body)


def qat_section(rep: dict[str, Any]) -> Section | None:
    """PTQ and QAT side by side: the tuning-subset drops the stages measured and the evaluation drops of validate."""
    qat = rep.get("qat") or {}
    entries = {k: v for k, v in qat.items() if isinstance(v, dict) and "fine_tuning" in v}
    if not entries:
        if qat.get("mode") and not qat.get("tuned"):
            return Section("QAT against PTQ", [f"QAT (quant.qat.mode={qat['mode']}) had nothing to do: every PTQ "
                                               "drop was within quant.target_miou on the tuning subset."])  # fmt: skip
        return None
    by_name = {r["name"]: r for r in rep["rows"]}
    head = ["INT8 path", "PTQ drop (tuning)", "QAT drop (tuning)", "PTQ drop (eval, 95% CI)",
            "QAT drop (eval, 95% CI)", "QAT agreement", "steps", "fine-tuning s"]  # fmt: skip
    body, lines = [], []
    for file, entry in entries.items():
        ptq_row, qat_row = _rows_for(file, by_name)
        curve = entry["fine_tuning"]
        body.append([entry.get("runtime", "?"), _f((entry.get("ptq") or {}).get("miou_drop_points")),
                     _f(entry.get("miou_drop_points")), _drop(ptq_row), _drop(qat_row),
                     _f(((qat_row or {}).get("agreement") or {}).get("mean_iou"), ".3f"), str(curve["steps"]),
                     _f(curve.get("seconds"), ".0f")])  # fmt: skip
        points = ", ".join(f"{p['step']}: {p['loss']:.3f}" for p in curve.get("curve", []))
        lines.append(f"{entry.get('method', 'qat')}: loss by step {points}.")
    return Section("QAT against PTQ", lines, head, body)


def _rows_for(file: str, by_name: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if file.endswith(".onnx"):
        return by_name.get("onnxruntime-int8"), by_name.get("onnxruntime-int8-qat")
    return by_name.get("openvino-int8"), by_name.get("openvino-int8-qat")


def _drop(row: dict[str, Any] | None) -> str:
    d = (row or {}).get("drop")
    if not d:
        return "–"
    return f"{d['drop']:+.2f} [{d['lower']:+.2f}, {d['upper']:+.2f}]"
