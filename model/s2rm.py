"""S²RM fusion: distribute language, recurrent cyclic-shift coparsing, parsed-semantic balancing (DESIGN §3).

Usage: ``block = S2RMBlock(vis_channels=96, lang_channels=384, dim=64, feat_size=(28, 28)); f = block(v, l, s, m)``.

The paper's body text is not available; the mechanism follows the seed summary completed by RESA's recurrent
feature-shift schedule (research/paper_and_ris.md §1.3). Every choice the seed does not state is an argument here.
Only export-friendly ops are used: static ``torch.roll`` shifts, a masked softmax with a finite additive bias, 1×1
and axis convolutions, global average pooling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from model import ModelError, closest
from model.encoders import MASK_BIAS

NORMS = ("batch", "group", "none")
AXES = ("row", "col")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return a 2-D normalisation layer: ``batch`` (folds into the conv at export), ``group`` or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "none":
        return nn.Identity()
    raise ModelError(f"unknown norm {kind!r}{closest(kind, NORMS)}; valid: {', '.join(NORMS)}")


def masked_softmax(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (words) of ``scores`` [B,M,N], ignoring words where ``attention_mask`` [B,N] is 0."""
    bias = (1.0 - attention_mask.to(scores.dtype)).unsqueeze(1) * MASK_BIAS  # B, 1, N
    return torch.softmax(scores + bias, dim=-1)


