"""The fake TensorRT network: ``Logger``, ``ITensor``, ``ILayer`` and ``INetworkDefinition``.

Usage: :func:`tests.fake_tensorrt.trt.make_tensorrt` makes each class of a version with :meth:`Library.subclass`:
``Tensor`` / ``Layer`` plus the weak-typing members (``ITensor.dtype`` setter, ``ILayer.precision``,
``set_output_type`` ...) where the version has them (8.5 to 10.x; warning from 10.12; gone in 11), and
``has_implicit_batch_dimension`` before 10.x.
"""

from __future__ import annotations

import sys
from typing import Any

from .library import Library
from .pybind import check_args


def make_logger(lib: Library) -> tuple[type, type]:
    """``(ILogger, Logger)`` of a module: the logger keeps every message in ``lib.messages`` and prints those at or
    above its minimum severity."""
    severity_enum = lib.Severity

    class ILogger:
        pass

    ILogger.Severity = severity_enum

    class Logger(ILogger):
        def __init__(self, min_severity: Any = severity_enum.WARNING) -> None:
            check_args("Logger.__init__", min_severity=(min_severity, severity_enum))
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            check_args("Logger.log", severity=(severity, severity_enum), msg=(msg, str))
            lib.messages.append((severity.name, msg))
            if severity.value <= self.min_severity.value:
                print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)

    Logger.Severity = severity_enum
    for member, value in severity_enum.__members__.items():
        setattr(Logger, member, value)
    return ILogger, Logger


class Tensor:
    """``ITensor``: a network tensor's name, shape and type."""

    _lib: Library

    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype = name, tuple(shape), dtype

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    is_shape_tensor = property(lambda self: False)
    dtype = property(lambda self: self._dtype)


class SettableTensorType:
    """``ITensor.dtype`` with its setter (weak typing)."""

    def _set_dtype(self, dtype: Any) -> None:
        check_args("ITensor.dtype", dtype=(dtype, self._lib.DataType))
        self._lib.warn_weak_typing("ITensor.dtype")
        self._dtype = dtype

    dtype = property(lambda self: self._dtype, _set_dtype)


class Layer:
    """``ILayer``: one layer of the network, named after its ONNX node."""

    _lib: Library

    def __init__(self, network: Any, name: str, layer_type: Any, inputs: list, outputs: list) -> None:
        self._network, self._name, self._type = network, name, layer_type
        self._inputs, self._outputs = inputs, outputs
        self._precision: Any = None
        self._output_types: dict[int, Any] = {}

    def _set_name(self, name: str) -> None:
        check_args("ILayer.name", name=(name, str))
        self._name = name

    name = property(lambda self: self._name, _set_name)
    type = property(lambda self: self._type)
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> Any:
        check_args("ILayer.get_input", index=(index, int))
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Any:
        check_args("ILayer.get_output", index=(index, int))
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def get_output_type(self, index: int) -> Any:
        check_args("ILayer.get_output_type", index=(index, int))
        if index in self._output_types:
            return self._output_types[index]
        out = self.get_output(index)
        return out.dtype if out is not None else self._lib.DataType.FLOAT


class LayerPrecision:
    """``ILayer``'s weak-typing members: a layer's precision and output types (refused in a strongly typed network)."""

    def _rejected(self, what: str) -> bool:
        if self._network._strongly_typed:  # NvInfer.h: "Strongly-typed networks reject calls to ..."
            msg = f"{what} on layer {self._name}: not allowed in a strongly typed network"
            self._lib.log(self._network._logger, "ERROR", msg)
            self._network._api_errors.append(what)
            return True
        return False

    def _set_precision(self, dtype: Any) -> None:
        check_args("ILayer.precision", dtype=(dtype, self._lib.DataType))
        self._lib.warn_weak_typing("ILayer.precision")
        if not self._rejected("setPrecision"):
            self._precision = dtype

    precision = property(lambda self: self._precision or self._lib.DataType.FLOAT, _set_precision)
    precision_is_set = property(lambda self: self._precision is not None)

    def reset_precision(self) -> None:
        self._precision = None

    def set_output_type(self, index: int, dtype: Any) -> None:
        check_args("ILayer.set_output_type", index=(index, int), dtype=(dtype, self._lib.DataType))
        self._lib.warn_weak_typing("ILayer.set_output_type")
        if not 0 <= index < len(self._outputs):
            self._lib.log(self._network._logger, "ERROR", f"setOutputType: index {index} out of range")
        elif not self._rejected("setOutputType"):
            self._output_types[index] = dtype

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types

    def reset_output_type(self, index: int) -> None:
        self._output_types.pop(index, None)


class NetworkDefinition:
    """``INetworkDefinition``: what the ONNX parser filled in, explicit batch and strongly typed per its flags."""

    _lib: Library

    def __init__(self, logger: Any, flags: int) -> None:
        api, major = self._lib.api, self._lib.major
        self._logger, self._flags = logger, flags
        self._explicit_batch = major >= 10 or bool(flags & (1 << api.network_flags["EXPLICIT_BATCH"]))
        typed_bit = api.network_flags.get("STRONGLY_TYPED")
        self._strongly_typed = major >= 11 or (typed_bit is not None and bool(flags & (1 << typed_bit)))
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
        check_args("INetworkDefinition.get_layer", index=(index, int))
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def get_input(self, index: int) -> Any:
        check_args("INetworkDefinition.get_input", index=(index, int))
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Any:
        check_args("INetworkDefinition.get_output", index=(index, int))
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index: int) -> Any:
        return self._layers[index]


class ImplicitBatchQuery:
    """``INetworkDefinition.has_implicit_batch_dimension`` (before 10.x)."""

    has_implicit_batch_dimension = property(lambda self: not self._explicit_batch)


def network_classes(lib: Library) -> dict[str, type]:
    """``ITensor``, ``ILayer`` and ``INetworkDefinition`` of ``lib``'s version."""
    weak = lib.api.weak_typing
    return {
        "ITensor": lib.subclass("ITensor", Tensor, (weak, SettableTensorType)),
        "ILayer": lib.subclass("ILayer", Layer, (weak, LayerPrecision)),
        "INetworkDefinition": lib.subclass(
            "INetworkDefinition", NetworkDefinition, (lib.major < 10, ImplicitBatchQuery)
        ),
    }
