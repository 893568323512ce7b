"""Distillation: train the ``distill.student`` variant from a frozen teacher checkpoint, with the training loop.

Usage: ``figures = distill(cfg, data_dir, teacher_path, out)`` (the ``distill`` stage's body), or
``torchrun --nproc_per_node=2 -m pipeline.train --stage distill --config ... --set distill.enabled=true``.

Loss per batch::

    task_weight    · (Dice + BCE against the ground truth)
  + logit_weight   · T² · mean over pixels of KL(σ(t/T) ‖ σ(s/T))          (s, t: student / teacher mask logits)
  + feature_weight · mean over shared fused scales of ‖A(F_s) − F_t‖² / ‖F_t‖²   (A: a 1×1 conv adapter)

The fused S²RM features F are read with a forward hook on ``model.fusion`` (its output is F1..F4), so the model's
forward stays the exported one. The student trains with the ``train`` section's optimizer, schedule, validation and
checkpoints, for ``distill.steps`` at ``distill.lr`` (default ``train.lr``). The teacher gets its own view of each
sample (input size, tokenizer) when it differs from the student's, and stays in eval mode with frozen weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import CheckpointError
from pipeline import trainutil as tu
from pipeline.config import Config, DistillConfig, ModelConfig, TrainConfig

TEACHER_KEYS = ("image", "input_ids", "attention_mask")


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


def logit_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · mean KL(σ(t/T) ‖ σ(s/T))`` over pixels of mask logits [B,1,h,w]; teacher resized to the student grid.

    It is 0 exactly when the softened probabilities agree, and its gradient is that of a BCE against soft targets.
    """
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    s, t = student.float() / temperature, teacher.float() / temperature
    target = torch.sigmoid(t)
    kl = F.binary_cross_entropy_with_logits(s, target) - F.binary_cross_entropy_with_logits(t, target)
    return kl * temperature**2


def feature_distill_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], adapters: nn.ModuleDict
) -> torch.Tensor:
    """Relative MSE between adapted student features and teacher features, averaged over the adapted scales.

    Args:
        student: fused features F1..F4 of the student, [B,C_i,h_i,w_i].
        teacher: the teacher's F1..F4 (resized to the student's grid when the input sizes differ).
        adapters: 1×1 convs from student to teacher channels, keyed by scale ("1".."4").
    """
    losses = []
    for key, adapter in adapters.items():
        i = int(key) - 1
        fs = adapter(student[i].float())  # B, C_t, h, w
        ft = teacher[i].float()  # B, C_t, h', w'
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.interpolate(ft, size=fs.shape[-2:], mode="bilinear", align_corners=False)
        losses.append((fs - ft).pow(2).mean() / ft.pow(2).mean().clamp(min=1e-6))
    return torch.stack(losses).mean()


