"""The ``distill`` stage: train ``distill.student`` from a frozen teacher (only when ``distill.enabled``).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages distill --set distill.enabled=true``, or
``torchrun --nproc_per_node=2 -m pipeline.train --stage distill --config ... --set distill.enabled=true``.

The teacher is ``distill.teacher_checkpoint`` or, by default, the train stage's ``best.safetensors``. Outputs are
those of the train stage (``best.safetensors`` + ``best.json`` of the student, ``last/``, ``metrics.jsonl``). While
the stage is enabled, the student is what calibrate, export, validate and bench work on (:func:`deployed_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundation.errors import CheckpointError
from pipeline.config import Config, ModelConfig
from pipeline.stage import CODE_TRAINING, StageContext, stage


def student_config(cfg: Config) -> Config:
    """The config the loop runs for distillation: the student as ``model``, ``distill.steps``/``lr`` in ``train``."""
    d = cfg.distill
    model = ModelConfig(
        variant=d.student,
        img_size=d.student_img_size,
        max_tokens=cfg.model.max_tokens,
        vision_checkpoint=d.student_vision_checkpoint,
        allow_download=cfg.model.allow_download,
        threshold=cfg.model.threshold,
    )
    train = cfg.train.model_copy(update={"steps": d.steps, "epochs": None, "lr": d.lr or cfg.train.lr})
    return cfg.model_copy(update={"model": model, "train": train})


def teacher_path(cfg: Config, train_dir: Path) -> Path:
    """The configured teacher checkpoint, or the train stage's best."""
    return Path(cfg.distill.teacher_checkpoint or train_dir / "best.safetensors")


def deployed_model(cfg: Config) -> ModelConfig:
    """The model section of what the pipeline deploys: the student when ``distill.enabled``, else ``model``."""
    return student_config(cfg).model if cfg.distill.enabled else cfg.model


def deployed_checkpoint(upstream: Mapping[str, Path]) -> Path:
    """The checkpoint export, validate and bench use: the distilled student when the distill stage ran (it is an
    upstream only while enabled), else the train stage's best."""
    return upstream["distill" if "distill" in upstream else "train"] / "best.safetensors"


def distill(cfg: Config, data_dir: Path, teacher: Path, out: Path) -> dict[str, Any]:
    """Distil ``cfg.distill.student`` from the ``teacher`` checkpoint into ``out`` (resumable like training).

    The student trains with the ``train`` section's optimizer, schedule, validation and checkpoints, for
    ``distill.steps`` at ``distill.lr`` (default ``train.lr``); the loss is
    :class:`~pipeline.training.objectives.DistillObjective`'s.

    Returns:
        The training figures of the student plus the teacher's path.

    Raises:
        CheckpointError: the teacher checkpoint is missing or unreadable, or ``out/last`` is another run's.
    """
    from pipeline.training.loop import fit
    from pipeline.training.objectives import distill_task

    teacher = Path(teacher)
    if not teacher.with_suffix(".safetensors").is_file():
        raise CheckpointError(
            f"teacher checkpoint {teacher} not found; set distill.teacher_checkpoint or run the train stage first"
        )
    student = student_config(cfg)
    figures = fit(student, data_dir, out, distill_task(teacher, student.distill, student.train))
    return figures | {"teacher": str(teacher)}


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
    return distill(ctx.cfg, ctx.upstream("data"), teacher_path(ctx.cfg, ctx.upstream("train")), ctx.out)
