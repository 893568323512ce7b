"""TensorRT engine builder: ONNX → serialized engine + JSON sidecar, and the equivalent ``trtexec`` script.

Usage: ``build_engine("full_int8_qdq.onnx", "full_int8_qdq.engine", settings)``;
``write_build_script("build_engine.sh", [trtexec_command(...), sidecar_command(...)])`` works everywhere (no TensorRT
needed); after a ``trtexec`` build, :func:`write_sidecar` (``python3 -m runtimes.tensorrt_build --sidecar-only ...``)
records the sidecar the runtime needs.

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
  (``BuildSettings.fp32_layers``, found by :func:`fp32_layer_names`; trtexec: ``--precisionConstraints=obey``).
- DLA (:func:`engine_dla_core`): only the FP16 engine goes to the profile's DLA core, with GPU fallback (attention,
  LayerNorm and Softmax fall back to the GPU); DLA does not run explicit Q/DQ INT8, so the INT8 engine stays on the
  GPU. A DLA trtexec build exports its layer information, and the sidecar step records how many layers ran on DLA.

:func:`trtexec_command` emits only the options the trtexec of the profile's TensorRT version parses, from the
per-version tables in ``runtimes/data/trtexec_<version>.json`` (:func:`trtexec_table`: the newest at or below it).

The sidecar ``<engine>.json`` records the TensorRT version, GPU, compute capability, flags, workspace and the sha256
of the input ONNX, plus the ONNX's own description (I/O, normalization, tokenizer), so the runtime needs nothing else.
Engines are tied to the TensorRT version and GPU they were built on: build on the target device.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError, ConfigError, PipelineError, RuntimeUnavailable

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_REMAINDERS = ("fp32", "fp16")
INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU: on a Jetson it comes with JetPack (python3-libnvinfer); on an x86 GPU host "
    "pip install tensorrt (from NVIDIA's index) or the project's [trt] extra"
)


@dataclass
class BuildSettings:
    """What decides an engine build (recorded in the sidecar).

    Attributes:
        fp32_layers: names of layers that must stay FP32 (computed and output in FP32) in a weakly typed FP16/INT8
            build: the decomposed LayerNorms and the softmax inputs (:func:`fp32_layer_names`); empty = none. The
            names are ONNX node names, which the ONNX parser gives the layer it makes for each node.
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


# ---- trtexec options, typing and DLA placement per TensorRT version ------------------------------------------------

TRTEXEC_DATA = Path(__file__).resolve().parent / "data"
STRONG_TYPING = ("auto", "on", "off")
# DLA on Jetson by TensorRT version: TensorRT 10.7 was the last release with DLA until 11.4.1 brought it back on AGX
# Orin (JetPack 7.2.2+, strongly typed); JetPack 7.2's TensorRT 10.16 (SBSA build) has none. Source: TensorRT 11.3 and
# 11.4.1 docs, inference-library/dla-strongly-typed-networks.html.
DLA_LAST_BEFORE_11 = (10, 7)
DLA_FROM = (11, 4)
# The ops a weakly typed FP16 build keeps in FP32 around a decomposed LayerNorm and a softmax (fp32_layer_names).
_TYPE_ONLY_OPS = ("Cast", "Identity")
_LN_TAIL_OPS = ("Add", "Sqrt", "Reciprocal")
_SOFTMAX_INPUT_OPS = ("Add", "Sub", "Mul", "Div", "Where")
# Layers trtexec's layer information lists for the copies in and out of a DLA subgraph.
DLA_TRANSFER_SUFFIXES = (" to nvm", " from nvm", " copy finish")


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


@functools.lru_cache(maxsize=None)  # noqa: UP033 (vendored into the bundle: Python 3.8 has no functools.cache)
def _trtexec_tables() -> dict[tuple[int, int], dict[str, Any]]:
    tables = {}
    for path in sorted(TRTEXEC_DATA.glob("trtexec_*.json")):
        table = json.loads(path.read_text())
        tables[version_key(table["tensorrt"])] = table
    if not tables:
        raise ArtifactError(f"no trtexec option tables (trtexec_<version>.json) in {TRTEXEC_DATA}")
    return tables


