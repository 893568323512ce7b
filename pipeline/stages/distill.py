"""The ``distill`` stage: train ``distill.student`` from a frozen teacher (only when ``distill.enabled``).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages distill --set distill.enabled=true``.

The teacher is ``distill.teacher_checkpoint`` or, by default, the train stage's ``best.safetensors``. Outputs are
those of the train stage (``best.safetensors`` + ``best.json`` of the student, ``last/``, ``metrics.jsonl``). While
the stage is enabled, the student is what calibrate, export, validate and bench work on (:func:`deployed_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import Config, ModelConfig
from pipeline.stage import CODE_TRAINING, StageContext, stage


def teacher_path(cfg: Config, train_dir: Path) -> Path:
    """The configured teacher checkpoint, or the train stage's best."""
    return Path(cfg.distill.teacher_checkpoint or train_dir / "best.safetensors")


def deployed_model(cfg: Config) -> ModelConfig:
    """The model section of what the pipeline deploys: the student when ``distill.enabled``, else ``model``."""
    if not cfg.distill.enabled:
        return cfg.model
    from pipeline.distill import student_config

    return student_config(cfg).model


def deployed_checkpoint(upstream: Mapping[str, Path]) -> Path:
    """The checkpoint export, validate and bench use: the distilled student when the distill stage ran (it is an
    upstream only while enabled), else the train stage's best."""
    return upstream["distill" if "distill" in upstream else "train"] / "best.safetensors"


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
    from pipeline.distill import distill

    return distill(ctx.cfg, ctx.upstream("data"), teacher_path(ctx.cfg, ctx.upstream("train")), ctx.out)
