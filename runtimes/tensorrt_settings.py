"""TensorRT build settings: precision, strong or weak typing, DLA placement, FP32 layers, per TensorRT version.

Usage: ``settings = device_settings("int8", "10.3", dla_core=0, remainder="fp16")``; the build and bundle stages and
the bundle's ``build_engine.py`` all make their settings there.

Strong or weak typing (:func:`default_strongly_typed`) follows TensorRT's migration path and what the graph carries:

- TensorRT 8.x / 9.x: weakly typed. Q/DQ INT8 uses the ``INT8`` flag plus ``FP16`` so the float remainder may run in
  half (explicit quantization: the scales are in the graph, no calibrator); FP16 ONNX uses the ``FP16`` flag.
- TensorRT 10.x (and an unknown version): **strongly typed** only when the graph already holds the types that should
  run (an FP16 ONNX, or a Q/DQ INT8 ONNX whose float remainder is FP16: ``quantization.float_remainder`` in the ONNX
  metadata, "fp16" from ModelOpt) and no DLA core is used. A Q/DQ INT8 ONNX with an FP32 remainder (ONNX Runtime's
  quantizer) stays weakly typed with ``INT8`` + ``FP16``, or every non-quantized layer would run in FP32; a DLA build
  stays weakly typed too (DLA runs FP16/INT8 only, and trtexec's DLA path sets FP16, which strong typing forbids).
  Weak typing is deprecated from 10.12 but still supported in 10.x.
- TensorRT ≥ 11: strongly typed, the only mode (the precision flags are gone).
- A weakly typed FP16/INT8 build keeps the decomposed LayerNorms and the softmax inputs in FP32
  (``BuildSettings.fp32_layers``, found by :func:`runtimes.fp32_layers.fp32_layer_names`; trtexec:
  ``--precisionConstraints=obey``).
- DLA (:func:`engine_dla_core`): only the FP16 engine goes to the profile's DLA core, with GPU fallback (attention,
  LayerNorm and Softmax fall back to the GPU); DLA does not run explicit Q/DQ INT8, so the INT8 engine stays on the
  GPU. A DLA trtexec build exports its layer information, and the sidecar step records how many layers ran on DLA
  (:mod:`runtimes.tensorrt_placement`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foundation.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_REMAINDERS = ("fp32", "fp16")
STRONG_TYPING = ("auto", "on", "off")
# DLA on Jetson by TensorRT version: TensorRT 10.7 was the last release with DLA until 11.4.1 brought it back on AGX
# Orin (JetPack 7.2.2+, strongly typed); JetPack 7.2's TensorRT 10.16 (SBSA build) has none. Source: TensorRT 11.3 and
# 11.4.1 docs, inference-library/dla-strongly-typed-networks.html.
DLA_LAST_BEFORE_11 = (10, 7)
DLA_FROM = (11, 4)


@dataclass
class BuildSettings:
    """What decides an engine build (recorded in the sidecar).

    Attributes:
        fp32_layers: names of layers that must stay FP32 (computed and output in FP32) in a weakly typed FP16/INT8
            build: the decomposed LayerNorms and the softmax inputs (:func:`runtimes.fp32_layers.fp32_layer_names`);
            empty = none. The names are ONNX node names, which the ONNX parser gives the layer it makes for each node.
    """

    precision: str
    workspace_mb: int = 2048
    strongly_typed: bool = True
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: str | None = None
    fp32_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown engine precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.dla_core is not None and self.precision == "fp32":
            raise ConfigError("DLA runs FP16 or INT8 only; build precision fp32 cannot use a DLA core")
        if isinstance(self.fp32_layers, str):
            raise ConfigError(f"fp32_layers must be a sequence of layer names, not the string {self.fp32_layers!r}")
        self.fp32_layers = tuple(str(name) for name in self.fp32_layers)  # JSON gives a list back


def major(version: str | None) -> int | None:
    """Major version of a TensorRT version string (None stays None)."""
    return None if version is None else int(str(version).split(".")[0])


def float_remainder(description: Mapping[str, Any] | None) -> str | None:
    """The float type of a Q/DQ ONNX's non-quantized layers (``quantization.float_remainder`` of its metadata).

    Returns:
        ``"fp32"`` or ``"fp16"``; None when the description records none (not a Q/DQ model, or an older export).

    Raises:
        ConfigError: the recorded value is neither.
    """
    quant = (description or {}).get("quantization")
    value = quant.get("float_remainder") if isinstance(quant, Mapping) else None
    if value is None:
        return None
    if value not in FLOAT_REMAINDERS:
        raise ConfigError(
            f"quantization.float_remainder {value!r} in the ONNX metadata is not one of {', '.join(FLOAT_REMAINDERS)}"
        )
    return str(value)


def default_strongly_typed(
    precision: str, trt_version: str | None, remainder: str | None = None, dla_core: int | None = None
) -> bool:
    """Whether to build a strongly typed network (the rule is in the module docstring).

    Args:
        precision: the ONNX's precision (``int8`` for Q/DQ, ``fp16``, ``fp32``).
        trt_version: the TensorRT version building the engine (or the device profile's floor); None = treat as 10.x.
        remainder: the float type of a Q/DQ ONNX's non-quantized layers (:func:`float_remainder`); None = unknown,
            taken as FP32.
        dla_core: the DLA core the engine is built for, None for the GPU.
    """
    if remainder is not None and remainder not in FLOAT_REMAINDERS:
        raise ConfigError(f"float remainder {remainder!r} is not one of {', '.join(FLOAT_REMAINDERS)}")
    m = major(trt_version)
    if m is not None and m >= 11:
        return True  # strong typing is the only mode; the precision flags no longer exist
    if m is not None and m < 10:
        return False
    if dla_core is not None:
        return False  # DLA needs the FP16/INT8 flags, which strongly typed networks forbid
    return precision == "fp16" or (precision == "int8" and remainder == "fp16")


def version_key(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a TensorRT version such as ``"10.3"`` or ``"8.5.2.2"``.

    Raises:
        ConfigError: the version is not ``MAJOR.MINOR[...]``.
    """
    parts = str(version).split(".")
    try:
        return int(parts[0]), (int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise ConfigError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[.PATCH]") from None


def dla_available(trt_version: str | None) -> bool:
    """Whether TensorRT ``trt_version`` runs DLA on a Jetson (8.x, 10.0 to 10.7, 11.4 on; None: as 10.x, yes)."""
    if trt_version is None:
        return True
    key = version_key(trt_version)
    return key <= DLA_LAST_BEFORE_11 or key >= DLA_FROM


def engine_dla_core(precision: str, dla_core: int | None, trt_version: str | None) -> int | None:
    """The DLA core an engine of ``precision`` is built for: the profile's core for the FP16 engine only.

    DLA runs FP16 and implicitly quantized INT8, not explicit Q/DQ INT8 (TensorRT 8.x to 10.x: NVIDIA/TensorRT#2222,
    the developer guide's DLA chapter), and Q/DQ is the only INT8 this project builds: the INT8 engine runs on the GPU,
    the FP16 one on DLA with GPU fallback for what DLA lacks (attention, Softmax, LayerNorm). DLA has no FP32.

    Raises:
        ConfigError: a DLA core is set for a TensorRT version without DLA.
    """
    if dla_core is None:
        return None
    if not dla_available(trt_version):
        raise ConfigError(
            f"device.dla_core={dla_core}, but TensorRT {trt_version} has no DLA (it has up to 10.7, and again from "
            "11.4.1 on AGX Orin with JetPack 7.2.2+); set device.dla_core to null for this profile"
        )
    return dla_core if precision == "fp16" else None


def check_typing(strongly_typed: bool, trt_version: str | None) -> None:
    """Refuse a typing mode TensorRT ``trt_version`` lacks: strong before 9.x, weak from 11.

    Raises:
        ConfigError: naming the version and the ``build.strongly_typed`` values that work there.
    """
    m = major(trt_version)
    if strongly_typed and m is not None and m < 9:
        raise ConfigError(
            f"build.strongly_typed='on', but TensorRT {trt_version} has no strongly typed networks (they arrive in "
            "9.x; its trtexec has no --stronglyTyped); valid here: 'auto', 'off'"
        )
    if not strongly_typed and m is not None and m >= 11:
        raise ConfigError(
            f"build.strongly_typed='off', but TensorRT {trt_version} builds strongly typed networks only (11.0 "
            "removed --int8/--fp16 and precision constraints); valid here: 'auto', 'on'"
        )


def device_settings(
    precision: str,
    trt_version: str | None,
    *,
    dla_core: int | None = None,
    workspace_mb: int = 2048,
    strongly_typed: str = "auto",
    gpu_fallback: bool = True,
    timing_cache: str | None = None,
    remainder: str | None = None,
    fp32_layers: Sequence[str] = (),
) -> BuildSettings:
    """The settings of one engine for a device profile and the ``build`` config section.

    The build and bundle stages and the bundle's ``build_engine.py`` all make their settings here.

    Args:
        precision: the ONNX's precision (``int8`` for Q/DQ, ``fp16``, ``fp32``).
        trt_version: the TensorRT version that builds it (the profile's floor, or the one installed); None: as 10.x.
        dla_core: the profile's DLA core; only the FP16 engine uses it (:func:`engine_dla_core`).
        workspace_mb: the builder workspace.
        strongly_typed: ``build.strongly_typed``: ``auto`` (:func:`default_strongly_typed`), ``on`` or ``off``.
        gpu_fallback: with a DLA core, let the layers DLA cannot run fall back to the GPU.
        timing_cache: the timing cache file; None for none.
        remainder: a Q/DQ ONNX's float remainder (:func:`float_remainder`).
        fp32_layers: the layers to keep in FP32 (:func:`runtimes.fp32_layers.fp32_layer_names`); kept only for a
            weakly typed FP16 or INT8 build (a strongly typed network takes its types from the graph).

    Raises:
        ConfigError: an unknown ``strongly_typed``, a typing mode ``trt_version`` lacks, or a DLA core it lacks.
    """
    if strongly_typed not in STRONG_TYPING:
        raise ConfigError(f"build.strongly_typed {strongly_typed!r} is not one of {', '.join(STRONG_TYPING)}")
    dla = engine_dla_core(precision, dla_core, trt_version)
    if dla_core is not None and dla is None:
        log.info("%s engine: on the GPU (DLA core %s runs only the FP16 engine)", precision, dla_core)
    if strongly_typed == "auto":
        strongly = default_strongly_typed(precision, trt_version, remainder, dla)
    else:
        strongly = strongly_typed == "on"
        check_typing(strongly, trt_version)
        m = major(trt_version)
        if strongly and dla is not None and (m is None or m < 11):
            log.warning(
                "build.strongly_typed=on with DLA core %s on TensorRT %s: DLA needs the FP16 flag, which strongly "
                "typed networks forbid before TensorRT 11; the build is likely to fail",
                dla,
                trt_version or "10.x",
            )
    keep = tuple(fp32_layers) if not strongly and precision in ("fp16", "int8") else ()
    return BuildSettings(
        precision,
        workspace_mb=workspace_mb,
        strongly_typed=strongly,
        dla_core=dla,
        gpu_fallback=gpu_fallback,
        timing_cache=timing_cache,
        fp32_layers=keep,
    )
