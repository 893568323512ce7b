"""Accuracy of every artifact against a re-run FP32 reference: metrics per split and kind, paired drops, agreement.

Usage: ``res = evaluate({"pytorch-fp32": ref_rt, "openvino-int8": ov_rt}, eval_samples(refer, ["val"], proc),
"pytorch-fp32"); summary = summarize(res, "pytorch-fp32")``.

All runtimes run in lockstep over the same samples: each sample is pre-processed once (the deploy path,
:class:`runtimes.processing.Processing`), fed to every runtime, post-processed by the one mask rule
(:func:`runtimes.masks.logits_to_mask`, original resolution) and scored by :class:`benchmarks.metrics.SegMetrics`.
The reference's mask of the sample is compared with each candidate's right away (:class:`MaskAgreement`), so no mask
is kept. Drops are ``reference − candidate`` from :func:`benchmarks.metrics.compare`'s paired bootstrap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.bootstrap import compare
from benchmarks.metrics import MaskAgreement, SegMetrics
from runtimes.base import Runtime
from runtimes.formats import MASK_OUTPUT as MASK
from runtimes.processing import Processing

log = logging.getLogger(__name__)



@dataclass
class SampleMeta:
    """Identity of one evaluation sample: unique id, split and expression kind (None for real REFER data)."""

    sample_id: str
    split: str
    kind: str | None


def eval_samples(
    refer: Any,
    splits: Sequence[str],
    processing: Processing,
    limit: int | None = None,
    exclude: Collection[str] = (),
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, SampleMeta]]:
    """Evaluation samples of several splits through the deploy pre-processing, one (referent, sentence) at a time.

    Args:
        refer: A :class:`pipeline.data.refer.ReferDataset` (``samples(split)``, ``image(id)``, ``mask(ann_id)``).
        splits: Evaluation splits, in order.
        processing: The artifact's pre-processing (image size, normalization, tokenizer).
        limit: At most this many samples per split, spread evenly (``benchmarks.sampling.select``).
        exclude: sample ids (``split:ref_id:sent_id``) left out before the selection, e.g. the samples the INT8
            fallback was tuned on: a gate measured on them would be optimistic.

    Yields:
        ``(inputs, gt, meta)``: named batch-1 inputs, the bool ground truth at the ORIGINAL size, the sample's meta.
    """
    last_id, image = None, None
    for split, sample in selected_samples(refer, splits, limit, exclude):
        if sample.image_id != last_id:  # sentences of one image share its encoding
            image = processing.image(refer.image(sample.image_id))
            last_id = sample.image_id
        meta = SampleMeta(sample_key(split, sample), split, sample.kind)
        yield {**image, **processing.text(sample.text)}, refer.mask(sample.ann_id), meta


def sample_key(split: str, sample: Any) -> str:
    """The id of an evaluation sample: ``split:ref_id:sent_id``."""
    return f"{split}:{sample.ref_id}:{sample.sent_id}"


def selected_samples(
    refer: Any, splits: Sequence[str], limit: int | None = None, exclude: Collection[str] = ()
) -> Iterator[tuple[str, Any]]:
    """``(split, sample)`` in the order :func:`eval_samples` scores them, without reading images."""
    from benchmarks.sampling import select

    exclude = set(exclude)
    for split in splits:
        kept = [s for s in refer.samples(split) if sample_key(split, s) not in exclude]
        for sample in select(kept, limit):
            yield split, sample


@dataclass
class ArtifactEval:
    """Streaming accuracy state of one runtime."""

    metrics: SegMetrics = field(default_factory=SegMetrics)
    agreement: MaskAgreement = field(default_factory=MaskAgreement)
    seconds: float = 0.0
    error: str | None = None


def evaluate(
    runtimes: dict[str, Runtime],
    samples: Iterable[tuple[dict[str, np.ndarray], np.ndarray, SampleMeta]],
    reference: str,
    threshold: float = 0.5,
    processing: Processing | None = None,
    only: dict[str, Collection[str]] | None = None,
) -> dict[str, ArtifactEval]:
    """Run every runtime on every sample, in lockstep, and score it.

    Args:
        runtimes: Name → loaded runtime; must include ``reference``.
        samples: ``(inputs, gt, meta)`` triples, e.g. from :func:`eval_samples`.
        reference: Name of the FP32 reference runtime; agreement is measured against its masks.
        threshold: Sigmoid threshold of the masks (used when ``processing`` is None).
        processing: Post-processing to use (its threshold wins).
        only: name → the sample ids that runtime scores (the others: every sample), e.g. a subset for FP32 exports
            that match the reference to 1e-5, so the time goes to the INT8 artifacts. Not for the reference.

    Returns:
        Name → :class:`ArtifactEval`. A runtime that raises gets ``error`` set and is skipped from then on (its
        partial scores are not reported), so one broken backend never stops the others.
    """
    if reference not in runtimes:
        raise KeyError(f"reference {reference!r} is not among the runtimes {sorted(runtimes)}")
    from runtimes.masks import logits_to_mask

    cut = processing.threshold if processing is not None else threshold
    only = {name: set(ids) for name, ids in (only or {}).items()}
    if reference in only:
        raise ValueError(f"the reference {reference!r} scores every sample; it cannot be limited with `only`")
    state = {name: ArtifactEval() for name in runtimes}
    order = [reference, *(n for n in runtimes if n != reference)]
    for count, (inputs, gt, meta) in enumerate(samples, 1):
        ref_mask = None
        for name in order:
            st = state[name]
            if st.error or (name in only and meta.sample_id not in only[name]):
                continue
            try:
                start = time.perf_counter()
                logits = runtimes[name].infer(inputs)[MASK]
                st.seconds += time.perf_counter() - start
                mask = logits_to_mask(logits, gt.shape, cut)
            except Exception as exc:  # a broken backend becomes a row with a status
                st.error = f"{type(exc).__name__}: {exc}"
                log.warning("validate: %s failed on sample %s: %s", name, meta.sample_id, st.error)
                continue
            st.metrics.update(mask, gt, sample_id=meta.sample_id, split=meta.split, kind=meta.kind)
            if name == reference:
                ref_mask = mask
            elif ref_mask is not None:
                st.agreement.update(mask, ref_mask, sample_id=meta.sample_id)
        if count % 200 == 0:
            log.info("validate: %d samples scored", count)
    return state


def _drops_by(cand: SegMetrics, ref: SegMetrics, key: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison per group (split or kind) between two runs over the same samples."""
    labels_c = cand.state_dict()[key]
    labels_r = ref.state_dict()[key]
    out = {}
    for group in sorted({g for g in labels_c if g is not None}):
        sub_c, sub_r = _subset(cand, labels_c, group), _subset(ref, labels_r, group)
        if len(sub_c) and len(sub_c) == len(sub_r):
            out[group] = compare(sub_c, sub_r, n_boot=n_boot, seed=seed)
    return out


