"""The fake TensorRT builder: ``Builder``, ``IBuilderConfig``, ``ITimingCache``, ``IHostMemory`` and the plan format.

Usage: ``builder.build_serialized_network(network, config)`` checks what TensorRT checks (DLA core in range, no
precision flags on a strongly typed network, obeyed precision constraints on DLA) and returns a plan that encodes what
was configured: flags, pool limits, the typing mode, the DLA core and, per layer, its name, type, precision, output
types, device and the precision it would run in. ``plan_of(engine_bytes)`` reads it back for tests.
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

from .api import CONSTRAINT_FLAGS, PRECISION_FLAGS
from .library import Library
from .pybind import check_args

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"
FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
# Layer types DLA can run (FP16/INT8 only); the transformer parts (MatMul on 4-D, Softmax, LN, Gather) are not here.
DLA_TYPES = frozenset({"CONVOLUTION", "DECONVOLUTION", "POOLING", "ACTIVATION", "ELEMENTWISE", "SCALE",
                       "CONCATENATION", "RESIZE"})  # fmt: skip


def plan_of(serialized: bytes) -> dict[str, Any]:
    """What a fake plan (engine file) records."""
    data = bytes(serialized)
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("not a fake TensorRT plan")
    return json.loads(data[len(PLAN_MAGIC) :])


class HostMemory:
    """``IHostMemory``: serialized bytes (``bytes()`` gives them)."""

    _lib: Library

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    nbytes = property(lambda self: len(self._data))
    dtype = property(lambda self: self._lib.DataType.UINT8)


class TimingCache:
    """``ITimingCache``: the tactic timings of one TensorRT version on one GPU."""

    _lib: Library

    def __init__(self, version: str, gpu: str, cc: str, entries: list[str]) -> None:
        self._version, self._gpu, self._cc, self._entries = version, gpu, cc, list(entries)

    def serialize(self) -> Any:
        body = {"tensorrt_version": self._version, "gpu": self._gpu, "cc": self._cc, "entries": self._entries}
        return self._lib.IHostMemory(CACHE_MAGIC + json.dumps(body).encode())

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        check_args(
            "ITimingCache.combine",
            input_cache=(input_cache, self._lib.ITimingCache),
            ignore_mismatch=(ignore_mismatch, bool),
        )
        if (input_cache._gpu, input_cache._cc) != (self._gpu, self._cc) and not ignore_mismatch:
            return False
        self._entries = sorted({*self._entries, *input_cache._entries})
        return True

    def reset(self) -> bool:
        self._entries = []
        return True


class BuilderConfig:
    """``IBuilderConfig``: flags, memory pools, device placement and the timing cache of a build."""

    _lib: Library

    def __init__(self, builder: Any) -> None:
        lib = self._lib
        self._builder = builder
        self._flags = 1 << lib.api.builder_flags["TF32"]  # TF32 is on by default
        self._pools: dict[str, int] = {}
        self._device_type = lib.DeviceType.GPU
        self._dla_core = -1
        self._layer_devices: dict[int, Any] = {}
        self._cache: Any = None

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        pools = self._lib.MemoryPoolType
        check_args("IBuilderConfig.set_memory_pool_limit", pool=(pool, pools), pool_size=(pool_size, int))
        self._pools[pool.name] = pool_size

    def get_memory_pool_limit(self, pool: Any) -> int:
        check_args("IBuilderConfig.get_memory_pool_limit", pool=(pool, self._lib.MemoryPoolType))
        return self._pools.get(pool.name, 0)

    def set_flag(self, flag: Any) -> None:
        check_args("IBuilderConfig.set_flag", flag=(flag, self._lib.BuilderFlag))
        self._flags |= 1 << flag.value

    def clear_flag(self, flag: Any) -> None:
        check_args("IBuilderConfig.clear_flag", flag=(flag, self._lib.BuilderFlag))
        self._flags &= ~(1 << flag.value)

    def get_flag(self, flag: Any) -> bool:
        check_args("IBuilderConfig.get_flag", flag=(flag, self._lib.BuilderFlag))
        return bool(self._flags & (1 << flag.value))

    def _set_flags(self, flags: int) -> None:
        check_args("IBuilderConfig.flags", flags=(flags, int))
        self._flags = flags

    flags = property(lambda self: self._flags, _set_flags)

    def _set_device_type(self, device_type: Any) -> None:
        check_args("IBuilderConfig.default_device_type", device_type=(device_type, self._lib.DeviceType))
        self._device_type = device_type

    default_device_type = property(lambda self: self._device_type, _set_device_type)

    def _set_dla_core(self, core: int) -> None:
        check_args("IBuilderConfig.DLA_core", core=(core, int))
        self._dla_core = core

    DLA_core = property(lambda self: self._dla_core, _set_dla_core)  # noqa: N815

    def set_device_type(self, layer: Any, device_type: Any) -> None:
        lib = self._lib
        check_args(
            "IBuilderConfig.set_device_type", layer=(layer, lib.ILayer), device_type=(device_type, lib.DeviceType)
        )
        self._layer_devices[id(layer)] = device_type

    def get_device_type(self, layer: Any) -> Any:
        check_args("IBuilderConfig.get_device_type", layer=(layer, self._lib.ILayer))
        return self._layer_devices.get(id(layer), self._device_type)

    def is_device_type_set(self, layer: Any) -> bool:
        return id(layer) in self._layer_devices

    def reset_device_type(self, layer: Any) -> None:
        self._layer_devices.pop(id(layer), None)

    def can_run_on_DLA(self, layer: Any) -> bool:  # noqa: N802
        check_args("IBuilderConfig.can_run_on_DLA", layer=(layer, self._lib.ILayer))
        return layer.type.name in DLA_TYPES

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        check_args(
            "IBuilderConfig.create_timing_cache",
            serialized_timing_cache=(serialized_timing_cache, (bytes, bytearray, memoryview)),
        )
        lib = self._lib
        data = bytes(serialized_timing_cache)
        if not data:
            return lib.ITimingCache(lib.api.version, lib.device.name, lib.device.cc, [])
        body = json.loads(data[len(CACHE_MAGIC) :]) if data.startswith(CACHE_MAGIC) else None
        if body is None or body.get("tensorrt_version") != lib.api.version:
            # TensorRT logs "Serialization assertion ... Magic tag does not match" and "The timing cache will not
            # be used!" (NVIDIA/TensorRT#3566); what it returns is not documented: modelled as None here.
            lib.log(self._builder._logger, "ERROR", "Serialization (timing cache: magic tag or version mismatch)")
            lib.log(self._builder._logger, "ERROR", "The timing cache will not be used!")
            return None
        return lib.ITimingCache(body["tensorrt_version"], body["gpu"], body["cc"], body["entries"])

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        lib = self._lib
        check_args(
            "IBuilderConfig.set_timing_cache",
            cache=(cache, lib.ITimingCache),
            ignore_mismatch=(ignore_mismatch, bool),
        )
        device = lib.device
        if (cache._gpu, cache._cc) != (device.name, device.cc) and not ignore_mismatch:
            # NvInfer.h: "A failure will be reported if the CUDA device property in the provided cache is
            # different from current environment"; returns false
            lib.log(self._builder._logger, "ERROR", f"timing cache was created on {cache._gpu} (compute "
                    f"{cache._cc}), this device is {device.name} (compute {device.cc})")  # fmt: skip
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._cache


class WorkspaceSize:
    """``IBuilderConfig.max_workspace_size`` (deprecated; before 10.x)."""

    def _set_workspace(self, size: int) -> None:
        warnings.warn("max_workspace_size is deprecated; use set_memory_pool_limit", DeprecationWarning, 2)
        self._pools["WORKSPACE"] = size

    max_workspace_size = property(lambda self: self._pools.get("WORKSPACE", 0), _set_workspace)


class Int8CalibratorSlot:
    """``IBuilderConfig.int8_calibrator`` (the versions with calibrators: 8.x to 10.x)."""

    int8_calibrator = None


class NetworkBuilder:
    """``Builder``: makes networks and configs and builds a serialized plan."""

    _lib: Library

    def __init__(self, logger: Any) -> None:
        check_args("Builder.__init__", logger=(logger, self._lib.ILogger))
        self._logger = logger

    num_DLA_cores = property(lambda self: self._lib.device.dla_cores)  # noqa: N815
    max_DLA_batch_size = property(lambda self: 32 if self._lib.device.dla_cores else 1)  # noqa: N815

    def create_network(self, flags: int = 0) -> Any:
        check_args("Builder.create_network", flags=(flags, int))
        if flags >> (max(self._lib.api.network_flags.values()) + 1):
            self._lib.log(self._logger, "ERROR", f"createNetworkV2: invalid flags {flags:#x}")
            return None
        return self._lib.INetworkDefinition(self._logger, flags)

    def create_builder_config(self) -> Any:
        return self._lib.IBuilderConfig(self)

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        lib = self._lib
        check_args(
            "Builder.build_serialized_network",
            network=(network, lib.INetworkDefinition),
            config=(config, lib.IBuilderConfig),
        )
        plan = build_plan(lib, self._logger, network, config)
        return None if plan is None else lib.IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())


class FastPrecisionQuery:
    """``Builder.platform_has_fast_fp16`` / ``_int8`` (gone with weak typing in 11)."""

    platform_has_fast_fp16 = property(lambda self: True)
    platform_has_fast_int8 = property(lambda self: True)


def builder_classes(lib: Library) -> dict[str, type]:
    """``IHostMemory``, ``ITimingCache``, ``IBuilderConfig`` and ``Builder`` of ``lib``'s version."""
    return {
        "IHostMemory": lib.subclass("IHostMemory", HostMemory),
        "ITimingCache": lib.subclass("ITimingCache", TimingCache),
        "IBuilderConfig": lib.subclass(
            "IBuilderConfig", BuilderConfig, (lib.major < 10, WorkspaceSize), (lib.api.calibrators, Int8CalibratorSlot)
        ),
        "Builder": lib.subclass("Builder", NetworkBuilder, (lib.api.weak_typing, FastPrecisionQuery)),
    }


