"""CASG: cross-scale abstract semantic guided decoder, top-down F4→F1, mask logits at stride 4 (DESIGN §3).

Usage: ``dec = CASGDecoder(in_channels=(96, 192, 384, 768), lang_channels=384, dim=128); logits = dec(feats, s)``.

At each step the guide merges every coarser decoded state (resized to the current scale) and, with the sentence
embedding s, gives a spatial attention σ(Conv([guide; tile(s)])) [B,1,h,w] and a channel attention
σ(MLP([GAP(guide); s])) [B,D]; the skip feature is re-weighted by both and fused with the upsampled decoder state.
``attention=False`` is the plain-FPN ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model import ModelError, closest
from model.s2rm import coordinate_map, make_norm

GUIDE_MERGES = ("concat", "sum")


def conv_norm_act(in_ch: int, out_ch: int, kernel: int, norm: str) -> nn.Sequential:
    """Conv (same padding) → norm → ReLU."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=norm == "none")
    return nn.Sequential(conv, make_norm(norm, out_ch), nn.ReLU(inplace=False))


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (static sizes: ONNX Resize)."""
    if tuple(x.shape[-2:]) == tuple(ref.shape[-2:]):
        return x
    return F.interpolate(x, size=tuple(ref.shape[-2:]), mode="bilinear", align_corners=False)


class CrossScaleGuide(nn.Module):
    """Re-weight a skip feature by spatial and channel attention from the coarser decoded states and s.

    Args:
        dim: decoder width D.
        lang_channels: Cl of the sentence embedding.
        n_coarser: how many coarser decoded states are merged into the guide.
        merge: ``concat`` (concatenate, then 1×1) or ``sum`` (sum, then 1×1).
        reduction: hidden width of the channel MLP is ``D // reduction``.
        spatial_kernel: kernel of the spatial-attention conv.
    """

    def __init__(
        self,
        dim: int,
        lang_channels: int,
        n_coarser: int,
        merge: str = "concat",
        reduction: int = 4,
        spatial_kernel: int = 3,
    ) -> None:
        super().__init__()
        if merge not in GUIDE_MERGES:
            raise ModelError(f"unknown guide_merge {merge!r}{closest(merge, GUIDE_MERGES)}; valid: {GUIDE_MERGES}")
        self.merge_mode = merge
        self.merge = nn.Conv2d(dim * n_coarser if merge == "concat" else dim, dim, 1)
        self.lang = nn.Linear(lang_channels, dim)
        self.spatial = nn.Conv2d(2 * dim, 1, spatial_kernel, padding=spatial_kernel // 2)
        hidden = max(dim // reduction, 8)
        self.channel = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, skip: torch.Tensor, coarser: Sequence[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        """Re-weight ``skip`` [B,D,h,w] given coarser states (already resized to h×w) and ``sentence`` [B,Cl]."""
        stacked = torch.cat(list(coarser), 1) if self.merge_mode == "concat" else torch.stack(list(coarser), 0).sum(0)
        guide = self.merge(stacked)  # B, D, h, w
        s = self.lang(sentence)  # B, D
        tiled = s[:, :, None, None].expand(-1, -1, guide.shape[2], guide.shape[3])  # B, D, h, w
        spatial = torch.sigmoid(self.spatial(torch.cat([guide, tiled], 1)))  # B, 1, h, w
        channel = torch.sigmoid(self.channel(torch.cat([guide.mean((2, 3)), s], 1)))  # B, D
        return skip * spatial * channel[:, :, None, None]


class TextConditionedHead(nn.Module):
    """Mask logits from a per-sample dynamic 1×1 filter: ⟨P([x; coords]), W s⟩/√D + b(s), [B,1,h,w].

    The filter comes from the sentence, so "red" or "on the left" weighs pixel features and x/y positions directly.
    Its output projection starts at zero: at initialisation the head adds nothing.
    """

    def __init__(self, dim: int, lang_channels: int) -> None:
        super().__init__()
        self.pixel = nn.Conv2d(dim + 2, dim, 1)
        self.filter = nn.Linear(lang_channels, dim + 1)
        nn.init.zeros_(self.filter.weight)
        nn.init.zeros_(self.filter.bias)
        self.scale = dim**-0.5

    def forward(self, state: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        b, _, h, w = state.shape
        coords = coordinate_map(h, w).to(state).expand(b, -1, -1, -1)  # B, 2, h, w (constant in an exported graph)
        pixels = self.pixel(torch.cat([state, coords], 1))  # B, D, h, w
        dyn = self.filter(sentence)  # B, D+1
        weight, bias = dyn[:, :-1], dyn[:, -1:]
        return (pixels * weight[:, :, None, None]).sum(1, keepdim=True) * self.scale + bias[:, :, None, None]


class CASGDecoder(nn.Module):
    """Top-down decoder over the fused features F1..F4 predicting 1-channel mask logits at stride 4.

    Args:
        in_channels: channels of F1..F4.
        lang_channels: Cl of the sentence embedding.
        dim: decoder width D.
        attention: CASG guidance on (False = plain FPN: lateral + upsample + fuse).
        merge: how coarser states form the guide, see :class:`CrossScaleGuide`.
        fuse_convs: 3×3 conv blocks fusing [upsampled state; re-weighted skip] at each step.
        norm: normalisation of the conv blocks.
        reduction: reduction of the channel-attention MLP.
        text_head: add a sentence-conditioned term to the 1×1 head: ⟨proj([state; x; y]), proj(s)⟩/√D + b(s), so the
            sentence selects pixels by their features and position directly (not in the seed; see ``ModelSpec``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        lang_channels: int,
        dim: int = 256,
        attention: bool = True,
        merge: str = "concat",
        fuse_convs: int = 2,
        norm: str = "batch",
        reduction: int = 4,
        text_head: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4 or fuse_convs < 1:
            raise ModelError(f"CASG needs 4 input scales and fuse_convs >= 1, got {list(in_channels)}, {fuse_convs}")
        self.attention = attention
        self.lateral = nn.ModuleList(conv_norm_act(c, dim, 1, norm) for c in in_channels)
        self.top = conv_norm_act(dim, dim, 3, norm)
        # index i = 2, 1, 0 decodes scale i+1 with 3 - i coarser states
        self.fuse = nn.ModuleList(
            nn.Sequential(*(conv_norm_act(2 * dim if j == 0 else dim, dim, 3, norm) for j in range(fuse_convs)))
            for _ in range(3)
        )
        if attention:
            self.guides = nn.ModuleList(CrossScaleGuide(dim, lang_channels, 3 - i, merge, reduction) for i in range(3))
        self.head = nn.Conv2d(dim, 1, 1)
        self.text_head = TextConditionedHead(dim, lang_channels) if text_head else None

    def forward(self, feats: Sequence[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        """Decode F1..F4 (strides 4..32) and ``sentence`` [B,Cl] into mask logits [B,1,H/4,W/4]."""
        lateral = [layer(f) for layer, f in zip(self.lateral, feats, strict=True)]  # each B, D, h_i, w_i
        states = [self.top(lateral[3])]  # decoded states, coarse to fine
        for i in (2, 1, 0):
            skip = lateral[i]
            up = [resize_to(s, skip) for s in states]  # each B, D, h_i, w_i
            if self.attention:
                skip = self.guides[i](skip, up, sentence)
            states.append(self.fuse[i](torch.cat([up[-1], skip], 1)))  # B, D, h_i, w_i
        logits = self.head(states[-1])  # B, 1, H/4, W/4
        if self.text_head is not None:
            logits = logits + self.text_head(states[-1], sentence)
        return logits
