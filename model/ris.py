"""The full S²RM + CASG model: vision encoder, text encoder, S²RM fusion and CASG decoder behind one module.

Usage: ``net = create_model("demo").eval(); logits = net(image, input_ids, attention_mask)``, with
:func:`model.variants.create_model`.

Inputs: ``image`` float32 [B,3,H,W] (ImageNet mean/std), ``input_ids`` and ``attention_mask`` int64 [B,N] with N fixed
(``spec.max_tokens``). Output: ``mask_logits`` float32 [B,1,H/4,W/4], the same in train and eval; the loss lives
outside. ``encode_image``/``encode_text``/``decode`` are the paths the split graphs export (:mod:`model.graphs`): one
image encoding serves many expressions.
"""

from __future__ import annotations

import torch
from torch import nn

from model import ModelError
from model.casg import CASGDecoder
from model.encoders import TextEncoder, VisionEncoder, text_config_from_dict
from model.s2rm import S2RMFusion
from model.spec import ModelSpec

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class RISModel(nn.Module):
    """S²RM + CASG: vision encoder → text encoder → S²RM fusion per scale → CASG decoder → mask logits.

    Args:
        spec: a resolved spec (``text_config`` set); use :func:`~model.variants.create_model` to get one from a
            variant name.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.text_config is None:
            raise ModelError(f"spec {spec.name!r} has no text_config; build it with create_model/resolve_spec")
        self.spec = spec
        self.vision = VisionEncoder(spec.vision, spec.img_size, spec.vision_input_affine(), **spec.vision_kwargs)
        self.text = TextEncoder(
            text_config_from_dict(spec.text_config), spec.sentence_pool, spec.text_attention, spec.text_adapter
        )
        self.fusion = S2RMFusion(
            self.vision.channels,
            self.text.channels,
            dims=[min(c, spec.fusion_dim) for c in self.vision.channels],
            feat_sizes=self.vision.feat_sizes,
            fused_scales=spec.fused_scales,
            shift_steps=spec.shift_steps,
            shift_signs=spec.shift_signs,
            kernel=spec.coparse_kernel,
            norm=spec.norm,
            share_step_weights=spec.share_step_weights,
            balancing=spec.balancing,
            balance_reduction=spec.balance_reduction,
            coord_features=spec.coord_features,
        )
        self.decoder = CASGDecoder(
            self.vision.channels,
            self.text.channels,
            dim=spec.decoder_dim,
            attention=spec.casg_attention,
            merge=spec.guide_merge,
            fuse_convs=spec.decoder_convs,
            norm=spec.norm,
            text_head=spec.text_head,
        )

    def _check_image(self, image: torch.Tensor) -> None:
        size = self.spec.img_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size):
            raise ModelError(
                f"image must be [B,3,{size},{size}] for variant {self.spec.name!r}, got {list(image.shape)}"
            )

    def _check_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        n = self.spec.max_tokens
        if input_ids.dim() != 2 or input_ids.shape[1] != n or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ModelError(
                f"input_ids and attention_mask must both be [B,{n}] (static token length), "
                f"got {list(input_ids.shape)} and {list(attention_mask.shape)}"
            )

    def encode_image(self, image: torch.Tensor) -> Features:
        """Language-free visual features V1..V4 [B,C_i,H/s_i,W/s_i] for strides 4, 8, 16, 32."""
        self._check_image(image)
        return self.vision(image)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word features [B,N,Cl] and sentence embedding [B,Cl]."""
        self._check_tokens(input_ids, attention_mask)
        return self.text(input_ids, attention_mask)

    def fuse(
        self, feats: Features, words: torch.Tensor, sentence: torch.Tensor, attention_mask: torch.Tensor
    ) -> Features:
        """S²RM at each fused scale: F1..F4 with the channels of V1..V4."""
        return self.fusion(feats, words, sentence, attention_mask)

    def decode(
        self,
        v1: torch.Tensor,
        v2: torch.Tensor,
        v3: torch.Tensor,
        v4: torch.Tensor,
        words: torch.Tensor,
        sentence: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Fusion + CASG decoder: mask logits [B,1,H/4,W/4] from visual and language features."""
        fused = self.fuse((v1, v2, v3, v4), words, sentence, attention_mask)
        return self.decoder(fused, sentence)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mask logits [B,1,H/4,W/4] for ``image`` [B,3,H,W] and tokens [B,N]."""
        feats = self.encode_image(image)
        words, sentence = self.encode_text(input_ids, attention_mask)
        return self.decode(*feats, words, sentence, attention_mask)
