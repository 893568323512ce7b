"""Referring image segmentation metrics: the project's single definition, numpy only (no torch).

Usage: ``m = SegMetrics(); m.update(logits_to_mask(logits, gt.shape), gt, sample_id=sid, split="val"); m.result()``
(``from runtimes.masks import logits_to_mask``).

Conventions (DESIGN §5; public RIS code disagrees on each of them, see research/paper_and_ris.md §3):

- **One sample = one (referent, sentence) pair.** Every sentence of every object is scored on its own and
  weighs the same in mIoU and prec@t.
- **Original-resolution protocol by default.** Logits are bilinearly upsampled (half-pixel centres, i.e.
  ``align_corners=False``) to the original image size and compared with the original-size ground truth
  (as CRIS and EVF-SAM do). The "LAVT protocol" (score at the network input size, ground truth resized
  NEAREST) is available by calling ``logits_to_mask(logits, input_hw)`` and ``resize_mask_nearest(gt, input_hw)``;
  say which one a report uses.
- **Binarisation: sigmoid(logit) ≥ threshold**, 0.5 by default. It is evaluated as
  ``logit ≥ log(t / (1 - t))`` (exactly 0 for t = 0.5), which is the same test without overflow. CRIS uses a
  strict ``>`` and t = 0.35; we do not. The rule is defined once, in :func:`runtimes.masks.logits_to_mask`, because
  the robot's post-processing applies it too; the metrics here take its masks.
- **I and U** are pixel counts of ``pred ∧ gt`` and ``pred ∨ gt``. A sample with **U = 0** (empty prediction
  and empty ground truth) has **IoU 1.0** (LAVT would count 0; ReLA/GRES counts 1).
- **oIoU = ΣI / ΣU** over samples (cIoU in ReLA/EVF-SAM); ΣU = 0 gives 1.0. **mIoU = mean of per-sample IoU**
  (gIoU). **prec@t = share of samples with IoU ≥ t** for t in (0.5, 0.6, 0.7, 0.8, 0.9), tested exactly in
  integers (``I·q ≥ p·U`` for t = p/q), so IoU exactly 0.5 counts for prec@0.5. CRIS uses ``>``; we do not.
- Accumulators keep only per-sample scalars (I, U, id, split, kind), never masks, so they stream over any
  data set and merge across workers.

The paired bootstrap of two runs' differences (:func:`~benchmarks.bootstrap.compare`) is :mod:`benchmarks.bootstrap`.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from foundation.errors import ConfigError, DataError, choice_error
from runtimes.masks import check_hw

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
GROUP_KEYS = ("split", "kind")
UNLABELLED = "unlabelled"  # group name for samples added without a split / kind
_END = object()  # the end of the shorter sequence in agreement()


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth at the network input size (the LAVT protocol); logits → mask is runtimes.masks.logits_to_mask
# ---------------------------------------------------------------------------------------------------------------------


def _pil_nearest_axis(n_in: int, n_out: int) -> np.ndarray:
    """Source index per output pixel, ``floor((o + 0.5) · n_in / n_out)`` accumulated in float64 exactly as Pillow
    does (``ImagingScaleAffine``), so exact ties fall on the same side as in PIL."""
    steps = np.full(n_out, n_in / n_out)
    steps[0] *= 0.5
    return np.minimum(np.floor(np.cumsum(steps)).astype(np.intp), n_in - 1)  # cumsum adds in order, like PIL


def resize_mask_nearest(mask: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Resize a ``[..., h, w]`` mask NEAREST the way PIL does, for the LAVT (network-input-size) protocol.

    LAVT-lineage code resizes the ground truth with ``PIL.Image.NEAREST``; this reproduces its pixel choice
    (half-pixel centres, ``floor((o + 0.5) · n_in / n_out)``) without Pillow, including PIL's float rounding at
    exact ties (e.g. 640 → 48), where torch ``nearest-exact`` may pick the other neighbour.
    """
    m = np.asarray(mask)
    if m.ndim < 2:
        raise DataError(f"resize_mask_nearest got shape {m.shape}; expected [..., h, w]")
    h, w = check_hw(out_hw)
    ys = _pil_nearest_axis(m.shape[-2], h)
    xs = _pil_nearest_axis(m.shape[-1], w)
    return m[..., ys[:, None], xs[None, :]]


# ---------------------------------------------------------------------------------------------------------------------
# Per-sample I / U
# ---------------------------------------------------------------------------------------------------------------------