class DistillObjective(nn.Module):
    """Student + frozen teacher + feature adapters, and the distillation loss: what the loop optimises.

    Args:
        model: the student (trained; saved as the stage's checkpoint).
        teacher: the teacher model (frozen, always in eval mode).
        dcfg: weights of the loss terms and the temperature.
        tcfg: Dice / BCE weights of the task term.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module, dcfg: DistillConfig, tcfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.teacher = model, teacher.requires_grad_(False).eval()
        self.dcfg, self.dice_weight, self.bce_weight = dcfg, tcfg.dice_weight, tcfg.bce_weight
        scales = sorted(set(model.spec.fused_scales) & set(teacher.spec.fused_scales)) if dcfg.feature_weight else []
        channels_s, channels_t = model.vision.channels, teacher.vision.channels
        self.adapters = nn.ModuleDict({str(i): nn.Conv2d(channels_s[i - 1], channels_t[i - 1], 1) for i in scales})
        self._fused: dict[str, tuple[torch.Tensor, ...]] = {}
        if scales:
            model.fusion.register_forward_hook(self._keep("student"))
            teacher.fusion.register_forward_hook(self._keep("teacher"))

    def _keep(self, who: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: tuple[torch.Tensor, ...]) -> None:
            self._fused[who] = output  # F1..F4, each B, C_i, h_i, w_i

        return hook

    @classmethod
    def from_checkpoint(cls, model: nn.Module, path: Path, dcfg: DistillConfig, tcfg: TrainConfig) -> DistillObjective:
        """Build the objective with the teacher loaded from a project checkpoint (``.safetensors`` + ``.json``).

        Raises:
            CheckpointError: the teacher checkpoint is missing, truncated or corrupt.
        """
        from model import ModelError
        from model.weights import load_checkpoint

        try:
            teacher, _ = load_checkpoint(path)
        except ModelError as exc:
            raise CheckpointError(f"cannot load the teacher checkpoint {path}: {exc}") from None
        return cls(model, teacher, dcfg, tcfg)

    def train(self, mode: bool = True) -> DistillObjective:
        super().train(mode)
        self.teacher.eval()  # no dropout, BatchNorm on running statistics: a fixed target
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = self.dcfg
        logits, _, _ = tu.forward_shared_images(self.model, batch)  # B, 1, S/4, S/4
        task, parts = tu.seg_loss(logits, batch["mask"], self.dice_weight, self.bce_weight)
        inputs = [batch.get(f"teacher_{k}", batch[k]) for k in TEACHER_KEYS]
        with torch.no_grad():
            teacher_logits = self.teacher(*inputs)  # B, 1, S_t/4, S_t/4
        kd = logit_distill_loss(logits, teacher_logits, d.temperature)
        loss = d.task_weight * task + d.logit_weight * kd
        parts = parts | {"task": task.detach(), "kd": kd.detach()}
        if len(self.adapters):
            feat = feature_distill_loss(self._fused["student"], self._fused["teacher"], self.adapters)
            loss = loss + d.feature_weight * feat
            parts["feat"] = feat.detach()
        self._fused.clear()
        return loss, parts

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """The adapters' tensors (trained, so a resume restores them; not part of the exported student)."""
        return {f"adapters.{k}": v for k, v in self.adapters.state_dict(keep_vars=True).items()}


class TeacherInputs:
    """The student's samples, each with the teacher's own view of it (``teacher_image``, ``teacher_input_ids``...)."""

    def __init__(self, student: Any, teacher: Any) -> None:
        self.student, self.teacher, self.samples = student, teacher, student.samples

    def __len__(self) -> int:
        return len(self.student)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, view = self.student[index], self.teacher[index]
        return item | {f"teacher_{k}": view[k] for k in TEACHER_KEYS}


def with_teacher_inputs(train_set: Any, student_spec: Any, teacher_spec: Any) -> Any:
    """``train_set`` itself when the teacher reads the student's inputs; else a :class:`TeacherInputs` view."""
    from pipeline.data.dataset import RISDataset
    from runtimes.tokenizer import TextTokenizer

    same = [getattr(student_spec, k) == getattr(teacher_spec, k) for k in ("img_size", "text_dir", "max_tokens")]
    if all(same):
        return train_set
    tokenizer = TextTokenizer.from_dir(teacher_spec.text_dir, teacher_spec.max_tokens)
    return TeacherInputs(train_set, RISDataset(train_set.refer, train_set.split, tokenizer, teacher_spec.img_size))


def distill(cfg: Config, data_dir: Path, teacher: Path, out: Path) -> dict[str, Any]:
    """Distil ``cfg.distill.student`` from the ``teacher`` checkpoint into ``out`` (resumable like training).

    Returns:
        The training figures of the student plus the teacher's path.

    Raises:
        CheckpointError: the teacher checkpoint is missing or unreadable, or ``out/last`` is another run's.
    """
    from pipeline.train import fit

    teacher = Path(teacher)
    if not teacher.with_suffix(".safetensors").is_file():
        raise CheckpointError(
            f"teacher checkpoint {teacher} not found; set distill.teacher_checkpoint or run the train stage first"
        )
    figures = fit(student_config(cfg), data_dir, out, teacher=teacher)
    return figures | {"teacher": str(teacher)}
