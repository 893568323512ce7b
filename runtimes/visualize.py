"""Write a predicted mask as a PNG and a red overlay of it on the frame (numpy + Pillow; no torch).

Usage: ``save_mask_and_overlay(rgb, mask, Path("out/frame_mask.png"), Path("out/frame_overlay.png"))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OVERLAY_RGB = (255.0, 32.0, 32.0)
OVERLAY_ALPHA = 0.55


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB frame with the mask's pixels tinted red."""
    out = rgb.astype(np.float32)  # H, W, 3
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * np.asarray(OVERLAY_RGB, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def save_mask_and_overlay(rgb: np.ndarray, mask: np.ndarray, mask_path: Path, overlay_path: Path) -> None:
    """The mask as a 0/255 single-channel PNG and the overlay as an RGB PNG."""
    from PIL import Image

    from foundation.io import atomic_path

    for path, arr in ((mask_path, mask.astype(np.uint8) * 255), (overlay_path, overlay(rgb, mask))):
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
