"""TensorRT-bound INT8: explicit Q/DQ ONNX, transformer-aware placement, accuracy-targeted fallback to float.

Usage: ``quantize_qdq_int8("model.onnx", "model_int8_qdq.onnx", calib, exclude=head_nodes(...))``; with a budget:
``result = accuracy_fallback("model.onnx", "model_int8_qdq.onnx", calib, evaluate, ref_miou, budget=0.01)``.

Policy (DESIGN §6): symmetric INT8 for activations and weights (zero points 0, as TensorRT requires), per-channel
weights; the mask head (the last quantizable node before each output) stays float. Two interchangeable backends write
the Q/DQ graph, each with its own placement:

- ``onnxruntime``: ``quantize_static`` set up for TensorRT (QDQ, QInt8/QInt8, ``ActivationSymmetric``,
  ``WeightSymmetric``, per-channel, no bias quantization, MinMax ranges cached between fallback steps), with Q/DQ
  only on the inputs of Conv / MatMul / Gemm; LayerNorm, Softmax and residual Adds read float tensors
  (:func:`keep_float_consumers`).
- ``modelopt``: NVIDIA ModelOpt's ONNX PTQ with its own TensorRT placement (``_find_nodes_to_quantize`` in
  ``modelopt/onnx/quantization/int8.py``: MHA and LayerNorm partitions left float, Conv fusion partitions with the
  non-residual input of an Add quantized, partial-input Q/DQ removed). That placement runs only when no
  ``op_types_to_quantize`` is passed, so this module passes only the nodes to exclude. Used when
  ``nvidia-modelopt`` is installed.

Float remainder: ``fp32`` keeps every non-quantized layer in FP32. ``fp16`` writes it as FP16 in the graph, which is
what a strongly typed TensorRT (required from TensorRT 11, which has no ``--fp16`` flag) runs in FP16: ModelOpt casts
it itself; for ONNX Runtime's graph :func:`fp16_remainder` does it with ``onnxruntime.transformers.float16`` and keeps
the graph I/O, the overflow-prone ops of the FP16 export (normalisations, Softmax, reductions, Pow/Sqrt/Exp/Erf) and a
decomposed LayerNorm in FP32. Both give the Q/DQ nodes FP16 scales (opset ≥ 19), so a DequantizeLinear feeds its
FP16 Conv/MatMul directly, as in ModelOpt's graphs.

Fallback: evaluate the Q/DQ graph (ONNX Runtime on this host); while the mIoU drop exceeds the target, rank the
quantized nodes by the local quantization noise of their inputs (one pass over a few calibration samples:
``|x − DQ(Q(x))|² / |x|²`` per input, activations and weights) and re-quantize with the most sensitive ones excluded,
in growing steps (1, 1, 2, 4, ...). Every step (excluded nodes, mIoU, drop) is recorded.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, ConfigError, RuntimeUnavailable

log = logging.getLogger(__name__)

# 1. constants ----------------------------------------------------------------------------------------------------
QUANT_OPS = ("Conv", "MatMul", "Gemm")
# ops a quantized input may pass through between its DequantizeLinear and the Conv/MatMul/Gemm (ModelOpt casts DQ
# outputs to FP16; exporters reshape or transpose weights)
PASS_THROUGH_OPS = ("Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
BACKENDS = ("modelopt", "onnxruntime")
SENSITIVITY_SAMPLES = 8
# ModelOpt patches ONNX Runtime's quantizer classes while it runs (modelopt/onnx/quantization/ort_patching.py) and
# leaves them patched: after it has run, quantize_static no longer works in this process (measured with 0.47).
_MODELOPT_RAN = False
MODELOPT_MIN_OPSET = 19
FP16_QDQ_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear take FP16 scales from opset 19 on
FP16_MIN_NORMAL = 2.0**-14  # a Q/DQ scale below this (or above FP16's max) keeps its Q/DQ nodes in FP32
FP16_MAX = 65504.0
LN_DECOMPOSED = re.compile(r"_dec\d+_")  # node names written by quantize.trt_compat.decompose_layernorm
INPUT_NAMES = ("image", "input_ids", "attention_mask")


# 2. small helpers -------------------------------------------------------------------------------------------------
def resolve_backend(name: str, max_opset: int | None = None) -> str:
    """Pick the Q/DQ backend.

    ``auto`` → ``modelopt`` when importable and the target accepts its opset, else ``onnxruntime``. ModelOpt 0.47
    raises every INT8 graph to opset ≥ 19 (``modelopt.onnx.utils.BASE_MIN_OPSET``), past TensorRT 8.5/8.6's 17.

    Args:
        name: ``auto``, ``modelopt`` or ``onnxruntime``.
        max_opset: highest opset the target TensorRT parser takes (None: no limit).
    """
    too_new = max_opset is not None and max_opset < MODELOPT_MIN_OPSET
    if name == "auto":
        have = importlib.util.find_spec("modelopt") is not None
        return "modelopt" if have and not too_new else "onnxruntime"
    if name not in BACKENDS:
        raise ConfigError(f"unknown Q/DQ backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    if name == "modelopt" and too_new:
        raise ConfigError(
            f"Q/DQ backend 'modelopt' writes opset >= {MODELOPT_MIN_OPSET} but the target takes opset <= {max_opset} "
            "(TensorRT 8.x); use quant.qdq_backend=onnxruntime or auto"
        )
    if name == "modelopt" and importlib.util.find_spec("modelopt") is None:
        raise RuntimeUnavailable(
            "Q/DQ backend 'modelopt' is not installed: pip install nvidia-modelopt onnx-graphsurgeon lief "
            "(without the [onnx] extra, which pins an older onnx/onnxruntime-gpu), or set quant.qdq_backend=onnxruntime"
        )
    return name


def _load(model: Any) -> Any:
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the Conv / MatMul / Gemm nodes of a float graph."""
    return [n.name for n in _load(model).graph.node if n.op_type in QUANT_OPS]


