"""A fake ``tensorrt`` module for one API version: the names and signatures that version has, and none it lacks.

Usage: ``trt = make_tensorrt(VERSIONS["8.5"], FakeDevice("Xavier", (7, 2), dla_cores=2))``.

Behaviour, so that the project's builder and runtime run end to end on a CPU:

- ``OnnxParser`` reads the ONNX with the ``onnx`` package and adds one layer per node, named the way onnx-tensorrt
  names it (the node name, else ``node_of_<first output>``, made unique with ``_<n>``), typed after the node's op;
  network inputs follow the graph (INT64 becomes INT32 before 10.x). An op the version has no importer for fails the
  parse with an error naming the node.
- ``Builder.build_serialized_network`` checks what TensorRT checks (DLA core in range, no precision flags on a strongly
  typed network, obeyed precision constraints on DLA) and returns a plan that encodes what was configured: flags, pool
  limits, the typing mode, the DLA core and, per layer, its name, type, precision, output types, device and the
  precision it would run in. ``plan_of(engine_bytes)`` reads it back for tests.
- ``Runtime.deserialize_cuda_engine`` refuses a plan of another TensorRT version or GPU (returns None and logs, as
  TensorRT does); an engine's ``IExecutionContext.execute_async_v3`` reads its inputs from the fake device memory at
  the addresses set with ``set_tensor_address``, runs the ONNX with ONNX Runtime and writes the outputs back, so the
  runtime's outputs are real numbers.
- Every message goes through the ``Logger`` and is also kept in ``trt._messages`` as ``(severity, text)``.

Arguments are type-checked the way pybind11 checks them (a wrong type raises TypeError) and keyword names are the
bindings' own. API facts and their sources: :mod:`tests.fake_tensorrt.api`.
"""

from __future__ import annotations

import base64
import importlib.machinery
import json
import sys
import types
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .api import CONSTRAINT_FLAGS, PRECISION_FLAGS, ApiVersion
from .cuda import FakeDevice

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"

# ONNX TensorProto element type -> TensorRT DataType member name
_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 3: "INT8"}
_TRT_TO_NUMPY = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}  # fmt: skip
_FLOAT_TYPES = ("FLOAT", "HALF", "BF16")

