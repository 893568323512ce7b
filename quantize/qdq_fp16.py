"""The FP16 float remainder of a Q/DQ INT8 graph, as a strongly typed TensorRT (11+, no ``--fp16`` flag) runs it.

Usage: ``model, info = fp16_remainder(onnx.load("model_int8_qdq.onnx"))``.

ModelOpt casts the remainder itself; for ONNX Runtime's graph :func:`fp16_remainder` does it with
``onnxruntime.transformers.float16`` and keeps the graph I/O, the overflow-prone ops of the FP16 export
(normalisations, Softmax, reductions, Pow/Sqrt/Exp/Erf) and a decomposed LayerNorm in FP32. Both give the Q/DQ nodes
FP16 scales (opset ≥ 19), so a DequantizeLinear feeds its FP16 Conv/MatMul directly, as in ModelOpt's graphs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, ConfigError

FP16_QDQ_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear take FP16 scales from opset 19 on
FP16_MIN_NORMAL = 2.0**-14  # a Q/DQ scale below this (or above FP16's max) keeps its Q/DQ nodes in FP32
FP16_MAX = 65504.0
LN_DECOMPOSED = re.compile(r"_dec\d+_")  # node names written by quantize.trt_compat.decompose_layernorm


def check_fp16_opset(model: Any, what: str) -> None:
    """Refuse an FP16 float remainder for a graph below opset 19 (``what`` names the graph in the message)."""
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

    check_fp16_opset(model, "the Q/DQ graph")
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
