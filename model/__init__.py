"""S²RM + CASG referring-segmentation model: encoders, fusion, decoder, variants and weight loading.

Usage: ``from model import create_model; net = create_model("demo", shift_steps=0)``.

Importing this package is light (no torch): the public names below are resolved lazily from their modules, so the
runtime side of the project may import :class:`ModelError` without pulling in torch or timm.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from typing import Any


class ModelError(ValueError):
    """A model variant, override, weights file or checkpoint is unknown, missing, corrupt or mismatched."""


def closest(name: str, valid: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or ``""`` when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def choice_error(kind: str, value: object, valid: Iterable[str]) -> ModelError:
    """Build a :class:`ModelError` for a value outside a named set, listing the set and the closest entry."""
    names = sorted(str(v) for v in valid)
    return ModelError(f"unknown {kind} {value!r}{closest(str(value), names)}; valid: {', '.join(names)}")


_LAZY = {
    "ModelSpec": "model.spec",
    "RISModel": "model.ris",
    "create_model": "model.variants",
    "resolve_spec": "model.variants",
    "register_variant": "model.variants",
    "list_variants": "model.variants",
    "graph_specs": "model.graphs",
    "GraphSpec": "model.graphs",
    "load_vision_checkpoint": "model.weights",
    "load_text_weights": "model.weights",
    "load_pretrained": "model.weights",
    "save_checkpoint": "model.weights",
    "load_checkpoint": "model.weights",
    "load_weights_into": "model.weights",
    "read_checkpoint_meta": "model.weights",
}

__all__ = ["ModelError", "choice_error", "closest", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