def trtexec_versions() -> list[str]:
    """The TensorRT versions that have a trtexec option table (``runtimes/data/trtexec_<version>.json``)."""
    return [table["tensorrt"] for _, table in sorted(_trtexec_tables().items())]


def trtexec_table(trt_version: str | None) -> dict[str, Any]:
    """The trtexec option table of a TensorRT version: the newest table at or below it.

    Each table lists the options trtexec parses at that release (read from NVIDIA/TensorRT's
    ``samples/common/sampleOptions.cpp``, recorded in its ``source``); trtexec stops with "Unknown option" on any other.
    None (an unknown version) takes the newest 10.x table, as :func:`default_strongly_typed` treats it as 10.x.

    Returns:
        ``{"tensorrt", "strongly_typed_only", "source", "notes", "options"}``.

    Raises:
        ConfigError: the version is older than every table.
    """
    tables = _trtexec_tables()
    key = (10, 1 << 30) if trt_version is None else version_key(trt_version)
    older = [k for k in tables if k <= key]
    if not older:
        raise ConfigError(
            f"no trtexec option table for TensorRT {trt_version}: tables exist for {', '.join(trtexec_versions())} "
            "(the oldest TensorRT this project builds for is the first)"
        )
    return tables[max(older)]


def unknown_trtexec_options(cmd: Sequence[str], trt_version: str | None) -> list[str]:
    """The arguments of a ``trtexec`` command line that the trtexec of ``trt_version`` does not parse."""
    known = set(trtexec_table(trt_version)["options"])
    return [arg for arg in cmd[1:] if arg.split("=", 1)[0] not in known]


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
        fp32_layers: the layers to keep in FP32 (:func:`fp32_layer_names`); kept only for a weakly typed FP16 or INT8
            build (a strongly typed network takes its types from the graph).

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


def fp32_layer_names(model: Any) -> tuple[str, ...]:
    """The layers a weakly typed FP16/INT8 build keeps in FP32: each decomposed LayerNorm and each softmax input.

    - A decomposed LayerNorm (``quantize.trt_compat.decompose_layernorm`` for TensorRT 8.5, or an exporter's own):
      ReduceMean, Sub, Mul or Pow, ReduceMean, Add, Sqrt (or Reciprocal) and Div (or Mul), from ``x - mean(x)`` to
      the normalized output. In half, ``(x - mean)²`` overflows once ``|x - mean| > 256`` (NVIDIA/TensorRT#2564).
    - Each Softmax and the elementwise op that makes its logits (a biased or masked score). A MatMul/Gemm producer is
      left alone: its INT8/FP16 GEMM is what the build is for.

    A native LayerNormalization (opset 17, TensorRT 8.6+) is not listed: its INormalizationLayer computes in FP32
    unless told otherwise (``stash_type``). Casts inside an island (the FP16 ONNX wraps its FP32 ops in them) are
    listed too, so the island stays FP32 across them: a Cast to FP16 only inside a decomposed LayerNorm, which only
    TensorRT 8.5 needs, whose parser makes a Cast an identity layer with an output type that the FP32 one replaces.
    Names are what the ONNX parser calls each node's layer: the node name, or ``node_of_<first output>`` for an
    unnamed node (onnx-tensorrt ``getNodeName``).

    Args:
        model: an ONNX file or ``ModelProto``.

    Returns:
        Layer names in graph order, each once.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output if out}
    users: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def source(tensor: str) -> str:  # the tensor a chain of Casts started from
        node = producer.get(tensor)
        while node is not None and node.op_type in _TYPE_ONLY_OPS and node.input:
            tensor = node.input[0]
            node = producer.get(tensor)
        return tensor

    def casts_between(start: str, end: str) -> list[Any]:  # the Casts from tensor start down to tensor end
        chain, node = [], producer.get(end)
        while node is not None and node.op_type in _TYPE_ONLY_OPS and end != start:
            chain.append(node)
            end = node.input[0]
            node = producer.get(end)
        return chain

    def consumers(tensor: str) -> list[tuple[Any, list[Any]]]:  # users, looking through Casts, with those Casts
        found, stack = [], [(tensor, [])]
        while stack:
            name, via = stack.pop()
            for node in users.get(name, []):
                if node.op_type in _TYPE_ONLY_OPS:
                    stack.append((node.output[0], [*via, node]))
                else:
                    found.append((node, via))
        return found

    keep: list[Any] = []
    for sub in nodes:
        if sub.op_type != "Sub" or len(sub.input) != 2:
            continue
        mean = producer.get(source(sub.input[1]))
        if mean is None or mean.op_type != "ReduceMean" or source(mean.input[0]) != source(sub.input[0]):
            continue  # not x - mean(x)
        island = [mean, *casts_between(mean.output[0], sub.input[1]), sub]
        d = sub.output[0]
        for square, via in consumers(d):
            is_mul = square.op_type == "Mul" and [source(i) for i in square.input] == [d, d]
            is_pow = square.op_type == "Pow" and source(square.input[0]) == d
            if not (is_mul or is_pow):
                continue
            island += [*via, square]
            tail = [(n, v) for n, v in consumers(square.output[0]) if n.op_type == "ReduceMean"]
            while tail:
                node, via = tail[0]
                island += [*via, node]
                ends = [(n, v) for n, v in consumers(node.output[0]) if n.op_type in ("Div", "Mul")]
                ends = [(n, v) for n, v in ends if d in [source(i) for i in n.input]]
                if ends:  # d / std or d * (1 / std): the normalized output
                    island += [*ends[0][1], ends[0][0]]
                    break
                tail = [(n, v) for n, v in consumers(node.output[0]) if n.op_type in _LN_TAIL_OPS]
        keep += island
    for softmax in nodes:
        if softmax.op_type != "Softmax":
            continue
        logits = producer.get(source(softmax.input[0]))
        if logits is not None and logits.op_type in _SOFTMAX_INPUT_OPS:
            keep += [logits, *casts_between(logits.output[0], softmax.input[0])]
        keep.append(softmax)
    names = [node.name or f"node_of_{node.output[0]}" for node in keep]
    return tuple(dict.fromkeys(names))


def layer_info_path(engine_path: str | Path) -> Path:
    """Where the trtexec line of a DLA build exports the engine's layer information (``<engine>.layers.json``)."""
    return Path(f"{engine_path}.layers.json")


