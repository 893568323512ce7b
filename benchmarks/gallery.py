"""A mask gallery: eval samples with the ground truth, the FP32 mask and every other artifact's mask, side by side.

Usage (the ``validate`` stage does this)::

    picks = pick_samples(agreements, n=8)               # worst FP32-vs-INT8 disagreement first
    rows = gallery_rows(runtimes, reference, gallery_samples(refer, picks, proc), proc.threshold)
    write_gallery(rows, out_dir / "gallery")            # one PNG per sample + gallery.png + gallery.json

Each row is one sample: the image, then the ground truth (green), the reference's mask and each artifact's mask
(red), each drawn by dimming every pixel outside the mask, under the sentence; each artifact's panel is titled with
its IoU against the ground truth and its agreement (IoU) with the reference's mask. Samples are ordered by the
lowest agreement of any artifact, so the ones where quantization changed the answer most come first. numpy + Pillow
only.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.masks import logits_to_mask

PANEL = 160  # side of each panel in pixels
CAPTION = 30  # caption band above the panels
TITLE = 28  # title band above each panel: the artifact's name, then its figures
GT_RGB = (40.0, 200.0, 60.0)
MASK_RGB = (255.0, 32.0, 32.0)


@dataclass
class Panel:
    """One picture of a row: what it shows and its figures against the ground truth and the reference."""

    title: str
    iou_gt: float | None = None
    agreement: float | None = None


@dataclass
class GalleryRow:
    """One sample: its id, sentence, the panels' descriptions and the composed picture (uint8 RGB)."""

    sample_id: str
    sentence: str
    panels: list[Panel]
    picture: np.ndarray
    min_agreement: float | None


def pick_samples(agreements: Mapping[str, Mapping[str, float]], n: int = 8) -> list[str]:
    """Choose ``n`` sample ids: the lowest agreement with the reference first (over all artifacts), then spread.

    Args:
        agreements: artifact -> {sample id -> agreement IoU with the reference's mask}, in evaluation order; an
            artifact that did not score a sample counts as agreeing on it.
        n: how many samples.

    Returns:
        Sample ids, the worst disagreement first. Ties (e.g. all 1.0 when INT8 agrees everywhere) keep the
        evaluation order, spread evenly over it so the gallery still shows every split.
    """
    if not agreements:
        return []
    ids = list(dict.fromkeys(sid for a in agreements.values() for sid in a))
    worst = {sid: min(a.get(sid, 1.0) for a in agreements.values()) for sid in ids}
    disagreeing = sorted((sid for sid in ids if worst[sid] < 1.0), key=lambda s: (worst[s], ids.index(s)))
    picks = disagreeing[:n]
    rest = [sid for sid in ids if sid not in set(picks)]
    if len(picks) < n and rest:
        spread = np.unique(np.linspace(0, len(rest) - 1, min(n - len(picks), len(rest))).round().astype(int))
        picks += [rest[i] for i in spread]
    return picks


