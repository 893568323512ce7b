"""TensorRT-bound INT8: explicit Q/DQ ONNX, transformer-aware placement, accuracy-targeted fallback to float.

Usage: ``quantize_qdq_int8("model.onnx", "model_int8_qdq.onnx", calib, exclude=head_nodes(...))``; with a budget,
:func:`quantize.qdq_fallback.accuracy_fallback`.

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
it itself; for ONNX Runtime's graph :func:`quantize.qdq_fp16.fp16_remainder` does it.

Fallback: :func:`quantize.qdq_fallback.accuracy_fallback` returns the most noise-sensitive quantized nodes to float
until the mIoU drop is within the target. :mod:`quantize.qdq_graph` reads what a Q/DQ graph holds
(:func:`~quantize.qdq_graph.quantized_nodes`, :func:`~quantize.qdq_graph.inspect_qdq`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, ConfigError, RuntimeUnavailable
from quantize.qdq_fp16 import check_fp16_opset, fp16_remainder
from quantize.qdq_graph import (
    PASS_THROUGH_OPS,
    QUANT_OPS,
    graph_input_names,
    load_model,
    quantizable_nodes,
    quantized_nodes,
    quantized_op_types,
)

log = logging.getLogger(__name__)

# 1. constants ----------------------------------------------------------------------------------------------------
BACKENDS = ("modelopt", "onnxruntime")
# ModelOpt patches ONNX Runtime's quantizer classes while it runs (modelopt/onnx/quantization/ort_patching.py) and
# leaves them patched: after it has run, quantize_static no longer works in this process (measured with 0.47).
_MODELOPT_RAN = False
MODELOPT_MIN_OPSET = 19
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


def head_nodes(model: Any) -> list[str]:
    """The mask head: for each graph output, the last quantizable node found walking back through other ops."""
    proto = load_model(model)
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


def calibration_feeds(
    calibration: dict[str, np.ndarray], names: Sequence[str], limit: int | None = None
) -> Iterator[dict]:
    """One feed per calibration sample (batch 1, the inputs ``names``), the first ``limit`` samples when given."""
    n = len(calibration[names[0]]) if limit is None else min(limit, len(calibration[names[0]]))
    for i in range(n):
        yield {k: calibration[k][i : i + 1] for k in names}


# 3. the two backends and the Q/DQ graph --------------------------------------------------------------------------
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
            self._it = calibration_feeds(calibration, names)

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


def _check_request(src: Path, float_dtype: str, exclude: Sequence[str]) -> None:
    """Refuse an unknown float remainder, an FP16 remainder below opset 19, and exclusions that are no Conv/MatMul/Gemm.

    Raises:
        ConfigError: ``float_dtype`` is neither ``fp32`` nor ``fp16``, or ``fp16`` on a graph below opset 19.
        ArtifactError: a node to exclude is not a quantizable node of ``src``.
    """
    import onnx

    if float_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"float_dtype {float_dtype!r}; valid: fp32, fp16")
    if float_dtype == "fp16":
        check_fp16_opset(onnx.load(str(src), load_external_data=False), src.name)
    unknown = sorted(set(exclude) - set(quantizable_nodes(src)))
    if unknown:
        raise ArtifactError(f"nodes to exclude {unknown[:5]} are not Conv/MatMul/Gemm nodes of {src}")


def _run_backend(
    name: str,
    src: Path,
    dst: Path,
    calibration: dict[str, np.ndarray],
    exclude: Sequence[str],
    float_dtype: str,
    cache: str | Path | None,
) -> None:
    """Write the Q/DQ graph ``dst`` with the backend ``name``; a quantizer's own failure becomes an ArtifactError."""
    try:
        if name == "modelopt":
            _quantize_modelopt(src, dst, calibration, exclude, float_dtype)
        else:
            _quantize_onnxruntime(src, dst, calibration, exclude, Path(cache) if cache else None)
    except (ArtifactError, ConfigError):
        raise
    except Exception as exc:  # both quantizers raise assorted types
        raise ArtifactError(f"Q/DQ quantization of {src} with {name} failed: {type(exc).__name__}: {exc}") from exc


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
            :func:`quantize.qdq_fp16.fp16_remainder`).
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
    _check_request(src, float_dtype, exclude)
    _run_backend(name, src, dst, calibration, exclude, float_dtype, cache)
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
