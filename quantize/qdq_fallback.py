"""Accuracy-targeted fallback of a Q/DQ INT8 graph: return the most noise-sensitive nodes to float, step by step.

Usage: ``result = accuracy_fallback("model.onnx", "model_int8_qdq.onnx", calib, evaluate, ref_miou)``, then
``result.excluded`` (the nodes returned to float) and ``result.steps`` (each step's mIoU and drop).

Evaluate the Q/DQ graph (ONNX Runtime on this host); while the mIoU drop exceeds the target, rank the quantized nodes
by the local quantization noise of their inputs (one pass over a few calibration samples: ``|x − DQ(Q(x))|² / |x|²``
per input, activations and weights) and re-quantize with the most sensitive ones excluded, in growing steps
(1, 1, 2, 4, ...). Every step (excluded nodes, mIoU, drop) is recorded.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from quantize.qdq import calibration_feeds, quantize_qdq_int8
from quantize.qdq_graph import QDQInput, graph_input_names, qdq_inputs, quantized_nodes

log = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 8


def _fake_quant(x: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric INT8 quantize-dequantize of ``x`` (per-tensor, or per-channel along ``axis``)."""
    s = np.asarray(scale, np.float32)
    if s.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return np.clip(np.round(x / s), -128, 127) * s


def rank_sensitivity(
    qdq_path: str | Path,
    fp32_path: str | Path,
    calibration: dict[str, np.ndarray],
    samples: int = SENSITIVITY_SAMPLES,
    exclude: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """Rank quantized nodes by the local INT8 noise of their inputs, worst first.

    One ONNX Runtime pass of the Q/DQ graph over ``samples`` calibration inputs exposes each quantized activation;
    its relative error ``Σ|x − DQ(Q(x))|² / Σ|x|²`` under the graph's own scale, plus the same for the weight
    (original FP32 weights looked up by node name in ``fp32_path``), is the node's score.
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(qdq_path))
    entries = [q for q in qdq_inputs(proto) if q.node not in set(exclude)]
    fp32 = onnx.load(str(fp32_path))
    fp_consts = {t.name: t for t in fp32.graph.initializer}
    fp_nodes = {n.name: n for n in fp32.graph.node}
    from onnx import numpy_helper

    from quantize.trt_compat import _constant_values

    consts = _constant_values(proto)
    acts = sorted({q.source for q in entries if q.source and q.source not in consts})
    graph = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    known_outputs = {o.name for o in proto.graph.output}
    for name in acts:
        if name not in known_outputs:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    err = {name: 0.0 for name in acts}
    ref = {name: 0.0 for name in acts}
    scales = {q.source: q for q in entries if q.source in err}
    for feeds in calibration_feeds(calibration, graph_input_names(proto), samples):
        values = dict(zip(acts, session.run(acts, feeds), strict=True))
        for name, x in values.items():
            x = np.asarray(x, np.float32)
            q = scales[name]
            err[name] += float(np.sum((x - _fake_quant(x, q.scale, q.axis)) ** 2))
            ref[name] += float(np.sum(x**2))
    scores: dict[str, float] = {}
    for q in entries:
        if q.source in err:
            rel = err[q.source] / max(ref[q.source], 1e-12)
        else:
            w = _float_weight(q, consts, fp_consts, fp_nodes, numpy_helper)
            rel = (
                0.0
                if w is None
                else float(np.sum((w - _fake_quant(w, q.scale, q.axis)) ** 2) / max(np.sum(w**2), 1e-12))
            )
        scores[q.node] = scores.get(q.node, 0.0) + rel
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)


def _float_weight(q: QDQInput, consts: dict, fp_consts: dict, fp_nodes: dict, numpy_helper: Any) -> np.ndarray | None:
    if q.source is not None and q.source in consts:  # Q → DQ on a float initializer (ModelOpt)
        return np.asarray(consts[q.source], np.float32)
    node = fp_nodes.get(q.node)  # an INT8 initializer (ONNX Runtime): the FP32 graph has the original
    if node is not None and q.index < len(node.input) and node.input[q.index] in fp_consts:
        return numpy_helper.to_array(fp_consts[node.input[q.index]]).astype(np.float32)
    return None


@dataclass
class FallbackResult:
    """What the fallback did: the final exclusions and every step's mIoU and drop (points)."""

    path: Path
    reference_miou: float
    excluded: list[str]
    steps: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    within_target: bool = False
    within_budget: bool = False

    @property
    def drop_points(self) -> float:
        return self.steps[-1]["drop_points"] if self.steps else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_miou": self.reference_miou,
            "final_drop_points": self.drop_points,
            "within_target": self.within_target,
            "within_budget": self.within_budget,
            "excluded": self.excluded,
            "steps": self.steps,
            "ranking_top": [[n, round(s, 6)] for n, s in self.ranking[:10]],
        }


