"""The ``report`` stage (report.md / .html / .json + Pareto plot) and the ``gate`` stage that fails the run after it.

Usage: ``python -m pipeline run --config configs/demo.yaml --device x86-cpu --stages report`` (``gate`` runs last in a
full run; ``--stages gate`` runs everything it needs and exits non-zero when an INT8 artifact is over budget).
``python -m pipeline report --config configs/demo.yaml --device x86-cpu`` re-renders the report from the finished
stages (:func:`build_report`, the stage's own code) into ``report-rerendered/`` beside it, e.g. after editing the
report code.

Why two stages: a gate that raised inside ``validate`` would leave that stage without a manifest, so neither the
benchmark nor the report would exist, and the user would get an error without the figures that explain it.
``validate`` records ``validation failed`` rows and finishes; ``report`` shows them; ``gate`` (upstream: validate and
report) raises :class:`StageError` with a summary. A failed gate writes no manifest, so it fails again on the next
run until the artifacts change, never silently passing from a cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.layout import DIAGNOSE, GALLERY, RESULTS, stage_figures
from pipeline.stage import CODE_REPORTING, StageContext, stage

COMMANDS = (
    "make bench CONFIG={config} DEVICE={device}    # or: python -m pipeline run -c {config} --device {device} "
    "--stages bench",
    "make report CONFIG={config} DEVICE={device}   # or: python -m pipeline run -c {config} --device {device} "
    "--stages report",
    "python -m benchmarks screenshot {html}   # headless Chromium rendering to PNG",
)


def fallback_nodes(quant: dict[str, Any]) -> dict[str, list[str]]:
    """Nodes the quantize stage returned to float, per report row.

    The Q/DQ graph's accuracy-targeted fallback lists its exclusions (the mask head, kept float by policy, is not a
    fallback and is left out); NNCF records ignored or reverted nodes when accuracy control ran.
    """
    out: dict[str, list[str]] = {}
    qdq = quant.get("full_int8_qdq.onnx") or {}
    if "fallback" in qdq:
        head = set(qdq.get("mask_head") or [])
        out["onnxruntime-int8"] = [n for n in qdq["fallback"].get("excluded", []) if n not in head]
    ov = quant.get("full_int8.xml") or {}
    if ov:
        info = ov.get("quantization") or {}
        out["openvino-int8"] = list(info.get("reverted") or info.get("ignored") or [])
    return out


def build_report(
    cfg: Config,
    validate_dir: Path,
    bench_dir: Path,
    quantize_dir: Path,
    final: Path,
    qat_dir: Path | None = None,
    diagnose_dir: Path | None = None,
) -> dict[str, Any]:
    """The report of one device: validation, benchmark and quantization results with the mask gallery, assembled.

    The ``report`` stage and ``python -m pipeline report`` (a re-render from finished stages) both call this.

    Args:
        cfg: the resolved config of the run and device.
        validate_dir: the ``validate`` stage's folder (``results.json``, ``gallery/``).
        bench_dir: the ``bench`` stage's folder (``results.json``).
        quantize_dir: the ``quantize`` stage's folder of the same device (its manifest lists the fallback nodes).
        final: the report stage's folder, named in the report's commands.
        qat_dir: the ``qat`` stage's folder (its figures: QAT against PTQ), when that stage is enabled.
        diagnose_dir: the ``diagnose`` stage's folder (sensitivity, first divergence), when enabled.
    """
    from benchmarks.gallery import read_gallery
    from benchmarks.report import load_json
    from benchmarks.report_assembly import assemble

    validation = load_json(validate_dir / RESULTS)
    bench = load_json(bench_dir / RESULTS)
    quant = {"fallback": fallback_nodes(stage_figures(quantize_dir))}
    config = "configs/<your config>.yaml" if cfg.run.name != "demo" else "configs/demo.yaml"
    context = {
        "run": cfg.run.name,
        "device": cfg.device.name,
        "device_description": cfg.device.description,
        "variant": cfg.model.variant,
        "config_digest": cfg.digest(["model", "quant", "device", "bench", "validate"])[:16],
        "commands": [c.format(config=config, device=cfg.device.name, html=final / "report.html") for c in COMMANDS],
    }
    rep = assemble(validation, bench, quant, context)
    rep["gallery"] = read_gallery(validate_dir / GALLERY)
    rep["qat"] = stage_figures(qat_dir) if qat_dir is not None else {}
    rep["diagnostics"] = load_json(diagnose_dir / DIAGNOSE) if diagnose_dir is not None else None
    return rep


@stage(
    "report",
    upstream=("validate", "bench", "quantize", "qat", "diagnose"),
    sections=("device", "quant", "validate", "bench"),
    version="1",
    code=CODE_REPORTING,
    per_device=True,
)
def run_report(ctx: StageContext) -> dict[str, Any]:
    """Assemble validation, benchmark and quantization results into report.md / .html / .json and the plot."""
    from benchmarks.report import write_report

    final = ctx.layout.stage_dir(ctx.name)  # where the runner puts this stage's outputs (named in the report)
    up = ctx.upstream_dirs
    rep = build_report(ctx.cfg, up["validate"], up["bench"], up["quantize"], final, up.get("qat"), up.get("diagnose"))
    paths = write_report(rep, ctx.out, up["validate"] / GALLERY, up.get("diagnose"))
    return {
        "files": sorted(p.name for p in paths.values()),
        "statuses": {r["name"]: r["status"] for r in rep["rows"]},
        "pareto": rep["pareto"],
        "int8_paid_off": {v["runtime"]: v["paid_off"] for v in rep["int8"]},
        "targets": rep["targets"],
    }


@stage(
    "gate",
    upstream=("validate", "report"),
    sections=("quant", "validate"),
    version="1",
    code=CODE_REPORTING,
    per_device=True,
)
def run_gate(ctx: StageContext) -> dict[str, Any]:
    """Fail the run (non-zero exit) when a gated INT8 artifact is over the mIoU budget; the report is written first.

    Raises:
        StageError: one or more gated artifacts failed validation; the message lists each with its drop and CI.
    """
    from benchmarks.report import load_json
    from foundation.errors import StageError

    validation = load_json(ctx.upstream("validate") / RESULTS) or {}
    budget = validation.get("budget_miou_points")
    lines = []
    for name, entry in validation.get("artifacts", {}).items():
        if entry.get("status") != "validation failed":
            continue
        m = (entry.get("drop_vs_reference") or {}).get("mIoU", {})
        lines.append(
            f"  {entry.get('label', name)}: mIoU drop {-100 * m.get('diff', float('nan')):+.2f} points "
            f"[95% CI {-100 * m.get('upper', float('nan')):+.2f}, {-100 * m.get('lower', float('nan')):+.2f}] "
            f"> budget {budget} (gate on the {validation.get('gate_on', 'estimate')})"
        )
    if lines:
        report = ctx.upstream("report") / "report.md"
        raise StageError(
            f"INT8 accuracy gate failed on device {ctx.cfg.device.name!r}:\n" + "\n".join(lines) + "\n"
            f"Every figure is in {report} (and report.html). To fix: allow more fallback steps "
            "(quant.max_fallback_steps), calibrate on more samples (calibrate.samples), or ship the FP32 artifact."
        )
    gated = [n for n, e in validation.get("artifacts", {}).items() if e.get("gated")]
    return {"passed": True, "budget_miou_points": budget, "gated": gated}
