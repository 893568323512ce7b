"""The mask rule: one sample's logits → a bool mask at the evaluation size (upsample, then sigmoid ≥ threshold).

Usage: ``mask = logits_to_mask(out["mask_logits"], rgb.shape[:2], threshold=0.5)``.

Numpy only. This is the project's single definition of how logits become a mask: the robot's post-processing
(:class:`runtimes.processing.Processing`), training's evaluation and the metrics (:mod:`benchmarks.metrics`, whose
docstring states the whole evaluation protocol) all call :func:`logits_to_mask`.

- **Upsampling:** bilinear with half-pixel centres (torch ``align_corners=False``, no antialias) to the ORIGINAL image
  size by default.
- **Binarisation: sigmoid(logit) ≥ threshold**, 0.5 by default, evaluated as ``logit ≥ log(t / (1 - t))`` (exactly 0
  for t = 0.5), the same test without overflow. CRIS uses a strict ``>`` and t = 0.35; we do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from foundation.errors import ConfigError, DataError

DEFAULT_THRESHOLD = 0.5


def check_hw(out_hw: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` as two positive ints.

    Raises:
        ConfigError: ``out_hw`` is not two positive integers.
    """
    try:
        h, w = (int(v) for v in out_hw)
    except (TypeError, ValueError):
        raise ConfigError(f"out_hw={out_hw!r}; expected (height, width) as two positive ints") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"out_hw={out_hw!r}; expected (height, width) as two positive ints")
    return h, w


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, matching torch's ``align_corners=False`` rule."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)  # torch clamps negative source coordinates to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(x: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Resize the last two axes bilinearly with half-pixel centres (torch ``align_corners=False``, no antialias).

    Args:
        x: Float array ``[..., h, w]``.
        out_hw: Output ``(height, width)``.

    Returns:
        float64 array ``[..., height, width]``; equals ``F.interpolate(mode="bilinear", align_corners=False)``
        up to float32 rounding in torch.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise DataError(f"resize_bilinear got shape {x.shape}; expected [..., h, w]")
    h, w = check_hw(out_hw)
    y0, y1, ly = _bilinear_axis(x.shape[-2], h)
    x0, x1, lx = _bilinear_axis(x.shape[-1], w)
    rows = x[..., y0, :] * (1.0 - ly)[:, None] + x[..., y1, :] * ly[:, None]  # ..., h, w_in
    return rows[..., x0] * (1.0 - lx) + rows[..., x1] * lx  # ..., h, w


def logit_threshold(threshold: float = DEFAULT_THRESHOLD) -> float:
    """Return the logit ``log(t / (1 - t))`` such that ``sigmoid(z) ≥ t`` ⇔ ``z ≥ logit_threshold(t)``."""
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise ConfigError(f"mask threshold {threshold!r} is outside (0, 1); it is a sigmoid probability, e.g. 0.5")
    return math.log(t / (1.0 - t))


def logits_to_mask(logits: np.ndarray, out_hw: Sequence[int], threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Turn one sample's mask logits into a bool mask at the evaluation size: upsample, then sigmoid ≥ threshold.

    Args:
        logits: ``[h, w]`` or ``[1, h, w]`` (any number of leading 1-dims) raw logits, before the sigmoid.
        out_hw: Evaluation ``(height, width)``: the ORIGINAL image size for the default protocol.
        threshold: Sigmoid probability; a pixel is foreground when ``sigmoid(logit) ≥ threshold``.

    Returns:
        Bool mask ``[height, width]``.

    Raises:
        DataError: the logits have another shape or hold NaN/inf (a broken engine, not a low score).
    """
    z = np.asarray(logits)
    if z.ndim < 2 or any(d != 1 for d in z.shape[:-2]):
        raise DataError(f"mask logits have shape {z.shape}; expected [h, w] or [1, h, w] for one sample")
    z = z.reshape(z.shape[-2:])
    if not np.issubdtype(z.dtype, np.floating):
        raise DataError(f"mask logits have dtype {z.dtype}; expected floating-point logits")
    bad = int(np.size(z) - np.count_nonzero(np.isfinite(z)))
    if bad:
        raise DataError(f"mask logits hold {bad} non-finite value(s) of {z.size}; expected finite logits")
    cut = logit_threshold(threshold)
    return resize_bilinear(z, out_hw) >= cut
