"""Pre- and post-processing shared by every runtime: image resize + normalize, tokenize, upsample + threshold.

Usage: ``proc = Processing.from_metadata(rt.metadata); out = rt.infer(proc(rgb, "the red star")); mask =
proc.postprocess(out["mask_logits"], rgb.shape[:2])``.

Nothing here is re-implemented: the image transform is :func:`runtimes.image.preprocess_image`, the tokenizer
:class:`runtimes.tokenizer.TextTokenizer` and the mask rule :func:`runtimes.masks.logits_to_mask` (upsample
bilinearly to the original size, ``sigmoid ≥ threshold``), so training, evaluation, validation and the robot all
process inputs the same way. Numpy, PIL and tokenizers only: no torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError
from runtimes.image import MEAN, STD, preprocess_image
from runtimes.masks import DEFAULT_THRESHOLD, logits_to_mask
from runtimes.tokenizer import TextTokenizer


def _first(meta: Mapping[str, Any], *keys: str) -> Any:
    """The first key present in ``meta`` or one of its nested ``preprocessing`` / ``model`` / ``io`` dicts."""
    for src in (meta, *(meta.get(k) for k in ("preprocessing", "normalization", "model", "io", "tokenizer"))):
        if isinstance(src, Mapping):
            for key in keys:
                if src.get(key) is not None:
                    return src[key]
    return None


def _parse(value: Any) -> Any:
    """Metadata values stored as JSON strings (ONNX metadata_props, OpenVINO rt_info) come back as objects."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _shape(shapes: Any, name: str) -> list[int] | None:
    """Shape of one input from ``{"name": [dims]}`` or ``{"name": {"shape": [dims], "dtype": ...}}``."""
    entry = shapes.get(name) if isinstance(shapes, Mapping) else None
    if isinstance(entry, Mapping):
        entry = entry.get("shape")
    return list(entry) if isinstance(entry, (list, tuple)) and entry else None


@dataclass
class Processing:
    """Turn an RGB frame and sentences into named model inputs, and mask logits into a mask at the frame's size.

    Args:
        img_size: Side of the square model input.
        max_tokens: Fixed token length N.
        tokenizer_dir: Hugging Face directory holding ``tokenizer.json`` (None: the default MiniLM package).
        mean: Per-channel RGB mean of pixels in [0, 1].
        std: Per-channel RGB std.
        threshold: Sigmoid probability of the mask.
    """

    img_size: int
    max_tokens: int
    tokenizer_dir: str | None = None
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    threshold: float = DEFAULT_THRESHOLD
    _tokenizer: TextTokenizer | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], tokenizer_dir: str | Path | None = None) -> Processing:
        """Build from an artifact's metadata (ONNX metadata_props, OpenVINO rt_info, engine sidecar, checkpoint).

        Args:
            metadata: The artifact's self-description; values may be JSON strings.
            tokenizer_dir: Overrides the tokenizer directory recorded in the metadata (a deploy bundle ships its own
                copy; the recorded path is the build host's).

        Raises:
            ArtifactError: the input size or token length cannot be found.
        """
        meta = {k: _parse(v) for k, v in metadata.items()}
        shapes = _first(meta, "input_shapes", "inputs") or {}
        image_shape, ids_shape = (_shape(shapes, n) for n in ("image", "input_ids"))
        size = _first(meta, "img_size", "image_size", "input_size") or (image_shape[-1] if image_shape else None)
        tokens = _first(meta, "max_tokens", "token_length", "max_length") or (ids_shape[-1] if ids_shape else None)
        if size is None or tokens is None:
            raise ArtifactError(
                f"artifact metadata lacks the input size or token length (keys: {sorted(meta)}); re-export the "
                "artifact with the pipeline, which records both"
            )
        tok = tokenizer_dir or _first(meta, "tokenizer_dir", "text_dir", "dir", "path")
        if isinstance(tok, Mapping):
            tok = tok.get("dir") or tok.get("path")
        return cls(
            img_size=int(size),
            max_tokens=int(tokens),
            tokenizer_dir=None if tok is None else str(tok),
            mean=tuple(float(v) for v in (_first(meta, "image_mean", "mean") or MEAN)),
            std=tuple(float(v) for v in (_first(meta, "image_std", "std") or STD)),
            threshold=float(_first(meta, "threshold", "mask_threshold") or DEFAULT_THRESHOLD),
        )

    def signature(self) -> tuple[Any, ...]:
        """What must agree between two artifacts for their inputs to be interchangeable."""
        return (self.img_size, self.max_tokens, self.mean, self.std, self.threshold)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The fixed-length tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_dir(self.tokenizer_dir, max_length=self.max_tokens)
        return self._tokenizer

    def image(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """``{"image": float32 [1, 3, S, S]}`` from a uint8 RGB frame ``[H, W, 3]``."""
        x = preprocess_image(rgb, self.img_size)  # 3, S, S with ImageNet statistics
        if not (np.allclose(self.mean, MEAN) and np.allclose(self.std, STD)):
            # an artifact trained with other statistics: undo ImageNet's, apply its own (exact up to rounding)
            x = x * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]
            x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return {"image": x[None].astype(np.float32)}

    def text(self, sentences: str | Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 ``[B, N]``, right-padded to the artifact's token length."""
        return self.tokenizer(sentences)

    def text_with_note(self, sentence: str) -> tuple[dict[str, np.ndarray], str | None]:
        """:meth:`text` of one sentence, and a note for the user when it had to be cut to the token length.

        Raises:
            DataError: the sentence is empty or only whitespace and control characters.
        """
        inputs = self.text(sentence)
        if not self.tokenizer.last_truncated[0]:
            return inputs, None
        return inputs, (
            f"expression {sentence[:60]!r}{'...' if len(sentence) > 60 else ''} is longer than the model's "
            f"{self.max_tokens} tokens; it was truncated to its first {self.max_tokens} tokens"
        )

    def checked_texts(self, sentences: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """:meth:`text_with_note` of every sentence (all checked before any is run); notes go to stderr.

        Raises:
            DataError: a sentence is empty or only whitespace and control characters.
        """
        out = []
        for sentence in sentences:
            inputs, note = self.text_with_note(sentence)
            out.append(inputs)
            if note:
                print(f"note: {note}", file=sys.stderr)
        return out

    def __call__(self, rgb: np.ndarray, sentence: str) -> dict[str, np.ndarray]:
        """All inputs of the full graph for one frame and one sentence (batch 1)."""
        return {**self.image(rgb), **self.text(sentence)}

    def postprocess(self, mask_logits: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
        """Bool mask ``[H, W]`` at the original frame size from one sample's logits ``[1, 1, h, w]``."""
        return logits_to_mask(mask_logits, out_hw, self.threshold)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (for reports and golden files)."""
        return {
            "img_size": self.img_size,
            "max_tokens": self.max_tokens,
            "tokenizer_dir": self.tokenizer_dir,
            "mean": list(self.mean),
            "std": list(self.std),
            "threshold": self.threshold,
        }


def postprocess(mask_logits: np.ndarray, out_hw: Sequence[int], threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Bool mask ``[H, W]`` from one sample's logits: bilinear upsampling to ``out_hw``, then sigmoid ≥ threshold."""
    return logits_to_mask(mask_logits, out_hw, threshold)
