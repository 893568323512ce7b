"""Small pieces of the training loop: processes, seeding, data order, sync BatchNorm, parameter groups, schedule, loss.

Usage: ``dist = setup_distributed(); sampler = EpochSampler(len(ds), 8, seed=0, rank=dist.rank, world=dist.world)``.

Everything here is a pure function of its arguments (and of the environment variables torchrun sets), so the loop in
:mod:`pipeline.train` stays a straight read and a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from foundation.errors import ConfigError, DataError, StageError

log = logging.getLogger("pipeline.train")

# Parameters never decayed besides norms and biases: Swin's and BERT's position tables (LAVT excludes the first two).
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "position_embeddings")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that logs and writes checkpoints (global rank 0)."""
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup_distributed(threads: int | None = None) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or run alone.

    NCCL when CUDA is present (one GPU per local rank), gloo otherwise. Without ``WORLD_SIZE`` > 1 no process group
    is created and the run is a plain single-process one.
    """
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank, world, local_rank, device)


def teardown_distributed(dist: Dist) -> None:
    if dist.ddp and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.ddp:
        torch_dist.barrier()


def mean_across(dist: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a detached scalar over all processes (the global batch's loss)."""
    if not dist.ddp:
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
    return value / dist.world


def broadcast_flag(dist: Dist, flag: bool) -> bool:
    """Rank 0's boolean, on every process."""
    if not dist.ddp:
        return flag
    box = [flag]
    torch_dist.broadcast_object_list(box, src=0)
    return bool(box[0])


# --------------------------------------------------------------------------------------------------------- seeding


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch identically on every process; optionally ask torch for deterministic kernels.

    Every rank gets the same seed: ranks then draw identical random streams (dropout masks), so rank 0's RNG state
    stands for all of them in a checkpoint.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def set_dropout(model: nn.Module, dropout: float | None, drop_path: float | None) -> None:
    """Set ``p`` of every ``nn.Dropout`` and the rate of every stochastic-depth module (timm ``DropPath``).

    None keeps the model's own values; zeros make the forward deterministic (needed to compare DDP with one process).
    """
    for module in model.modules():
        if dropout is not None and isinstance(module, nn.Dropout):
            module.p = dropout
        if drop_path is not None and hasattr(module, "drop_prob"):
            module.drop_prob = drop_path


# --------------------------------------------------------------------------------------------------------- data order


class EpochSampler(Sampler[int]):
    """Deterministic, rank-sharded sample order: epoch ``e`` is a permutation drawn from ``(seed, e)`` alone.

    Global batch ``b`` of an epoch is ``order[b·G:(b+1)·G]``; rank ``r`` takes its ``r``-th slice of ``G / world``
    samples, so a DDP step sees exactly the samples of the matching single-process step. A trailing partial batch is
    dropped. :meth:`start_at` positions the sampler at any optimizer step, which is how a resumed run skips the
    batches it already consumed.

    With ``groups`` (the sample indices of each image) and ``per_group = k > 1`` the order is made of runs of ``k``
    samples of one image (an image with fewer than ``k`` left fills its last run by drawing again from its own
    samples), so the training step encodes each image once for ``k`` expressions: ``k`` times fewer image encodings
    per sample, and the model sees several targets on the same picture, which only the language tells apart.
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        groups: Sequence[Sequence[int]] | None = None,
        per_group: int = 1,
    ) -> None:
        if global_batch % world:
            raise ConfigError(
                f"train.batch_size={global_batch} is not divisible by the {world} processes; use a multiple of {world}"
            )
        if per_group < 1 or (global_batch // world) % per_group:
            raise ConfigError(
                f"train.expressions_per_image={per_group} must divide the per-process batch "
                f"{global_batch // world} (train.batch_size={global_batch} over {world} process(es))"
            )
        self.per_group = per_group
        self.groups = [list(g) for g in groups] if groups is not None and per_group > 1 else None
        if self.groups is not None:
            size = per_group * sum(-(-len(g) // per_group) for g in self.groups if g)
        if size < global_batch:
            raise DataError(f"the train split has {size} samples, fewer than train.batch_size={global_batch}")
        self.size, self.global_batch, self.seed, self.rank, self.world = size, global_batch, seed, rank, world
        self.per_rank = global_batch // world
        self.batches_per_epoch = size // global_batch
        self.epoch, self.first_batch = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch``, in order (a permutation, or runs of ``per_group`` of one image)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.groups is None:
            return rng.permutation(self.size)
        k, runs = self.per_group, []
        for members in self.groups:
            if not members:
                continue
            picks = rng.permutation(members).tolist()
            short = -len(picks) % k
            picks += rng.choice(members, size=short).tolist() if short else []
            runs += [picks[i : i + k] for i in range(0, len(picks), k)]
        return np.asarray([i for r in rng.permutation(len(runs)) for i in runs[r]], dtype=np.int64)

    def global_batch_indices(self, step: int) -> list[int]:
        """Dataset indices of the whole global batch of optimizer step ``step`` (0-based)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return self.order(epoch)[b * self.global_batch : (b + 1) * self.global_batch].tolist()

    def start_at(self, step: int) -> None:
        """Position the sampler so that its next batch is the one of optimizer step ``step``."""
        self.epoch, self.first_batch = divmod(step, self.batches_per_epoch)

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        for b in range(self.first_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            yield from order[start : start + self.per_rank].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.first_batch) * self.per_rank


