"""Vision (timm ``features_only``) and text (Hugging Face ``AutoModel``) encoders; constructors do no I/O.

Usage: ``vis = VisionEncoder("swin_tiny_patch4_window7_224", img_size=224); v1, v2, v3, v4 = vis(image)``.

The vision encoder is any timm backbone whose ``feature_info`` offers the strides 4, 8, 16 and 32; Swin's NHWC stage
outputs are turned NCHW. The text encoder is built from a ``PretrainedConfig`` (read from a directory by the model
factory, never here) and returns word features plus a sentence embedding (masked mean or CLS).
"""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from model import ModelError, closest

STRIDES = (4, 8, 16, 32)
# additive bias of padded words; finite (not -inf, not finfo.min) so fp16, ONNX and INT8 graphs stay NaN-free
MASK_BIAS = -1.0e4
SENTENCE_POOLS = ("mean", "cls", "attention")


def build_timm_features(name: str, img_size: int, **kwargs: Any) -> nn.Module:
    """Create a timm ``features_only`` backbone with random weights at a fixed input size.

    ``img_size`` is passed to models that take it (transformers such as Swin); convolutional models that reject the
    keyword take any size and are built without it.

    Raises:
        ModelError: the timm model name is unknown.
    """
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{closest(name, timm.list_models())}; see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, features_only=True, img_size=img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(name, pretrained=False, features_only=True, **kwargs)


