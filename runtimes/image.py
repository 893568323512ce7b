"""Image reading and the model's image transform, numpy + PIL only (no torch: the robot runs them).

Usage: ``rgb = read_image("frame.jpg"); x = preprocess_image(rgb, 224)[None]  # 1, 3, 224, 224 float32``.

Every image file the project reads (data sets, ``predict``, the deploy bundle's scripts) goes through
:func:`read_image`: any mode becomes uint8 RGB, and an image over :func:`max_image_pixels` is refused from its header,
before any pixel is decoded. Images are resized to the model's square input, bilinear, and normalized with the
ImageNet mean and std. There are no flips: a flip would have to swap "left" and "right" in the sentence too. Training
uses the same transform (``pipeline.data.dataset``); its mask resizing stays in ``pipeline.data.transforms``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from foundation.errors import DataError

MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean, of values in [0, 1]
STD = (0.229, 0.224, 0.225)  # ImageNet RGB std
_MEAN = np.asarray(MEAN, np.float32).reshape(3, 1, 1) * 255.0
_STD = np.asarray(STD, np.float32).reshape(3, 1, 1) * 255.0
# Largest image read, in pixels: 40 MP holds 8K video frames and most camera photos, and bounds the peak memory of
# `predict` (frame, upsampled logits, mask and overlay at full size) to about 2 GB (1.9 GB measured on an 8000x5000
# JPEG). Set the environment variable to raise it, or to lower it on a small device.
MAX_PIXELS_ENV = "S2RM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000
_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def max_image_pixels() -> int:
    """The pixel limit of :func:`read_image`: ``$S2RM_MAX_IMAGE_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        DataError: the variable is set to something other than a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) <= 0:
        raise DataError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}; expected a positive number of pixels")
    return int(raw)


def read_image(source: str | Path | bytes, label: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file (or its bytes) to uint8 RGB ``[H, W, 3]``.

    Grey, palette, CMYK and alpha images become RGB (alpha is dropped); 16-bit and 32-bit grey images are scaled to
    8 bits, not clipped. EXIF orientation is not applied: REFER annotations refer to the stored pixel layout. The
    size is checked from the header, so an oversized image costs no memory.

    Args:
        source: a path, or the encoded bytes.
        label: how errors name the image (default: the path).
        max_pixels: refuse images with more pixels (default: :func:`max_image_pixels`).

    Raises:
        DataError: the file is missing, is not a readable image, or is over the pixel limit; the message names it.
    """
    is_bytes = isinstance(source, (bytes, bytearray))
    label = label or ("image <bytes>" if is_bytes else f"image {source}")
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        found = is_bytes or Path(source).is_file()
    except OSError as exc:  # e.g. a name too long for the filesystem
        raise DataError(f"{label} cannot be opened: {exc.strerror}") from exc
    if not found:
        raise DataError(f"{label} not found (no such file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies, below
            img = Image.open(io.BytesIO(source) if is_bytes else source)
        with img:
            width, height = img.size
            if width * height > limit:
                raise DataError(
                    f"{label} is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,}; "
                    f"downscale it, or raise the limit with {MAX_PIXELS_ENV}=<pixels>"
                )
            img.load()
            return _to_rgb_uint8(img)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS)
        raise DataError(f"{label} is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for unknown, truncated or corrupt files
        raise DataError(f"{label} is corrupt or not an image: {exc}") from exc


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in _INTEGER_MODES:
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max(initial=0.0))
        if peak > 255:  # 16-bit (or wider) data: scale its full range to 8 bits
            arr = arr * (255.0 / (65535.0 if peak <= 65535 else peak))
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA" if "transparency" in img.info else img.mode).convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def preprocess_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size x size`` (PIL bilinear, antialiased when shrinking; aspect not kept), normalize.

    Args:
        rgb: uint8 ``[H, W, 3]``.
        size: side of the square model input.

    Returns:
        float32 ``[3, size, size]``: ``(pixel / 255 - MEAN) / STD`` per channel.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise DataError(f"preprocess_image needs a non-empty uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.float32)  # S, S, 3
    return ((resized.transpose(2, 0, 1) - _MEAN) / _STD).astype(np.float32)  # 3, S, S
