"""What each TensorRT Python API version has, and where that was read.

Sources (NVIDIA/TensorRT branches release/8.5, release/10.3, release/10.16, release/11.0 and release/11.1;
onnx/onnx-tensorrt branches 8.5-GA and 8.6-GA):

- enum members and values: ``include/NvInfer.h`` (``NetworkDefinitionCreationFlag``, ``BuilderFlag``),
  ``include/NvInferRuntimeCommon.h`` (8.5) / ``NvInferRuntimeBase.h`` (10.x, 11.x) (``DataType``); the names the
  bindings expose: ``python/src/infer/pyCore.cpp`` and ``pyFoundationalTypes.cpp`` (``m.attr("float32")`` ...).
- what a class has: ``pyCore.cpp`` (Builder, IBuilderConfig, Runtime, ICudaEngine, IExecutionContext, ITimingCache),
  ``pyGraph.cpp`` (ILayer, ITensor, INetworkDefinition), ``parsers/pyOnnx.cpp`` (OnnxParser), ``pyInt8.cpp``
  (calibrators; the file is gone in 11.x).
- ``nptype``: ``python/packaging/tensorrt/__init__.py`` (8.5) / ``bindings_wheel/tensorrt/__init__.py``. The OSS
  release/8.5 branch now maps ``bool: np.bool_``, but the 8.5 wheels that shipped (JetPack 5.1's 8.5.2.2 and the x86
  8.5.3.1) map ``bool: np.bool`` at ``__init__.py:166``, which raises AttributeError on numpy 1.24–1.26: tracebacks in
  NVIDIA/TensorRT#2567, #2701, ultralytics/ultralytics#9482 (``/usr/lib/python3.8/dist-packages/tensorrt``).
- INT64 I/O: TensorRT 8.x has no ``DataType.INT64``; its ONNX parser binds INT64 network inputs as INT32.
- ``LayerNormalization``: ``docs/operators.md`` of onnx-tensorrt 8.5-GA says ``N`` (8.6-GA: ``Y``).
- 10.12 deprecates weak typing: ``ILayer.precision``'s setter, ``set_output_type`` and ``ITensor.dtype``'s setter
  issue a DeprecationWarning (release/10.16 ``pyGraph.cpp:409-417``, ``utils.cpp`` ``PyErr_WarnEx``).
- 11.0 removes weak typing: no ``BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4``, no ``OBEY/PREFER_PRECISION_CONSTRAINTS``,
  no ``ILayer.precision`` / ``set_output_type``, no calibrators, no ``platform_has_fast_fp16``;
  ``NetworkDefinitionCreationFlag`` loses ``EXPLICIT_BATCH`` and ``STRONGLY_TYPED`` becomes value 0 ("retained for API
  compatibility but ignored"). JetPack 7.2.2 ships 11.4.1 (anchors_update_2026-12.md §1); the mirror's newest 11.x
  bindings are release/11.1, which this table encodes under that version string.
"""

from __future__ import annotations

from dataclasses import dataclass

_DTYPES_8 = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}
_DTYPES_10 = {**_DTYPES_8, "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9}
_DTYPES_1016 = {**_DTYPES_10, "FP4": 10, "E8M0": 11}
_ALIASES_8 = {"float32": "FLOAT", "float16": "HALF", "int8": "INT8", "int32": "INT32", "bool": "BOOL", "uint8": "UINT8"}
_ALIASES_10 = {**_ALIASES_8, "bfloat16": "BF16", "int64": "INT64", "fp8": "FP8", "int4": "INT4"}
_ALIASES_1016 = {**_ALIASES_10, "fp4": "FP4", "e8m0": "E8M0"}

_BUILDER_FLAGS_85 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "STRICT_TYPES": 4, "REFIT": 5, "DISABLE_TIMING_CACHE": 6,
    "TF32": 7, "SPARSE_WEIGHTS": 8, "SAFETY_SCOPE": 9, "OBEY_PRECISION_CONSTRAINTS": 10,
    "PREFER_PRECISION_CONSTRAINTS": 11, "DIRECT_IO": 12, "REJECT_EMPTY_ALGORITHMS": 13, "ENABLE_TACTIC_HEURISTIC": 14,
}  # fmt: skip
_BUILDER_FLAGS_103 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
    "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
    "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15,
    "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19, "WEIGHTLESS": 19,
    "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22, "REFIT_INDIVIDUAL": 23,
}  # fmt: skip
_BUILDER_FLAGS_1016 = {
    **_BUILDER_FLAGS_103, "STRICT_NANS": 24, "MONITOR_MEMORY": 25, "FP4": 26, "EDITABLE_TIMING_CACHE": 27,
    "DISTRIBUTIVE_INDEPENDENCE": 28,
}  # fmt: skip
_BUILDER_FLAGS_11 = {
    "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
    "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12, "EXCLUDE_LEAN_RUNTIME": 13,
    "ERROR_ON_TIMING_CACHE_MISS": 15, "DISABLE_COMPILATION_CACHE": 17, "STRIP_PLAN": 18, "REFIT_IDENTICAL": 19,
    "WEIGHT_STREAMING": 20, "REFIT_INDIVIDUAL": 22, "STRICT_NANS": 23, "MONITOR_MEMORY": 24,
    "EDITABLE_TIMING_CACHE": 26, "DISTRIBUTIVE_INDEPENDENCE": 27,
}  # fmt: skip
_LAYERS_85 = (
    "CONVOLUTION", "FULLY_CONNECTED", "GRID_SAMPLE", "NMS", "ACTIVATION", "POOLING", "LRN", "SCALE", "SOFTMAX",
    "DECONVOLUTION", "CONCATENATION", "ELEMENTWISE", "PLUGIN", "UNARY", "PADDING", "SHUFFLE", "REDUCE", "TOPK",
    "GATHER", "MATRIX_MULTIPLY", "RAGGED_SOFTMAX", "CONSTANT", "RNN_V2", "IDENTITY", "PLUGIN_V2", "SLICE", "SHAPE",
    "PARAMETRIC_RELU", "RESIZE", "TRIP_LIMIT", "RECURRENCE", "ITERATOR", "LOOP_OUTPUT", "SELECT", "ASSERTION", "FILL",
    "QUANTIZE", "DEQUANTIZE", "CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT", "SCATTER", "EINSUM", "ONE_HOT",
    "NON_ZERO",
)  # fmt: skip
_LAYERS_103 = (
    *(t for t in _LAYERS_85 if t not in ("FULLY_CONNECTED", "RNN_V2")), "CAST", "REVERSE_SEQUENCE", "NORMALIZATION",
    "PLUGIN_V3",
)  # fmt: skip
_LAYERS_1016 = (
    *_LAYERS_103, "SQUEEZE", "UNSQUEEZE", "CUMULATIVE", "DYNAMIC_QUANTIZE", "ATTENTION_INPUT", "ATTENTION_OUTPUT",
    "ROTARY_EMBEDDING", "KV_CACHE_UPDATE", "MOE", "DIST_COLLECTIVE",
)  # fmt: skip
_POOLS_8 = ("WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM")
_POOLS_10 = (*_POOLS_8, "TACTIC_DRAM", "TACTIC_SHARED_MEMORY")

