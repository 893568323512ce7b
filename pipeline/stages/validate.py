"""The ``validate`` stage: every artifact on every evaluation split against a re-run PyTorch FP32 reference.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages validate [--set validate.max_samples=200]``.

Writes ``results.json`` (per artifact: status, oIoU / mIoU / prec@X overall, per split and per expression kind, the
mIoU and oIoU drop against PyTorch FP32 with a paired bootstrap 95% CI, agreement with the FP32 masks, pass/fail
against ``quant.budget_miou``) and ``samples/<artifact>.json`` (per-sample I and U, to re-compare later).

Gating: an INT8 artifact over the budget gets status ``validation failed``, but this stage still finishes and writes
its manifest, so ``bench`` and ``report`` run and the report shows the failure. The ``gate`` stage (declared in
:mod:`pipeline.stages.report`, after ``report``) then raises :class:`StageError` and the pipeline exits non-zero.
Raising here instead would leave no manifest and no report: the user would see an error and not the figures.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline.layout import GALLERY, RESULTS, TOKENIZER, TUNING_IDS
from pipeline.stage import CODE_EVALUATION, MEASURED_UPSTREAM, StageContext, stage
from runtimes.formats import REFERENCE

log = logging.getLogger(__name__)


def gate_verdict(entry: dict[str, Any], budget: float, gate_on: str) -> bool:
    """Does an artifact's mIoU drop hold the budget (points)? The estimate, or the CI's pessimistic end."""
    from benchmarks.accuracy import miou_drop_points

    drop = miou_drop_points(entry)
    if drop is None:
        return False
    estimate, _low, high = drop
    return (high if gate_on == "upper_ci" else estimate) <= budget


@stage(
    "validate",
    upstream=MEASURED_UPSTREAM,
    sections=("data", "model", "quant", "validate", "device"),  # not bench: its settings do not change accuracy
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers", "onnxruntime", "openvino", "tensorrt"),
    code=(
        *CODE_EVALUATION,
        "benchmarks.accuracy",
        "benchmarks.artifacts",
        "benchmarks.gallery",
        "benchmarks.latency",
        "benchmarks.machine",
        "quantize",
    ),
    per_device=True,
)
def run_validate(ctx: StageContext) -> dict[str, Any]:
    """Score every artifact in lockstep with the FP32 reference and write ``results.json``."""
    from benchmarks.artifacts import find_artifacts, load_runnable
    from foundation.errors import StageError
    from foundation.io import atomic_write_json
    from pipeline.data.dataset import open_dataset

    cfg = ctx.cfg
    threads = cfg.device.threads  # accuracy does not depend on it; bench.threads stays out of this stage's key
    # 1. artifacts and their runtimes; what cannot load becomes a row with a status
    arts = find_artifacts(ctx.upstream_dirs, cfg.device.precision, cfg.openvino_artifacts(cfg.export.openvino))
    loaded, statuses = load_runnable(arts, threads)
    if REFERENCE not in loaded:
        raise StageError(f"validate: the PyTorch FP32 reference cannot run: {statuses.get(REFERENCE)}")
    # 2. one pre-processing for all: every artifact must describe the same one as the reference
    proc = common_processing(ctx, loaded, statuses)
    # 3. lockstep evaluation over the eval splits, then drops with bootstrap CIs
    refer = open_dataset(cfg, ctx.upstream("data"))
    scored = score_artifacts(ctx, refer, loaded, arts, proc)
    # 4. rows, pass/fail, files
    rows, failed = result_rows(arts, statuses, scored["summary"], cfg.quant.budget_miou, cfg.validate_.gate_on)
    for name, result in scored["results"].items():
        if name in rows and not result.error:
            atomic_write_json(ctx.out / "samples" / f"{name}.json", result.metrics.state_dict())
    out = {
        "reference": REFERENCE,
        "budget_miou_points": cfg.quant.budget_miou,
        "target_miou_points": cfg.quant.target_miou,
        "gate_on": cfg.validate_.gate_on,
        "eval_splits": scored["splits"],
        "n_samples": len(scored["results"][REFERENCE].metrics),
        "excluded_tuning_samples": scored["excluded"],
        "protocol": f"original resolution, bilinear upsampling, sigmoid ≥ {proc.threshold}",
        "processing": proc.describe(),
        "threads": threads,
        "artifacts": rows,
        "order": [a.name for a in arts],
    }
    atomic_write_json(ctx.out / RESULTS, out)
    # 5. the mask gallery: the samples where the artifacts depart most from the FP32 masks, drawn again
    if cfg.validate_.gallery:
        write_validation_gallery(loaded, arts, scored["results"], refer, proc, cfg.validate_.gallery, ctx.out / GALLERY)
    return figures_of(rows, out["n_samples"], cfg.quant.budget_miou, failed)


def common_processing(ctx: StageContext, loaded: dict[str, Any], statuses: dict[str, str]) -> Any:
    """The reference's pre-processing; an artifact that describes another one is dropped with an error status."""
    from runtimes.processing import Processing

    tok_dir = ctx.upstream("export") / TOKENIZER
    proc = Processing.from_metadata(loaded[REFERENCE].metadata, tok_dir if tok_dir.is_dir() else None)
    proc.threshold = ctx.cfg.model.threshold  # a checkpoint need not record it; exported artifacts do, and must agree
    for name, rt in list(loaded.items()):
        other = Processing.from_metadata(rt.metadata)
        if other.signature() != proc.signature():
            statuses[name] = f"error: pre-processing {other.describe()} differs from the reference's {proc.describe()}"
            del loaded[name]
    return proc