def batch_stream(
    dataset: Dataset, sampler: EpochSampler, start_step: int, num_workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield this rank's batches from optimizer step ``start_step`` on, epoch after epoch, forever."""
    step = start_step
    while True:
        sampler.start_at(step)
        loader = DataLoader(
            dataset,
            batch_size=sampler.per_rank,
            sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=True,
            generator=torch.Generator().manual_seed(sampler.seed),  # keeps the global torch RNG untouched
        )
        for batch in loader:
            yield batch
            step += 1


# --------------------------------------------------------------------------------------------------------- sync BN


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is again the sum over processes (each rank's loss uses the total)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        torch_dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics are averaged over all processes, on any backend (gloo on CPU too).

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this one uses autograd-aware ``all_reduce`` so a CPU DDP step sees
    the statistics of the whole global batch, like a single process would. The statistics are two-pass (mean, then
    the mean squared deviation) for the same accuracy as ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_available() and torch_dist.is_initialized()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        torch_dist.all_reduce(count)
        n = count[0]
        mean = all_reduce(x.sum(dim=(0, 2, 3))) / n  # C
        centred = x - mean[None, :, None, None]  # B, C, h, w
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n  # C, biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]  # B, C, h, w
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm2d for a synchronised one: ``nn.SyncBatchNorm`` on CUDA, else :class:`GlooSyncBatchNorm`."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model


def wrap_ddp(module: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel without per-forward buffer broadcasts (synced BatchNorm keeps buffers equal)."""
    import inspect

    ddp = nn.parallel.DistributedDataParallel
    device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(ddp).parameters  # torch >= 2.14 renamed the switch
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return ddp(module, device_ids=device_ids, **no_sync)


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


# --------------------------------------------------------------------------------------------------------- loss


def image_groups(image_ids: Sequence[Any]) -> list[list[int]]:
    """Sample indices grouped by image, in order of first appearance (the ``groups`` of :class:`EpochSampler`)."""
    groups: dict[Any, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(index)
    return list(groups.values())


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


def train_mode(objective: nn.Module, freeze_vision_bn: bool) -> None:
    """Put ``objective`` in train mode; with ``freeze_vision_bn`` the vision encoder's BatchNorm layers stay in eval
    mode (running statistics as loaded, used in the forward pass; their affine weights still train)."""
    objective.train()
    if freeze_vision_bn:
        model = objective.model if hasattr(objective, "model") else objective
        for module in model.vision.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def swap_token_ids(tokenizer: Any, words: tuple[str, str]) -> tuple[int, int]:
    """The token ids of two words that a flip swaps ("left" and "right", "top" and "bottom").

    Raises:
        StageError: a word is not one token of this tokenizer (a flip could not rewrite the sentence token-wise).
    """
    tokens = tokenizer(list(words))
    ids = []
    for word, row, mask in zip(words, tokens["input_ids"], tokens["attention_mask"], strict=True):
        real = [int(i) for i, m in zip(row, mask, strict=True) if m]
        if len(real) != 3:  # [CLS] word [SEP]
            raise StageError(
                f"a training flip needs {word!r} to be one token of the tokenizer, got {len(real) - 2} tokens; "
                "set train.hflip=0 and train.vflip=0 for this tokenizer"
            )
        ids.append(real[1])
    return ids[0], ids[1]


# the words a flip turns into their mirror image: a horizontal flip swaps left and right, a vertical one top and bottom
HFLIP_WORDS = (("left", "right"),)
VFLIP_WORDS = (("top", "bottom"), ("above", "below"))


def flip_batch(
    batch: dict[str, torch.Tensor], prob: float, swaps: Sequence[tuple[int, int]], seed: int, axis: int = -1
) -> dict[str, torch.Tensor]:
    """Flip each distinct image of a batch along ``axis`` (-1: horizontally, -2: vertically) with probability
    ``prob``, with its masks, category map and every sentence about it: each pair of ``swaps`` token ids ("left",
    "right") trade places, so the sentence stays true.

    All samples of one image (``image_key``) flip together, so the shared image encoding stays valid. The decision
    draws from a generator seeded by ``seed`` (derived from the step): a resumed run flips the same images.
    """
    n = len(batch["image"])
    keys = batch["image_key"].tolist() if "image_key" in batch else list(range(n))
    gen = torch.Generator().manual_seed(seed)
    decision: dict[Any, bool] = {}
    for key in keys:
        if key not in decision:
            decision[key] = bool(torch.rand((), generator=gen) < prob)
    rows = torch.tensor([decision[k] for k in keys], device=batch["image"].device)
    if not bool(rows.any()):
        return batch
    out = dict(batch)
    for name in ("image", "mask", "category"):
        if name in batch:
            x = batch[name]
            out[name] = torch.where(rows.view(-1, *[1] * (x.dim() - 1)), x.flip(axis), x)
    ids = batch["input_ids"]
    swapped = ids
    for a, b in swaps:
        swapped = torch.where(ids == a, b, torch.where(ids == b, a, swapped))
    out["input_ids"] = torch.where(rows[:, None], swapped, ids)
    return out


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
