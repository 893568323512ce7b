"""Reading Q/DQ INT8 ONNX graphs: the quantizable nodes, the inputs that come through Q/DQ, and a graph's counts.

Usage: ``quantized_nodes("model_int8_qdq.onnx")``; ``inspect_qdq(model)`` for the counts and zero-point checks.

A node is quantized when one of its Conv / MatMul / Gemm inputs comes from a DequantizeLinear, directly or through
pass-through ops (ModelOpt casts DequantizeLinear outputs to FP16; exporters reshape or transpose weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

QUANT_OPS = ("Conv", "MatMul", "Gemm")
# ops a quantized input may pass through between its DequantizeLinear and the Conv/MatMul/Gemm (ModelOpt casts DQ
# outputs to FP16; exporters reshape or transpose weights)
PASS_THROUGH_OPS = ("Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def load_model(model: Any) -> Any:
    """The ``onnx.ModelProto`` itself, or the model loaded from a path."""
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the Conv / MatMul / Gemm nodes of a float graph."""
    return [n.name for n in load_model(model).graph.node if n.op_type in QUANT_OPS]


def graph_input_names(model: Any) -> list[str]:
    """The inputs a graph is fed: its inputs that are not initializers."""
    proto = load_model(model)
    init = {t.name for t in proto.graph.initializer}
    return [v.name for v in proto.graph.input if v.name not in init]


def quantized_op_types(model: Any) -> list[str]:
    """Op types that read a DequantizeLinear output (through pass-through ops): what the placement quantized."""
    proto = load_model(model)
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

    proto = load_model(model)
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

    proto = load_model(model)
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