def score_artifacts(ctx: StageContext, refer: Any, loaded: dict[str, Any], arts: list[Any], proc: Any) -> dict:
    """Every loaded artifact on the evaluation samples (less the INT8 fallback's tuning samples, which would flatter
    the gate), FP32 exports on their subset; per-artifact results and their summary against the reference."""
    from benchmarks.accuracy import eval_samples, evaluate, sample_key, selected_samples, summarize

    cfg = ctx.cfg
    splits = [s for s in cfg.data.eval_splits if s in refer.splits]
    tuning = ctx.upstream_dirs.get("quantize", ctx.out) / TUNING_IDS
    tuned = json.loads(tuning.read_text())["ids"] if tuning.is_file() else []
    samples = eval_samples(refer, splits, proc, cfg.validate_.max_samples, exclude=tuned)
    chosen = selected_samples(refer, splits, cfg.validate_.max_samples, exclude=tuned)
    only = fp32_subsets(loaded, arts, [sample_key(split, s) for split, s in chosen], cfg.validate_.fp32_max_samples)
    results = evaluate(loaded, samples, REFERENCE, processing=proc, only=only)
    summary = summarize(results, REFERENCE, n_boot=cfg.validate_.bootstrap, seed=cfg.run.seed)
    return {"splits": splits, "excluded": len(tuned), "results": results, "summary": summary}


def result_rows(
    arts: list[Any], statuses: dict[str, str], summary: dict[str, Any], budget: float, gate_on: str
) -> tuple[dict[str, Any], list[str]]:
    """One row per artifact (description, metrics, drop, status); gated ones over the budget fail validation."""
    rows: dict[str, Any] = {}
    failed = []
    for art in arts:
        entry = {**art.describe(), **summary.get(art.name, {})}
        if art.name in statuses:
            entry["status"] = statuses[art.name]
        if entry.get("status") == "ok" and art.gated:
            entry["passed"] = gate_verdict(entry, budget, gate_on)
            if not entry["passed"]:
                entry["status"] = "validation failed"
                failed.append(art.name)
        rows[art.name] = entry
    return rows, failed


def figures_of(rows: dict[str, Any], n_samples: int, budget: float, failed: list[str]) -> dict[str, Any]:
    """The manifest's figures (and one log line per artifact)."""
    for name, entry in rows.items():
        drop = (entry.get("drop_vs_reference") or {}).get("mIoU", {})
        log.info("validate: %-18s %-22s mIoU %s, drop %s points", name, entry["status"][:22],
                 _fmt((entry.get("metrics") or {}).get("overall", {}).get("mIoU")),
                 _fmt(None if not drop else round(-100 * drop["diff"], 4)))  # fmt: skip
    return {
        "n_samples": n_samples,
        "budget_miou_points": budget,
        "failed": failed,
        "statuses": {n: e["status"] for n, e in rows.items()},
        "miou": {n: (e.get("metrics") or {}).get("overall", {}).get("mIoU") for n, e in rows.items()},
        "drop_points": {
            n: -100 * e["drop_vs_reference"]["mIoU"]["diff"] for n, e in rows.items() if e.get("drop_vs_reference")
        },
    }


def fp32_subsets(loaded: dict[str, Any], arts: list[Any], sample_ids: list[str], limit: int | None) -> dict[str, Any]:
    """name → the sample ids of each FP32 export other than the reference: ``limit`` per split, spread evenly."""
    from benchmarks.sampling import select

    if limit is None:
        return {}
    by_split: dict[str, list[str]] = {}
    for sid in sample_ids:
        by_split.setdefault(sid.split(":", 1)[0], []).append(sid)
    ids = [sid for split_ids in by_split.values() for sid in select(split_ids, limit)]
    return {a.name: ids for a in arts if a.name in loaded and a.name != REFERENCE and a.precision == "fp32"}


def write_validation_gallery(
    loaded: dict[str, Any], arts: list[Any], results: dict[str, Any], refer: Any, proc: Any, n: int, out: Any
) -> dict[str, Any]:
    """Pick ``n`` samples by agreement with the reference (lowest first) and write their pictures to ``out``."""
    from benchmarks.gallery import gallery_rows, gallery_samples, pick_samples, write_gallery

    scored = {name: r for name, r in results.items() if name in loaded and not r.error}
    # the reference and the artifacts that may depart from it (INT8, FP16); the FP32 exports match it to 1e-5
    kept = [name for name in scored if name == REFERENCE or name in {a.name for a in arts if a.precision != "fp32"}]
    agreements = {name: scored[name].agreement.by_sample() for name in kept if name != REFERENCE}
    if not agreements:  # only the reference ran: spread over its samples
        agreements = {REFERENCE: dict.fromkeys(scored[REFERENCE].metrics.state_dict()["sample_id"], 1.0)}
    picks = pick_samples(agreements, n)
    runtimes = {name: loaded[name] for name in kept}
    rows = gallery_rows(runtimes, REFERENCE, gallery_samples(refer, picks, proc), proc.threshold)
    return write_gallery(rows, out)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x + 0.0:.4f}"  # + 0.0: no "-0.0000"
