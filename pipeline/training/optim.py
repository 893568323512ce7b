"""Optimizer pieces of the training loop: AdamW parameter groups, the lr schedule, mixed precision.

Usage: ``AdamW(param_groups(objective, lr=..., encoder_lr=..., weight_decay=..., pretrained=ids))`` and
``LambdaLR(optimizer, functools.partial(lr_factor, total=..., warmup=..., power=...))``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from foundation.errors import ConfigError

# Parameters never decayed besides norms and biases: Swin's and BERT's position tables (LAVT excludes the first two).
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "position_embeddings")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------------------------------------- optimizer


def param_groups(
    module: nn.Module, *, lr: float, encoder_lr: float, weight_decay: float, pretrained: set[int]
) -> list[dict[str, Any]]:
    """AdamW parameter groups: {pretrained encoder, new layer} × {decay, no decay}, empty groups left out.

    No decay on norm layers, biases (every tensor of ≤ 1 dim) and position tables (:data:`NO_DECAY_NAMES`).

    Args:
        module: the module being trained (its frozen parameters are skipped).
        lr: peak learning rate of the new layers.
        encoder_lr: peak learning rate of the pretrained encoders.
        weight_decay: AdamW decoupled weight decay.
        pretrained: ``id()`` of the parameters that came from pretrained weights.
    """
    norm_params = {id(p) for m in module.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or id(p) in norm_params or any(k in name for k in NO_DECAY_NAMES))
        groups.setdefault((id(p) in pretrained, decay), []).append(p)
    out = []
    for (is_pre, decay), params in sorted(groups.items()):
        out.append(
            {
                "name": f"{'encoder' if is_pre else 'new'}/{'decay' if decay else 'no_decay'}",
                "params": params,
                "lr": encoder_lr if is_pre else lr,
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return out


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then poly decay towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** power


# --------------------------------------------------------------------------------------------------------- precision


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``; None means float32.

    CUDA: ``auto`` is bf16 where supported, else fp16 (with a GradScaler). CPU: ``auto`` stays float32 and ``bf16``
    opts in (matrix units such as AMX run it faster; the loss stays float32); fp16 autocast is not offered on CPU.
    """
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode == "fp16":
            raise ConfigError(
                f"train.amp 'fp16' needs a CUDA device (this run is on {device.type}); use 'bf16' or 'off'"
            )
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
