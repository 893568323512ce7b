"""What the training loop optimises: the model plus its loss, as one module (the one DDP wraps).

Usage: ``fit(cfg, data_dir, out, seg_task(cfg.train))`` (the train stage) or
``fit(student_cfg, data_dir, out, distill_task(teacher, student_cfg.distill, student_cfg.train))`` (distill).

:class:`SegObjective` is Dice + BCE against the ground truth (plus an optional auxiliary category head).
:class:`DistillObjective` adds a frozen teacher; its loss per batch::

    task_weight    · (Dice + BCE against the ground truth)
  + logit_weight   · T² · mean over pixels of KL(σ(t/T) ‖ σ(s/T))          (s, t: student / teacher mask logits)
  + feature_weight · mean over shared fused scales of ‖A(F_s) − F_t‖² / ‖F_t‖²   (A: a 1×1 conv adapter)

The fused S²RM features F are read with a forward hook on ``model.fusion`` (its output is F1..F4), so the model's
forward stays the exported one. The teacher gets its own view of each sample (input size, tokenizer) when it differs
from the student's (:func:`pipeline.training.data.with_teacher_inputs`), and stays in eval mode with frozen weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import CheckpointError
from pipeline.config_sections import DistillConfig, TrainConfig
from pipeline.training.data import TEACHER_KEYS, with_teacher_inputs


@dataclass(frozen=True)
class Task:
    """What :func:`pipeline.training.loop.fit` trains ``cfg.model`` for; the train and distill stages build one.

    Attributes:
        name: what the progress bar calls the run (``train``, ``distill``).
        build: ``(model, refer, train_set) -> (objective, train_set)``: the module the loop optimises around the
            model, and the dataset it reads (distillation adds the teacher's view of each sample). Called once, after
            the model and the train set are built, so its random init follows theirs.
        sections: config sections besides ``data``, ``model`` and ``train`` that a resumed run must match.
        category_maps: the train set carries per-pixel category labels (the auxiliary category head's targets).
    """

    name: str
    build: Callable[[nn.Module, Any, Any], tuple[nn.Module, Any]]
    sections: tuple[str, ...] = ()
    category_maps: bool = False


def seg_task(tc: TrainConfig) -> Task:
    """Training against the ground truth: :class:`SegObjective` with the ``train`` section's loss weights."""

    def build(model: nn.Module, refer: Any, train_set: Any) -> tuple[nn.Module, Any]:
        classes = len(refer.categories) + 1  # + background
        return SegObjective(model, tc.dice_weight, tc.bce_weight, tc.category_weight, classes), train_set

    return Task("train", build, category_maps=tc.category_weight > 0)


def distill_task(teacher: Path, dcfg: DistillConfig, tcfg: TrainConfig) -> Task:
    """Distillation from the ``teacher`` checkpoint: :class:`DistillObjective`, the teacher's view of each sample."""

    def build(model: nn.Module, refer: Any, train_set: Any) -> tuple[nn.Module, Any]:
        objective = DistillObjective.from_checkpoint(model, teacher, dcfg, tcfg)
        return objective, with_teacher_inputs(train_set, model.spec, objective.teacher.spec)

    return Task("distill", build, sections=("distill",))


# --------------------------------------------------------------------------------------------------------- losses


def forward_shared_images(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """Mask logits of a batch, encoding each distinct image once (``batch["image_key"]`` names the image).

    Samples of one image (see ``EpochSampler(per_group=k)``) share the image encoder's output; the text encoder, the
    fusion and the decoder run per sample. Without repeats this is exactly ``model(image, input_ids, attention_mask)``.

    Returns:
        ``(logits, feats, firsts)``: mask logits [B,1,S/4,S/4]; the language-free features V1..V4 of the distinct
        images; the batch index of each distinct image's first sample (so ``batch[k][firsts]`` lines up with them).
    """
    device = batch["image"].device
    keys = batch.get("image_key")
    key_list = list(range(len(batch["image"]))) if keys is None else keys.tolist()
    position: dict[int, int] = {}  # image key -> its row among the distinct images
    firsts: list[int] = []  # batch index of each distinct image's first sample
    for i, key in enumerate(key_list):
        if key not in position:
            position[key] = len(firsts)
            firsts.append(i)
    take = torch.tensor(firsts, device=device)
    distinct = model.encode_image(batch["image"] if len(firsts) == len(key_list) else batch["image"][take])
    feats = distinct
    if len(firsts) != len(key_list):
        index = torch.tensor([position[key] for key in key_list], device=device)
        feats = tuple(f.index_select(0, index) for f in distinct)
    words, sentence = model.encode_text(batch["input_ids"], batch["attention_mask"])
    return model.decode(*feats, words, sentence, batch["attention_mask"]), distinct, take


class CategoryHead(nn.Module):
    """Auxiliary per-pixel category logits from the language-free features V1..V4 (training only, never exported).

    A 1×1 conv per scale, upsampled to the finest scale and summed: [B, classes, h1, w1]. It gives the from-scratch
    vision encoder a dense signal from every annotated object of an image, not only from the referent.
    """

    def __init__(self, channels: Sequence[int], classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(c, classes, 1) for c in channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = tuple(feats[0].shape[-2:])
        out = [
            F.interpolate(h(f), size=size, mode="bilinear", align_corners=False)
            for h, f in zip(self.heads, feats, strict=True)
        ]
        return torch.stack(out, 0).sum(0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice, computed per sample and averaged (so a DDP average of rank means is the global mean)."""
    prob = logits.sigmoid().flatten(1)  # B, HW
    target = target.flatten(1)  # B, HW
    inter = (prob * target).sum(1)  # B
    dice = (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)  # B
    return 1.0 - dice.mean()


def seg_loss(
    logits: torch.Tensor, mask: torch.Tensor, dice_weight: float, bce_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dice + BCE of mask logits [B,1,h,w] against a {0,1} mask [B,1,H,W], at the mask's resolution.

    The logits are upsampled bilinearly (as the evaluation does) and the loss is computed in float32.
    """
    logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)  # B,1,H,W
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    dice = dice_loss(logits, mask)
    return dice_weight * dice + bce_weight * bce, {"dice": dice.detach(), "bce": bce.detach()}


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


# --------------------------------------------------------------------------------------------------------- objectives


class SegObjective(nn.Module):
    """The model plus its Dice + BCE loss: the module the loop optimises (and DDP wraps).

    With ``category_weight`` > 0 an auxiliary :class:`CategoryHead`
    on the language-free vision features adds ``category_weight`` × cross-entropy against ``batch["category"]``
    (per-pixel labels of every annotated object at stride 4), once per distinct image of the batch.
    """

    def __init__(
        self,
        model: nn.Module,
        dice_weight: float,
        bce_weight: float,
        category_weight: float = 0.0,
        category_classes: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.category_weight = category_weight
        self.category = CategoryHead(model.vision.channels, category_classes) if category_weight > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats, firsts = forward_shared_images(self.model, batch)  # B, 1, S/4, S/4
        loss, parts = seg_loss(logits, batch["mask"], self.dice_weight, self.bce_weight)
        if self.category is not None:
            aux = F.cross_entropy(self.category(feats).float(), batch["category"][firsts])
            loss = loss + self.category_weight * aux
            parts = parts | {"category": aux.detach()}
        return loss, parts

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Trainable tensors outside the model that a resume needs: the auxiliary category head, if any."""
        if self.category is None:
            return {}
        return {f"category.{k}": v for k, v in self.category.state_dict(keep_vars=True).items()}


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
        logits, _, _ = forward_shared_images(self.model, batch)  # B, 1, S/4, S/4
        task, parts = seg_loss(logits, batch["mask"], self.dice_weight, self.bce_weight)
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
