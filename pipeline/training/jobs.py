"""The two training jobs the pipeline runs: train the model, and distil the edge student from it.

Usage: ``train(cfg, data_dir, out)``; ``distill(cfg, data_dir, teacher_path(cfg, train_dir), out)``.

The ``train`` and ``distill`` stages and the torchrun entry point (:mod:`pipeline.train`) call these; each composes
:func:`~pipeline.training.loop.fit` with its objective. :func:`deployed_model` says which model the pipeline deploys
(the student while ``distill.enabled``), for the stages that need its input size before any weights exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foundation.errors import CheckpointError
from pipeline.config import Config
from pipeline.config_sections import ModelConfig
from pipeline.layout import CHECKPOINT


def train(cfg: Config, data_dir: Path, out: Path) -> dict[str, Any]:
    """Train ``cfg.model`` against the ground truth (:func:`~pipeline.training.objectives.seg_task`) into ``out``.

    Returns:
        The training figures (see :func:`pipeline.training.loop.fit`).
    """
    from pipeline.training.loop import fit
    from pipeline.training.objectives import seg_task

    return fit(cfg, data_dir, out, seg_task(cfg.train))


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
    return Path(cfg.distill.teacher_checkpoint or train_dir / CHECKPOINT)


def deployed_model(cfg: Config) -> ModelConfig:
    """The model section of what the pipeline deploys: the student when ``distill.enabled``, else ``model``."""
    return student_config(cfg).model if cfg.distill.enabled else cfg.model


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
