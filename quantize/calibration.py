"""The INT8 calibration set: train-split samples, stratified over expression kind and object size, as model inputs.

Usage: ``picks = select_calibration(refer, 300, eval_keys=eval_keys(refer, ["val"])); arrays = build_arrays(refer,
picks, tokenizer, 192); save_calibration("calib.npz", arrays)``.

Hygiene (DESIGN §6): calibration samples come from the train split only, never share a (referent, sentence) or an
image with the evaluation splits (:func:`check_disjoint` raises :class:`DataError` naming them), and their ids are
recorded. Fewer than :data:`MIN_RECOMMENDED` samples draws a warning (NVIDIA and Ultralytics advise several hundred).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError

log = logging.getLogger(__name__)

MIN_RECOMMENDED = 100
SIZE_BINS = ("small", "medium", "large")  # terciles of the referent's relative area within the train split
INPUT_NAMES = ("image", "input_ids", "attention_mask")
TOKEN_DTYPE = np.int32  # the artifacts' token dtype (runtimes.base.TOKEN_DTYPE)


def sample_id(sample: Any) -> str:
    """The recorded id of a (referent, sentence) sample: ``split:ref_id:sent_id`` (as benchmarks.accuracy)."""
    return f"{sample.split}:{sample.ref_id}:{sample.sent_id}"


def eval_keys(refer: Any, splits: Sequence[str]) -> dict[str, set[Any]]:
    """What calibration must not touch: ``(ref_id, sent_id)`` pairs and image ids of the evaluation splits."""
    pairs, images = set(), set()
    for split in splits:
        for s in refer.samples(split):
            pairs.add((s.ref_id, s.sent_id))
            images.add(s.image_id)
    return {"samples": pairs, "images": images}


def check_disjoint(samples: Sequence[Any], keys: dict[str, set[Any]]) -> None:
    """Refuse calibration samples that share a (referent, sentence) or an image with the evaluation splits.

    Raises:
        DataError: naming up to 10 offending sample ids and the number of overlaps.
    """
    bad = [s for s in samples if (s.ref_id, s.sent_id) in keys["samples"] or s.image_id in keys["images"]]
    if bad:
        shown = ", ".join(f"{sample_id(s)} (image {s.image_id})" for s in bad[:10])
        raise DataError(
            f"{len(bad)} calibration samples overlap the evaluation splits: {shown}{' ...' if len(bad) > 10 else ''}; "
            "calibration must come from data the model is never scored on"
        )


def relative_area(refer: Any, sample: Any) -> float:
    """Area of the referent over its image's area, from ``instances.json`` (bbox when ``area`` is absent)."""
    ann = refer.anns[sample.ann_id]
    info = refer.images[sample.image_id]
    area = ann.get("area")
    if area is None:
        box = ann.get("bbox") or [0, 0, 0, 0]
        area = float(box[2]) * float(box[3])
    return float(area) / max(1.0, float(info["height"]) * float(info["width"]))