def _layer_spec(names: Sequence[str]) -> str:
    """``--layerPrecisions`` / ``--layerOutputTypes`` value keeping ``names`` in FP32.

    trtexec splits the list at commas and each entry at its last colon; a name with a colon is quoted ('name':fp32),
    a name with a comma or a quote cannot be written and is left to the Python builder (with a warning).
    """
    entries, skipped = [], []
    for name in names:
        if "," in name or "'" in name:
            skipped.append(name)
        else:
            entries.append(f"'{name}':fp32" if ":" in name else f"{name}:fp32")
    if skipped:
        log.warning("trtexec cannot name %d FP32 layers (a comma or quote in the name): %s", len(skipped), skipped[:5])
    return ",".join(entries)


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: TensorRT imports and a CUDA GPU is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"tensorrt is not installed ({INSTALL_HINT})"
    gpu = gpu_info()
    if not gpu:
        return False, "no NVIDIA GPU visible (TensorRT builds engines on the GPU they will run on)"
    return True, f"TensorRT with {gpu.get('name')}"


def _gpu_from_cuda_python() -> dict[str, Any]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, prop = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise RuntimeError(f"cudaGetDeviceProperties(0) returned {err}")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.strip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}


def _gpu_from_pycuda() -> dict[str, Any]:
    import pycuda.driver as cuda  # JetPack 5 images often have pycuda and no cuda-python

    cuda.init()
    dev = cuda.Device(0)
    cc_major, cc_minor = dev.compute_capability()
    return {"name": str(dev.name()), "compute_capability": f"{cc_major}.{cc_minor}"}