def shift_schedule(length: int, steps: int, signs: Sequence[int] = (1, -1)) -> tuple[int, ...]:
    """Cyclic shifts of the recurrent coparsing along an axis of ``length`` slices.

    For k = 1..K the stride is ``length // 2**(K-k+1)`` (near slices first, remote last); strides below 1 are skipped
    and each sign in ``signs`` runs the whole schedule in turn (RESA order: all steps down, then all steps up).
    ``steps == 0`` is the no-shift ablation: a single un-shifted step, so the correlation stays and only the shifts go.

    Example: ``shift_schedule(16, 4) == (1, 2, 4, 8, -1, -2, -4, -8)``.
    """
    if steps == 0:
        return (0,)
    strides = [length // 2 ** (steps - k + 1) for k in range(1, steps + 1)]
    strides = [s for s in strides if s >= 1]
    return tuple(sign * s for sign in signs for s in strides)


def coordinate_map(h: int, w: int) -> torch.Tensor:
    """Normalised pixel-centre coordinates [1,2,h,w]: x then y, each in (-1, 1), left/top negative."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], 0)[None]


def coparse_step(parsed: torch.Tensor, generator: torch.Tensor, shift: int, dim: int, block: nn.Module) -> torch.Tensor:
    """One recurrent update ``P + block(P ⊙ roll(G, shift, dim))``.

    ``torch.roll`` wraps around: slice ``i`` of the parsed map meets slice ``(i - shift) mod n`` of the generator, so
    remote slices are reached without padding placeholders.
    """
    return parsed + block(parsed * torch.roll(generator, shifts=shift, dims=dim))


class AxisCoparser(nn.Module):
    """Recurrent coparsing of one (parsed, generator) pair along one axis.

    Args:
        dim: channels of both maps.
        axis: ``row`` shifts rows (along H) and mixes within a row with a 1×k conv; ``col`` shifts columns (along W)
            with a k×1 conv.
        length: number of slices along the shifted axis (H for rows, W for columns), fixed by the input size.
        steps: K of the shift schedule; 0 = one un-shifted step.
        signs: shift directions, each running the whole schedule.
        kernel: k of the axis conv.
        norm: normalisation after the conv, see :func:`make_norm`.
        share_weights: one conv for every step instead of one per step (RESA uses one per step).
    """

    def __init__(
        self,
        dim: int,
        axis: str,
        length: int,
        steps: int = 4,
        signs: Sequence[int] = (1, -1),
        kernel: int = 9,
        norm: str = "batch",
        share_weights: bool = False,
    ) -> None:
        super().__init__()
        if axis not in AXES:
            raise ModelError(f"unknown coparsing axis {axis!r}; valid: {', '.join(AXES)}")
        self.dim_index = 2 if axis == "row" else 3
        self.shifts = shift_schedule(length, steps, signs)
        size = (1, kernel) if axis == "row" else (kernel, 1)
        pad = (0, kernel // 2) if axis == "row" else (kernel // 2, 0)

        def block() -> nn.Module:
            conv = nn.Conv2d(dim, dim, size, padding=pad, bias=norm == "none")
            return nn.Sequential(conv, make_norm(norm, dim), nn.ReLU(inplace=False))

        n_blocks = min(1, len(self.shifts)) if share_weights else len(self.shifts)
        self.blocks = nn.ModuleList(block() for _ in range(n_blocks))

    def forward(self, parsed: torch.Tensor, generator: torch.Tensor) -> torch.Tensor:
        """Parse ``parsed`` [B,d,h,w] with ``generator`` [B,d,h,w]; each step sees the previous step's output."""
        for i, shift in enumerate(self.shifts):
            block = self.blocks[min(i, len(self.blocks) - 1)]
            parsed = coparse_step(parsed, generator, shift, self.dim_index, block)
        return parsed


class DistributeLanguage(nn.Module):
    """Language map aligned with the visual map: T = softmax_words(Q·Kᵀ/√d) · proj_v(L), Q = proj(V) ⊙ proj(s).

    Args:
        vis_channels: C of V.
        lang_channels: Cl of the words and the sentence embedding.
        dim: common width d.
        norm: normalisation of the visual projection.
        coord_size: (h, w) to append normalised x/y coordinate channels to V before its projection (a constant
            buffer in the exported graph), so words such as "left" or "top" can select positions; None: no coordinates.
    """

    def __init__(
        self,
        vis_channels: int,
        lang_channels: int,
        dim: int,
        norm: str = "batch",
        coord_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.coords: torch.Tensor | None
        if coord_size is None:
            self.coords = None
        else:
            self.register_buffer("coords", coordinate_map(*coord_size), persistent=False)
        in_ch = vis_channels + (0 if coord_size is None else 2)
        self.vis_proj = nn.Sequential(nn.Conv2d(in_ch, dim, 1, bias=norm == "none"), make_norm(norm, dim))
        self.sent_proj = nn.Linear(lang_channels, dim)
        self.key_proj = nn.Linear(lang_channels, dim)
        self.value_proj = nn.Linear(lang_channels, dim)
        self.scale = dim**-0.5

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (projected visual map, distributed language map), both [B,d,h,w]."""
        b, _, h, w = vis.shape
        if self.coords is not None:
            vis = torch.cat([vis, self.coords.expand(b, -1, -1, -1)], 1)  # B, C+2, h, w
        v = self.vis_proj(vis)  # B, d, h, w
        query = v * self.sent_proj(sentence)[:, :, None, None]  # B, d, h, w
        query = query.flatten(2).transpose(1, 2)  # B, hw, d
        key = self.key_proj(words)  # B, N, d
        affinity = masked_softmax(query @ key.transpose(1, 2) * self.scale, attention_mask)  # B, hw, N
        lang = affinity @ self.value_proj(words)  # B, hw, d
        lang = lang.transpose(1, 2).reshape(b, -1, h, w)  # B, d, h, w
        return v, lang


class ParsedSemanticBalancing(nn.Module):
    """F = V + Conv1x1(concat(g_j ⊙ X_j)), g = sigmoid(MLP(GAP(concat X))): one gate per map and channel.

    Args:
        dim: channels d of each parsed map.
        out_channels: C of V (and of F).
        maps: number of parsed maps (4).
        reduction: hidden width of the gate MLP is ``maps * dim // reduction``.
        enabled: False is the ablation: F = V + Conv1x1(Σ_j X_j).
    """

    def __init__(self, dim: int, out_channels: int, maps: int = 4, reduction: int = 4, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        if enabled:
            width = maps * dim
            hidden = max(width // reduction, 8)
            self.gate = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
            self.proj = nn.Conv2d(width, out_channels, 1)
        else:
            self.proj = nn.Conv2d(dim, out_channels, 1)

    def forward(self, vis: torch.Tensor, parsed: Sequence[torch.Tensor]) -> torch.Tensor:
        """Balance the parsed maps (each [B,d,h,w]) and add them to ``vis`` [B,C,h,w]."""
        if not self.enabled:
            return vis + self.proj(torch.stack(list(parsed), 0).sum(0))
        x = torch.cat(list(parsed), 1)  # B, 4d, h, w
        gate = torch.sigmoid(self.gate(x.mean((2, 3))))  # B, 4d
        return vis + self.proj(x * gate[:, :, None, None])


class S2RMBlock(nn.Module):
    """S²RM at one scale: distribute language, coparse four ways, balance; output channels = C of V.

    The four parsed maps are R_l2v, C_l2v (generator: language map T, parsed: visual map) and R_v2l, C_v2l
    (generator: visual map, parsed: T), for rows (R) and columns (C).

    Args:
        vis_channels: C of V.
        lang_channels: Cl of the text encoder.
        dim: common width d of the fusion.
        feat_size: (h, w) of V, fixed by the input size; the shift schedule depends on it.
        shift_steps: K; 0 = no cyclic shifts (one un-shifted step).
        shift_signs: shift directions.
        kernel: k of the 1×k / k×1 axis convs.
        norm: normalisation inside the block.
        share_step_weights: one axis conv per map instead of one per step.
        balancing: parsed-semantic balancing on (False = plain sum).
        balance_reduction: reduction of the balancing MLP.
        coord_features: append x/y coordinate channels to V in the language distribution (see
            :class:`DistributeLanguage`).
    """

    def __init__(
        self,
        vis_channels: int,
        lang_channels: int,
        dim: int,
        feat_size: tuple[int, int],
        shift_steps: int = 4,
        shift_signs: Sequence[int] = (1, -1),
        kernel: int = 9,
        norm: str = "batch",
        share_step_weights: bool = False,
        balancing: bool = True,
        balance_reduction: int = 4,
        coord_features: bool = False,
    ) -> None:
        super().__init__()
        self.feat_size = tuple(feat_size)
        h, w = self.feat_size
        coord_size = (h, w) if coord_features else None
        self.distribute = DistributeLanguage(vis_channels, lang_channels, dim, norm, coord_size)
        opts = {"steps": shift_steps, "signs": shift_signs, "kernel": kernel, "norm": norm}
        opts["share_weights"] = share_step_weights
        self.rows_l2v = AxisCoparser(dim, "row", h, **opts)
        self.cols_l2v = AxisCoparser(dim, "col", w, **opts)
        self.rows_v2l = AxisCoparser(dim, "row", h, **opts)
        self.cols_v2l = AxisCoparser(dim, "col", w, **opts)
        self.balance = ParsedSemanticBalancing(dim, vis_channels, 4, balance_reduction, balancing)

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Fuse ``vis`` [B,C,h,w] with ``words`` [B,N,Cl], ``sentence`` [B,Cl] → [B,C,h,w]."""
        if tuple(vis.shape[-2:]) != self.feat_size:
            raise ModelError(f"S2RM block built for maps of {self.feat_size}, got {tuple(vis.shape[-2:])}")
        v, lang = self.distribute(vis, words, sentence, attention_mask)  # B, d, h, w (both)
        parsed = (
            self.rows_l2v(v, lang),
            self.cols_l2v(v, lang),
            self.rows_v2l(lang, v),
            self.cols_v2l(lang, v),
        )
        return self.balance(vis, parsed)


class S2RMFusion(nn.Module):
    """S²RM blocks over the four scales; scales not in ``fused_scales`` pass through unchanged.

    Args:
        vis_channels: C of V1..V4.
        lang_channels: Cl.
        dims: fusion width d per scale.
        feat_sizes: side of V1..V4 (square input).
        fused_scales: 1-based scales to fuse.
        **block_kwargs: passed to :class:`S2RMBlock`.
    """

    def __init__(
        self,
        vis_channels: Sequence[int],
        lang_channels: int,
        dims: Sequence[int],
        feat_sizes: Sequence[int],
        fused_scales: Sequence[int] = (1, 2, 3, 4),
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        self.fused_scales = tuple(fused_scales)
        self.blocks = nn.ModuleDict(
            {
                str(i): S2RMBlock(vis_channels[i - 1], lang_channels, dims[i - 1], (n, n), **block_kwargs)
                for i, n in zip(range(1, 5), feat_sizes, strict=True)
                if i in self.fused_scales
            }
        )

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        words: torch.Tensor,
        sentence: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Fuse each selected scale of ``feats`` (V1..V4) with the language features."""
        out = []
        for i, vis in enumerate(feats, start=1):
            key = str(i)
            out.append(self.blocks[key](vis, words, sentence, attention_mask) if key in self.blocks else vis)
        return tuple(out)