# BuilderFlags that set a precision: a strongly typed network refuses them (trtexec 10.3 sampleOptions.cpp:1231-1240
# turns --fp16/--int8/--bf16/--fp8 off under --stronglyTyped; NvInfer.h: types come from the graph only).
PRECISION_FLAGS = frozenset({"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "STRICT_TYPES"})
CONSTRAINT_FLAGS = frozenset({"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "STRICT_TYPES"})


@dataclass(frozen=True)
class ApiVersion:
    """The Python API of one TensorRT version, as far as the project and its fakes touch it."""

    key: str
    version: str
    network_flags: dict[str, int]
    builder_flags: dict[str, int]
    data_types: dict[str, int]
    dtype_aliases: dict[str, str]
    memory_pools: tuple[str, ...]
    layer_types: tuple[str, ...]
    weak_typing: bool  # ILayer.precision / set_output_type and the precision BuilderFlags exist
    weak_typing_deprecated: bool  # 10.12+: their setters warn
    calibrators: bool  # IInt8EntropyCalibrator2, CalibrationAlgoType, IBuilderConfig.int8_calibrator
    binding_api: bool  # 8.x: num_bindings, get_binding_*, execute_async_v2
    int64_io: bool  # INT64 network I/O stays INT64 (8.x binds it as INT32)
    nptype_uses_np_bool: bool  # the shipped wheel's nptype maps bool to np.bool (JetPack 5.1's 8.5.2.2)
    onnx_unsupported: frozenset[str]  # ONNX ops the parser of that version has no importer for


VERSIONS: dict[str, ApiVersion] = {
    "8.5": ApiVersion(
        key="8.5",
        version="8.5.2.2",
        network_flags={"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1},
        builder_flags=_BUILDER_FLAGS_85,
        data_types=_DTYPES_8,
        dtype_aliases=_ALIASES_8,
        memory_pools=_POOLS_8,
        layer_types=_LAYERS_85,
        weak_typing=True,
        weak_typing_deprecated=False,
        calibrators=True,
        binding_api=True,
        int64_io=False,
        nptype_uses_np_bool=True,
        onnx_unsupported=frozenset({"LayerNormalization"}),
    ),
    "10.3": ApiVersion(
        key="10.3",
        version="10.3.0.30",
        network_flags={"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
        builder_flags=_BUILDER_FLAGS_103,
        data_types=_DTYPES_10,
        dtype_aliases=_ALIASES_10,
        memory_pools=_POOLS_10,
        layer_types=_LAYERS_103,
        weak_typing=True,
        weak_typing_deprecated=False,
        calibrators=True,
        binding_api=False,
        int64_io=True,
        nptype_uses_np_bool=False,
        onnx_unsupported=frozenset(),
    ),
    "10.16": ApiVersion(
        key="10.16",
        version="10.16.1",
        network_flags={
            "EXPLICIT_BATCH": 0,
            "STRONGLY_TYPED": 1,
            "PREFER_JIT_PYTHON_PLUGINS": 2,
            "PREFER_AOT_PYTHON_PLUGINS": 3,
        },
        builder_flags=_BUILDER_FLAGS_1016,
        data_types=_DTYPES_1016,
        dtype_aliases=_ALIASES_1016,
        memory_pools=_POOLS_10,
        layer_types=_LAYERS_1016,
        weak_typing=True,
        weak_typing_deprecated=True,
        calibrators=True,
        binding_api=False,
        int64_io=True,
        nptype_uses_np_bool=False,
        onnx_unsupported=frozenset(),
    ),
    "11": ApiVersion(
        key="11",
        version="11.4.1",
        network_flags={"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
        builder_flags=_BUILDER_FLAGS_11,
        data_types=_DTYPES_1016,
        dtype_aliases=_ALIASES_1016,
        memory_pools=_POOLS_10,
        layer_types=_LAYERS_1016,
        weak_typing=False,
        weak_typing_deprecated=False,
        calibrators=False,
        binding_api=False,
        int64_io=True,
        nptype_uses_np_bool=False,
        onnx_unsupported=frozenset(),
    ),
}