def _allocate(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """Split ``n`` picks over groups proportionally to their sizes (largest remainder), each group at most its size."""
    total = sum(sizes.values())
    exact = {g: n * c / total for g, c in sizes.items()}
    take = {g: min(sizes[g], int(v)) for g, v in exact.items()}
    order = sorted(sizes, key=lambda g: (exact[g] - int(exact[g]), sizes[g]), reverse=True)
    while sum(take.values()) < n:
        grew = False
        for g in order:
            if sum(take.values()) >= n:
                break
            if take[g] < sizes[g]:
                take[g] += 1
                grew = True
        if not grew:
            break
    return take


def select_calibration(
    refer: Any,
    n: int,
    eval_keys: dict[str, set[Any]],
    split: str = "train",
    seed: int = 0,
) -> list[Any]:
    """Pick ``n`` samples of ``split``, stratified over (expression kind, object-size tercile).

    Samples that share an image or a sentence with the evaluation splits are never candidates; the result is checked
    again with :func:`check_disjoint`.

    Args:
        refer: a loaded :class:`pipeline.data.refer.ReferDataset`.
        n: number of samples wanted (all candidates when fewer exist).
        eval_keys: from :func:`eval_keys` over the evaluation splits.
        split: the split to draw from (the train split).
        seed: sampling seed.

    Returns:
        The picked samples, in a stable order (group, then refs-file order).
    """
    pool = [s for s in refer.samples(split)]
    pool = [
        s for s in pool if (s.ref_id, s.sent_id) not in eval_keys["samples"] and s.image_id not in eval_keys["images"]
    ]
    if not pool:
        raise DataError(f"split {split!r} has no sample disjoint from the evaluation splits; nothing to calibrate on")
    areas = np.asarray([relative_area(refer, s) for s in pool])
    edges = np.quantile(areas, [1 / 3, 2 / 3]) if len(pool) >= 3 else np.asarray([np.inf, np.inf])
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (s, a) in enumerate(zip(pool, areas, strict=True)):
        groups[(s.kind or "any", SIZE_BINS[int(np.searchsorted(edges, a, side="right"))])].append(i)
    take = _allocate({g: len(ix) for g, ix in groups.items()}, min(n, len(pool)))
    rng = np.random.default_rng(seed)
    picked: list[Any] = []
    for g in sorted(groups):
        ix = groups[g]
        chosen = sorted(rng.choice(len(ix), size=take[g], replace=False).tolist()) if take[g] else []
        picked.extend(pool[ix[c]] for c in chosen)
    check_disjoint(picked, eval_keys)
    if len(picked) < n:
        log.warning("calibration: only %d samples available in %r (asked for %d)", len(picked), split, n)
    if len(picked) < MIN_RECOMMENDED:
        log.warning(
            "calibration: %d samples is below the %d recommended; INT8 scales may be noisy",
            len(picked),
            MIN_RECOMMENDED,
        )
    return picked


def strata(refer: Any, samples: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Counts per expression kind and per size bin of the picked samples (relative area, fixed bins for reading)."""
    kinds: dict[str, int] = defaultdict(int)
    for s in samples:
        kinds[s.kind or "any"] += 1
    areas = np.asarray([relative_area(refer, s) for s in samples]) if samples else np.zeros(0)
    sizes = {"<2%": int((areas < 0.02).sum()), "2-10%": int(((areas >= 0.02) & (areas < 0.1)).sum())}
    sizes[">=10%"] = int((areas >= 0.1).sum())
    return {"kind": dict(sorted(kinds.items())), "relative_area": sizes}


def build_arrays(refer: Any, samples: Sequence[Any], tokenizer: Any, size: int) -> dict[str, np.ndarray]:
    """Model inputs of the samples, stacked: ``image`` float32 [N,3,S,S], token inputs int32 [N,L], ``ids`` [N]."""
    from runtimes.image import preprocess_image

    cache: dict[int, np.ndarray] = {}
    images = []
    for s in samples:
        if s.image_id not in cache:
            cache[s.image_id] = preprocess_image(refer.image(s.image_id), size)  # 3, S, S
        images.append(cache[s.image_id])
    tokens = tokenizer([s.text for s in samples])
    return {
        "image": np.stack(images).astype(np.float32),  # N, 3, S, S
        "input_ids": tokens["input_ids"].astype(TOKEN_DTYPE),  # N, L
        "attention_mask": tokens["attention_mask"].astype(TOKEN_DTYPE),  # N, L
        "ids": np.asarray([sample_id(s) for s in samples]),
    }


def save_calibration(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the arrays as one ``.npz`` (uncompressed: normalized float images do not compress)."""
    from foundation.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_calibration(path: str | Path) -> dict[str, np.ndarray]:
    """Read a calibration ``.npz``; checks the model inputs are there and agree in length."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration set {path} not found; run the calibrate stage")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in (*INPUT_NAMES, "ids") if k not in arrays]
    if missing:
        raise DataError(f"calibration set {path} lacks {missing}; it has {sorted(arrays)}")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"calibration set {path} has arrays of different lengths: {lengths}")
    return arrays


def iter_feeds(arrays: dict[str, np.ndarray], names: Sequence[str] = INPUT_NAMES) -> Iterator[dict[str, np.ndarray]]:
    """Batch-1 feed dicts (``{name: [1, ...]}``) over a calibration set."""
    for i in range(len(arrays["ids"])):
        yield {n: arrays[n][i : i + 1] for n in names}


# ---------------------------------------------------------------------------------------------- validation subset


class ValItem(tuple):
    """``(feeds, gt, sample_id, split, kind)``: batch-1 int32-token feeds and the bool mask at original size."""

    __slots__ = ()

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return self[0]

    @property
    def gt(self) -> np.ndarray:
        return self[1]


def validation_items(refer: Any, splits: Sequence[str], n: int, tokenizer: Any, size: int) -> list[ValItem]:
    """About ``n`` evaluation samples spread evenly over ``splits`` (the subset the INT8 drop is measured on)."""
    from benchmarks.sampling import select
    from runtimes.image import preprocess_image

    per_split = max(1, n // max(1, len(splits)))
    items: list[ValItem] = []
    for split in splits:
        last, image = None, None
        for s in select(refer.samples(split), per_split):
            if s.image_id != last:
                image, last = preprocess_image(refer.image(s.image_id), size)[None], s.image_id  # 1, 3, S, S
            tok = tokenizer(s.text)
            feeds = {"image": image, **{k: v.astype(TOKEN_DTYPE) for k, v in tok.items()}}
            items.append(ValItem((feeds, refer.mask(s.ann_id), sample_id(s), split, s.kind)))
    return items


def score(infer: Any, items: Sequence[ValItem], threshold: float = 0.5) -> tuple[float, list[float]]:
    """mIoU (a fraction) and per-sample IoUs of ``infer(feeds) -> mask_logits`` over validation items.

    The metric is :class:`benchmarks.metrics.SegMetrics` with :func:`runtimes.masks.logits_to_mask` (original
    resolution, ``sigmoid ≥ threshold``): the project's only definition.
    """
    from benchmarks.metrics import SegMetrics
    from runtimes.masks import logits_to_mask

    metrics = SegMetrics()
    ious = []
    for feeds, gt, sid, split, kind in items:
        mask = logits_to_mask(infer(feeds), gt.shape, threshold)
        ious.append(metrics.update(mask, gt, sample_id=sid, split=split, kind=kind))
    return float(metrics.result()["mIoU"] or 0.0), ious