def _as_mask(x: Any, name: str) -> np.ndarray:
    m = np.asarray(x)
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.integer):
        if m.size and (m.min() < 0 or m.max() > 1):
            raise DataError(
                f"{name} holds integers in [{m.min()}, {m.max()}]; expected a bool mask or 0/1 integers "
                "(binarise a 0/255 PNG with `mask > 0`)"
            )
        return m.astype(bool)
    raise DataError(
        f"{name} has dtype {m.dtype}; expected a bool mask (or 0/1 integers); turn logits into a mask with "
        "logits_to_mask()"
    )


def _check_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = _as_mask(a, name_a), _as_mask(b, name_b)
    if ma.shape != mb.shape:
        raise DataError(
            f"{name_a} shape {ma.shape} != {name_b} shape {mb.shape}; resize the prediction to the ground truth's "
            "size first (logits_to_mask(logits, gt.shape))"
        )
    return ma, mb


def intersection_union(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[int, int]:
    """Return ``(I, U)``: pixel counts of ``pred ∧ gt`` and ``pred ∨ gt`` for masks of the same shape.

    Raises:
        DataError: (a ``ValueError``) the shapes differ, or a mask is not bool / 0-1 integers.
    """
    p, g = _check_pair(pred_mask, gt_mask, "pred_mask", "gt_mask")
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def iou_from_iu(i: Any, u: Any) -> np.ndarray:
    """Per-sample IoU ``I / U`` from arrays of counts, with IoU 1.0 where ``U == 0``."""
    i = np.asarray(i, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > 0, i / np.maximum(u, 1.0), 1.0)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 1.0


def _prec_key(t: float) -> str:
    return f"prec@{t:g}"


def _summary(i: np.ndarray, u: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """JSON-ready ``{n, oIoU, mIoU, prec@t...}`` for int arrays of I and U; metrics are None when n == 0."""
    n = int(i.size)
    out: dict[str, Any] = {"n": n, "oIoU": None, "mIoU": None}
    out.update({_prec_key(t): None for t in thresholds})
    if n == 0:
        return out
    out["oIoU"] = _ratio(float(i.sum()), float(u.sum()))
    out["mIoU"] = float(iou_from_iu(i, u).mean())
    for t in thresholds:
        frac = Fraction(repr(float(t)))  # 0.7 -> 7/10: the test I/U ≥ t is done exactly in integers
        out[_prec_key(t)] = float(np.count_nonzero(i * frac.denominator >= u * frac.numerator) / n)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Streaming accumulator
# ---------------------------------------------------------------------------------------------------------------------


class SegMetrics:
    """Streaming oIoU / mIoU / prec@t over (referent, sentence) samples, keeping only per-sample scalars.

    Example::

        m = SegMetrics()
        for logits, gt, sid, kind in samples:
            m.update(logits_to_mask(logits, gt.shape), gt, sample_id=sid, split="val", kind=kind)
        m.result(); m.by_group("kind")

    Sample ids are optional, but when given they must be unique (a repeated id means a sample was scored twice,
    e.g. by a padded DistributedSampler); use str or int ids so ``state_dict()`` round-trips through JSON.
    """

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        for t in self.thresholds:
            if not 0.0 <= t <= 1.0:
                raise ConfigError(f"prec threshold {t!r} is outside [0, 1]; expected IoU levels such as {THRESHOLDS}")
        self._i: list[int] = []
        self._u: list[int] = []
        self._ids: list[Hashable | None] = []
        self._split: list[str | None] = []
        self._kind: list[str | None] = []
        self._seen: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._i)

    def _check_new_ids(self, ids: Iterable[Hashable | None]) -> None:
        """Refuse a batch before adding any of it if an id repeats, so a failed call changes nothing."""
        fresh: set[Hashable] = set()
        for sid in ids:
            if sid is not None and (sid in self._seen or sid in fresh):
                raise DataError(f"sample id {sid!r} was already scored; each (referent, sentence) counts once")
            fresh.add(sid)

    def add(
        self, i: int, u: int, *, sample_id: Hashable | None = None, split: str | None = None, kind: str | None = None
    ) -> float:
        """Record one sample from precomputed counts (e.g. computed on the accelerator); return its IoU."""
        i, u = int(i), int(u)
        if not 0 <= i <= u:
            raise DataError(f"sample {sample_id!r} has I={i}, U={u}; expected 0 ≤ I ≤ U")
        if sample_id is not None:
            if sample_id in self._seen:
                raise DataError(f"sample id {sample_id!r} was already scored; each (referent, sentence) counts once")
            self._seen.add(sample_id)
        self._i.append(i)
        self._u.append(u)
        self._ids.append(sample_id)
        self._split.append(None if split is None else str(split))
        self._kind.append(None if kind is None else str(kind))
        return _ratio(i, u)

    def update(
        self,
        pred_mask: np.ndarray,
        gt_mask: np.ndarray,
        *,
        sample_id: Hashable | None = None,
        split: str | None = None,
        kind: str | None = None,
    ) -> float:
        """Score one sample's bool masks (same shape) and return its IoU; the masks are not kept."""
        i, u = intersection_union(pred_mask, gt_mask)
        return self.add(i, u, sample_id=sample_id, split=split, kind=kind)

    def update_batch(
        self,
        pred_masks: np.ndarray,
        gt_masks: np.ndarray,
        *,
        sample_ids: Sequence[Hashable] | None = None,
        splits: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Score a ``[B, H, W]`` batch (same-size masks, e.g. the LAVT protocol); return the B IoUs."""
        p, g = _check_pair(pred_masks, gt_masks, "pred_masks", "gt_masks")
        if p.ndim < 2:
            raise DataError(f"pred_masks has shape {p.shape}; expected [B, H, W]")
        b = p.shape[0]
        for name, seq in (("sample_ids", sample_ids), ("splits", splits), ("kinds", kinds)):
            if seq is not None and len(seq) != b:
                raise DataError(f"{name} has {len(seq)} entries for a batch of {b} masks")
        self._check_new_ids([] if sample_ids is None else sample_ids)
        i = np.count_nonzero((p & g).reshape(b, -1), axis=1)
        u = np.count_nonzero((p | g).reshape(b, -1), axis=1)
        return np.array(
            [
                self.add(
                    i[k],
                    u[k],
                    sample_id=None if sample_ids is None else sample_ids[k],
                    split=None if splits is None else splits[k],
                    kind=None if kinds is None else kinds[k],
                )
                for k in range(b)
            ],
            dtype=np.float64,
        )

    def merge(self, other: SegMetrics) -> SegMetrics:
        """Append another accumulator's samples (e.g. gathered from another worker); return ``self``."""
        if other.thresholds != self.thresholds:
            raise ConfigError(f"cannot merge metrics with thresholds {other.thresholds} into {self.thresholds}")
        self._check_new_ids(other._ids)
        for k in range(len(other)):
            self.add(other._i[k], other._u[k], sample_id=other._ids[k], split=other._split[k], kind=other._kind[k])
        return self

    # -- read-outs ------------------------------------------------------------------------------------------------

    @property
    def sample_ids(self) -> list[Hashable | None]:
        """Sample ids in insertion order, aligned with ``ious()``, ``intersections()`` and ``unions()``."""
        return list(self._ids)

    def intersections(self) -> np.ndarray:
        """Per-sample I as an int64 array."""
        return np.asarray(self._i, dtype=np.int64)

    def unions(self) -> np.ndarray:
        """Per-sample U as an int64 array."""
        return np.asarray(self._u, dtype=np.int64)

    def ious(self) -> np.ndarray:
        """Per-sample IoU (U = 0 → 1.0) as a float64 array aligned with ``sample_ids``."""
        return iou_from_iu(self.intersections(), self.unions())

    def result(self) -> dict[str, Any]:
        """Return ``{"n", "oIoU", "mIoU", "prec@0.5", ...}`` as plain floats (None when no sample was added)."""
        return _summary(self.intersections(), self.unions(), self.thresholds)

    def by_group(self, key: str) -> dict[str, dict[str, Any]]:
        """Return ``result()`` per value of ``key`` ("split" or "kind"), groups sorted by name.

        Samples added without that label are grouped under ``"unlabelled"``.
        """
        if key not in GROUP_KEYS:
            raise choice_error("group key", key, GROUP_KEYS)
        labels = self._split if key == "split" else self._kind
        names = np.array([UNLABELLED if v is None else v for v in labels], dtype=object)
        i, u = self.intersections(), self.unions()
        return {name: _summary(i[names == name], u[names == name], self.thresholds) for name in sorted(set(names))}

    def state_dict(self) -> dict[str, Any]:
        """Per-sample table as JSON-ready lists, to save a run and compare it with another later."""
        return {
            "thresholds": list(self.thresholds),
            "sample_id": list(self._ids),
            "split": list(self._split),
            "kind": list(self._kind),
            "I": list(self._i),
            "U": list(self._u),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SegMetrics:
        """Rebuild an accumulator from ``state_dict()`` output (JSON lists of ids come back as tuples)."""
        try:
            cols = [state[k] for k in ("sample_id", "split", "kind", "I", "U")]
            thresholds = state.get("thresholds", THRESHOLDS)
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"metrics state lacks {exc}; expected keys sample_id, split, kind, I, U") from None
        if len({len(c) for c in cols}) != 1:
            raise DataError(f"metrics state columns have lengths {[len(c) for c in cols]}; expected equal lengths")
        m = cls(thresholds)
        for sid, split, kind, i, u in zip(*cols, strict=True):  # equal lengths, checked above
            m.add(i, u, sample_id=tuple(sid) if isinstance(sid, list) else sid, split=split, kind=kind)
        return m


# ---------------------------------------------------------------------------------------------------------------------
# Agreement between two prediction sets
# ---------------------------------------------------------------------------------------------------------------------


class MaskAgreement:
    """Streaming agreement between two predictions of the same samples (e.g. FP32 vs INT8 masks).

    Per sample it keeps the IoU between the two masks (U = 0 → 1.0) and the count of equal pixels. ``result()``
    gives the mean and minimum agreement IoU and the pixel agreement (equal pixels / all pixels, pooled over
    samples, so larger images weigh more).
    """

    def __init__(self) -> None:
        self._i: list[int] = []
        self._u: list[int] = []
        self._equal: list[int] = []
        self._total: list[int] = []
        self._ids: list[Hashable | None] = []

    def __len__(self) -> int:
        return len(self._i)

    def update(self, mask_a: np.ndarray, mask_b: np.ndarray, *, sample_id: Hashable | None = None) -> float:
        """Compare one sample's two bool masks (same shape); return their IoU."""
        a, b = _check_pair(mask_a, mask_b, "mask_a", "mask_b")
        i, u = int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
        self._i.append(i)
        self._u.append(u)
        self._equal.append(int(a.size) - (u - i))  # pixels differ exactly where a XOR b, i.e. U − I of them
        self._total.append(int(a.size))
        self._ids.append(sample_id)
        return _ratio(i, u)

    def merge(self, other: MaskAgreement) -> MaskAgreement:
        """Append another accumulator's samples; return ``self``."""
        self._i += other._i
        self._u += other._u
        self._equal += other._equal
        self._total += other._total
        self._ids += other._ids
        return self

    def ious(self) -> np.ndarray:
        """Per-sample agreement IoU, in insertion order."""
        return iou_from_iu(self._i, self._u)

    def by_sample(self) -> dict[Hashable | None, float]:
        """Sample id -> agreement IoU, in insertion order."""
        return dict(zip(self._ids, self.ious().tolist(), strict=True))  # one id per sample, as update() appends them

    def worst(self, k: int = 10) -> list[tuple[Hashable | None, float]]:
        """The ``k`` samples with the lowest agreement IoU as ``(sample_id, iou)``, lowest first."""
        ious = self.ious()
        order = np.argsort(ious, kind="stable")[: max(0, int(k))]
        return [(self._ids[j], float(ious[j])) for j in order]

    def result(self) -> dict[str, Any]:
        """Return ``{"n", "mean_iou", "min_iou", "pixel_agreement"}`` (None values when empty)."""
        n = len(self)
        if n == 0:
            return {"n": 0, "mean_iou": None, "min_iou": None, "pixel_agreement": None}
        ious = self.ious()
        return {
            "n": n,
            "mean_iou": float(ious.mean()),
            "min_iou": float(ious.min()),
            "pixel_agreement": float(sum(self._equal) / sum(self._total)) if sum(self._total) else 1.0,
        }


def agreement(masks_a: Iterable[np.ndarray], masks_b: Iterable[np.ndarray]) -> dict[str, Any]:
    """Stream two equally long sequences of bool masks through ``MaskAgreement`` and return its ``result()``."""
    acc = MaskAgreement()
    for a, b in itertools.zip_longest(masks_a, masks_b, fillvalue=_END):  # not zip(strict=True): the error says where
        if a is _END or b is _END:
            raise DataError(f"agreement() got sequences of different lengths after {len(acc)} pairs")
        acc.update(a, b)
    return acc.result()
