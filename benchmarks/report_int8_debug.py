"""The report's per-artifact INT8 debugging sections: layer-group sensitivity and first divergence from FP32.

Usage: ``for section in diagnostic_sections(rep): ...``: the roofline and QAT sections
(:mod:`benchmarks.report_diagnostics`), then per INT8 artifact its sensitivity and first-divergence sections (from
``rep["diagnostics"]``: the ``diagnose`` stage's ``diagnose.json``).
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report_diagnostics import Section, _f, qat_section, roofline_section

LABELS = {"onnxruntime-int8": "Q/DQ INT8 ONNX (ONNX Runtime)", "openvino-int8": "OpenVINO INT8 IR (NNCF)"}
TOP_GROUPS = 12  # rows of a sensitivity table
WORST_LAYERS = 8  # rows of a divergence table besides the first divergence and the output


def _num(x: Any) -> float | None:
    if x in ("inf", "-inf"):
        return math.inf if x == "inf" else -math.inf
    return None if x is None else float(x)


def sensitivity_sections(rep: dict[str, Any]) -> list[Section]:
    """Per INT8 artifact: its layer groups ranked by the accuracy that keeping each one float recovers."""
    sections = []
    for name, entry in ((rep.get("diagnostics") or {}).get("artifacts") or {}).items():
        s = entry.get("sensitivity")
        if not s:
            continue
        lines = [
            f"All INT8: mIoU drop {_f(s['int8_drop_points'])} points, mask agreement "
            f"{_f(s.get('int8_agreement'), '.3f')} on {s['samples']} tuning samples (calibration-disjoint); each row "
            "is the artifact with one layer group changed by graph surgery, no re-calibration. Recovery = all-INT8 "
            "drop − the drop with that group alone in float (points); run-to-run noise "
            f"{_f(s.get('noise_points'))} points.",
        ]
        head = ["Layer group", "nodes", "alone float: drop", "agreement", "recovery", "alone INT8: drop"]
        body = [[g["name"], str(len(g["nodes"])), _f(g.get("float_drop")), _f(g.get("float_agreement"), ".3f"),
                 _f(g.get("recovery"), "+.2f"), _f(g.get("quantized_drop"))]
                for g in s["groups"][:TOP_GROUPS]]  # fmt: skip
        if len(s["groups"]) > TOP_GROUPS:
            lines.append(f"{len(s['groups']) - TOP_GROUPS} less sensitive groups left out (diagnose.json has all).")
        title = f"INT8 sensitivity per layer group: {LABELS.get(name, name)}"
        sections.append(Section(title, lines, head, body, picture=s.get("picture")))
    return sections


def divergence_sections(rep: dict[str, Any]) -> list[Section]:
    """Per INT8 artifact: the first layer whose SQNR against FP32 falls below the threshold, the worst layers and
    the output."""
    sections = []
    for name, entry in ((rep.get("diagnostics") or {}).get("artifacts") or {}).items():
        d = entry.get("divergence")
        if not d:
            continue
        first = d.get("first_divergence")
        where = (
            f"first below {d['threshold_db']} dB: layer {first['index']} `{first['layer']}` ({first['op_type']}), "
            f"SQNR {_f(_num(first['sqnr_db']), '.1f')} dB"
            if first
            else f"no layer falls below {d['threshold_db']} dB"
        )
        lines = [f"{d['compared']} tensors compared on {d['samples']} calibration samples; {where}."]
        head = ["", "#", "layer", "op", "SQNR dB", "cosine"]
        rows = [("first", first)] if first else []
        rows += [("worst", w) for w in d.get("worst", [])[:WORST_LAYERS]]
        rows += [("output", d.get("final"))]
        body = [[tag, str(x.get("index", "")), x.get("layer", x.get("tensor", "")), x.get("op_type", ""),
                 _f(_num(x.get("sqnr_db")), ".1f"), _f(_num(x.get("cosine")), ".4f")]
                for tag, x in rows if x]  # fmt: skip
        sections.append(Section(f"First divergence from FP32: {LABELS.get(name, name)}", lines, head, body))
    return sections


def diagnostic_sections(rep: dict[str, Any]) -> list[Section]:
    """Every diagnostics section the report's data allow, in reading order."""
    found = [roofline_section(rep), qat_section(rep), *sensitivity_sections(rep), *divergence_sections(rep)]
    return [s for s in found if s is not None]
