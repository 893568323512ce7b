"""The model's JSON-serialisable spec: every field that defines the architecture and where its weights come from.

Usage: ``spec = ModelSpec.from_dict(checkpoint["spec"]); spec.diff(other)``; variants build one
(:mod:`model.variants`), :class:`model.ris.RISModel` is built from one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from model import ModelError, choice_error
from model.casg import GUIDE_MERGES
from model.encoders import SENTENCE_POOLS
from model.s2rm import NORMS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXT_ATTENTIONS = ("eager", "sdpa")
WEIGHT_SOURCE_FIELDS = ("text_dir", "text_hub_id", "vision_pretrained", "text_pretrained", "vision_weights")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the architecture (and where its pretrained weights come from); JSON-serialisable.

    A checkpoint stores ``to_dict()``; two models are the same architecture when their dicts are equal.
    ``text_config`` is the Hugging Face ``to_diff_dict()`` of the text encoder, filled in by
    :func:`~model.variants.resolve_spec` (read from ``text_dir`` when a variant does not fix it), so a checkpoint
    rebuilds without the directory.
    """

    name: str
    vision: str
    img_size: int
    vision_kwargs: dict[str, Any] = field(default_factory=dict)
    vision_pretrained: bool = True  # expects a timm checkpoint (load_vision_checkpoint); False: trained from scratch
    vision_weights: str | None = None  # packaged pretrained weights (model.pretrained.REGISTRY) loaded by default
    # normalisation the vision weights were trained with, when it is not the model input's (image_mean/image_std):
    # the encoder re-normalises its input inside the graph, so every runtime keeps one preprocessing
    vision_mean: tuple[float, ...] | None = None
    vision_std: tuple[float, ...] | None = None
    text_dir: str | None = None  # HF directory: tokenizer files, config.json, weights
    text_config: dict[str, Any] | None = None
    text_pretrained: bool = True  # load text weights from text_dir
    text_hub_id: str | None = None  # hub id used only with allow_download=True
    text_attention: str = "eager"  # eager: plain MatMul/Softmax in the exported graph
    max_tokens: int = 20
    sentence_pool: str = "mean"
    text_adapter: bool = False  # trainable residual MLP on the (frozen) encoder's word features (not in the seed)
    fusion_dim: int = 256  # d of S²RM at a scale = min(fusion_dim, C of that scale)
    fused_scales: tuple[int, ...] = (1, 2, 3, 4)
    shift_steps: int = 4
    shift_signs: tuple[int, ...] = (1, -1)
    coparse_kernel: int = 9
    share_step_weights: bool = False
    balancing: bool = True
    balance_reduction: int = 4
    coord_features: bool = False  # x/y coordinate channels in S²RM's language distribution (not in the seed)
    casg_attention: bool = True
    decoder_dim: int = 256
    guide_merge: str = "concat"
    decoder_convs: int = 2
    text_head: bool = False  # sentence-conditioned dynamic 1×1 term in the mask head (not in the seed)
    norm: str = "batch"
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("fused_scales", "shift_signs", "image_mean", "image_std", "vision_mean", "vision_std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if (self.vision_mean is None) != (self.vision_std is None):
            raise ModelError("vision_mean and vision_std are set together (the vision weights' normalisation)")
        for name in ("image_mean", "image_std", "vision_mean", "vision_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ModelError(f"{name} must have 3 values (R, G, B), got {list(value)}")
        if any(v <= 0 for v in (*self.image_std, *(self.vision_std or ()))):
            raise ModelError(f"image_std / vision_std must be positive, got {self.image_std} / {self.vision_std}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.vision_kwargs.items()}
        object.__setattr__(self, "vision_kwargs", kwargs)
        if self.text_dir is not None:
            object.__setattr__(self, "text_dir", str(self.text_dir))
        checks = {
            "sentence_pool": (self.sentence_pool, SENTENCE_POOLS),
            "norm": (self.norm, NORMS),
            "guide_merge": (self.guide_merge, GUIDE_MERGES),
            "text_attention": (self.text_attention, TEXT_ATTENTIONS),
        }
        for key, (value, valid) in checks.items():
            if value not in valid:
                raise choice_error(key, value, valid)
        if self.img_size < 32 or self.img_size % 32:
            raise ModelError(f"img_size {self.img_size} must be a positive multiple of 32 (feature strides up to 32)")
        if not set(self.fused_scales) <= {1, 2, 3, 4}:
            raise ModelError(f"fused_scales {list(self.fused_scales)} must be a subset of [1, 2, 3, 4]")
        if not self.shift_signs or not set(self.shift_signs) <= {1, -1}:
            raise ModelError(f"shift_signs {list(self.shift_signs)} must be a non-empty subset of [1, -1]")
        positive = ("max_tokens", "fusion_dim", "coparse_kernel", "decoder_dim", "decoder_convs", "balance_reduction")
        for key in positive:
            if getattr(self, key) < 1:
                raise ModelError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.shift_steps < 0:
            raise ModelError(f"shift_steps must be >= 0 (0 = no cyclic shifts), got {self.shift_steps}")

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys raise :class:`ModelError`."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ModelError(f"unknown model spec keys {unknown}; valid: {', '.join(sorted(valid))}")
        return cls(**data)

    def vision_input_affine(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(scale, shift)`` turning the model's input normalisation into the vision weights'; None when equal."""
        if self.vision_mean is None or (self.vision_mean == self.image_mean and self.vision_std == self.image_std):
            return None
        # x01 = x·image_std + image_mean;  x' = (x01 − vision_mean) / vision_std
        scale = tuple(s / v for s, v in zip(self.image_std, self.vision_std, strict=True))
        shift = tuple(
            (m - vm) / v for m, vm, v in zip(self.image_mean, self.vision_mean, self.vision_std, strict=True)
        )
        return scale, shift

    def diff(self, other: ModelSpec, architecture_only: bool = True) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{key: (self value, other value)}``.

        With ``architecture_only`` the fields that only say where weights come from (``WEIGHT_SOURCE_FIELDS``:
        machine-specific paths, hub ids) are ignored, so a checkpoint moves between machines.
        """
        a, b = self.to_dict(), other.to_dict()
        skip = WEIGHT_SOURCE_FIELDS if architecture_only else ()
        return {k: (a[k], b.get(k)) for k in a if k not in skip and a[k] != b.get(k)}