def _flag_names(lib: Library, flags: int) -> list[str]:
    return sorted({name for name, value in lib.api.builder_flags.items() if flags & (1 << value)})


def _refusal(lib: Library, network: Any, config: Any, flags: list[str]) -> str | None:
    """Why TensorRT refuses to build ``network`` with ``config``; None when it builds."""
    if network._model is None or not network._outputs:
        return "Network must have at least one output"
    if network._api_errors:
        return f"network has API usage errors: {network._api_errors}"
    if network._strongly_typed:
        bad = sorted(set(flags) & (PRECISION_FLAGS | CONSTRAINT_FLAGS))
        if bad:
            return f"BuilderFlag {', '.join(bad)} is not allowed with a strongly typed network"
    on_dla = config._device_type == lib.DeviceType.DLA
    if on_dla and not 0 <= config._dla_core < lib.device.dla_cores:
        # the library's words are not public; these are trtexec's (sampleEngines.cpp, release/10.3)
        return f"Cannot create DLA engine, {config._dla_core} not available ({lib.device.dla_cores} DLA cores)"
    return None


def _runs_in(network: Any, layer: Any, out_types: list[str], honour: bool, fp16: bool) -> str:
    """The precision a layer of the plan runs in."""
    pinned = getattr(layer, "_precision", None)
    if network._strongly_typed:
        return out_types[0] if out_types else "FLOAT"
    if layer.type.name in ("QUANTIZE", "DEQUANTIZE"):
        return "INT8"
    if pinned is not None and honour:
        return pinned.name
    if out_types and out_types[0] not in FLOAT_TYPES:
        return out_types[0]
    # a precision without OBEY/PREFER is a hint the builder may ignore (NvInfer.h ILayer::setPrecision)
    return "HALF" if fp16 else "FLOAT"


