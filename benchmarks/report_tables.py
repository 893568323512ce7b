"""The report's content as plain table cells and list lines, rendered by both the Markdown and the HTML report.

Usage: ``head, body = table_rows(rep)`` (the artifact table); ``machine_lines(rep)``, ``int8_lines(rep)``,
``target_lines(rep)`` and ``notes(rep)`` give Markdown list lines (``- ...``, with ``**bold**`` and backquoted code).

Latency is batch 1 model time (``infer`` only); pre- and post-processing are shared by every runtime and reported
once, beside the table (:func:`notes`).
"""

from __future__ import annotations

from typing import Any

from benchmarks.report_assembly import EXPRESSION_TARGET, INT8_SIZE_TARGET, POINTS, SPEEDUP_TARGET


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


def table_rows(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The artifact table: one row per artifact, its status, accuracy, size, latency and float fallback."""
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


def group_table(rep: dict[str, Any], key: str, groups: list[str]) -> tuple[list[str], list[list[str]]]:
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


def split_metrics_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """oIoU, mIoU and prec@X of each scored artifact, over all samples and per split."""
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


def split_graph_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The split graph's component and k-expression latencies and the cost of an extra expression."""
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


def machine_lines(rep: dict[str, Any]) -> list[str]:
    """The machine the benchmark ran on: CPU, INT8 hardware, OS, libraries, a busy-host warning, Jetson mode."""
    from benchmarks.machine import describe_machine

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


def int8_lines(rep: dict[str, Any]) -> list[str]:
    """One verdict line per runtime: did INT8 pay off on this machine."""
    if not rep["int8"]:
        return ["- no runtime has both an FP32 and an INT8 row measured here"]
    out = []
    for v in rep["int8"]:
        verdict = {True: "**yes**", False: "**no**", None: "unknown"}[v["paid_off"]]
        out.append(f"- {v['runtime']}: INT8 paid off on this machine: {verdict} ({v['why']})")
    return out


def target_lines(rep: dict[str, Any]) -> list[str]:
    """The DESIGN §9 targets measured in this run, each met or not."""
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


def notes(rep: dict[str, Any]) -> list[str]:
    """How the figures were measured: accuracy protocol, latency settings, shared processing, size ratio."""
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


GALLERY_TITLE = "Mask gallery: the samples where INT8 departs most from FP32 first"
GALLERY_NOTE = (
    "Each row: the image, the ground truth (green), then each artifact's mask (red) with its IoU against the ground "
    "truth and its agreement (agr, IoU) with the FP32 mask."
)


def gallery_entries(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The mask gallery's rows recorded in the report (``rep["gallery"]["rows"]``), or none."""
    return ((rep.get("gallery") or {}).get("rows")) or []


def _gallery_cell(panel: dict[str, Any]) -> str:
    figures = [f"IoU {panel['iou_gt']:.2f}" if panel.get("iou_gt") is not None else None,
               f"agr {panel['agreement']:.2f}" if panel.get("agreement") is not None else None]  # fmt: skip
    return ", ".join(f for f in figures if f) or "–"


def gallery_table(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per gallery sample: its id, sentence, and each artifact's IoU and agreement with FP32."""
    rows = gallery_entries(rep)
    names = [p["title"] for p in rows[0]["panels"][1:]] if rows else []
    body = [[r["sample_id"], r["sentence"], *[_gallery_cell(p) for p in r["panels"][1:]]] for r in rows]
    return ["sample", "sentence", *names], body