def head_nodes(model: Any) -> list[str]:
    """The mask head: for each graph output, the last quantizable node found walking back through other ops."""
    proto = _load(model)
    producer = {o: n for n in proto.graph.node for o in n.output}
    heads: list[str] = []
    for out in proto.graph.output:
        frontier, seen = [out.name], set()
        while frontier:
            node = producer.get(frontier.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in QUANT_OPS:
                if node.name not in heads:
                    heads.append(node.name)
                continue
            frontier.extend(i for i in node.input if i)
    return heads


def _feeds(calibration: dict[str, np.ndarray], names: Sequence[str], limit: int | None = None) -> Iterator[dict]:
    n = len(calibration[names[0]]) if limit is None else min(limit, len(calibration[names[0]]))
    for i in range(n):
        yield {k: calibration[k][i : i + 1] for k in names}


def graph_input_names(model: Any) -> list[str]:
    proto = _load(model)
    init = {t.name for t in proto.graph.initializer}
    return [v.name for v in proto.graph.input if v.name not in init]


# 3. the two backends ------------------------------------------------------------------------------------------------
def _quantize_onnxruntime(
    src: Path, dst: Path, calibration: dict[str, np.ndarray], exclude: Sequence[str], cache: Path | None
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if _MODELOPT_RAN:
        raise ArtifactError(
            "ModelOpt already ran in this process and left ONNX Runtime's quantizer patched; use one Q/DQ backend "
            "per process (quant.qdq_backend)"
        )
    names = graph_input_names(src)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = _feeds(calibration, names)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANT_OPS),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(cache) if cache else None,
        extra_options={
            "ActivationSymmetric": True,  # zero point 0: TensorRT's only INT8 scheme
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT dequantizes INT8 only; biases stay float and fuse into the kernel
            "DedicatedQDQPair": False,
            # Q/DQ on inputs only: outputs feeding LayerNorm / Softmax / residual Add stay float
            "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),
        },
    )


