"""The fake ONNX parser: ``OnnxParser`` and ``ParserError``, one layer per ONNX node, named as onnx-tensorrt names it.

Usage: ``parser = trt.OnnxParser(network, logger); parser.parse_from_file("m.onnx")`` fills ``network`` with a layer per
node (the node name, else ``node_of_<first output>``, made unique with ``_<n>``), typed after the node's op
(:data:`LAYER_OF_OP`); network inputs follow the graph (INT64 becomes INT32 before 10.x). An op the version has no
importer for fails the parse with an error naming the node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .library import Library
from .pybind import check_args

# ONNX TensorProto element type -> TensorRT DataType member name
ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 3: "INT8"}

# ONNX op -> TensorRT layer type of the layer onnx-tensorrt adds for it
LAYER_OF_OP = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY",
    "Softmax": "SOFTMAX", "Concat": "CONCATENATION", "Slice": "SLICE", "Gather": "GATHER", "Shape": "SHAPE",
    "Resize": "RESIZE", "Where": "SELECT", "Einsum": "EINSUM", "Pad": "PADDING", "TopK": "TOPK", "Identity": "IDENTITY",
    "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "LayerNormalization": "NORMALIZATION",
    "MaxPool": "POOLING", "AveragePool": "POOLING", "GlobalAveragePool": "POOLING", "Expand": "SLICE",
    "Range": "FILL", "ConstantOfShape": "FILL", "ScatterND": "SCATTER", "ScatterElements": "SCATTER",
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less", "And", "Or"),
                    "ELEMENTWISE"),
    **dict.fromkeys(("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "HardSigmoid", "Softplus", "Clip"), "ACTIVATION"),
    **dict.fromkeys(("Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Erf", "Not", "Floor", "Ceil", "Sin", "Cos"),
                    "UNARY"),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"), "REDUCE"),
    **dict.fromkeys(("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"), "SHUFFLE"),
}  # fmt: skip


class ParserErrorRecord:
    """``ParserError``: what one failed parse step reports (``str()`` is what onnx-tensorrt prints)."""

    def __init__(self, code: Any, desc: str, node: int = -1, node_name: str = "") -> None:
        self._code, self._desc, self._node, self._node_name = code, desc, node, node_name

    def code(self) -> Any:
        return self._code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parseGraph"

    def __str__(self) -> str:
        where = f"In node {self._node} with name: {self._node_name}" if self._node >= 0 else "In model"
        return f"{where} ({self.func()}): {self._code.name}: {self._desc}"


class ParserErrorNodeName:
    """``ParserError.node_name()`` (10.x on)."""

    def node_name(self) -> str:
        return self._node_name


class Parser:
    """``OnnxParser``: reads the ONNX with the ``onnx`` package into its network."""

    _lib: Library

    def __init__(self, network: Any, logger: Any) -> None:
        lib = self._lib
        check_args("OnnxParser.__init__", network=(network, lib.INetworkDefinition), logger=(logger, lib.ILogger))
        self._network, self._logger = network, logger
        self._errors: list[Any] = []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> Any:
        check_args("OnnxParser.get_error", index=(index, int))
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors.clear()

    def supports_operator(self, op_name: str) -> bool:
        check_args("OnnxParser.supports_operator", op_name=(op_name, str))
        return op_name in LAYER_OF_OP and op_name not in self._lib.api.onnx_unsupported

    def _fail(self, code: str, desc: str, node: int = -1, node_name: str = "") -> bool:
        self._errors.append(self._lib.ParserError(getattr(self._lib.ErrorCode, code), desc, node, node_name))
        self._lib.log(self._logger, "ERROR", desc)
        return False

    def parse_from_file(self, model: str) -> bool:
        check_args("OnnxParser.parse_from_file", model=(model, str))
        import onnx

        if not Path(model).is_file():
            return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to open file: {model}")
        try:
            proto = onnx.load(model)  # external data is read from beside the file, as the parser does
        except Exception as exc:  # noqa: BLE001  (any decode failure is a parse failure)
            return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to parse ONNX model from file: {model}: {exc}")
        return self._import(proto)

    def parse(self, model: Any, path: str | None = None) -> bool:
        check_args("OnnxParser.parse", model=(model, (bytes, bytearray, memoryview)))
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001
            return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to parse ONNX model: {exc}")
        return self._import(proto)

    def _import(self, proto: Any) -> bool:
        import onnx

        net = self._network
        if not net._explicit_batch:
            return self._fail(
                "INVALID_GRAPH", "The ONNX parser only supports networks with an explicit batch dimension"
            )
        graph = onnx.shape_inference.infer_shapes(proto).graph
        state = _GraphImport(self, graph)
        state.add_inputs()
        for index, node in enumerate(graph.node):
            if not state.add_node(index, node):
                return False
        for out in graph.output:
            net._outputs.append(state.tensors[out.name])
        net._model = proto
        return True


class _GraphImport:
    """One parse of a graph into the parser's network: the tensors made so far and the layer names taken."""

    def __init__(self, parser: Parser, graph: Any) -> None:
        self.parser, self.lib, self.net = parser, parser._lib, parser._network
        self.graph = graph
        self.value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        self.initializers = {i.name for i in graph.initializer}
        self.tensors: dict[str, Any] = {}
        self.names: set[str] = set()
        self.suffix = 0

    def unique(self, base: str) -> str:
        candidate = base
        while candidate in self.names:
            candidate, self.suffix = f"{base}_{self.suffix}", self.suffix + 1
        self.names.add(candidate)
        return candidate

    def dtype_of(self, elem_type: int) -> Any:
        name = ONNX_TO_TRT.get(int(elem_type), "FLOAT")
        if name == "INT64" and not self.lib.api.int64_io:
            name = "INT32"  # TensorRT 8.x has no INT64: the parser binds INT64 as INT32
        return getattr(self.lib.DataType, name)

    def add_inputs(self) -> None:
        for inp in self.graph.input:
            if inp.name not in self.initializers:
                tensor = self.lib.ITensor(inp.name, _shape_of(inp), self.dtype_of(inp.type.tensor_type.elem_type))
                self.net._inputs.append(tensor)
                self.tensors[inp.name] = tensor

    def add_node(self, index: int, node: Any) -> bool:
        """Add the layer of one node; False (the error recorded) when the version has no layer for its op."""
        api = self.lib.api
        node_name = node.name or f"node_of_{node.output[0]}"
        if node.op_type == "Constant":  # onnx-tensorrt adds no layer for Constant nodes
            return True
        if node.op_type in api.onnx_unsupported:
            return self.parser._fail(
                "UNSUPPORTED_NODE",
                f"No importer registered for op: {node.op_type}; could not find a plugin for node "
                f"{node_name} (TensorRT {api.version})",
                index,
                node_name,
            )
        layer_type = LAYER_OF_OP.get(node.op_type)
        if node.op_type == "Cast":
            layer_type = "CAST" if "CAST" in api.layer_types else "IDENTITY"
        if layer_type is None:
            return self.parser._fail(
                "UNSUPPORTED_NODE",
                f"fake_tensorrt maps no layer type for ONNX op {node.op_type} (node {node_name}); add it to "
                "tests/fake_tensorrt/onnx_parser.py LAYER_OF_OP",
                index,
                node_name,
            )
        inputs = [self.tensors.get(i) for i in node.input if i and i not in self.initializers]
        outputs = []
        for out in node.output:
            info = self.value_info.get(out)
            elem = info.type.tensor_type.elem_type if info is not None else 1
            tensor = self.lib.ITensor(out, _shape_of(info) if info is not None else (), self.dtype_of(elem))
            self.tensors[out] = tensor
            outputs.append(tensor)
        layer_type = getattr(self.lib.LayerType, layer_type)
        self.net._layers.append(self.lib.ILayer(self.net, self.unique(node_name), layer_type, inputs, outputs))
        return True


def _shape_of(value_info: Any) -> tuple[int, ...]:
    return tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


def parser_classes(lib: Library) -> dict[str, type]:
    """``ParserError`` and ``OnnxParser`` of ``lib``'s version."""
    return {
        "ParserError": lib.subclass("ParserError", ParserErrorRecord, (lib.major >= 10, ParserErrorNodeName)),
        "OnnxParser": lib.subclass("OnnxParser", Parser),
    }