# ONNX op -> TensorRT layer type of the layer onnx-tensorrt adds for it
_LAYER_OF_OP = {
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
# Layer types DLA can run (FP16/INT8 only); the transformer parts (MatMul on 4-D, Softmax, LN, Gather) are not here.
_DLA_TYPES = frozenset({"CONVOLUTION", "DECONVOLUTION", "POOLING", "ACTIVATION", "ELEMENTWISE", "SCALE",
                        "CONCATENATION", "RESIZE"})  # fmt: skip


def plan_of(serialized: bytes) -> dict[str, Any]:
    """What a fake plan (engine file) records."""
    data = bytes(serialized)
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("not a fake TensorRT plan")
    return json.loads(data[len(PLAN_MAGIC) :])


class _Numpy124:
    """numpy as pip installs it on JetPack 5's Python 3.8 (1.24.4), where the ``np.bool`` alias is gone."""

    def __getattr__(self, name: str) -> Any:
        if name == "bool":
            raise AttributeError(
                "module 'numpy' has no attribute 'bool'.\n`np.bool` was a deprecated alias for the builtin `bool`. "
                "To avoid this error in existing code, use `bool` by itself."
            )
        return getattr(np, name)


class _PyEnum:
    """A pybind11 ``py::enum_`` member: equal only to members of the same enum, ``int()`` gives its value."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _enum(name: str, members: dict[str, int] | Iterable[str]) -> type:
    table = members if isinstance(members, dict) else {m: i for i, m in enumerate(members)}
    cls = type(name, (_PyEnum,), {"__slots__": ()})
    cls.__members__ = {}
    for member, value in table.items():
        instance = cls(member, value)
        setattr(cls, member, instance)
        cls.__members__[member] = instance
    return cls


def _check(fn: str, **args: tuple[Any, type | tuple[type, ...]]) -> None:
    """Raise TypeError as pybind11 does when an argument has the wrong type."""
    for arg, (value, expected) in args.items():
        if not isinstance(value, expected) or (isinstance(value, bool) and expected in (int, (int,))):
            raise TypeError(
                f"{fn}(): incompatible function arguments; argument {arg!r} must be {expected}, got {type(value)}"
            )


def make_tensorrt(api: ApiVersion, device: FakeDevice) -> types.ModuleType:  # noqa: C901  (one closure per API)
    """A fresh ``tensorrt`` module of API version ``api`` running on ``device``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = api.version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__file__ = f"<fake tensorrt {api.version}>"
    messages: list[tuple[str, str]] = []
    trt._messages = messages

    DataType = _enum("DataType", api.data_types)  # noqa: N806
    DataType.itemsize = property(
        lambda self: {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1}.get(
            self.name
        )
    )
    for alias, member in api.dtype_aliases.items():
        setattr(trt, alias, getattr(DataType, member))
    Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])  # noqa: N806
    BuilderFlag = _enum("BuilderFlag", api.builder_flags)  # noqa: N806
    NetworkFlag = _enum("NetworkDefinitionCreationFlag", api.network_flags)  # noqa: N806
    MemoryPoolType = _enum("MemoryPoolType", api.memory_pools)  # noqa: N806
    DeviceType = _enum("DeviceType", ["GPU", "DLA"])  # noqa: N806
    TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])  # noqa: N806
    LayerType = _enum("LayerType", api.layer_types)  # noqa: N806
    ErrorCode = _enum(  # noqa: N806
        "ErrorCode",
        ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED", "INVALID_VALUE", "INVALID_GRAPH",
         "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"],
    )  # fmt: skip
    enums = (DataType, BuilderFlag, NetworkFlag, MemoryPoolType, DeviceType, TensorIOMode, LayerType, ErrorCode)
    for enum_cls in enums:
        setattr(trt, enum_cls.__name__, enum_cls)
    version_major = int(api.version.split(".")[0])
    if version_major >= 10:
        trt.ExecutionContextAllocationStrategy = _enum(
            "ExecutionContextAllocationStrategy", ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"]
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Logger
    # ---------------------------------------------------------------------------------------------------------------
    class ILogger:
        pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        def __init__(self, min_severity: Any = Severity.WARNING) -> None:
            _check("Logger.__init__", min_severity=(min_severity, Severity))
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            _check("Logger.log", severity=(severity, Severity), msg=(msg, str))
            messages.append((severity.name, msg))
            if severity.value <= self.min_severity.value:
                print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)

    Logger.Severity = Severity
    for member, value in Severity.__members__.items():
        setattr(Logger, member, value)
    trt.ILogger, trt.Logger = ILogger, Logger

    def _log(logger: Any, severity: str, msg: str) -> None:
        logger.log(getattr(Severity, severity), msg)

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        _check("init_libnvinfer_plugins", logger=(logger, ILogger), namespace=(namespace, str))
        return True

    trt.init_libnvinfer_plugins = init_libnvinfer_plugins

    # ---------------------------------------------------------------------------------------------------------------
    # Network: tensors, layers, network definition
    # ---------------------------------------------------------------------------------------------------------------
    def _warn_weak_typing(what: str) -> None:
        if api.weak_typing_deprecated:
            warnings.warn(f"{what}: Deprecated in TensorRT 10.12. Superseded by strong typing.", DeprecationWarning, 3)

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self._name, self._shape, self._dtype = name, tuple(shape), dtype

        name = property(lambda self: self._name)
        shape = property(lambda self: self._shape)
        is_shape_tensor = property(lambda self: False)

        if api.weak_typing:

            def _set_dtype(self, dtype: Any) -> None:
                _check("ITensor.dtype", dtype=(dtype, DataType))
                _warn_weak_typing("ITensor.dtype")
                self._dtype = dtype

            dtype = property(lambda self: self._dtype, _set_dtype)
        else:
            dtype = property(lambda self: self._dtype)

    class ILayer:
        def __init__(self, network: Any, name: str, layer_type: Any, inputs: list, outputs: list) -> None:
            self._network, self._name, self._type = network, name, layer_type
            self._inputs, self._outputs = inputs, outputs
            self._precision: Any = None
            self._output_types: dict[int, Any] = {}

        def _set_name(self, name: str) -> None:
            _check("ILayer.name", name=(name, str))
            self._name = name

        name = property(lambda self: self._name, _set_name)
        type = property(lambda self: self._type)
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_input(self, index: int) -> Any:
            _check("ILayer.get_input", index=(index, int))
            return self._inputs[index] if 0 <= index < len(self._inputs) else None

        def get_output(self, index: int) -> Any:
            _check("ILayer.get_output", index=(index, int))
            return self._outputs[index] if 0 <= index < len(self._outputs) else None

        def get_output_type(self, index: int) -> Any:
            _check("ILayer.get_output_type", index=(index, int))
            if index in self._output_types:
                return self._output_types[index]
            out = self.get_output(index)
            return out.dtype if out is not None else DataType.FLOAT

        if api.weak_typing:

            def _rejected(self, what: str) -> bool:
                if self._network._strongly_typed:  # NvInfer.h: "Strongly-typed networks reject calls to ..."
                    _log(self._network._logger, "ERROR", f"{what} on layer {self._name}: not allowed in a strongly "
                         "typed network")  # fmt: skip
                    self._network._api_errors.append(what)
                    return True
                return False

            def _set_precision(self, dtype: Any) -> None:
                _check("ILayer.precision", dtype=(dtype, DataType))
                _warn_weak_typing("ILayer.precision")
                if not self._rejected("setPrecision"):
                    self._precision = dtype

            precision = property(lambda self: self._precision or DataType.FLOAT, _set_precision)
            precision_is_set = property(lambda self: self._precision is not None)

            def reset_precision(self) -> None:
                self._precision = None

            def set_output_type(self, index: int, dtype: Any) -> None:
                _check("ILayer.set_output_type", index=(index, int), dtype=(dtype, DataType))
                _warn_weak_typing("ILayer.set_output_type")
                if not 0 <= index < len(self._outputs):
                    _log(self._network._logger, "ERROR", f"setOutputType: index {index} out of range")
                elif not self._rejected("setOutputType"):
                    self._output_types[index] = dtype

            def output_type_is_set(self, index: int) -> bool:
                return index in self._output_types

            def reset_output_type(self, index: int) -> None:
                self._output_types.pop(index, None)

    class INetworkDefinition:
        def __init__(self, logger: Any, flags: int) -> None:
            self._logger, self._flags = logger, flags
            self._explicit_batch = version_major >= 10 or bool(flags & (1 << api.network_flags["EXPLICIT_BATCH"]))
            typed_bit = api.network_flags.get("STRONGLY_TYPED")
            self._strongly_typed = version_major >= 11 or (typed_bit is not None and bool(flags & (1 << typed_bit)))
            self._layers: list[Any] = []
            self._inputs: list[Any] = []
            self._outputs: list[Any] = []
            self._api_errors: list[str] = []
            self._model: Any = None
            self.name = "network"

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, index: int) -> Any:
            _check("INetworkDefinition.get_layer", index=(index, int))
            return self._layers[index] if 0 <= index < len(self._layers) else None

        def get_input(self, index: int) -> Any:
            _check("INetworkDefinition.get_input", index=(index, int))
            return self._inputs[index] if 0 <= index < len(self._inputs) else None

        def get_output(self, index: int) -> Any:
            _check("INetworkDefinition.get_output", index=(index, int))
            return self._outputs[index] if 0 <= index < len(self._outputs) else None

        def __len__(self) -> int:
            return len(self._layers)

        def __getitem__(self, index: int) -> Any:
            return self._layers[index]

        if version_major < 10:
            has_implicit_batch_dimension = property(lambda self: not self._explicit_batch)

    trt.ITensor, trt.ILayer, trt.INetworkDefinition = ITensor, ILayer, INetworkDefinition

    # ---------------------------------------------------------------------------------------------------------------
    # ONNX parser
    # ---------------------------------------------------------------------------------------------------------------
    class ParserError:
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

        if version_major >= 10:

            def node_name(self) -> str:
                return self._node_name

        def __str__(self) -> str:
            where = f"In node {self._node} with name: {self._node_name}" if self._node >= 0 else "In model"
            return f"{where} ({self.func()}): {self._code.name}: {self._desc}"

    def _dtype_of(elem_type: int) -> Any:
        name = _ONNX_TO_TRT.get(int(elem_type), "FLOAT")
        if name == "INT64" and not api.int64_io:
            name = "INT32"  # TensorRT 8.x has no INT64: the parser binds INT64 as INT32
        return getattr(DataType, name)

    def _shape_of(value_info: Any) -> tuple[int, ...]:
        return tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)

    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            _check("OnnxParser.__init__", network=(network, INetworkDefinition), logger=(logger, ILogger))
            self._network, self._logger = network, logger
            self._errors: list[Any] = []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index: int) -> Any:
            _check("OnnxParser.get_error", index=(index, int))
            return self._errors[index] if 0 <= index < len(self._errors) else None

        def clear_errors(self) -> None:
            self._errors.clear()

        def supports_operator(self, op_name: str) -> bool:
            _check("OnnxParser.supports_operator", op_name=(op_name, str))
            return op_name in _LAYER_OF_OP and op_name not in api.onnx_unsupported

        def _fail(self, code: str, desc: str, node: int = -1, node_name: str = "") -> bool:
            self._errors.append(ParserError(getattr(ErrorCode, code), desc, node, node_name))
            _log(self._logger, "ERROR", desc)
            return False

        def parse_from_file(self, model: str) -> bool:
            _check("OnnxParser.parse_from_file", model=(model, str))
            import onnx

            if not Path(model).is_file():
                return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to open file: {model}")
            try:
                proto = onnx.load(model)  # external data is read from beside the file, as the parser does
            except Exception as exc:  # noqa: BLE001  (any decode failure is a parse failure)
                return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to parse ONNX model from file: {model}: {exc}")
            return self._import(proto)

        def parse(self, model: Any, path: str | None = None) -> bool:
            _check("OnnxParser.parse", model=(model, (bytes, bytearray, memoryview)))
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
            inferred = onnx.shape_inference.infer_shapes(proto)
            graph = inferred.graph
            value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
            initializers = {i.name for i in graph.initializer}
            tensors: dict[str, Any] = {}
            for inp in graph.input:
                if inp.name not in initializers:
                    tensor = ITensor(inp.name, _shape_of(inp), _dtype_of(inp.type.tensor_type.elem_type))
                    net._inputs.append(tensor)
                    tensors[inp.name] = tensor
            names: set[str] = set()
            suffix = 0

            def unique(base: str) -> str:
                nonlocal suffix
                candidate = base
                while candidate in names:
                    candidate, suffix = f"{base}_{suffix}", suffix + 1
                names.add(candidate)
                return candidate

            for index, node in enumerate(graph.node):
                node_name = node.name or f"node_of_{node.output[0]}"
                if node.op_type == "Constant":  # onnx-tensorrt adds no layer for Constant nodes
                    continue
                if node.op_type in api.onnx_unsupported:
                    return self._fail(
                        "UNSUPPORTED_NODE",
                        f"No importer registered for op: {node.op_type}; could not find a plugin for node "
                        f"{node_name} (TensorRT {api.version})",
                        index,
                        node_name,
                    )
                layer_type = _LAYER_OF_OP.get(node.op_type)
                if node.op_type == "Cast":
                    layer_type = "CAST" if "CAST" in api.layer_types else "IDENTITY"
                if layer_type is None:
                    return self._fail(
                        "UNSUPPORTED_NODE",
                        f"fake_tensorrt maps no layer type for ONNX op {node.op_type} (node {node_name}); add it to "
                        "tests/fake_tensorrt/trt.py _LAYER_OF_OP",
                        index,
                        node_name,
                    )
                inputs = [tensors.get(i) for i in node.input if i and i not in initializers]
                outputs = []
                for out in node.output:
                    info = value_info.get(out)
                    elem = info.type.tensor_type.elem_type if info is not None else 1
                    tensor = ITensor(out, _shape_of(info) if info is not None else (), _dtype_of(elem))
                    tensors[out] = tensor
                    outputs.append(tensor)
                net._layers.append(ILayer(net, unique(node_name), getattr(LayerType, layer_type), inputs, outputs))
            for out in graph.output:
                net._outputs.append(tensors[out.name])
            net._model = proto
            return True

    trt.OnnxParser, trt.ParserError = OnnxParser, ParserError

    # ---------------------------------------------------------------------------------------------------------------
    # Builder, builder config, timing cache
    # ---------------------------------------------------------------------------------------------------------------
    class IHostMemory:
        def __init__(self, data: bytes) -> None:
            self._data = bytes(data)

        def __bytes__(self) -> bytes:
            return self._data

        nbytes = property(lambda self: len(self._data))
        dtype = property(lambda self: DataType.UINT8)

    class ITimingCache:
        def __init__(self, version: str, gpu: str, cc: str, entries: list[str]) -> None:
            self._version, self._gpu, self._cc, self._entries = version, gpu, cc, list(entries)

        def serialize(self) -> Any:
            body = {"tensorrt_version": self._version, "gpu": self._gpu, "cc": self._cc, "entries": self._entries}
            return IHostMemory(CACHE_MAGIC + json.dumps(body).encode())

        def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
            _check(
                "ITimingCache.combine",
                input_cache=(input_cache, ITimingCache),
                ignore_mismatch=(ignore_mismatch, bool),
            )
            if (input_cache._gpu, input_cache._cc) != (self._gpu, self._cc) and not ignore_mismatch:
                return False
            self._entries = sorted({*self._entries, *input_cache._entries})
            return True

        def reset(self) -> bool:
            self._entries = []
            return True

    class IBuilderConfig:
        def __init__(self, builder: Any) -> None:
            self._builder = builder
            self._flags = 1 << api.builder_flags["TF32"]  # TF32 is on by default
            self._pools: dict[str, int] = {}
            self._device_type = DeviceType.GPU
            self._dla_core = -1
            self._layer_devices: dict[int, Any] = {}
            self._cache: Any = None

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            _check("IBuilderConfig.set_memory_pool_limit", pool=(pool, MemoryPoolType), pool_size=(pool_size, int))
            self._pools[pool.name] = pool_size

        def get_memory_pool_limit(self, pool: Any) -> int:
            _check("IBuilderConfig.get_memory_pool_limit", pool=(pool, MemoryPoolType))
            return self._pools.get(pool.name, 0)

        def set_flag(self, flag: Any) -> None:
            _check("IBuilderConfig.set_flag", flag=(flag, BuilderFlag))
            self._flags |= 1 << flag.value

        def clear_flag(self, flag: Any) -> None:
            _check("IBuilderConfig.clear_flag", flag=(flag, BuilderFlag))
            self._flags &= ~(1 << flag.value)

        def get_flag(self, flag: Any) -> bool:
            _check("IBuilderConfig.get_flag", flag=(flag, BuilderFlag))
            return bool(self._flags & (1 << flag.value))

        def _set_flags(self, flags: int) -> None:
            _check("IBuilderConfig.flags", flags=(flags, int))
            self._flags = flags

        flags = property(lambda self: self._flags, _set_flags)

        def _set_device_type(self, device_type: Any) -> None:
            _check("IBuilderConfig.default_device_type", device_type=(device_type, DeviceType))
            self._device_type = device_type

        default_device_type = property(lambda self: self._device_type, _set_device_type)

        def _set_dla_core(self, core: int) -> None:
            _check("IBuilderConfig.DLA_core", core=(core, int))
            self._dla_core = core

        DLA_core = property(lambda self: self._dla_core, _set_dla_core)  # noqa: N815

        def set_device_type(self, layer: Any, device_type: Any) -> None:
            _check("IBuilderConfig.set_device_type", layer=(layer, ILayer), device_type=(device_type, DeviceType))
            self._layer_devices[id(layer)] = device_type

        def get_device_type(self, layer: Any) -> Any:
            _check("IBuilderConfig.get_device_type", layer=(layer, ILayer))
            return self._layer_devices.get(id(layer), self._device_type)

        def is_device_type_set(self, layer: Any) -> bool:
            return id(layer) in self._layer_devices

        def reset_device_type(self, layer: Any) -> None:
            self._layer_devices.pop(id(layer), None)

        def can_run_on_DLA(self, layer: Any) -> bool:  # noqa: N802
            _check("IBuilderConfig.can_run_on_DLA", layer=(layer, ILayer))
            return layer.type.name in _DLA_TYPES

        def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
            _check(
                "IBuilderConfig.create_timing_cache",
                serialized_timing_cache=(serialized_timing_cache, (bytes, bytearray, memoryview)),
            )
            data = bytes(serialized_timing_cache)
            if not data:
                return ITimingCache(api.version, device.name, device.cc, [])
            body = json.loads(data[len(CACHE_MAGIC) :]) if data.startswith(CACHE_MAGIC) else None
            if body is None or body.get("tensorrt_version") != api.version:
                # TensorRT logs "Serialization assertion ... Magic tag does not match" and "The timing cache will not
                # be used!" (NVIDIA/TensorRT#3566); what it returns is not documented: modelled as None here.
                _log(self._builder._logger, "ERROR", "Serialization (timing cache: magic tag or version mismatch)")
                _log(self._builder._logger, "ERROR", "The timing cache will not be used!")
                return None
            return ITimingCache(body["tensorrt_version"], body["gpu"], body["cc"], body["entries"])

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            _check(
                "IBuilderConfig.set_timing_cache",
                cache=(cache, ITimingCache),
                ignore_mismatch=(ignore_mismatch, bool),
            )
            if (cache._gpu, cache._cc) != (device.name, device.cc) and not ignore_mismatch:
                # NvInfer.h: "A failure will be reported if the CUDA device property in the provided cache is
                # different from current environment"; returns false
                _log(self._builder._logger, "ERROR", f"timing cache was created on {cache._gpu} (compute "
                     f"{cache._cc}), this device is {device.name} (compute {device.cc})")  # fmt: skip
                return False
            self._cache = cache
            return True

        def get_timing_cache(self) -> Any:
            return self._cache

        if version_major < 10:

            def _set_workspace(self, size: int) -> None:
                warnings.warn("max_workspace_size is deprecated; use set_memory_pool_limit", DeprecationWarning, 2)
                self._pools["WORKSPACE"] = size

            max_workspace_size = property(lambda self: self._pools.get("WORKSPACE", 0), _set_workspace)

        if api.calibrators:
            int8_calibrator = None

    class Builder:
        def __init__(self, logger: Any) -> None:
            _check("Builder.__init__", logger=(logger, ILogger))
            self._logger = logger

        num_DLA_cores = property(lambda self: device.dla_cores)  # noqa: N815
        max_DLA_batch_size = property(lambda self: 32 if device.dla_cores else 1)  # noqa: N815

        if api.weak_typing:
            platform_has_fast_fp16 = property(lambda self: True)
            platform_has_fast_int8 = property(lambda self: True)

        def create_network(self, flags: int = 0) -> Any:
            _check("Builder.create_network", flags=(flags, int))
            if flags >> (max(api.network_flags.values()) + 1):
                _log(self._logger, "ERROR", f"createNetworkV2: invalid flags {flags:#x}")
                return None
            return INetworkDefinition(self._logger, flags)

        def create_builder_config(self) -> Any:
            return IBuilderConfig(self)

        def build_serialized_network(self, network: Any, config: Any) -> Any:
            _check(
                "Builder.build_serialized_network",
                network=(network, INetworkDefinition),
                config=(config, IBuilderConfig),
            )
            plan = _build(self._logger, network, config)
            return None if plan is None else IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

    trt.Builder, trt.IBuilderConfig = Builder, IBuilderConfig
    trt.ITimingCache, trt.IHostMemory = ITimingCache, IHostMemory

    def _flag_names(flags: int) -> list[str]:
        return sorted({name for name, value in api.builder_flags.items() if flags & (1 << value)})

    def _build(logger: Any, network: Any, config: Any) -> dict[str, Any] | None:
        def error(msg: str) -> None:
            _log(logger, "ERROR", msg)

        if network._model is None or not network._outputs:
            return error("Network must have at least one output")
        if network._api_errors:
            return error(f"network has API usage errors: {network._api_errors}")
        flags = _flag_names(config._flags)
        if network._strongly_typed:
            bad = sorted(set(flags) & (PRECISION_FLAGS | CONSTRAINT_FLAGS))
            if bad:
                return error(f"BuilderFlag {', '.join(bad)} is not allowed with a strongly typed network")
        on_dla = config._device_type == DeviceType.DLA
        if on_dla and not 0 <= config._dla_core < device.dla_cores:
            # the library's words are not public; these are trtexec's (sampleEngines.cpp, release/10.3)
            return error(f"Cannot create DLA engine, {config._dla_core} not available ({device.dla_cores} DLA cores)")
        obey = "OBEY_PRECISION_CONSTRAINTS" in flags or "STRICT_TYPES" in flags
        honour = obey or "PREFER_PRECISION_CONSTRAINTS" in flags
        fp16, int8 = "FP16" in flags, "INT8" in flags
        has_qdq = any(layer.type.name in ("QUANTIZE", "DEQUANTIZE") for layer in network._layers)
        layers = []
        for layer in network._layers:
            out_types = [layer.get_output_type(i).name for i in range(layer.num_outputs)]
            pinned = getattr(layer, "_precision", None)
            if network._strongly_typed:
                runs_in = out_types[0] if out_types else "FLOAT"
            elif layer.type.name in ("QUANTIZE", "DEQUANTIZE"):
                runs_in = "INT8"
            elif pinned is not None and honour:
                runs_in = pinned.name
            elif out_types and out_types[0] not in _FLOAT_TYPES:
                runs_in = out_types[0]
            else:  # a precision without OBEY/PREFER is a hint the builder may ignore (NvInfer.h ILayer::setPrecision)
                runs_in = "HALF" if fp16 else "FLOAT"
            wanted = config._layer_devices.get(id(layer), config._device_type)
            dla_ok = layer.type.name in _DLA_TYPES and not has_qdq and runs_in in ("HALF", "INT8") and (fp16 or int8)
            where = "DLA" if wanted == DeviceType.DLA and dla_ok else "GPU"
            fallback = bool(config._flags & (1 << api.builder_flags["GPU_FALLBACK"]))
            if wanted == DeviceType.DLA and where == "GPU" and not fallback:
                return error(f"{layer.name} [{layer.type.name}] cannot run on DLA ({runs_in}) and GPU fallback is off")
            layers.append({
                "name": layer.name, "type": layer.type.name, "precision": None if pinned is None else pinned.name,
                "output_types": out_types, "output_types_set": sorted(getattr(layer, "_output_types", {})),
                "device": where, "runs_in": runs_in,
            })  # fmt: skip
        if config._cache is not None:
            config._cache._entries = sorted({*config._cache._entries, *(f"{x['type']}:{x['runs_in']}" for x in layers)})
        return {
            "tensorrt_version": api.version,
            "gpu": device.name,
            "compute_capability": device.cc,
            "strongly_typed": network._strongly_typed,
            "network_flags": network._flags,
            "builder_flags": flags,
            "memory_pools": dict(config._pools),
            "default_device_type": config._device_type.name,
            "dla_core": config._dla_core if on_dla else None,
            "timing_cache": config._cache is not None,
            "layers": layers,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._outputs],
            "onnx": base64.b64encode(network._model.SerializeToString()).decode(),
        }

    # ---------------------------------------------------------------------------------------------------------------
    # Runtime, engine, execution context
    # ---------------------------------------------------------------------------------------------------------------
    class IExecutionContext:
        def __init__(self, engine: Any) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            _check("IExecutionContext.set_input_shape", name=(name, str), shape=(shape, (tuple, list)))
            io = self._engine._io.get(name)
            if io is None or io["mode"] != "INPUT":
                _log(self._engine._logger, "ERROR", f"setInputShape: {name} is not an input tensor")
                return False
            built = tuple(io["shape"])
            if len(shape) != len(built) or any(b >= 0 and b != int(s) for b, s in zip(built, shape, strict=True)):
                _log(self._engine._logger, "ERROR", f"setInputShape: {name} {list(shape)} outside the profile {built}")
                return False
            self._shapes[name] = tuple(int(s) for s in shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _check("IExecutionContext.get_tensor_shape", name=(name, str))
            io = self._engine._io.get(name)
            if io is None:
                _log(self._engine._logger, "ERROR", f"getTensorShape: no tensor named {name}")
                return ()
            return self._shapes.get(name, tuple(io["shape"]))

        def set_tensor_address(self, name: str, memory: int) -> bool:
            _check("IExecutionContext.set_tensor_address", name=(name, str), memory=(memory, int))
            if name not in self._engine._io:
                _log(self._engine._logger, "ERROR", f"setTensorAddress: no tensor named {name}")
                return False
            self._addresses[name] = memory
            return True

        def get_tensor_address(self, name: str) -> int:
            return self._addresses.get(name, 0)

        def execute_async_v3(self, stream_handle: int) -> bool:
            _check("IExecutionContext.execute_async_v3", stream_handle=(stream_handle, int))
            engine, logger = self._engine, self._engine._logger
            if stream_handle not in device.streams:
                _log(logger, "ERROR", f"enqueueV3: invalid stream handle {stream_handle:#x}")
                return False
            missing = [n for n in engine._io if n not in self._addresses]
            if missing:
                _log(logger, "ERROR", f"enqueueV3: tensor addresses not set for {missing}")
                return False
            feeds = {}
            for name, io in engine._io.items():
                if io["mode"] == "INPUT":
                    shape = self._shapes.get(name, tuple(io["shape"]))
                    data = device.view(self._addresses[name], shape, _TRT_TO_NUMPY[io["dtype"]])
                    feeds[name] = data.astype(engine._onnx_dtypes[name])
            results = engine._session().run(None, feeds)
            for name, value in zip(engine._output_names, results, strict=True):
                io = engine._io[name]
                target = device.view(self._addresses[name], np.shape(value), _TRT_TO_NUMPY[io["dtype"]])
                target[...] = np.asarray(value).astype(target.dtype)
            engine._executions += 1
            return True

    class ICudaEngine:
        def __init__(self, plan: dict[str, Any], logger: Any, dla_core: int | None) -> None:
            import onnx

            self._plan, self._logger, self._dla_core = plan, logger, dla_core
            self._io = {t["name"]: {**t, "mode": "INPUT"} for t in plan["inputs"]}
            self._io.update({t["name"]: {**t, "mode": "OUTPUT"} for t in plan["outputs"]})
            self._output_names = [t["name"] for t in plan["outputs"]]
            self._onnx = base64.b64decode(plan["onnx"])
            model = onnx.load_from_string(self._onnx)
            self._onnx_dtypes = {
                i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input
            }
            self._ort: Any = None
            self._executions = 0

        def _session(self) -> Any:
            if self._ort is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = 1
                self._ort = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
            return self._ort

        num_io_tensors = property(lambda self: len(self._io))
        num_layers = property(lambda self: len(self._plan["layers"]))
        name = property(lambda self: "network")

        def get_tensor_name(self, index: int) -> str | None:
            _check("ICudaEngine.get_tensor_name", index=(index, int))
            names = list(self._io)
            return names[index] if 0 <= index < len(names) else None

        def _tensor(self, fn: str, name: str) -> dict[str, Any] | None:
            _check(f"ICudaEngine.{fn}", name=(name, str))
            io = self._io.get(name)
            if io is None:
                _log(self._logger, "ERROR", f"{fn}: no tensor named {name}")
            return io

        def get_tensor_mode(self, name: str) -> Any:
            io = self._tensor("get_tensor_mode", name)
            return TensorIOMode.NONE if io is None else getattr(TensorIOMode, io["mode"])

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            io = self._tensor("get_tensor_shape", name)
            return () if io is None else tuple(io["shape"])

        def get_tensor_dtype(self, name: str) -> Any:
            io = self._tensor("get_tensor_dtype", name)
            return DataType.FLOAT if io is None else getattr(DataType, io["dtype"])

        def serialize(self) -> Any:
            return IHostMemory(PLAN_MAGIC + json.dumps(self._plan).encode())

        if version_major >= 10:

            def create_execution_context(self, strategy: Any = None) -> Any:
                return IExecutionContext(self)
        else:

            def create_execution_context(self) -> Any:
                return IExecutionContext(self)

        if api.binding_api:
            num_bindings = property(lambda self: len(self._io))

            def get_binding_name(self, index: int) -> str | None:
                warnings.warn("get_binding_name is deprecated; use get_tensor_name", DeprecationWarning, 2)
                return self.get_tensor_name(index)

            def binding_is_input(self, index: int) -> bool:
                warnings.warn("binding_is_input is deprecated; use get_tensor_mode", DeprecationWarning, 2)
                return self._io[self.get_tensor_name(index)]["mode"] == "INPUT"

    class Runtime:
        def __init__(self, logger: Any) -> None:
            _check("Runtime.__init__", logger=(logger, ILogger))
            self._logger = logger
            self._dla_core = -1

        num_DLA_cores = property(lambda self: device.dla_cores)  # noqa: N815

        def _set_dla_core(self, core: int) -> None:
            _check("Runtime.DLA_core", core=(core, int))
            if device.dla_cores == 0:
                return  # NvInferRuntime.h: "if getNbDLACores() returns 0, then this function does nothing"
            self._dla_core = core

        DLA_core = property(lambda self: self._dla_core, _set_dla_core)  # noqa: N815

        def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
            _check(
                "Runtime.deserialize_cuda_engine",
                serialized_engine=(serialized_engine, (bytes, bytearray, memoryview)),
            )
            try:
                plan = plan_of(bytes(serialized_engine))
            except ValueError:
                _log(self._logger, "ERROR", "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            if plan["tensorrt_version"] != api.version:
                built = plan["tensorrt_version"]
                _log(self._logger, "ERROR", f"The engine plan file is not compatible with this version of TensorRT, "
                     f"expecting library version {api.version} got {built}, please rebuild.")  # fmt: skip
                return None
            if plan["compute_capability"] != device.cc:
                _log(self._logger, "ERROR", f"The engine plan file is generated on an incompatible device, expecting "
                     f"compute {device.cc} got compute {plan['compute_capability']}, please rebuild.")  # fmt: skip
                return None
            dla_core = None
            if any(layer["device"] == "DLA" for layer in plan["layers"]):
                # Without Runtime.DLA_core the engine runs on DLA core 0, whatever it was built for
                # (microsoft/onnxruntime#26680, jkjung-avt/tensorrt_demos#463)
                dla_core = self._dla_core if self._dla_core >= 0 else 0
                if dla_core >= device.dla_cores:
                    _log(self._logger, "ERROR", f"DLA core {dla_core} not available")
                    return None
            return ICudaEngine(plan, self._logger, dla_core)

    trt.Runtime, trt.ICudaEngine, trt.IExecutionContext = Runtime, ICudaEngine, IExecutionContext

    # ---------------------------------------------------------------------------------------------------------------
    # Calibrators (8.x–10.x), module functions
    # ---------------------------------------------------------------------------------------------------------------
    if api.calibrators:

        class IInt8Calibrator:
            pass

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            pass

        trt.IInt8Calibrator, trt.IInt8EntropyCalibrator2 = IInt8Calibrator, IInt8EntropyCalibrator2
        trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
        trt.CalibrationAlgoType = _enum(
            "CalibrationAlgoType", ["LEGACY_CALIBRATION", "ENTROPY_CALIBRATION", "ENTROPY_CALIBRATION_2",
                                    "MINMAX_CALIBRATION"]
        )  # fmt: skip

    def nptype(trt_type: Any) -> Any:
        """The wheel's own ``tensorrt.nptype`` (the mapping is built on every call, as in ``__init__.py``)."""
        numpy = _Numpy124() if api.nptype_uses_np_bool else np
        mapping = {
            trt.float32: numpy.float32,
            trt.float16: numpy.float16,
            trt.int8: numpy.int8,
            trt.int32: numpy.int32,
            getattr(trt, "bool"): numpy.bool if api.nptype_uses_np_bool else numpy.bool_,  # noqa: B009
            trt.uint8: numpy.uint8,
        }
        if api.int64_io:
            mapping[trt.int64] = numpy.int64
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    def volume(iterable: Iterable[int]) -> int:
        vol = 1
        for elem in iterable:
            vol *= elem
        return vol

    trt.nptype, trt.volume = nptype, volume
    return trt