def _quantize_modelopt(
    src: Path, dst: Path, calibration: dict[str, np.ndarray], exclude: Sequence[str], float_dtype: str
) -> None:
    import inspect

    from modelopt.onnx.quantization import quantize as mo_quantize

    from runtimes.export import FP16_KEEP_FLOAT32

    global _MODELOPT_RAN
    _MODELOPT_RAN = True
    names = graph_input_names(src)
    options: dict[str, Any] = {
        "quantize_mode": "int8",
        "calibration_data": {k: calibration[k] for k in names},
        "calibration_method": "max",
        "calibration_eps": ["cpu"],
        # No op_types_to_quantize: with it, ModelOpt quantizes every node of those types and skips its TensorRT
        # placement (modelopt/onnx/quantization/int8.py, quantize()); exclusions keep that placement.
        "nodes_to_exclude": [f"^{re.escape(n)}$" for n in exclude] or None,  # ModelOpt takes regular expressions
        "high_precision_dtype": float_dtype,
        "output_path": str(dst),
        "log_level": "WARNING",
    }
    if float_dtype == "fp16" and "op_types_to_exclude_fp16" in inspect.signature(mo_quantize).parameters:
        options["op_types_to_exclude_fp16"] = list(FP16_KEEP_FLOAT32)  # same FP32 islands as the FP16 export
    mo_quantize(str(src), **options)


def _check_fp16_opset(model: Any, what: str) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < FP16_QDQ_MIN_OPSET:
        raise ConfigError(
            f"an FP16 float remainder needs opset >= {FP16_QDQ_MIN_OPSET} (FP16 Q/DQ scales); {what} has opset "
            f"{opset}: export with export.opset (or device.opset) >= {FP16_QDQ_MIN_OPSET}, or use quant.qdq_float=fp32"
        )


def fp16_remainder(model: Any) -> tuple[Any, dict[str, Any]]:
    """Write the float remainder of a Q/DQ graph as FP16, as a strongly typed TensorRT needs it.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (ships inside onnxruntime): graph inputs and
    outputs stay FP32, and so do the op types of the FP16 export's block list (``runtimes.export.FP16_KEEP_FLOAT32``:
    LayerNorm, Softmax, reductions, Pow/Sqrt/Exp/Erf, ...) and the nodes of a decomposed LayerNorm; Cast nodes join
    the two. Q/DQ nodes take FP16 scales, except where a scale does not fit FP16's normal range.

    Returns:
        ``(model, info)``: the converted model and what stayed FP32.

    Raises:
        ConfigError: the opset is below 19 (no FP16 Q/DQ scales there).
        ArtifactError: the converter failed.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from quantize.trt_compat import _constant_values
    from runtimes.export import FP16_KEEP_FLOAT32

    _check_fp16_opset(model, "the Q/DQ graph")
    for i, node in enumerate(model.graph.node):  # the converter's node block list matches names
        node.name = node.name or f"{node.op_type}_{i}"
    consts = _constant_values(model)

    def fits_fp16(name: str) -> bool:
        scale = np.abs(np.asarray(consts.get(name, 1.0), np.float64))
        return bool(np.all((scale >= FP16_MIN_NORMAL) & (scale <= FP16_MAX)))

    keep_qdq = [
        n.name
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and not fits_fp16(n.input[1])
    ]
    keep_ln = [n.name for n in model.graph.node if LN_DECOMPOSED.search(n.name)]
    try:
        half = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_KEEP_FLOAT32), node_block_list=keep_qdq + keep_ln
        )
    except Exception as exc:  # converter failures come as assorted types
        raise ArtifactError(f"FP16 conversion of the Q/DQ graph's float remainder failed: {exc}") from exc
    info = {
        "converter": "onnxruntime.transformers.float16",
        "fp32_ops": list(FP16_KEEP_FLOAT32),
        "fp32_qdq_nodes": len(keep_qdq),
        "fp32_layernorm_nodes": len(keep_ln),
    }
    return half, info


def quantized_op_types(model: Any) -> list[str]:
    """Op types that read a DequantizeLinear output (through pass-through ops): what the placement quantized."""
    proto = _load(model)
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = set()
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type in PASS_THROUGH_OPS:
            continue
        for name in node.input:
            src = producer.get(name)
            while src is not None and src.op_type in PASS_THROUGH_OPS:
                src = producer.get(src.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                found.add(node.op_type)
    return sorted(found)


def quantize_qdq_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: dict[str, np.ndarray],
    *,
    exclude: Sequence[str] = (),
    backend: str = "auto",
    float_dtype: str = "fp32",
    cache: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an explicit Q/DQ INT8 ONNX for TensorRT from an FP32 ONNX.

    Args:
        onnx_path: the FP32 ONNX (from :func:`runtimes.export.export_onnx`).
        out_path: the Q/DQ ONNX to write.
        calibration: model inputs stacked on axis 0 (``quantize.calibration.load_calibration``).
        exclude: node names kept in float (the mask head, fallback picks).
        backend: ``auto``, ``modelopt`` or ``onnxruntime``.
        float_dtype: ``fp32`` or ``fp16`` for the non-quantized remainder (``fp16``: opset ≥ 19, see
            :func:`fp16_remainder`).
        cache: ONNX Runtime calibration-range cache file (reused across fallback steps).
        metadata: description entries; the FP32 model's own description is carried over.

    Returns:
        ``out_path``.
    """
    import onnx

    from runtimes.export import file_size, read_onnx_metadata, set_onnx_metadata

    started = time.perf_counter()
    src, dst = Path(onnx_path), Path(out_path)
    name = resolve_backend(backend)
    if float_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"float_dtype {float_dtype!r}; valid: fp32, fp16")
    if float_dtype == "fp16":
        _check_fp16_opset(onnx.load(str(src), load_external_data=False), src.name)
    unknown = sorted(set(exclude) - set(quantizable_nodes(src)))
    if unknown:
        raise ArtifactError(f"nodes to exclude {unknown[:5]} are not Conv/MatMul/Gemm nodes of {src}")
    try:
        if name == "modelopt":
            _quantize_modelopt(src, dst, calibration, exclude, float_dtype)
        else:
            _quantize_onnxruntime(src, dst, calibration, exclude, Path(cache) if cache else None)
    except (ArtifactError, ConfigError):
        raise
    except Exception as exc:  # both quantizers raise assorted types
        raise ArtifactError(f"Q/DQ quantization of {src} with {name} failed: {type(exc).__name__}: {exc}") from exc
    model = onnx.load(str(dst))
    # ModelOpt's placement decides itself which consumers read Q/DQ (the non-residual input of an Add, ...)
    rewired = keep_float_consumers(model) if name == "onnxruntime" else 0
    remainder: dict[str, Any] = {}
    if float_dtype == "fp16" and name == "onnxruntime":
        model, remainder = fp16_remainder(model)
    meta = {
        **read_onnx_metadata(src),
        **(metadata or {}),
        "precision": "int8",
        "quantization": {
            "format": "qdq",
            "backend": name,
            "scheme": "symmetric int8, per-channel weights",
            "placement": "modelopt (TensorRT partitions)" if name == "modelopt" else "Conv/MatMul/Gemm inputs",
            "op_types": quantized_op_types(model),
            "float_remainder": float_dtype,
            **({"float_remainder_fp16": remainder} if remainder else {}),
            "excluded": list(exclude),
            "calibration_samples": int(len(next(iter(calibration.values())))),
            "float_consumers_rewired": rewired,
        },
    }
    set_onnx_metadata(model, meta)
    onnx.save(model, str(dst))
    log.info(
        "Q/DQ INT8 (%s, %d excluded): %s (%.2f MB) in %.1f s",
        name,
        len(exclude),
        dst,
        file_size(dst) / 1e6,
        time.perf_counter() - started,
    )
    return dst