def _gpu_from_nvidia_smi() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        raise FileNotFoundError("nvidia-smi is not on PATH")
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.strip()
    if not out:
        raise ValueError("nvidia-smi listed no GPU")
    name, cc = (p.strip() for p in out.splitlines()[0].split(",", 1))
    return {"name": name, "compute_capability": cc}


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of GPU 0 via cuda-python, else pycuda, else nvidia-smi; ``{}`` when none works."""
    for source, probe in (
        ("cuda-python", _gpu_from_cuda_python),
        ("pycuda", _gpu_from_pycuda),
        ("nvidia-smi", _gpu_from_nvidia_smi),
    ):
        try:
            return probe()
        except Exception as exc:  # missing package, no device, driver too old, tool failure: try the next source
            log.debug("gpu_info: %s gave no GPU (%s: %s)", source, type(exc).__name__, exc)
    return {}


def trtexec_command(
    onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings, trt_version: str | None = None
) -> list[str]:
    """The ``trtexec`` invocation equivalent to :func:`build_engine` with ``settings``, for TensorRT ``trt_version``.

    Only options the trtexec of that version parses (:func:`trtexec_table`): ``--buildOnly`` before 8.6 and
    ``--skipInference`` after, ``--stronglyTyped`` from 9.x and none from 11 (the only mode there, the flag a no-op),
    no ``--int8/--fp16`` from 11. A weakly typed build keeps ``settings.fp32_layers`` in FP32 with
    ``--precisionConstraints=obey`` and both their precision and output type. A DLA build exports the engine's layer
    information (``<engine>.layers.json``, detailed) so that the sidecar step can say which layers run on DLA.

    Args:
        onnx_path: the ONNX, as the script sees it.
        engine_path: the engine to write, as the script sees it.
        settings: the build settings.
        trt_version: the TensorRT version of the trtexec that runs it (a profile's floor); None: as 10.x.

    Raises:
        ConfigError: the settings need what that trtexec lacks (strong typing before 9.x, weak typing from 11).
    """
    table = trtexec_table(trt_version)
    options = set(table["options"])
    if table["strongly_typed_only"] and not settings.strongly_typed:
        check_typing(False, trt_version or table["tensorrt"])
    if settings.strongly_typed and not table["strongly_typed_only"] and "--stronglyTyped" not in options:
        check_typing(True, trt_version or table["tensorrt"])
    workspace = f"--memPoolSize=workspace:{settings.workspace_mb}"  # MiB in TensorRT 8.4+, 10 and 11
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", workspace]
    if settings.strongly_typed:
        if not table["strongly_typed_only"]:
            cmd.append("--stronglyTyped")
    elif settings.precision in ("fp16", "int8"):
        # explicit Q/DQ scales for INT8 (no calibrator); FP16 allowed for the float remainder
        cmd += ["--int8", "--fp16"] if settings.precision == "int8" else ["--fp16"]
        spec = _layer_spec(settings.fp32_layers)
        if spec:
            cmd += ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    if settings.dla_core is not None:
        cmd.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            cmd.append("--allowGPUFallback")
        cmd += [f"--exportLayerInfo={layer_info_path(engine_path)}", "--profilingVerbosity=detailed"]
    if settings.timing_cache:
        cmd.append(f"--timingCacheFile={settings.timing_cache}")
    cmd.append("--skipInference" if "--skipInference" in options else "--buildOnly")
    unknown = [arg for arg in cmd[1:] if arg.split("=", 1)[0] not in options]
    if unknown:  # a rule above out of step with the tables
        raise ConfigError(f"trtexec {table['tensorrt']} does not parse {unknown} (its options: runtimes/data)")
    return cmd


def settings_args(settings: BuildSettings) -> list[str]:
    """Command-line options of :func:`main` that reproduce ``settings``."""
    args = [f"--precision={settings.precision}", f"--workspace-mb={settings.workspace_mb}"]
    args.append("--strongly-typed" if settings.strongly_typed else "--weakly-typed")
    if settings.dla_core is not None:
        args.append(f"--dla-core={settings.dla_core}")
        if not settings.gpu_fallback:
            args.append("--no-gpu-fallback")
    if settings.timing_cache:
        args.append(f"--timing-cache={settings.timing_cache}")
    args += [f"--fp32-layer={name}" for name in settings.fp32_layers]
    return args


def sidecar_command(onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings) -> str:
    """The shell line that records the sidecar of an engine ``trtexec`` built with ``settings`` (needs the project
    importable: ``PYTHONPATH`` with the checkout)."""
    args = ["-m", "runtimes.tensorrt_build", "--sidecar-only", f"--onnx={onnx_path}", f"--engine={engine_path}"]
    return '"${PYTHON:-python3}" ' + shlex.join([*args, *settings_args(settings)])


def python_check(modules: Sequence[str], why: str) -> str:
    """A shell line that stops the script early, with a clear message, when ``$PYTHON`` (default ``python3``) cannot
    import ``modules`` (checked before the long trtexec builds, not after)."""
    code = "import " + ", ".join(modules)
    message = f"error: ${{PYTHON:-python3}} cannot import {', '.join(modules)}, which {why}"
    return f'"${{PYTHON:-python3}}" -c {shlex.quote(code)} || {{ echo "{message}" >&2; exit 2; }}'


def write_build_script(
    path: str | Path, commands: Sequence[list[str] | str], note: str = "", preamble: Sequence[str] = ()
) -> Path:
    """A bash script running each command from the script's own folder.

    Args:
        path: the script to write (made executable).
        commands: argument lists (quoted here) or ready shell lines (written as they are), run in order.
        note: comment lines under the header.
        preamble: shell lines run before the commands (environment, fail-fast checks).
    """
    from foundation.io import atomic_write_text

    path = Path(path)
    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT engines on the target device (engines are tied to its TensorRT version and GPU).",
        *(f"# {line}" for line in note.splitlines() if line),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'command -v trtexec >/dev/null || PATH="$PATH:/usr/src/tensorrt/bin"  # JetPack puts trtexec there',
        *preamble,
        *(cmd if isinstance(cmd, str) else shlex.join(cmd) for cmd in commands),
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def _check_dla_core(core: int, cores: int, trt_version: str) -> None:
    """Refuse a DLA core this device lacks before the build (TensorRT would fail late, with a terse log line)."""
    if not 0 <= core < cores:
        valid = f"valid: 0..{cores - 1}" if cores else "build for the GPU: leave build.dla_core unset"
        raise ArtifactError(
            f"DLA core {core} requested, but this device has {cores} DLA core(s) under TensorRT {trt_version} "
            f"({valid}); Orin Nano has none, Orin NX 8 GB one, AGX Orin and Xavier two"
        )


def _attach_timing_cache(config: Any, cache_path: Path | None, trt_version: str) -> None:
    """Give the build a timing cache: the one in ``cache_path`` when TensorRT accepts it, else a fresh one.

    A cache from another GPU (``set_timing_cache`` returns False: ``ignore_mismatch=False``, as its timings would not
    fit this device) or another TensorRT (``create_timing_cache`` fails) is reported, not used, and replaced after the
    build.
    """
    data = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if data:
        log.warning(
            "timing cache %s was made on another GPU or TensorRT version (TensorRT %s here) and is not used: "
            "building with a fresh cache, which replaces it",
            cache_path,
            trt_version,
        )
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
    raise ArtifactError(f"TensorRT {trt_version} could not set up a timing cache (see the TensorRT log above)")


def _pin_fp32_layers(trt: Any, network: Any, config: Any, settings: BuildSettings, onnx_path: Path) -> list[str]:
    """Keep ``settings.fp32_layers`` in FP32 in a weakly typed FP16/INT8 build; returns the names pinned.

    Each named layer gets precision FP32 and FP32 float outputs, obeyed (``OBEY_PRECISION_CONSTRAINTS``; without it a
    precision is a hint the builder may ignore), and stays on the GPU of a DLA build (DLA runs FP16/INT8 only). A
    strongly typed network (TensorRT 10 when chosen, and 11, which has no precision flags) takes its types from the
    graph, so the names are only checked there.

    Raises:
        ConfigError: a name matches no layer (TensorRT names each layer after its ONNX node).
    """
    names = tuple(dict.fromkeys(settings.fp32_layers))
    if not names:
        return []
    layers: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers.setdefault(layer.name, layer)
    missing = [name for name in names if name not in layers]
    if missing:
        from foundation.errors import closest

        raise ConfigError(
            f"fp32_layers names {len(missing)} layer(s) that the TensorRT network of {onnx_path.name} does not have: "
            + ", ".join(f"{name!r}{closest(name, layers)}" for name in missing)
            + " (TensorRT names each layer after its ONNX node)"
        )
    if settings.strongly_typed or settings.precision == "fp32":
        log.warning(
            "fp32_layers %s left to the graph: a %s build runs each layer in the type the ONNX gives it",
            ", ".join(names),
            "strongly typed" if settings.strongly_typed else "FP32",
        )
        return []
    float_types = (trt.float32, trt.float16)
    for name in names:
        layer = layers[name]
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            if layer.get_output(i).dtype in float_types:
                layer.set_output_type(i, trt.float32)
        if settings.dla_core is not None:
            config.set_device_type(layer, trt.DeviceType.GPU)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return list(names)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    settings: BuildSettings,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parse an ONNX, build a serialized TensorRT engine, and write it with its JSON sidecar.

    Args:
        onnx_path: FP32 / FP16 / Q/DQ INT8 ONNX.
        engine_path: the ``.engine`` to write; the sidecar is ``<engine>.json``.
        settings: precision, workspace, strong typing, DLA, timing cache, FP32 layers.
        description: the ONNX's self-description (copied into the sidecar).

    Returns:
        The sidecar content.

    Raises:
        RuntimeUnavailable: no TensorRT or no GPU here.
        ConfigError: ``settings.fp32_layers`` names a layer the network does not have.
        ArtifactError: the parser or the builder failed (parser errors are listed with their nodes), the typing mode
            does not exist in this TensorRT, or the DLA core does not exist on this device.
    """
    from foundation.io import atomic_write_bytes

    ok, reason = tensorrt_status()
    if not ok:
        raise RuntimeUnavailable(reason)
    import tensorrt as trt

    started = time.perf_counter()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt_major = major(trt.__version__)
    if not settings.strongly_typed and not hasattr(trt.BuilderFlag, "FP16"):
        raise ArtifactError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (its FP16/INT8 builder flags are gone): "
            "build strongly typed (--set \"build.strongly_typed='on'\", or --strongly-typed) from an ONNX that "
            "carries its types (FP16 from ModelOpt AutoCast, INT8 as Q/DQ)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if settings.dla_core is not None:
        _check_dla_core(settings.dla_core, builder.num_DLA_cores, trt.__version__)
    flags = 0
    if trt_major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings.strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise ArtifactError(
                f"TensorRT {trt.__version__} has no strongly typed networks; build weakly typed "
                "(--set \"build.strongly_typed='off'\", or --weakly-typed)"
            )
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + " | ".join(errors[:10]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if not settings.strongly_typed:
        if settings.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    pinned = _pin_fp32_layers(trt, network, config, settings, onnx_path)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    _attach_timing_cache(config, cache_path, trt.__version__)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see the log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    sidecar = write_sidecar(
        onnx_path, engine_path, settings, description, seconds=time.perf_counter() - started, builder="tensorrt"
    )
    log.info(
        "TensorRT %s engine (%s%s): %s in %.1f s",
        trt.__version__,
        settings.precision,
        f", {len(pinned)} layers kept FP32" if pinned else "",
        engine_path,
        sidecar["seconds"],
    )
    return sidecar


def write_sidecar(
    onnx_path: str | Path,
    engine_path: str | Path,
    settings: BuildSettings,
    description: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    builder: str = "trtexec",
) -> dict[str, Any]:
    """Write ``<engine>.json`` for an engine built here from ``onnx_path`` with ``settings`` (by :func:`build_engine`
    or by ``trtexec``), recording the TensorRT version installed here and this machine's GPU.

    Args:
        onnx_path: the ONNX the engine was built from (its sha256 is recorded).
        engine_path: the engine; it must exist.
        settings: the build settings the engine was built with.
        description: the ONNX's self-description (copied into the sidecar).
        seconds: the build time, when known.
        builder: what built the engine (``trtexec`` or ``tensorrt``, the Python API).

    Returns:
        The sidecar content.

    Raises:
        ArtifactError: the engine or the ONNX is missing.
        RuntimeUnavailable: tensorrt does not import here (its version is what the sidecar records).
    """
    from foundation.io import atomic_write_json, sha256_file

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not engine_path.is_file() or engine_path.stat().st_size == 0:
        raise ArtifactError(
            f"engine {engine_path} is missing or empty: a sidecar records an engine that was built, so build it first "
            f"(trtexec --onnx={onnx_path.name} --saveEngine={engine_path.name} ..., or build_engine.sh)"
        )
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX {onnx_path} (the engine's source, whose sha256 the sidecar records) does not exist")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"the sidecar records the TensorRT version, but tensorrt does not import here ({exc}); {INSTALL_HINT}"
        ) from None
    gpu = gpu_info()
    if not gpu:
        log.warning("sidecar of %s: no GPU could be identified (cuda-python, pycuda, nvidia-smi)", engine_path)
    sidecar = {
        **(description or {}),
        "format": "tensorrt",
        "engine": engine_path.name,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "compute_capability": gpu.get("compute_capability"),
        "build": asdict(settings),
        "builder": builder,
        "source_onnx": onnx_path.name,
        "source_sha256": sha256_file(onnx_path),
        "seconds": None if seconds is None else round(seconds, 1),
        "version_compatible": False,
        "hardware_compatible": False,
    }
    atomic_write_json(engine_path.with_name(engine_path.name + ".json"), sidecar)
    return sidecar


def read_sidecar_json(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar written by :func:`write_sidecar` (plain JSON)."""
    path = Path(engine_path)
    path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise ArtifactError(f"engine sidecar {path} not found")
    return json.loads(path.read_text())


def layer_placement(layer_info: Mapping[str, Any]) -> dict[str, Any]:
    """Where an engine's layers run, from trtexec's ``--exportLayerInfo`` JSON.

    That JSON is the engine inspector's ``{"Layers": [...], "Bindings": [...]}``: with
    ``--profilingVerbosity=detailed`` each layer is an object with ``Name`` and ``LayerType``, otherwise a bare name.
    A DLA subgraph is one layer named ``{ForeignNode[first...last]}`` (the builder log calls it ``[DlaLayer]``); a
    layer counts as DLA when its type names DLA, or when it is such a foreign node that is not a Myelin (GPU) one. The
    copies in and out of DLA (``<tensor> to nvm``, ``from nvm``, ``copy finish``) are counted apart, and a layer
    without a type (not detailed) as unknown. ``layer_types`` keeps the raw type counts.

    Returns:
        ``{"layers", "dla", "gpu", "dla_transfers", "unknown", "dla_layers", "layer_types"}``.
    """
    counts = {"dla": 0, "gpu": 0, "dla_transfers": 0, "unknown": 0}
    dla_layers, types = [], {}
    layers = layer_info.get("Layers") or []
    for layer in layers:
        name = layer if isinstance(layer, str) else str(layer.get("Name", ""))
        kind = None if isinstance(layer, str) else layer.get("LayerType")
        if kind is not None:
            types[str(kind)] = types.get(str(kind), 0) + 1
        if name.endswith(DLA_TRANSFER_SUFFIXES):
            counts["dla_transfers"] += 1
        elif kind is None:
            counts["unknown"] += 1
        elif "dla" in str(kind).lower() or (name.startswith("{ForeignNode[") and "myelin" not in str(kind).lower()):
            counts["dla"] += 1
            dla_layers.append(name)
        else:
            counts["gpu"] += 1
    return {"layers": len(layers), **counts, "dla_layers": dla_layers, "layer_types": types}


def describe_placement(placement: Mapping[str, Any]) -> str:
    """One line for a :func:`layer_placement` summary."""
    core = placement.get("dla_core")
    line = (
        f"{placement['dla']} of {placement['layers']} engine layers on DLA core {core}, {placement['gpu']} on the GPU"
        f" ({placement['dla_transfers']} DLA transfers"
        + (f", {placement['unknown']} without a type" if placement["unknown"] else "")
        + ")"
    )
    if placement["unknown"] and not placement["dla"] and not placement["gpu"]:
        return line + ": the layer information has no layer types (trtexec --profilingVerbosity=detailed)"
    if not placement["dla"]:
        return line + f": nothing runs on DLA core {core}; the engine runs on the GPU"
    return line


def record_placement(engine_path: str | Path, settings: BuildSettings) -> dict[str, Any] | None:
    """Add where the layers of a DLA engine run to its sidecar (``placement``), from ``<engine>.layers.json``.

    Args:
        engine_path: the engine; its sidecar must exist (:func:`write_sidecar`).
        settings: the settings it was built with; nothing is done without a DLA core.

    Returns:
        The placement (:func:`layer_placement` with ``dla_core`` and ``layer_info``), or None: no DLA core, or no
        layer information (then a warning says so).
    """
    from foundation.io import atomic_write_json

    if settings.dla_core is None:
        return None
    info = layer_info_path(engine_path)
    if not info.is_file():
        log.warning(
            "%s: no layer information %s (trtexec --exportLayerInfo); where its layers run is unknown",
            engine_path,
            info,
        )
        return None
    try:
        raw = json.loads(info.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"layer information {info} is not valid JSON: {exc}") from None
    placement = {**layer_placement(raw), "dla_core": settings.dla_core, "layer_info": info.name}
    sidecar_file = Path(f"{engine_path}.json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["placement"] = placement
    atomic_write_json(sidecar_file, sidecar)
    return placement


def build_tensorrt_engine(
    onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings | None = None
) -> Path:
    """Build an engine for an exported ONNX with settings read from its description; returns the engine path.

    Without ``settings`` the precision is the ONNX's own (``int8`` for Q/DQ, ``fp16``, else ``fp32``) and strong typing
    follows :func:`default_strongly_typed` for the TensorRT installed here and the ONNX's float remainder (GPU build).
    """
    from runtimes.export import read_onnx_metadata

    ok, reason = tensorrt_status()
    if not ok:
        raise RuntimeUnavailable(reason)
    description = read_onnx_metadata(onnx_path)
    if settings is None:
        precision = description.get("precision", "fp32")
        precision = precision if precision in PRECISIONS else "fp32"
        import tensorrt as trt

        strongly = default_strongly_typed(precision, trt.__version__, float_remainder(description))
        settings = BuildSettings(precision, strongly_typed=strongly)
    build_engine(onnx_path, engine_path, settings, description)
    return Path(engine_path)


def main(argv: list[str] | None = None) -> int:
    """``python -m runtimes.tensorrt_build --onnx M.onnx --engine M.engine [--sidecar-only] [settings]``.

    Builds the engine with the TensorRT Python API, or (``--sidecar-only``) records the sidecar of an engine that
    ``trtexec`` just built with the same settings. Needs the ``onnx`` package to read the ONNX's description.
    """
    parser = argparse.ArgumentParser(prog="python -m runtimes.tensorrt_build", description=main.__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, type=Path)
    parser.add_argument("--engine", required=True, type=Path)
    parser.add_argument("--sidecar-only", action="store_true", help="write the sidecar of an already built engine")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the ONNX's own")
    parser.add_argument("--workspace-mb", type=int, default=2048)
    typing = parser.add_mutually_exclusive_group()
    typing.add_argument("--strongly-typed", dest="strongly_typed", action="store_true", default=None)
    typing.add_argument("--weakly-typed", dest="strongly_typed", action="store_false")
    parser.add_argument("--dla-core", type=int, default=None)
    parser.add_argument("--no-gpu-fallback", dest="gpu_fallback", action="store_false")
    parser.add_argument("--timing-cache", default=None)
    parser.add_argument(
        "--fp32-layer",
        dest="fp32_layers",
        action="append",
        default=[],
        metavar="NAME",
        help="a layer kept in FP32 in a weakly typed build (repeat)",
    )
    args = parser.parse_args(argv)
    try:
        try:
            from runtimes.export import read_onnx_metadata

            description = read_onnx_metadata(args.onnx)
        except ImportError as exc:
            raise RuntimeUnavailable(f"reading {args.onnx}'s description needs the onnx package ({exc})") from None
        precision = args.precision or description.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} of {args.onnx} is not one of {', '.join(PRECISIONS)}")
        strongly = args.strongly_typed
        if strongly is None:
            version = None
            if importlib.util.find_spec("tensorrt") is not None:
                import tensorrt as trt

                version = trt.__version__
            strongly = default_strongly_typed(precision, version, float_remainder(description), args.dla_core)
        settings = BuildSettings(
            precision,
            workspace_mb=args.workspace_mb,
            strongly_typed=strongly,
            dla_core=args.dla_core,
            gpu_fallback=args.gpu_fallback,
            timing_cache=args.timing_cache,
            fp32_layers=tuple(args.fp32_layers),
        )
        if args.sidecar_only:
            write_sidecar(args.onnx, args.engine, settings, description)
            print(f"wrote {args.engine}.json")
            placement = record_placement(args.engine, settings)
            if placement is not None:
                print(f"{args.engine}: {describe_placement(placement)}")
        else:
            build_engine(args.onnx, args.engine, settings, description)
            print(f"built {args.engine} and {args.engine}.json")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
