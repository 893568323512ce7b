"""Graph surgery on finished INT8 artifacts: return chosen compute nodes to float without re-running calibration.

Usage: ``proto = onnx_variant("full_int8_qdq.onnx", "full.onnx", ["node_conv2d_3"])`` (those nodes float, the rest as
quantized), ``onnx_variant(..., group_float=False)`` (only those nodes quantized); for OpenVINO,
``model = openvino_variant(int8_model, fp32_model, ops)`` on models read with ``ov.Core().read_model``, then compile;
``infer = open_variants("full_int8.xml", "full.xml").variant(ops, group_float=True)`` does both, on CPU.

Q/DQ ONNX: each QuantizeLinear → DequantizeLinear input of a floated node is bypassed for that node alone: an
activation is read from the Q's own input (through a Cast when the DQ's scale has another float type), a weight from the
FP32 graph's initializer (same node name and input index, through the same pass-through ops), or the dequantized INT8
constant when the FP32 graph lacks it. A pass-through op between the DQ and the node (ModelOpt's Cast to FP16, a
weight Transpose) is rewired itself, so another node reading it follows. Unused Q/DQ nodes and initializers are pruned.

NNCF OpenVINO IR: a floated operation reads its activations from before its FakeQuantize (and before NNCF's
SmoothQuant ``*/nncf_smooth_quant`` Multiply, whose scale is folded into the INT8 weight), gets the FP32 IR's weight
in place of the INT8 decompression (``i8 Constant → Convert → Multiply``) and the FP32 IR's bias where NNCF's bias
correction changed it (all matched by friendly name). A FakeQuantize that reaches the operation only through
shape-only ops (Reshape, Concat, Interpolate, ...) is bypassed whole; one such FakeQuantize shared by the group and
other operations follows the group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError
from quantize.qdq_graph import PASS_THROUGH_OPS, QDQInput, graph_input_names, load_model, qdq_inputs, quantized_nodes

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> {output name: array}

# OpenVINO operations NNCF quantizes (inputs fed by FakeQuantize, INT8 weights)
OV_COMPUTE_OPS = frozenset(
    {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "ScaledDotProductAttention"}
)
# ops a FakeQuantize's output may pass through before the operation it quantizes: they move values, never mix them
OV_SHAPE_OPS = frozenset(
    {
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Interpolate", "Slice", "StridedSlice", "Split",
        "VariadicSplit", "Gather", "Broadcast", "Convert", "FakeQuantize", "MaxPool", "Tile", "DepthToSpace",
        "SpaceToDepth",
    }
)  # fmt: skip
OV_DECOMPRESSION_OPS = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")
SMOOTH_QUANT_TAG = "nncf_smooth_quant"  # NNCF's name for the SmoothQuant activation scale Multiply


# ---------------------------------------------------------------------------------------------------- Q/DQ ONNX


def onnx_variant(qdq: Any, fp32: Any, group: Iterable[str], *, group_float: bool = True) -> Any:
    """A copy of a Q/DQ INT8 graph with the group's nodes in float (or, ``group_float=False``, only those quantized).

    Args:
        qdq: the Q/DQ INT8 ONNX (path or ``onnx.ModelProto``; never modified).
        fp32: the FP32 ONNX it was quantized from: the float weights.
        group: names of quantized nodes (:func:`quantize.qdq_graph.quantized_nodes`).
        group_float: True: the group in float, everything else as quantized; False: the group alone quantized.

    Raises:
        ArtifactError: a group name is not a quantized node of the graph.
    """
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(load_model(qdq))
    quantized = quantized_nodes(proto)
    wanted = set(group)
    unknown = sorted(wanted - set(quantized))
    if unknown:
        raise ArtifactError(
            f"nodes {unknown[:10]} are not quantized nodes of the Q/DQ graph; expected names among its "
            f"{len(quantized)} quantized Conv/MatMul/Gemm nodes, e.g. {quantized[:5]}"
        )
    bypass_qdq(proto, fp32, wanted if group_float else set(quantized) - wanted)
    return proto


def bypass_qdq(proto: Any, fp32: Any, nodes: Collection[str]) -> int:
    """Return ``nodes`` of a Q/DQ graph to float in place (see the module docstring); prunes what became unused.

    Returns:
        The number of node inputs read in float now.
    """
    from onnx import helper, numpy_helper

    from quantize.trt_compat import _constant_values

    entries = [q for q in qdq_inputs(proto) if q.node in nodes]
    consts = _constant_values(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    by_name = {n.name: n for n in proto.graph.node}
    fp = load_model(fp32)
    fp_values = {t.name: t for t in fp.graph.initializer}
    fp_nodes = {n.name: n for n in fp.graph.node}
    fp_producer = {o: n for n in fp.graph.node for o in n.output}
    position = {o: i for i, n in enumerate(proto.graph.node) for o in n.output}
    casts: dict[int, list[Any]] = {}  # node index -> Casts to insert before it (keeps the graph sorted)
    made: set[str] = set()
    done = 0
    for q in entries:
        reader = _dq_reader(by_name[q.node], q.index, producer)
        if reader is None:  # a pass-through chain shared with a node handled before
            continue
        consumer, slot, dq = reader
        if q.source is not None:  # an activation (or a float initializer under Q → DQ): read it before the Q
            source = q.source
            q_scale, dq_scale = consts.get(producer[dq.input[0]].input[1]), consts.get(dq.input[1])
            if q_scale is not None and dq_scale is not None and q_scale.dtype != dq_scale.dtype:
                source = f"{dq.output[0]}_float_cast"
                to = helper.np_dtype_to_tensor_dtype(dq_scale.dtype)
                cast = helper.make_node("Cast", [q.source], [source], to=to, name=source)
                casts.setdefault(position[consumer.output[0]], []).append(cast)
        else:  # an INT8 initializer: the FP32 graph's weight, or the dequantized constant (made once per name)
            source = f"{dq.output[0]}_float"
            if source not in made:
                weight = _fp32_weight(fp_nodes, fp_values, fp_producer, q, numpy_helper)
                value = (dequantize(q) if weight is None else weight).astype(np.asarray(q.scale).dtype)
                proto.graph.initializer.append(numpy_helper.from_array(value, source))
                made.add(source)
        consumer.input[slot] = source
        done += 1
    if casts:
        nodes = [m for i, n in enumerate(proto.graph.node) for m in [*casts.get(i, []), n]]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    prune(proto.graph)
    return done


def _dq_reader(node: Any, index: int, producer: dict[str, Any]) -> tuple[Any, int, Any] | None:
    """``(op, input slot, DequantizeLinear)``: the op that reads the DQ output on the way to ``node``'s input."""
    consumer, slot = node, index
    src = producer.get(node.input[index])
    while src is not None and src.op_type in PASS_THROUGH_OPS:
        consumer, slot = src, 0
        src = producer.get(src.input[0])
    return (consumer, slot, src) if src is not None and src.op_type == "DequantizeLinear" else None