def _fallback_step(
    result: FallbackResult,
    quantize: Callable[..., Path],
    evaluate: Callable[[Path], float],
    metadata: dict[str, Any] | None,
    step: int,
    newly: list[str],
) -> float:
    """Quantize with the exclusions so far (``result.excluded``), score the graph and record the step in ``result``.

    Returns:
        The mIoU drop against ``result.reference_miou``, in points.
    """
    started = time.perf_counter()
    quantize(metadata={**(metadata or {}), "fallback_step": step})
    miou = float(evaluate(result.path))
    drop = (result.reference_miou - miou) * 100.0
    result.steps.append(
        {
            "step": step,
            "newly_excluded": newly,
            "excluded_total": len(result.excluded),
            "quantized_nodes": len(quantized_nodes(result.path)),
            "miou": miou,
            "drop_points": drop,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    log.info("fallback step %d: %d nodes in float, mIoU %.4f, drop %.3f points", step, len(result.excluded), miou, drop)
    return drop


def accuracy_fallback(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: dict[str, np.ndarray],
    evaluate: Callable[[Path], float],
    reference_miou: float,
    *,
    budget_points: float = 1.0,
    target_points: float = 0.5,
    max_steps: int = 8,
    always_exclude: Sequence[str] = (),
    backend: str = "auto",
    float_dtype: str = "fp32",
    metadata: dict[str, Any] | None = None,
    rank: Callable[[Path], list[tuple[str, float]]] | None = None,
) -> FallbackResult:
    """Quantize, then return the most sensitive nodes to float until the mIoU drop is within ``target_points``.

    Args:
        onnx_path: the FP32 ONNX.
        out_path: the final Q/DQ ONNX.
        calibration: stacked model inputs.
        evaluate: ``evaluate(qdq_path) -> mIoU`` (a fraction) on the validation subset.
        reference_miou: the FP32 mIoU on the same subset (a fraction).
        budget_points: hard budget of the drop, in mIoU points (``within_budget`` records it).
        target_points: the loop stops once the drop is at or below this.
        max_steps: at most this many fallback rounds.
        always_exclude: nodes never quantized (the mask head).
        backend: Q/DQ backend (see :func:`resolve_backend`).
        float_dtype: float remainder (``fp32`` / ``fp16``).
        metadata: description entries for the artifact.
        rank: ``rank(first_qdq_path) -> [(node, score), ...]``, most sensitive first: the order nodes return to
            float (e.g. the layer-group accuracy sensitivity, :mod:`quantize.sensitivity`); default: the local INT8
            noise of each node's inputs (:func:`rank_sensitivity`).

    Returns:
        A :class:`FallbackResult`; the file at ``out_path`` is the last step's model.
    """
    out_path = Path(out_path)
    excluded = list(dict.fromkeys(always_exclude))
    result = FallbackResult(out_path, reference_miou, excluded)
    with tempfile.TemporaryDirectory(prefix="qdq-") as tmp:
        quantize = partial(
            quantize_qdq_int8,
            onnx_path,
            out_path,
            calibration,
            exclude=excluded,  # the same list the loop extends: each step quantizes with the exclusions so far
            backend=backend,
            float_dtype=float_dtype,
            cache=Path(tmp) / "ranges.json",
        )
        run = partial(_fallback_step, result, quantize, evaluate, metadata)
        drop = run(0, [])
        step, batch = 0, 1
        while drop > target_points and step < max_steps:
            if not result.ranking:
                ranked = rank(out_path) if rank is not None else None
                result.ranking = ranked or rank_sensitivity(out_path, onnx_path, calibration, exclude=excluded)
            candidates = [n for n, _ in result.ranking if n not in excluded]
            if not candidates:
                log.warning("fallback: every quantized node is already in float; drop %.3f points remains", drop)
                break
            newly = candidates[:batch]
            excluded.extend(newly)
            step += 1
            drop = run(step, newly)
            batch = batch if step < 2 else batch * 2  # 1, 1, 2, 4, ...: a few rounds reach large exclusions
    result.excluded = excluded
    result.within_target = drop <= target_points
    result.within_budget = drop <= budget_points
    if not result.within_budget:
        log.warning(
            "Q/DQ INT8 drop %.3f points is over the %.2f-point budget after %d steps", drop, budget_points, step
        )
    return result