def highlight(rgb: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """The frame with the pixels outside ``mask`` dimmed to 30% and the mask tinted with ``colour`` (uint8 RGB):
    the selection reads at a glance whatever the object's own colour."""
    out = rgb.astype(np.float32) * 0.3
    out[mask] = 0.6 * rgb[mask].astype(np.float32) + 0.4 * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def compose(rgb: np.ndarray, masks: Sequence[np.ndarray], panels: Sequence[Panel], sentence: str) -> np.ndarray:
    """One row: the image, then each mask as an overlay on it, with titles and the sentence above (uint8 RGB)."""
    from PIL import Image, ImageDraw

    n = 1 + len(masks)
    canvas = Image.new("RGB", (n * PANEL, CAPTION + TITLE + PANEL), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    caption = textwrap.shorten(f'"{sentence}"', width=max(20, n * PANEL // 6), placeholder="…")
    draw.text((4, 8), caption, fill=(0, 0, 0))
    pictures = [rgb] + [
        highlight(rgb, m, GT_RGB if i == 0 else MASK_RGB) for i, m in enumerate(masks)
    ]  # the ground truth in green, predictions in red
    titles = [("image", "")] + [_panel_title(p) for p in panels]
    for k, (pic, (name, figures)) in enumerate(zip(pictures, titles, strict=True)):
        tile = Image.fromarray(pic).resize((PANEL, PANEL), Image.BILINEAR)
        canvas.paste(tile, (k * PANEL, CAPTION + TITLE))
        draw.text((k * PANEL + 3, CAPTION + 1), name, fill=(0, 0, 0))
        draw.text((k * PANEL + 3, CAPTION + 14), figures, fill=(60, 60, 60))
    return np.asarray(canvas)


def _panel_title(panel: Panel) -> tuple[str, str]:
    """(name, figures) of a panel: its two title lines."""
    figures = []
    if panel.iou_gt is not None:
        figures.append(f"IoU {panel.iou_gt:.2f}")
    if panel.agreement is not None:
        figures.append(f"agreement {panel.agreement:.2f}")
    return panel.title, ", ".join(figures)


def gallery_rows(
    runtimes: Mapping[str, Any],
    reference: str,
    samples: Iterable[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, Any]],
    threshold: float,
    names: Sequence[str] | None = None,
) -> list[GalleryRow]:
    """Run every runtime on each sample again and compose its row.

    Args:
        runtimes: name -> loaded runtime (``infer(inputs)["mask_logits"]``); must include ``reference``.
        reference: the FP32 reference's name (its panel comes right after the ground truth).
        samples: ``(inputs, gt, rgb, meta)`` with ``meta.sample_id`` and ``meta.sentence``; rgb the original image.
        threshold: the sigmoid threshold of the masks.
        names: the other artifacts to show, in this order (default: every runtime but the reference).
    """
    others = [n for n in (names if names is not None else runtimes) if n != reference and n in runtimes]
    rows = []
    for inputs, gt, rgb, meta in samples:
        masks = {
            name: logits_to_mask(runtimes[name].infer(inputs)["mask_logits"], gt.shape, threshold)
            for name in (reference, *others)
        }
        panels = [Panel("ground truth"), Panel(reference, _iou(masks[reference], gt))]
        panels += [Panel(name, _iou(masks[name], gt), _iou(masks[name], masks[reference])) for name in others]
        agreements = [p.agreement for p in panels if p.agreement is not None]
        picture = compose(rgb, [gt, *masks.values()], panels, meta.sentence)
        rows.append(GalleryRow(meta.sample_id, meta.sentence, panels, picture, min(agreements, default=None)))
    return rows


@dataclass
class GallerySample:
    sample_id: str
    sentence: str


def gallery_samples(
    refer: Any, picks: Sequence[str], processing: Any
) -> Iterable[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, GallerySample]]:
    """``(inputs, gt, rgb, meta)`` of the picked sample ids (``split:ref_id:sent_id``), in the order of ``picks``."""
    wanted = set(picks)
    found: dict[str, Any] = {}
    for split in dict.fromkeys(p.split(":", 1)[0] for p in picks):
        for sample in refer.samples(split):
            sid = f"{split}:{sample.ref_id}:{sample.sent_id}"
            if sid in wanted:
                found[sid] = sample
    for sid in picks:
        sample = found.get(sid)
        if sample is None:
            raise KeyError(f"gallery sample {sid!r} is not in the data set")
        rgb = refer.image(sample.image_id)
        inputs = {**processing.image(rgb), **processing.text(sample.text)}
        yield inputs, refer.mask(sample.ann_id), rgb, GallerySample(sid, sample.text)


def write_gallery(rows: Sequence[GalleryRow], out_dir: str | Path) -> dict[str, Any]:
    """Write ``NN.png`` per row, ``gallery.png`` (all rows stacked) and ``gallery.json``; returns the JSON document.

    Every file is written atomically; ``gallery.json`` lists the rows in order with their panels and figures.
    """
    from PIL import Image

    from foundation.io import atomic_path, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"rows": [], "picture": "gallery.png" if rows else None}
    for k, row in enumerate(rows):
        name = f"{k:02d}.png"
        with atomic_path(out / name) as tmp:
            Image.fromarray(row.picture).save(tmp, format="PNG")
        doc["rows"].append(
            {
                "file": name,
                "sample_id": row.sample_id,
                "sentence": row.sentence,
                "min_agreement": row.min_agreement,
                "panels": [asdict(p) for p in row.panels],
            }
        )
    if rows:
        width = max(r.picture.shape[1] for r in rows)
        stacked = np.full((sum(r.picture.shape[0] for r in rows), width, 3), 255, np.uint8)
        top = 0
        for row in rows:
            h, w = row.picture.shape[:2]
            stacked[top : top + h, :w] = row.picture
            top += h
        with atomic_path(out / "gallery.png") as tmp:
            Image.fromarray(stacked).save(tmp, format="PNG")
    atomic_write_json(out / "gallery.json", doc)
    return doc


def read_gallery(folder: str | Path) -> dict[str, Any] | None:
    """``gallery.json`` of a folder, or None when there is none."""
    path = Path(folder) / "gallery.json"
    return json.loads(path.read_text()) if path.is_file() else None