class VisionEncoder(nn.Module):
    """A timm backbone giving four NCHW feature maps at strides 4, 8, 16 and 32.

    Args:
        name: timm model name, e.g. ``swin_tiny_patch4_window7_224``.
        img_size: square input side, fixed at construction (Swin's window masks depend on it).
        input_affine: ``(scale, shift)`` per RGB channel applied to the input before the backbone, when the backbone's
            weights were trained with another normalisation than the model's input (EfficientNet-Lite: pixels in
            [-1, 1], the model's input: ImageNet mean/std). None: the input goes to the backbone as it is.
        **timm_kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depths``, ``window_size``, ...).

    Attributes:
        channels: channels of the four outputs, from timm's ``feature_info``.
        feat_sizes: side of each output map for a square ``img_size`` input.
    """

    def __init__(
        self,
        name: str,
        img_size: int,
        input_affine: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_affine = input_affine is not None
        if input_affine is not None:  # fixed, not learned, not saved: rebuilt from the spec
            scale, shift = (torch.tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1) for v in input_affine)
            self.register_buffer("input_scale", scale, persistent=False)
            self.register_buffer("input_shift", shift, persistent=False)
        self.timm_name = name
        self.img_size = img_size
        self.timm_kwargs = dict(timm_kwargs)
        self.body = build_timm_features(name, img_size, **timm_kwargs)
        reductions = list(self.body.feature_info.reduction())
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ModelError(
                f"timm model {name!r} offers feature strides {reductions}, missing {missing}; the vision encoder needs "
                f"four scales at strides {list(STRIDES)}"
            )
        self.take = tuple(reductions.index(s) for s in STRIDES)
        all_channels = self.body.feature_info.channels()
        self.channels = tuple(int(all_channels[i]) for i in self.take)
        self.feat_sizes = tuple(math.ceil(img_size / s) for s in STRIDES)
        # timm reports the layout of features_only outputs (Swin: NHWC); checked again on the tensors in forward
        self.nhwc = getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode ``image`` [B,3,H,W] into four maps [B,C_i,H/s_i,W/s_i]."""
        if self.input_affine:
            image = image * self.input_scale + self.input_shift
        feats = self.body(image)
        out = []
        for i, c in zip(self.take, self.channels, strict=True):
            x = feats[i]
            if self.nhwc:
                x = x.permute(0, 3, 1, 2)  # B, C, h, w
            if x.shape[1] != c:
                raise ModelError(f"{self.timm_name}: feature {i} has {x.shape[1]} channels, feature_info says {c}")
            out.append(x.contiguous())
        return tuple(out)


def text_config_from_dict(config: dict[str, Any]) -> PretrainedConfig:
    """Rebuild a Hugging Face config from ``PretrainedConfig.to_diff_dict()`` output (needs ``model_type``)."""
    if "model_type" not in config:
        raise ModelError(f"text config has no 'model_type' key; keys: {sorted(config)}")
    rest = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    return AutoConfig.for_model(config["model_type"], **rest)


def read_text_config(text_dir: str) -> dict[str, Any]:
    """Read the architecture config (``config.json`` only, no weights) of a local Hugging Face directory.

    Raises:
        ModelError: the directory or its ``config.json`` is missing.
    """
    try:
        config = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot read the text encoder config from {str(text_dir)!r} ({err}); provide a local Hugging Face "
            "directory with config.json (model.text_dir)"
        ) from err
    return config.to_diff_dict()


class TextEncoder(nn.Module):
    """A Hugging Face encoder (BERT family) returning word features and a sentence embedding.

    Args:
        config: the architecture; weights are random until :func:`model.weights.load_text_weights`.
        pool: ``mean`` (masked mean over real tokens), ``cls`` (first token) or ``attention`` (a learned score per
            word, softmax over the real tokens; initialised to the masked mean). A mean-pooled sentence encoder
            blurs the words a referring expression turns on: for all-MiniLM-L6-v2 "the square on the left" and
            "... on the right" have cosine similarity 0.98, while their word features differ.
        attn_implementation: Hugging Face attention kernel, ``eager`` or ``sdpa``.
        adapter: a trainable residual MLP on the word features (zero-initialised: the encoder's own features at the
            start), so a frozen pretrained encoder's words can be re-weighted for the task ("left", "second").
    """

    def __init__(
        self, config: PretrainedConfig, pool: str = "mean", attn_implementation: str = "eager", adapter: bool = False
    ) -> None:
        super().__init__()
        if pool not in SENTENCE_POOLS:
            raise ModelError(f"unknown sentence_pool {pool!r}{closest(pool, SENTENCE_POOLS)}; valid: {SENTENCE_POOLS}")
        self.pool = pool
        self.body = AutoModel.from_config(config, attn_implementation=attn_implementation)
        if getattr(self.body, "pooler", None) is not None:
            self.body.pooler = None  # unused; a parameter without a gradient would only confuse the optimizer
        self.channels = int(config.hidden_size)
        self.adapter: nn.Module | None = None
        if adapter:
            c = self.channels
            self.adapter = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))
            nn.init.zeros_(self.adapter[-1].weight)
            nn.init.zeros_(self.adapter[-1].bias)
        if pool == "attention":
            self.pool_score = nn.Linear(self.channels, 1)
            nn.init.zeros_(self.pool_score.weight)
            nn.init.zeros_(self.pool_score.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode tokens [B,N] (int64) into words [B,N,Cl] and a sentence embedding [B,Cl]."""
        # a ready additive mask (finite bias, like the fusion's) skips HF's mask builder: a cleaner ONNX graph
        # (Sub/Mul/Add instead of Gather/And/Where) that stays finite under fp16 and INT8
        dtype = self.body.get_input_embeddings().weight.dtype
        bias = (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASK_BIAS  # B, 1, 1, N
        words = self.body(input_ids=input_ids, attention_mask=bias).last_hidden_state  # B, N, Cl
        if self.adapter is not None:
            words = words + self.adapter(words)
        if self.pool == "cls":
            return words, words[:, 0]
        if self.pool == "attention":
            scores = self.pool_score(words).squeeze(-1) + (1.0 - attention_mask.to(words.dtype)) * MASK_BIAS  # B, N
            return words, (torch.softmax(scores, dim=1).unsqueeze(-1) * words).sum(1)
        m = attention_mask.to(words.dtype).unsqueeze(-1)  # B, N, 1
        # both bounds: ONNX Runtime 1.19's float16 Clip takes a missing maximum as 0 (microsoft/onnxruntime#21957)
        sentence = (words * m).sum(1) / m.sum(1).clamp(min=1.0, max=float(m.shape[1]))  # B, Cl
        return words, sentence