def _subset(m: SegMetrics, labels: list[Any], group: str) -> SegMetrics:
    state = m.state_dict()
    keep = [i for i, g in enumerate(labels) if g == group]
    return SegMetrics.from_state_dict(
        {k: ([v[i] for i in keep] if isinstance(v, list) and k != "thresholds" else v) for k, v in state.items()}
    )


def _same_samples(ref: SegMetrics, cand: SegMetrics) -> SegMetrics:
    """``ref`` restricted to the samples ``cand`` scored (all of them unless ``cand`` ran on a subset)."""
    if len(cand) == len(ref):
        return ref
    state = ref.state_dict()
    keep = set(cand.sample_ids)
    return _subset(ref, [sid in keep for sid in state["sample_id"]], True)


def summarize(
    results: dict[str, ArtifactEval], reference: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """JSON-ready accuracy summary per artifact.

    Args:
        results: Output of :func:`evaluate`.
        reference: The FP32 reference's name.
        n_boot: Bootstrap resamples of the paired drop.
        seed: Bootstrap seed (equal seeds, equal intervals).

    Returns:
        Name → ``{"status", "metrics": {"overall", "by_split", "by_kind"}, "drop_vs_reference",
        "drop_by_split", "drop_by_kind", "agreement", "agreement_worst", "n", "infer_seconds"}``; a runtime that
        failed has ``status = "error: ..."`` and no figures.
    """
    ref = results[reference]
    out: dict[str, dict[str, Any]] = {}
    for name, st in results.items():
        if st.error:
            out[name] = {"status": f"error: {st.error}"}
            continue
        entry: dict[str, Any] = {
            "status": "ok",
            "n": len(st.metrics),
            "infer_seconds": round(st.seconds, 3),
            "metrics": {
                "overall": st.metrics.result(),
                "by_split": st.metrics.by_group("split"),
                "by_kind": st.metrics.by_group("kind"),
            },
        }
        if name == reference:
            entry["agreement"] = {"n": len(st.metrics), "mean_iou": 1.0, "min_iou": 1.0, "pixel_agreement": 1.0}
        elif not ref.error and len(st.metrics):
            paired = _same_samples(ref.metrics, st.metrics)  # the reference on this artifact's samples
            entry["drop_vs_reference"] = compare(st.metrics, paired, n_boot=n_boot, seed=seed)
            entry["drop_by_split"] = _drops_by(st.metrics, paired, "split", n_boot, seed)
            entry["drop_by_kind"] = _drops_by(st.metrics, paired, "kind", n_boot, seed)
            entry["agreement"] = st.agreement.result()
            entry["agreement_worst"] = [{"sample_id": s, "iou": v} for s, v in st.agreement.worst(5)]
        out[name] = entry
    return out


def miou_drop_points(entry: dict[str, Any]) -> tuple[float, float, float] | None:
    """``(drop, ci_low, ci_high)`` in mIoU points (reference − candidate; positive = worse), or None."""
    cmp = entry.get("drop_vs_reference")
    if not cmp:
        return None
    m = cmp["mIoU"]
    return -100.0 * m["diff"], -100.0 * m["upper"], -100.0 * m["lower"]
