"""What the classes of one fake ``tensorrt`` module share: its API version, the fake GPU, the log and the enums.

Usage: ``lib = Library(VERSIONS["10.3"], FakeDevice())``, then ``lib.subclass("ILayer", Layer, (weak, WeaklyTyped))``
for each class of the module. :func:`tests.fake_tensorrt.trt.make_tensorrt` records each class it makes on ``lib``
(``lib.ILayer`` ...), so that every class type-checks its arguments against the classes of its own module, as the
bindings of one TensorRT install do.
"""

from __future__ import annotations

import warnings
from typing import Any

from .api import ApiVersion
from .cuda import FakeDevice
from .pybind import make_enum

_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1}


class Library:
    """The state of one fake ``tensorrt`` module.

    Attributes:
        api: the API version it fakes.
        device: the GPU it runs on.
        major: the major TensorRT version.
        messages: every message logged through a ``Logger``, as ``(severity, text)`` (the module's ``_messages``).
    """

    # the module's classes, recorded by make_tensorrt as it makes them
    ILogger: type
    ITensor: type
    ILayer: type
    INetworkDefinition: type
    ParserError: type
    IHostMemory: type
    ITimingCache: type
    IBuilderConfig: type
    IExecutionContext: type
    ICudaEngine: type

    def __init__(self, api: ApiVersion, device: FakeDevice) -> None:
        self.api, self.device = api, device
        self.major = int(api.version.split(".")[0])
        self.messages: list[tuple[str, str]] = []
        self.DataType = make_enum("DataType", api.data_types)
        self.DataType.itemsize = property(lambda self: _ITEMSIZE.get(self.name))
        self.Severity = make_enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
        self.BuilderFlag = make_enum("BuilderFlag", api.builder_flags)
        self.NetworkFlag = make_enum("NetworkDefinitionCreationFlag", api.network_flags)
        self.MemoryPoolType = make_enum("MemoryPoolType", api.memory_pools)
        self.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
        self.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
        self.LayerType = make_enum("LayerType", api.layer_types)
        self.ErrorCode = make_enum(
            "ErrorCode",
            ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED", "INVALID_VALUE",
             "INVALID_GRAPH", "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"],
        )  # fmt: skip

    def enums(self) -> tuple[type, ...]:
        """The enums the module exposes under their own names (``Severity`` only through ``Logger``)."""
        return (
            self.DataType,
            self.BuilderFlag,
            self.NetworkFlag,
            self.MemoryPoolType,
            self.DeviceType,
            self.TensorIOMode,
            self.LayerType,
            self.ErrorCode,
        )

    def subclass(self, name: str, base: type, *features: tuple[bool, type]) -> type:
        """The class ``name`` of this module: ``base`` with each feature class whose flag is true (a member this
        version has), bound to this library."""
        mixins = tuple(feature for present, feature in features if present)
        return type(name, (*mixins, base), {"_lib": self})

    def log(self, logger: Any, severity: str, msg: str) -> None:
        """Log ``msg`` through ``logger`` at the severity named ``severity``."""
        logger.log(getattr(self.Severity, severity), msg)

    def warn_weak_typing(self, what: str) -> None:
        """The DeprecationWarning of a weak-typing setter from TensorRT 10.12 on (for its caller's caller)."""
        if self.api.weak_typing_deprecated:
            warnings.warn(f"{what}: Deprecated in TensorRT 10.12. Superseded by strong typing.", DeprecationWarning, 3)
