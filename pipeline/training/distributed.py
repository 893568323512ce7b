"""Processes of a training run: torchrun's process group, cross-process means, synchronised BatchNorm, DDP.

Usage: ``dist = setup_distributed(threads); ...; net = wrap_ddp(objective, dist) if dist.ddp else objective``.

Without ``WORLD_SIZE`` > 1 everything here is a no-op and the run is a plain single-process one.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

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

    ddp = nn.parallel.DistributedDataParallel
    device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(ddp).parameters  # torch >= 2.14 renamed the switch
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return ddp(module, device_ids=device_ids, **no_sync)
