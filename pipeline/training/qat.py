"""Quantization-aware fine-tuning with distillation: the loop of the ``qat`` stage.

Usage: ``curve = qat_finetune(cfg, data_dir, student, teacher, groups)`` with ``student`` a fake-quantized copy of the
deployed model's full graph and ``teacher`` its FP32 original (both ``forward(image, input_ids, attention_mask)`` →
mask logits).

Per step, on a train batch::

    quant.qat.task_weight  · (Dice + BCE of the student's logits against the ground truth)
  + quant.qat.logit_weight · T² · mean over pixels of KL(σ(t/T) ‖ σ(s/T))     (s, t: student / teacher mask logits)

Both models stay in eval mode (BatchNorm on its running statistics, no dropout): a few hundred steps at a small
learning rate adapt the weights and the quantizer scales to the INT8 noise, and must not move the statistics the
PTQ scales were calibrated with. The weights train at ``quant.qat.lr``, the quantizer scales at ``quant.qat.scale_lr``
(``groups``), with AdamW and a linear decay; a non-finite loss stops the run with the step that produced it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foundation.errors import StageError
from pipeline.config import Config
from pipeline.training import data as td
from pipeline.training.objectives import logit_distill_loss, seg_loss
from pipeline.training.state import seed_everything

log = logging.getLogger(__name__)


def train_batches(cfg: Config, data_dir: Path, spec: Any, batch_size: int) -> Any:
    """Endless batches of the train split at the model's input size and token length, in the seed's order."""
    from pipeline.data.dataset import RISDataset, open_dataset
    from runtimes.tokenizer import TextTokenizer

    refer = open_dataset(cfg, data_dir)
    tokenizer = TextTokenizer.from_dir(spec.text_dir, spec.max_tokens)
    train_set = RISDataset(refer, cfg.data.train_split, tokenizer, spec.img_size)
    sampler = td.EpochSampler(len(train_set), batch_size, cfg.train.seed)
    return td.batch_stream(train_set, sampler, 0, 0, pin_memory=False)


def qat_finetune(
    cfg: Config,
    data_dir: Path,
    student: nn.Module,
    teacher: nn.Module,
    groups: Sequence[dict[str, Any]],
    spec: Any,
) -> dict[str, Any]:
    """Fine-tune ``student`` against ``teacher`` and the ground truth for ``quant.qat.steps`` steps.

    Args:
        cfg: the resolved config (``quant.qat``, ``train.seed``/``threads``/loss weights, ``data``).
        data_dir: the ``data`` stage's folder.
        student: the fake-quantized full graph (trained in place).
        teacher: the FP32 full graph (frozen).
        groups: AdamW parameter groups (``params``, ``lr``).
        spec: the model's :class:`model.ModelSpec` (input size, tokenizer).

    Returns:
        ``{"steps", "seconds", "s_per_step", "curve": [{"step", "loss", "task", "kd"}, ...]}``.

    Raises:
        StageError: the loss became non-finite.
    """
    q = cfg.quant.qat
    seed_everything(cfg.train.seed, False)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    teacher.requires_grad_(False).eval()
    student.eval()  # BatchNorm keeps the statistics the scales were calibrated with; the weights still train
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / q.steps))
    batches = train_batches(cfg, data_dir, spec, q.batch_size)
    curve, window, started = [], [], time.perf_counter()
    for step in range(1, q.steps + 1):
        batch = next(batches)
        inputs = (batch["image"], batch["input_ids"], batch["attention_mask"])
        logits = student(*inputs)
        with torch.no_grad():
            target = teacher(*inputs)
        task, _ = seg_loss(logits, batch["mask"], cfg.train.dice_weight, cfg.train.bce_weight)
        kd = logit_distill_loss(logits, target, q.temperature)
        loss = q.task_weight * task + q.logit_weight * kd
        if not torch.isfinite(loss):
            raise StageError(f"qat: the loss became {loss.item()} at step {step}; lower quant.qat.lr / scale_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        window.append((loss.item(), task.item(), kd.item()))
        if step % q.log_every == 0 or step == q.steps:
            mean = [sum(v) / len(window) for v in zip(*window, strict=True)]
            curve.append({"step": step, "loss": mean[0], "task": mean[1], "kd": mean[2]})
            log.info("qat: step %d/%d loss %.4f (task %.4f, kd %.5f)", step, q.steps, *mean)
            window.clear()
    seconds = time.perf_counter() - started
    return {"steps": q.steps, "seconds": round(seconds, 1), "s_per_step": round(seconds / q.steps, 3), "curve": curve}
