"""The ``distill`` stage: train ``distill.student`` from a frozen teacher (only when ``distill.enabled``).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages distill --set distill.enabled=true``.

The teacher is ``distill.teacher_checkpoint`` or, by default, the train stage's ``best.safetensors``. Outputs are
those of the train stage (``best.safetensors`` + ``best.json`` of the student, ``last/``, ``metrics.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.stage import StageContext, stage


def teacher_path(cfg: Config, train_dir: Path) -> Path:
    """The configured teacher checkpoint, or the train stage's best."""
    return Path(cfg.distill.teacher_checkpoint or train_dir / "best.safetensors")


@stage(
    "distill",
    upstream=("data", "train"),
    sections=("data", "model", "train", "distill"),
    version="1",
    toolchain=("torch", "timm", "transformers"),
    resumable=True,
    enabled=lambda cfg: cfg.distill.enabled,
)
def run_distill(ctx: StageContext) -> dict[str, Any]:
    """Write the student's ``best.safetensors`` + ``best.json``, ``last/``, ``metrics.jsonl``; return figures."""
    from pipeline.distill import distill

    return distill(ctx.cfg, ctx.upstream("data"), teacher_path(ctx.cfg, ctx.upstream("train")), ctx.out)