def _fp32_weight(fp_nodes: dict, fp_values: dict, fp_producer: dict, q: QDQInput, numpy_helper: Any) -> Any:
    """The FP32 graph's weight for a stored INT8 weight: same node and input, through the same pass-through ops."""
    node = fp_nodes.get(q.node)
    if node is None or q.index >= len(node.input):
        return None
    name = node.input[q.index]
    while name not in fp_values and name in fp_producer and fp_producer[name].op_type in PASS_THROUGH_OPS:
        name = fp_producer[name].input[0]
    if name not in fp_values:
        return None
    value = numpy_helper.to_array(fp_values[name]).astype(np.float32)
    return value if q.weight is None or value.shape == q.weight.shape else None


def dequantize(q: QDQInput) -> np.ndarray:
    """``(w − zero point) · scale`` of a stored INT8 weight (per-tensor, or per-channel along ``q.axis``)."""
    w = np.asarray(q.weight, np.float32)
    scale, zp = np.asarray(q.scale, np.float32), np.asarray(q.zero_point, np.float32)
    shape = [1] * w.ndim
    if w.ndim:
        shape[q.axis] = -1
    scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return ((w - zp) * scale).astype(np.float32)


def prune(graph: Any) -> None:
    """Remove the nodes no graph output depends on, then the initializers (and initializer inputs) nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = _read_names(graph) | outputs
        kept = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    used = _read_names(graph) | outputs
    inits = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in inits}
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [v for v in graph.input if v.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def _read_names(graph: Any) -> set[str]:
    """Every tensor name a node of the graph or of its subgraphs (If / Loop bodies) reads."""
    names = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _read_names(sub)
    return names


# ---------------------------------------------------------------------------------------------------- OpenVINO IR


def _consumers(node: Any) -> list[Any]:
    return [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]


def fake_quantize_targets(model: Any) -> dict[str, set[str]]:
    """FakeQuantize name → the compute operations it quantizes (reached through shape-only ops, or, for one that
    reaches none that way, the first compute operations downstream)."""
    targets = {}
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        found = _downstream_compute(fq, OV_SHAPE_OPS) or _downstream_compute(fq, None)
        targets[fq.get_friendly_name()] = {op.get_friendly_name() for op in found}
    return targets


def _downstream_compute(start: Any, through: frozenset[str] | None) -> list[Any]:
    """Compute operations reached from ``start`` through ops of type ``through`` (any op when None)."""
    found, seen, stack = [], set(), _consumers(start)
    while stack:
        node = stack.pop()
        if node.get_instance_id() in seen:
            continue
        seen.add(node.get_instance_id())
        if node.get_type_name() in OV_COMPUTE_OPS:
            found.append(node)
        elif through is None or node.get_type_name() in through:
            stack.extend(_consumers(node))
    return found


def _int8_weight(out: Any) -> bool:
    """True for a weight stored in INT8: an integer Constant through a decompression (Convert, Multiply, ...)."""
    node = out.get_node()
    for _ in range(6):
        if node.get_type_name() == "Constant":
            return node.get_element_type().is_integral()
        if node.get_type_name() not in OV_DECOMPRESSION_OPS:
            return False
        node = node.input_value(0).get_node()
    return False


def openvino_quantized_ops(model: Any) -> list[str]:
    """Friendly names of the compute operations with INT8 weights or FakeQuantize-fed inputs, in topological order."""
    fed = set().union(*fake_quantize_targets(model).values())
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in OV_COMPUTE_OPS
        and (op.get_friendly_name() in fed or any(_int8_weight(op.input_value(i)) for i in range(op.get_input_size())))
    ]


def openvino_variant(model: Any, fp32: Any, group: Iterable[str], *, group_float: bool = True) -> Any:
    """A clone of an NNCF INT8 ``ov.Model`` with the group's operations in float (or only those quantized).

    Args:
        model: the INT8 model (``ov.Core().read_model``; never modified).
        fp32: the FP32 model it was quantized from: float weights and biases, matched by friendly name.
        group: friendly names of quantized operations (:func:`openvino_quantized_ops`).
        group_float: True: the group in float, everything else as quantized; False: the group alone quantized.

    Raises:
        ArtifactError: a group name is not a quantized operation of the model.
    """
    quantized = openvino_quantized_ops(model)
    wanted = set(group)
    unknown = sorted(wanted - set(quantized))
    if unknown:
        raise ArtifactError(
            f"operations {unknown[:10]} are not quantized operations of the OpenVINO model; expected names among its "
            f"{len(quantized)} quantized operations, e.g. {quantized[:5]}"
        )
    floated = wanted if group_float else set(quantized) - wanted
    targets = fake_quantize_targets(model)
    clone = model.clone()
    ops = {op.get_friendly_name(): op for op in clone.get_ops()}
    fp_ops = {op.get_friendly_name(): op for op in fp32.get_ops()}
    for name in floated:
        _restore_op(ops[name], fp_ops.get(name), fp_ops)
    for fq in [op for op in clone.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
        with_group = bool(targets.get(fq.get_friendly_name(), set()) & wanted)
        if with_group == group_float:  # the group's FakeQuantize when floating it, the others' when keeping it
            source = fq.input_value(0)
            for port in list(fq.output(0).get_target_inputs()):
                if port.get_node().get_type_name() not in OV_COMPUTE_OPS:  # direct readers decide for themselves
                    port.replace_source_output(source)
    clone.validate_nodes_and_infer_types()
    return clone


def _restore_op(op: Any, fp_op: Any, fp_ops: dict[str, Any]) -> None:
    """One operation in float: FP32 weights, inputs read before FakeQuantize (and SmoothQuant), FP32 biases."""
    import openvino.opset13 as opset

    restored = set()
    for port in op.inputs() if fp_op is not None else ():
        source = port.get_source_output()
        if source.get_node().get_type_name() == "FakeQuantize":  # a weight kept as FakeQuantize on a Constant
            source = source.get_node().input_value(0)
        if _int8_weight(source) or source.get_node().get_type_name() == "Constant":
            weight = _constant(fp_op.input_value(port.get_index()))
            if weight is not None and tuple(weight.shape) == tuple(source.get_partial_shape().to_shape()):
                port.replace_source_output(opset.constant(weight).output(0))
                restored.add(port.get_index())
    for port in op.inputs():
        if port.get_index() in restored:
            continue
        source = port.get_source_output()
        if source.get_node().get_type_name() == "FakeQuantize":
            source = source.get_node().input_value(0)
        node = source.get_node()
        if restored and node.get_type_name() == "Multiply" and SMOOTH_QUANT_TAG in node.get_friendly_name():
            source = node.input_value(0)  # the weight has its FP32 values: the activation loses SmoothQuant's scale
        port.replace_source_output(source)
    for reader in _consumers(op):  # NNCF's bias correction: the Add after the operation gets the FP32 bias back
        fp_add = fp_ops.get(reader.get_friendly_name())
        if reader.get_type_name() != "Add" or fp_add is None:
            continue
        for port in reader.inputs():
            const = port.get_source_output().get_node()
            bias = _constant(fp_add.input_value(port.get_index())) if const.get_type_name() == "Constant" else None
            if bias is not None and bias.shape == tuple(const.get_output_shape(0)):
                port.replace_source_output(opset.constant(bias).output(0))


def _constant(out: Any) -> np.ndarray | None:
    """The float32 value of a Constant (through Convert, as in FP16-compressed IRs); None for anything else."""
    node = out.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return np.asarray(node.get_data(), np.float32) if node.get_type_name() == "Constant" else None


# ---------------------------------------------------------------------------------------------------- variants


class OnnxVariants:
    """The Q/DQ ONNX and its FP32 graph, run in ONNX Runtime on CPU."""

    runtime = "onnxruntime"

    def __init__(self, int8: Path, fp32: Path, threads: int | None) -> None:
        self.int8, self.fp32, self.threads = load_model(int8), load_model(fp32), threads
        wanted = set(quantized_nodes(self.int8))
        self.units = [n.name for n in self.int8.graph.node if n.name in wanted]
        self.names = self.fp32  # the graph the groups are named from
        meta = {p.key: p.value for p in self.int8.metadata_props}
        try:
            quant = json.loads(meta.get("quantization", "{}"))
        except ValueError:
            quant = {}
        self.fp16_remainder = isinstance(quant, dict) and quant.get("float_remainder") == "fp16"

    def reference(self) -> Infer:
        return self._infer(self.fp32)

    def quantized(self) -> Infer:
        return self._infer(self.int8)

    def variant(self, group: Sequence[str], group_float: bool) -> Infer:
        return self._infer(onnx_variant(self.int8, self.fp32, group, group_float=group_float))

    def _infer(self, proto: Any) -> Infer:
        import onnxruntime as ort
        from onnx import helper

        from runtimes.onnxruntime_rt import UNFUSED_QDQ

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(self.threads), 1
        if self.fp16_remainder:  # as runtimes.onnxruntime_rt: FP16-scaled Q/DQ pairs run as written, unfused
            opts.add_session_config_entry(UNFUSED_QDQ, "1")
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        types = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in proto.graph.input}
        inputs = [(name, types[name]) for name in graph_input_names(proto)]
        names = [o.name for o in session.get_outputs()]

        def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            values = session.run(names, {n: np.asarray(feeds[n], dtype=t) for n, t in inputs})
            return dict(zip(names, values, strict=True))

        return infer


class OpenVINOVariants:
    """The NNCF INT8 IR and its FP32 IR, compiled for CPU with FP32 inference precision (no BF16 on the float parts)."""

    runtime = "openvino"

    def __init__(self, int8: Path, fp32: Path, threads: int | None) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.int8, self.fp32 = self.core.read_model(str(int8)), self.core.read_model(str(fp32))
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.units = openvino_quantized_ops(self.int8)
        beside = Path(fp32).with_suffix(".onnx")  # the graph the groups are named from: export writes it beside
        self.names = beside if beside.is_file() else None

    def reference(self) -> Infer:
        return self._infer(self.fp32)

    def quantized(self) -> Infer:
        return self._infer(self.int8)

    def variant(self, group: Sequence[str], group_float: bool) -> Infer:
        return self._infer(openvino_variant(self.int8, self.fp32, group, group_float=group_float))

    def _infer(self, model: Any) -> Infer:
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        inputs = [(p.get_any_name(), p.get_element_type().to_dtype()) for p in model.inputs]

        def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = request.infer({n: np.asarray(feeds[n], dtype=t) for n, t in inputs})
            return {name: np.array(value, copy=True) for port, value in results.items() for name in port.get_names()}

        return infer


def open_variants(int8: str | Path, fp32: str | Path, threads: int | None = None) -> OnnxVariants | OpenVINOVariants:
    """The INT8 artifact and its FP32 artifact, ready to run variants: Q/DQ ``.onnx`` or NNCF ``.xml``, on CPU.

    Raises:
        ArtifactError: a file is missing, or the pair is not two ``.onnx`` or two ``.xml`` files.
    """
    int8, fp32 = Path(int8), Path(fp32)
    for path in (int8, fp32):
        if not path.is_file():
            raise ArtifactError(f"artifact {path} does not exist; expected a Q/DQ .onnx or an OpenVINO .xml")
    kinds = {".onnx": OnnxVariants, ".xml": OpenVINOVariants}
    if int8.suffix not in kinds or fp32.suffix != int8.suffix:
        raise ArtifactError(
            f"cannot measure {int8.name} against {fp32.name}; expected an INT8 .onnx with its FP32 .onnx, or an INT8 "
            ".xml with its FP32 .xml"
        )
    return kinds[int8.suffix](int8, fp32, threads)