def _plan_layers(lib: Library, logger: Any, network: Any, config: Any, flags: list[str]) -> list[dict] | None:
    """Each layer of the plan: name, type, precision, output types, device and what it runs in; None (the error
    logged) when a layer must run on DLA, cannot, and GPU fallback is off."""
    obey = "OBEY_PRECISION_CONSTRAINTS" in flags or "STRICT_TYPES" in flags
    honour = obey or "PREFER_PRECISION_CONSTRAINTS" in flags
    fp16, int8 = "FP16" in flags, "INT8" in flags
    has_qdq = any(layer.type.name in ("QUANTIZE", "DEQUANTIZE") for layer in network._layers)
    layers = []
    for layer in network._layers:
        out_types = [layer.get_output_type(i).name for i in range(layer.num_outputs)]
        pinned = getattr(layer, "_precision", None)
        runs_in = _runs_in(network, layer, out_types, honour, fp16)
        wanted = config._layer_devices.get(id(layer), config._device_type)
        dla_ok = layer.type.name in DLA_TYPES and not has_qdq and runs_in in ("HALF", "INT8") and (fp16 or int8)
        where = "DLA" if wanted == lib.DeviceType.DLA and dla_ok else "GPU"
        fallback = bool(config._flags & (1 << lib.api.builder_flags["GPU_FALLBACK"]))
        if wanted == lib.DeviceType.DLA and where == "GPU" and not fallback:
            msg = f"{layer.name} [{layer.type.name}] cannot run on DLA ({runs_in}) and GPU fallback is off"
            lib.log(logger, "ERROR", msg)
            return None
        layers.append({
            "name": layer.name, "type": layer.type.name, "precision": None if pinned is None else pinned.name,
            "output_types": out_types, "output_types_set": sorted(getattr(layer, "_output_types", {})),
            "device": where, "runs_in": runs_in,
        })  # fmt: skip
    return layers


def build_plan(lib: Library, logger: Any, network: Any, config: Any) -> dict[str, Any] | None:
    """The plan of ``network`` built with ``config``; None (the error logged) when TensorRT would refuse it."""
    flags = _flag_names(lib, config._flags)
    refusal = _refusal(lib, network, config, flags)
    if refusal is not None:
        lib.log(logger, "ERROR", refusal)
        return None
    layers = _plan_layers(lib, logger, network, config, flags)
    if layers is None:
        return None
    if config._cache is not None:
        config._cache._entries = sorted({*config._cache._entries, *(f"{x['type']}:{x['runs_in']}" for x in layers)})
    on_dla = config._device_type == lib.DeviceType.DLA
    return {
        "tensorrt_version": lib.api.version,
        "gpu": lib.device.name,
        "compute_capability": lib.device.cc,
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
