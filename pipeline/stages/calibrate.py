"""The ``calibrate`` stage: the INT8 calibration set (train split only, stratified, disjoint from evaluation).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages calibrate [--set calibrate.samples=300]``.

Writes ``calib.npz`` (``image`` float32 [N,3,S,S], ``input_ids`` / ``attention_mask`` int32 [N,L], ``ids``) and
``ids.json``; the figures record every sample id, the strata counts and the overlap check.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.layout import CALIBRATION
from pipeline.stage import CODE_TRAINING, StageContext, stage

log = logging.getLogger(__name__)


@stage(
    "calibrate",
    upstream=("data",),
    sections=("data", "model", "distill", "calibrate"),  # distill: the student's input size when it is deployed
    version="1",
    toolchain=("tokenizers", "transformers"),
    code=(*CODE_TRAINING, "quantize.calibration"),
)
def run_calibrate(ctx: StageContext) -> dict[str, Any]:
    """Pick, check and save the calibration samples as model inputs."""
    from foundation.io import atomic_write_json
    from model import resolve_spec
    from pipeline.data.dataset import open_dataset
    from pipeline.training.jobs import deployed_model
    from quantize.calibration import (
        MIN_RECOMMENDED,
        build_arrays,
        eval_keys,
        sample_id,
        save_calibration,
        select_calibration,
        strata,
    )
    from runtimes.tokenizer import TextTokenizer

    cfg = ctx.cfg
    # 1. the model's input size and token length (no weights needed)
    m = deployed_model(cfg)  # the distilled student's input size when distill is enabled
    spec = resolve_spec(m.variant, img_size=m.img_size, max_tokens=m.max_tokens, text_dir=m.text_dir)
    # 2. stratified draw from the train split, disjoint from every evaluation split
    refer = open_dataset(cfg, ctx.upstream("data"))
    keys = eval_keys(refer, cfg.data.eval_splits)
    picked = select_calibration(refer, cfg.calibrate.samples, keys, split=cfg.data.train_split, seed=cfg.calibrate.seed)
    # 3. model inputs
    tok = TextTokenizer.from_dir(spec.text_dir, max_length=spec.max_tokens)
    arrays = build_arrays(refer, picked, tok, spec.img_size)
    save_calibration(ctx.out / CALIBRATION, arrays)
    ids = [sample_id(s) for s in picked]
    atomic_write_json(ctx.out / "ids.json", {"split": cfg.data.train_split, "ids": ids})
    log.info("calibrate: %d samples from %s (%s)", len(ids), cfg.data.train_split, strata(refer, picked)["kind"])
    return {
        "samples": len(ids),
        "requested": cfg.calibrate.samples,
        "below_recommended": len(ids) < MIN_RECOMMENDED,
        "split": cfg.data.train_split,
        "checked_disjoint_from": list(cfg.data.eval_splits),
        "strata": strata(refer, picked),
        "img_size": spec.img_size,
        "max_tokens": spec.max_tokens,
        "ids": ids,
    }
