"""Segment what each sentence names in one image and write the mask and overlay PNGs: the prediction loop shared by
``python -m pipeline predict`` and the deploy bundle's ``infer.py``.

Usage: ``for p in segment_to_files(rt, proc, rgb, ["the red mug"], "frame", Path("out")): print(p.line())``.

Every sentence is checked (tokenized within the artifact's token budget) before anything is written, the frame is
pre-processed once and each sentence runs the full graph. Bundle code: Python 3.8, numpy and Pillow only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.formats import MASK_OUTPUT
from runtimes.visualize import save_mask_and_overlay


@dataclass
class Prediction:
    """One sentence's mask and where it was written."""

    sentence: str
    mask: np.ndarray
    ms: float
    mask_path: Path
    overlay_path: Path

    def line(self) -> str:
        """A one-line summary: pixels, share of the image, model time, files."""
        return (
            f"{self.sentence!r}: {int(self.mask.sum())} px ({self.mask.mean():.1%} of the image) in {self.ms:.1f} ms "
            f"-> {self.mask_path}, {self.overlay_path.name}"
        )


def segment_to_files(
    rt: Any, proc: Any, rgb: np.ndarray, sentences: Sequence[str], stem: str, out: Path
) -> Iterator[Prediction]:
    """Run ``rt`` on ``rgb`` with each sentence and write ``<stem>[_i]_mask.png`` / ``_overlay.png`` into ``out``.

    Args:
        rt: a loaded runtime (``infer(feeds)`` returns the mask logits).
        proc: its :class:`runtimes.processing.Processing`.
        rgb: the image, HxWx3 uint8.
        sentences: one or more sentences; with several, files are numbered ``<stem>_0``, ``<stem>_1``, ...
        stem: file name stem (the image's).
        out: output folder (created).

    Raises:
        PipelineError: a sentence the tokenizer refuses (before any file is written).
    """
    texts = proc.checked_texts(sentences)  # every sentence is checked before anything is written
    image_inputs = proc.image(rgb)
    out.mkdir(parents=True, exist_ok=True)
    for i, (sentence, text_inputs) in enumerate(zip(sentences, texts)):  # one entry per sentence
        started = time.perf_counter()
        logits = rt.infer({**image_inputs, **text_inputs})[MASK_OUTPUT]
        mask = proc.postprocess(logits[0], rgb.shape[:2])
        ms = (time.perf_counter() - started) * 1e3
        name = stem if len(sentences) == 1 else f"{stem}_{i}"
        mask_path, overlay_path = out / f"{name}_mask.png", out / f"{name}_overlay.png"
        save_mask_and_overlay(rgb, mask, mask_path, overlay_path)
        yield Prediction(sentence, mask, ms, mask_path, overlay_path)
