"""Image and mask transforms in numpy + PIL only (no torch: the robot-side runtime uses them).

Usage: ``x = preprocess_image(rgb, 224)[None]  # 1, 3, 224, 224 float32``; ``m = resize_mask(mask, 224)``.

Images are resized to the model's square input, bilinear, and normalized with the ImageNet mean and std. There are
no flips: a flip would have to swap "left" and "right" in the sentence too.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.errors import DataError

MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean, of values in [0, 1]
STD = (0.229, 0.224, 0.225)  # ImageNet RGB std
_MEAN = np.asarray(MEAN, np.float32).reshape(3, 1, 1) * 255.0
_STD = np.asarray(STD, np.float32).reshape(3, 1, 1) * 255.0


def preprocess_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size x size`` (PIL bilinear, antialiased when shrinking; aspect not kept), normalize.

    Args:
        rgb: uint8 ``[H, W, 3]``.
        size: side of the square model input.

    Returns:
        float32 ``[3, size, size]``: ``(pixel / 255 - MEAN) / STD`` per channel.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"preprocess_image needs uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.float32)  # S, S, 3
    return ((resized.transpose(2, 0, 1) - _MEAN) / _STD).astype(np.float32)  # 3, S, S


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
