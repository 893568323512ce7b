"""The ``distill`` stage: train ``distill.student`` from a frozen teacher (only when ``distill.enabled``).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages distill --set distill.enabled=true``, or
``torchrun --nproc_per_node=2 -m pipeline.train --stage distill --config ... --set distill.enabled=true``.

The teacher is ``distill.teacher_checkpoint`` or, by default, the train stage's ``best.safetensors``. Outputs are
those of the train stage (``best.safetensors`` + ``best.json`` of the student, ``last/``, ``metrics.jsonl``). While
the stage is enabled, the student is what calibrate, export, validate and bench work on
(:func:`pipeline.layout.deployed_checkpoint`).
"""

from __future__ import annotations

from typing import Any

from pipeline.stage import CODE_TRAINING, StageContext, stage


@stage(
    "distill",
    upstream=("data", "train"),
    sections=("data", "model", "train", "distill"),
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers"),
    code=CODE_TRAINING,
    resumable=True,
    enabled=lambda cfg: cfg.distill.enabled,
)
def run_distill(ctx: StageContext) -> dict[str, Any]:
    """Write the student's ``best.safetensors`` + ``best.json``, ``last/``, ``metrics.jsonl``; return figures."""
    from pipeline.training.jobs import distill, teacher_path

    return distill(ctx.cfg, ctx.upstream("data"), teacher_path(ctx.cfg, ctx.upstream("train")), ctx.out)
