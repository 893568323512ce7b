"""The fake TensorRT runtime: ``Runtime``, ``ICudaEngine`` and ``IExecutionContext``, which run the plan's ONNX.

Usage: ``Runtime.deserialize_cuda_engine`` refuses a plan of another TensorRT version or GPU (returns None and logs, as
TensorRT does); an engine's ``IExecutionContext.execute_async_v3`` reads its inputs from the fake device memory at the
addresses set with ``set_tensor_address``, runs the ONNX with ONNX Runtime and writes the outputs back, so the
runtime's outputs are real numbers.
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import numpy as np

from .builder import PLAN_MAGIC, plan_of
from .library import Library
from .pybind import check_args

TRT_TO_NUMPY = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}  # fmt: skip


class ExecutionContext:
    """``IExecutionContext``: input shapes and tensor addresses of one engine, and its execution."""

    _lib: Library

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        check_args("IExecutionContext.set_input_shape", name=(name, str), shape=(shape, (tuple, list)))
        io, log = self._engine._io.get(name), self._lib.log
        if io is None or io["mode"] != "INPUT":
            log(self._engine._logger, "ERROR", f"setInputShape: {name} is not an input tensor")
            return False
        built = tuple(io["shape"])
        if len(shape) != len(built) or any(b >= 0 and b != int(s) for b, s in zip(built, shape, strict=True)):
            log(self._engine._logger, "ERROR", f"setInputShape: {name} {list(shape)} outside the profile {built}")
            return False
        self._shapes[name] = tuple(int(s) for s in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        check_args("IExecutionContext.get_tensor_shape", name=(name, str))
        io = self._engine._io.get(name)
        if io is None:
            self._lib.log(self._engine._logger, "ERROR", f"getTensorShape: no tensor named {name}")
            return ()
        return self._shapes.get(name, tuple(io["shape"]))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        check_args("IExecutionContext.set_tensor_address", name=(name, str), memory=(memory, int))
        if name not in self._engine._io:
            self._lib.log(self._engine._logger, "ERROR", f"setTensorAddress: no tensor named {name}")
            return False
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        check_args("IExecutionContext.execute_async_v3", stream_handle=(stream_handle, int))
        engine, logger, device = self._engine, self._engine._logger, self._lib.device
        if stream_handle not in device.streams:
            self._lib.log(logger, "ERROR", f"enqueueV3: invalid stream handle {stream_handle:#x}")
            return False
        missing = [n for n in engine._io if n not in self._addresses]
        if missing:
            self._lib.log(logger, "ERROR", f"enqueueV3: tensor addresses not set for {missing}")
            return False
        feeds = {}
        for name, io in engine._io.items():
            if io["mode"] == "INPUT":
                shape = self._shapes.get(name, tuple(io["shape"]))
                data = device.view(self._addresses[name], shape, TRT_TO_NUMPY[io["dtype"]])
                feeds[name] = data.astype(engine._onnx_dtypes[name])
        results = engine._session().run(None, feeds)
        for name, value in zip(engine._output_names, results, strict=True):
            io = engine._io[name]
            target = device.view(self._addresses[name], np.shape(value), TRT_TO_NUMPY[io["dtype"]])
            target[...] = np.asarray(value).astype(target.dtype)
        engine._executions += 1
        return True


class CudaEngine:
    """``ICudaEngine``: a deserialized plan's I/O tensors and its ONNX (run with ONNX Runtime on the CPU)."""

    _lib: Library

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
        check_args("ICudaEngine.get_tensor_name", index=(index, int))
        names = list(self._io)
        return names[index] if 0 <= index < len(names) else None

    def _tensor(self, fn: str, name: str) -> dict[str, Any] | None:
        check_args(f"ICudaEngine.{fn}", name=(name, str))
        io = self._io.get(name)
        if io is None:
            self._lib.log(self._logger, "ERROR", f"{fn}: no tensor named {name}")
        return io

    def get_tensor_mode(self, name: str) -> Any:
        io = self._tensor("get_tensor_mode", name)
        modes = self._lib.TensorIOMode
        return modes.NONE if io is None else getattr(modes, io["mode"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        io = self._tensor("get_tensor_shape", name)
        return () if io is None else tuple(io["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        io = self._tensor("get_tensor_dtype", name)
        return self._lib.DataType.FLOAT if io is None else getattr(self._lib.DataType, io["dtype"])

    def serialize(self) -> Any:
        return self._lib.IHostMemory(PLAN_MAGIC + json.dumps(self._plan).encode())


class ContextWithStrategy:
    """``ICudaEngine.create_execution_context(strategy)`` (10.x on)."""

    def create_execution_context(self, strategy: Any = None) -> Any:
        return self._lib.IExecutionContext(self)


class ContextWithoutStrategy:
    """``ICudaEngine.create_execution_context()`` (8.x)."""

    def create_execution_context(self) -> Any:
        return self._lib.IExecutionContext(self)


class BindingApi:
    """``ICudaEngine``'s binding API (deprecated; 8.x)."""

    num_bindings = property(lambda self: len(self._io))

    def get_binding_name(self, index: int) -> str | None:
        warnings.warn("get_binding_name is deprecated; use get_tensor_name", DeprecationWarning, 2)
        return self.get_tensor_name(index)

    def binding_is_input(self, index: int) -> bool:
        warnings.warn("binding_is_input is deprecated; use get_tensor_mode", DeprecationWarning, 2)
        return self._io[self.get_tensor_name(index)]["mode"] == "INPUT"


class EngineRuntime:
    """``Runtime``: deserializes plans of its own TensorRT version and GPU."""

    _lib: Library

    def __init__(self, logger: Any) -> None:
        check_args("Runtime.__init__", logger=(logger, self._lib.ILogger))
        self._logger = logger
        self._dla_core = -1

    num_DLA_cores = property(lambda self: self._lib.device.dla_cores)  # noqa: N815

    def _set_dla_core(self, core: int) -> None:
        check_args("Runtime.DLA_core", core=(core, int))
        if self._lib.device.dla_cores == 0:
            return  # NvInferRuntime.h: "if getNbDLACores() returns 0, then this function does nothing"
        self._dla_core = core

    DLA_core = property(lambda self: self._dla_core, _set_dla_core)  # noqa: N815

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        check_args(
            "Runtime.deserialize_cuda_engine",
            serialized_engine=(serialized_engine, (bytes, bytearray, memoryview)),
        )
        lib, device = self._lib, self._lib.device
        try:
            plan = plan_of(bytes(serialized_engine))
        except ValueError:
            lib.log(self._logger, "ERROR", "Serialization assertion magicTagRead == kMAGIC_TAG failed")
            return None
        if plan["tensorrt_version"] != lib.api.version:
            built = plan["tensorrt_version"]
            lib.log(self._logger, "ERROR", f"The engine plan file is not compatible with this version of TensorRT, "
                    f"expecting library version {lib.api.version} got {built}, please rebuild.")  # fmt: skip
            return None
        if plan["compute_capability"] != device.cc:
            lib.log(self._logger, "ERROR", f"The engine plan file is generated on an incompatible device, expecting "
                    f"compute {device.cc} got compute {plan['compute_capability']}, please rebuild.")  # fmt: skip
            return None
        dla_core = None
        if any(layer["device"] == "DLA" for layer in plan["layers"]):
            # Without Runtime.DLA_core the engine runs on DLA core 0, whatever it was built for
            # (microsoft/onnxruntime#26680, jkjung-avt/tensorrt_demos#463)
            dla_core = self._dla_core if self._dla_core >= 0 else 0
            if dla_core >= device.dla_cores:
                lib.log(self._logger, "ERROR", f"DLA core {dla_core} not available")
                return None
        return lib.ICudaEngine(plan, self._logger, dla_core)


def engine_classes(lib: Library) -> dict[str, type]:
    """``IExecutionContext``, ``ICudaEngine`` and ``Runtime`` of ``lib``'s version."""
    context = ContextWithStrategy if lib.major >= 10 else ContextWithoutStrategy
    return {
        "IExecutionContext": lib.subclass("IExecutionContext", ExecutionContext),
        "ICudaEngine": lib.subclass("ICudaEngine", CudaEngine, (True, context), (lib.api.binding_api, BindingApi)),
        "Runtime": lib.subclass("Runtime", EngineRuntime),
    }
