"""The layers a weakly typed FP16/INT8 TensorRT build keeps in FP32: decomposed LayerNorms and softmax inputs.

Usage: ``device_settings(..., fp32_layers=fp32_layer_names("full_int8_qdq.onnx"))``; the names go to
``BuildSettings.fp32_layers`` (the Python API builder pins them, trtexec gets ``--layerPrecisions``).
"""

from __future__ import annotations

from typing import Any

# The ops a weakly typed FP16 build keeps in FP32 around a decomposed LayerNorm and a softmax (fp32_layer_names).
_TYPE_ONLY_OPS = ("Cast", "Identity")
_LN_TAIL_OPS = ("Add", "Sqrt", "Reciprocal")
_SOFTMAX_INPUT_OPS = ("Add", "Sub", "Mul", "Div", "Where")


def fp32_layer_names(model: Any) -> tuple[str, ...]:
    """The layers a weakly typed FP16/INT8 build keeps in FP32: each decomposed LayerNorm and each softmax input.

    - A decomposed LayerNorm (``quantize.trt_compat.decompose_layernorm`` for TensorRT 8.5, or an exporter's own):
      ReduceMean, Sub, Mul or Pow, ReduceMean, Add, Sqrt (or Reciprocal) and Div (or Mul), from ``x - mean(x)`` to
      the normalized output. In half, ``(x - mean)²`` overflows once ``|x - mean| > 256`` (NVIDIA/TensorRT#2564).
    - Each Softmax and the elementwise op that makes its logits (a biased or masked score). A MatMul/Gemm producer is
      left alone: its INT8/FP16 GEMM is what the build is for.

    A native LayerNormalization (opset 17, TensorRT 8.6+) is not listed: its INormalizationLayer computes in FP32
    unless told otherwise (``stash_type``). Casts inside an island (the FP16 ONNX wraps its FP32 ops in them) are
    listed too, so the island stays FP32 across them: a Cast to FP16 only inside a decomposed LayerNorm, which only
    TensorRT 8.5 needs, whose parser makes a Cast an identity layer with an output type that the FP32 one replaces.
    Names are what the ONNX parser calls each node's layer: the node name, or ``node_of_<first output>`` for an
    unnamed node (onnx-tensorrt ``getNodeName``).

    Args:
        model: an ONNX file or ``ModelProto``.

    Returns:
        Layer names in graph order, each once.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = _Graph(list(model.graph.node))
    keep: list[Any] = []
    for sub in graph.nodes:
        keep += _layernorm_island(graph, sub)
    for softmax in graph.nodes:
        if softmax.op_type == "Softmax":
            keep += _softmax_island(graph, softmax)
    names = [node.name or f"node_of_{node.output[0]}" for node in keep]
    return tuple(dict.fromkeys(names))


class _Graph:
    """The nodes of an ONNX graph with the producer and the users of each tensor, looked through Casts."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.producer = {out: node for node in nodes for out in node.output if out}
        self.users: dict[str, list[Any]] = {}
        for node in nodes:
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def source(self, tensor: str) -> str:
        """The tensor a chain of Casts started from."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in _TYPE_ONLY_OPS and node.input:
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor

    def casts_between(self, start: str, end: str) -> list[Any]:
        """The Casts from tensor ``start`` down to tensor ``end``."""
        chain, node = [], self.producer.get(end)
        while node is not None and node.op_type in _TYPE_ONLY_OPS and end != start:
            chain.append(node)
            end = node.input[0]
            node = self.producer.get(end)
        return chain

    def consumers(self, tensor: str) -> list[tuple[Any, list[Any]]]:
        """The users of ``tensor``, looking through Casts, each with the Casts on its way."""
        found, stack = [], [(tensor, [])]
        while stack:
            name, via = stack.pop()
            for node in self.users.get(name, []):
                if node.op_type in _TYPE_ONLY_OPS:
                    stack.append((node.output[0], [*via, node]))
                else:
                    found.append((node, via))
        return found


def _layernorm_island(graph: _Graph, sub: Any) -> list[Any]:
    """The nodes of the decomposed LayerNorm whose ``x - mean(x)`` is ``sub``; empty when ``sub`` is not that."""
    if sub.op_type != "Sub" or len(sub.input) != 2:
        return []
    mean = graph.producer.get(graph.source(sub.input[1]))
    if mean is None or mean.op_type != "ReduceMean" or graph.source(mean.input[0]) != graph.source(sub.input[0]):
        return []  # not x - mean(x)
    island = [mean, *graph.casts_between(mean.output[0], sub.input[1]), sub]
    d = sub.output[0]
    for square, via in graph.consumers(d):
        is_mul = square.op_type == "Mul" and [graph.source(i) for i in square.input] == [d, d]
        is_pow = square.op_type == "Pow" and graph.source(square.input[0]) == d
        if not (is_mul or is_pow):
            continue
        island += [*via, square, *_layernorm_tail(graph, square, d)]
    return island


def _layernorm_tail(graph: _Graph, square: Any, d: str) -> list[Any]:
    """From the square ``(x - mean)²`` to the normalized output: the variance, ``+ eps``, the root, the division."""
    tail_nodes: list[Any] = []
    tail = [(n, v) for n, v in graph.consumers(square.output[0]) if n.op_type == "ReduceMean"]
    while tail:
        node, via = tail[0]
        tail_nodes += [*via, node]
        ends = [(n, v) for n, v in graph.consumers(node.output[0]) if n.op_type in ("Div", "Mul")]
        ends = [(n, v) for n, v in ends if d in [graph.source(i) for i in n.input]]
        if ends:  # d / std or d * (1 / std): the normalized output
            tail_nodes += [*ends[0][1], ends[0][0]]
            break
        tail = [(n, v) for n, v in graph.consumers(node.output[0]) if n.op_type in _LN_TAIL_OPS]
    return tail_nodes


def _softmax_island(graph: _Graph, softmax: Any) -> list[Any]:
    """A Softmax and the elementwise op that makes its logits, with the Casts between them."""
    keep = []
    logits = graph.producer.get(graph.source(softmax.input[0]))
    if logits is not None and logits.op_type in _SOFTMAX_INPUT_OPS:
        keep += [logits, *graph.casts_between(logits.output[0], softmax.input[0])]
    keep.append(softmax)
    return keep
