"""A fake ``tensorrt`` module for one API version: the names and signatures that version has, and none it lacks.

Usage: ``trt = make_tensorrt(VERSIONS["8.5"], FakeDevice("Xavier", (7, 2), dla_cores=2))``.

Behaviour, so that the project's builder and runtime run end to end on a CPU:

- ``OnnxParser`` (:mod:`.onnx_parser`) reads the ONNX with the ``onnx`` package and adds one layer per node to the
  network (:mod:`.network`), named and typed the way onnx-tensorrt does.
- ``Builder.build_serialized_network`` (:mod:`.builder`) checks what TensorRT checks and returns a plan that encodes
  what was configured; ``plan_of(engine_bytes)`` reads it back for tests.
- ``Runtime.deserialize_cuda_engine`` (:mod:`.engine`) refuses a plan of another TensorRT version or GPU; an engine's
  execution context runs the ONNX with ONNX Runtime over the fake device memory.
- Every message goes through the ``Logger`` and is also kept in ``trt._messages`` as ``(severity, text)``.

Each class is made per module from a base class plus the members its version has (:meth:`Library.subclass`).
Arguments are type-checked the way pybind11 checks them (a wrong type raises TypeError) and keyword names are the
bindings' own. API facts and their sources: :mod:`tests.fake_tensorrt.api`.
"""

from __future__ import annotations

import importlib.machinery
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .api import ApiVersion
from .builder import builder_classes
from .cuda import FakeDevice
from .engine import engine_classes
from .library import Library
from .network import make_logger, network_classes
from .onnx_parser import parser_classes
from .pybind import check_args, make_enum


class _Numpy124:
    """numpy as pip installs it on JetPack 5's Python 3.8 (1.24.4), where the ``np.bool`` alias is gone."""

    def __getattr__(self, name: str) -> Any:
        if name == "bool":
            raise AttributeError(
                "module 'numpy' has no attribute 'bool'.\n`np.bool` was a deprecated alias for the builtin `bool`. "
                "To avoid this error in existing code, use `bool` by itself."
            )
        return getattr(np, name)


def make_tensorrt(api: ApiVersion, device: FakeDevice) -> types.ModuleType:
    """A fresh ``tensorrt`` module of API version ``api`` running on ``device``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = api.version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__file__ = f"<fake tensorrt {api.version}>"
    lib = Library(api, device)
    trt._messages = lib.messages
    for alias, member in api.dtype_aliases.items():
        setattr(trt, alias, getattr(lib.DataType, member))
    for enum_cls in lib.enums():
        setattr(trt, enum_cls.__name__, enum_cls)
    if lib.major >= 10:
        trt.ExecutionContextAllocationStrategy = make_enum(
            "ExecutionContextAllocationStrategy", ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"]
        )
    lib.ILogger, trt.Logger = make_logger(lib)
    trt.ILogger = lib.ILogger
    trt.init_libnvinfer_plugins = _init_libnvinfer_plugins(lib)
    for classes in (network_classes(lib), parser_classes(lib), builder_classes(lib), engine_classes(lib)):
        for name, cls in classes.items():
            setattr(lib, name, cls)
            setattr(trt, name, cls)
    if api.calibrators:
        _add_calibrators(trt)
    trt.nptype, trt.volume = _nptype(trt, api), volume
    return trt


def _init_libnvinfer_plugins(lib: Library) -> Callable[[Any, str], bool]:
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        check_args("init_libnvinfer_plugins", logger=(logger, lib.ILogger), namespace=(namespace, str))
        return True

    return init_libnvinfer_plugins


def _add_calibrators(trt: types.ModuleType) -> None:
    """The INT8 calibrator classes and ``CalibrationAlgoType`` (8.x–10.x; gone in 11)."""

    class IInt8Calibrator:
        pass

    class IInt8EntropyCalibrator2(IInt8Calibrator):
        pass

    class IInt8MinMaxCalibrator(IInt8Calibrator):
        pass

    trt.IInt8Calibrator, trt.IInt8EntropyCalibrator2 = IInt8Calibrator, IInt8EntropyCalibrator2
    trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    trt.CalibrationAlgoType = make_enum(
        "CalibrationAlgoType", ["LEGACY_CALIBRATION", "ENTROPY_CALIBRATION", "ENTROPY_CALIBRATION_2",
                                "MINMAX_CALIBRATION"]
    )  # fmt: skip


def _nptype(trt: types.ModuleType, api: ApiVersion) -> Callable[[Any], Any]:
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

    return nptype


def volume(iterable: Iterable[int]) -> int:
    """``tensorrt.volume``: the product of the dimensions."""
    vol = 1
    for elem in iterable:
        vol *= elem
    return vol
