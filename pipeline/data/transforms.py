"""Training-only transforms: nearest-neighbour mask resizing (numpy + PIL).

Usage: ``m = resize_mask(mask, 224)``.

Image reading and the model's image transform are the robot's code and live in :mod:`runtimes.image`
(``read_image``, ``preprocess_image``, ``MEAN``, ``STD``); training and evaluation import them from there.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from foundation.errors import DataError


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D mask with nearest-neighbour sampling, keeping its dtype.

    Args:
        mask: ``[H, W]`` bool or integer mask.
        size: a square side, or ``(height, width)``.
    """
    if mask.ndim != 2:
        raise DataError(f"resize_mask needs a 2-D mask, got shape {list(mask.shape)}")
    height, width = (size, size) if isinstance(size, int) else size
    if mask.dtype == bool:
        src = mask.astype(np.uint8)
    else:  # PIL holds 8-bit, 32-bit int and 32-bit float images
        src = mask if mask.dtype in (np.uint8, np.int32, np.float32) else mask.astype(np.float32)
    resized = np.asarray(Image.fromarray(src).resize((width, height), Image.NEAREST))
    return resized.astype(mask.dtype)