def keep_float_consumers(model: Any) -> int:
    """Give non-Conv/MatMul/Gemm consumers of a quantized tensor the float tensor instead of its DequantizeLinear.

    Both quantizers share one Q/DQ pair between all consumers of a tensor, so a residual Add or a Concat that reads
    the same tensor as a Conv would see INT8-rounded values; the policy keeps those ops on the float path. A
    pass-through op on the way to a Conv/MatMul/Gemm (ModelOpt's Cast to FP16 after DequantizeLinear, a Reshape or
    Transpose) is part of the quantized input and keeps its DequantizeLinear.

    Returns:
        How many consumer inputs were rewired (the model is changed in place).

    Raises:
        ArtifactError: the rewiring took a quantized input away from a Conv/MatMul/Gemm (a bug, never written out).
    """
    before = quantized_nodes(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_quantized_op(node: Any) -> bool:
        frontier, seen = [node], set()
        while frontier:
            current = frontier.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for out in current.output:
                for nxt in consumers.get(out, []):
                    if nxt.op_type in QUANT_OPS:
                        return True
                    if nxt.op_type in PASS_THROUGH_OPS:
                        frontier.append(nxt)
        return False

    count = 0
    for node in model.graph.node:
        if node.op_type in QUANT_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type in PASS_THROUGH_OPS and feeds_quantized_op(node):
            continue
        for idx, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[idx] = q.input[0]
                count += 1
    after = quantized_nodes(model)
    if after != before:
        lost = sorted(set(before) - set(after))
        raise ArtifactError(f"keeping float consumers would un-quantize {lost[:10]}; the Q/DQ graph was not changed")
    return count


# 4. inspection -------------------------------------------------------------------------------------------------
@dataclass
class QDQInput:
    """One quantized input of a node: float source tensor (None for stored INT8 weights), scale, zero point, axis."""

    node: str
    index: int
    source: str | None
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    weight: np.ndarray | None = None  # the INT8 weight when stored quantized (ONNX Runtime style)


def qdq_inputs(model: Any) -> list[QDQInput]:
    """Every input of a Conv/MatMul/Gemm that comes through DequantizeLinear, with its quantization parameters."""
    from quantize.trt_compat import _constant_values

    proto = _load(model)
    consts = _constant_values(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = []
    for node in proto.graph.node:
        if node.op_type not in QUANT_OPS:
            continue
        for idx, name in enumerate(node.input):
            dq = producer.get(name)
            while dq is not None and dq.op_type in PASS_THROUGH_OPS:
                dq = producer.get(dq.input[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            scale = consts.get(dq.input[1], np.asarray(1.0))
            zp = consts.get(dq.input[2], np.zeros(1, np.int8)) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                found.append(QDQInput(node.name, idx, q.input[0], scale, zp, axis))
            elif dq.input[0] in consts:
                found.append(QDQInput(node.name, idx, None, scale, zp, axis, weight=consts[dq.input[0]]))
    return found


def quantized_nodes(model: Any) -> list[str]:
    """Names of the nodes that have at least one Q/DQ input."""
    return sorted({q.node for q in qdq_inputs(model)})


def inspect_qdq(model: Any) -> dict[str, Any]:
    """Counts and checks of a Q/DQ graph: quantized nodes, Q/DQ node counts, zero points, consumer op types."""
    from quantize.trt_compat import zero_points

    proto = _load(model)
    producer_ops = {o: n.op_type for n in proto.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            if producer_ops.get(name) == "DequantizeLinear":
                consumers[node.op_type] = consumers.get(node.op_type, 0) + 1
    zps = zero_points(proto)
    return {
        "quantized_nodes": len(quantized_nodes(proto)),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in proto.graph.node),
        "zero_points": len(zps),
        "zero_points_all_zero": bool(zps) and all(z == 0 for z in zps),
        "dq_consumers": dict(sorted(consumers.items())),
    }


# 5. sensitivity --------------------------------------------------------------------------------------------------
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
    for feeds in _feeds(calibration, graph_input_names(proto), samples):
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


# 6. accuracy-targeted fallback -----------------------------------------------------------------------------------
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

    Returns:
        A :class:`FallbackResult`; the file at ``out_path`` is the last step's model.
    """
    out_path = Path(out_path)
    excluded = list(dict.fromkeys(always_exclude))
    result = FallbackResult(out_path, reference_miou, excluded)
    with tempfile.TemporaryDirectory(prefix="qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"

        def run(step: int, newly: list[str]) -> float:
            started = time.perf_counter()
            meta = {**(metadata or {}), "fallback_step": step}
            quantize_qdq_int8(
                onnx_path,
                out_path,
                calibration,
                exclude=excluded,
                backend=backend,
                float_dtype=float_dtype,
                cache=cache,
                metadata=meta,
            )
            miou = float(evaluate(out_path))
            drop = (reference_miou - miou) * 100.0
            result.steps.append(
                {
                    "step": step,
                    "newly_excluded": newly,
                    "excluded_total": len(excluded),
                    "quantized_nodes": len(quantized_nodes(out_path)),
                    "miou": miou,
                    "drop_points": drop,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            log.info(
                "fallback step %d: %d nodes in float, mIoU %.4f, drop %.3f points", step, len(excluded), miou, drop
            )
            return drop

        drop = run(0, [])
        step, batch = 0, 1
        while drop > target_points and step < max_steps:
            if not result.ranking:
                result.ranking = rank_sensitivity(out_path, onnx_path, calibration, exclude=excluded)
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
