"""TensorRT engine builder: ONNX → serialized engine + JSON sidecar, and the equivalent ``trtexec`` script.

Usage: ``build_engine("full_int8_qdq.onnx", "full_int8_qdq.engine", precision="int8", trt_version_hint="10.3")``;
``write_build_script("build_engine.sh", trtexec_command(...))`` works everywhere (no TensorRT needed).

Precision handling follows TensorRT's own migration path:

- Q/DQ INT8 ONNX on TensorRT ≥ 10: a **strongly typed** network (types come from the graph; the builder flags are
  neither needed nor allowed). TensorRT 11 removed the INT8/FP16 builder flags and implicit calibration altogether.
- Q/DQ INT8 ONNX on 8.x: explicit quantization with the ``INT8`` flag (plus ``FP16`` so the float remainder may run
  in half); no calibrator, the scales are in the graph.
- FP16 ONNX: strongly typed on ≥ 10 (the graph keeps LayerNorm/Softmax/reductions in FP32); ``FP16`` flag on 8.x.
- Optional DLA core with GPU fallback (DLA runs FP16/INT8 only; attention, LayerNorm and Softmax fall back).

The sidecar ``<engine>.json`` records the TensorRT version, GPU, compute capability, flags, workspace and the sha256
of the input ONNX, plus the ONNX's own description (I/O, normalization, tokenizer), so the runtime needs nothing else.
Engines are tied to the TensorRT version and GPU they were built on: build on the target device.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError, ConfigError, RuntimeUnavailable

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU: on a Jetson it comes with JetPack (python3-libnvinfer); on an x86 GPU host "
    "pip install tensorrt (from NVIDIA's index) or the project's [trt] extra"
)


@dataclass
class BuildSettings:
    """What decides an engine build (recorded in the sidecar)."""

    precision: str
    workspace_mb: int = 2048
    strongly_typed: bool = True
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown engine precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.dla_core is not None and self.precision == "fp32":
            raise ConfigError("DLA runs FP16 or INT8 only; build precision fp32 cannot use a DLA core")


def major(version: str | None) -> int | None:
    """Major version of a TensorRT version string (None stays None)."""
    return None if version is None else int(str(version).split(".")[0])


def default_strongly_typed(precision: str, trt_version: str | None) -> bool:
    """Strong typing for Q/DQ INT8 and FP16 graphs on TensorRT ≥ 10 (the only mode from 11 on)."""
    m = major(trt_version)
    return precision in ("int8", "fp16") and (m is None or m >= 10)


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: TensorRT imports and a CUDA GPU is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"tensorrt is not installed ({INSTALL_HINT})"
    gpu = gpu_info()
    if not gpu:
        return False, "no NVIDIA GPU visible (TensorRT builds engines on the GPU they will run on)"
    return True, f"TensorRT with {gpu.get('name')}"


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of GPU 0 via cuda-python, else nvidia-smi; ``{}`` when there is none."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return {"name": name.strip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}
    except Exception:  # cuda-python missing or no device: try the next source
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=True,
                )
                .stdout.strip()
                .splitlines()
            )
            if out:
                name, cc = (p.strip() for p in out[0].split(",", 1))
                return {"name": name, "compute_capability": cc}
        except (subprocess.SubprocessError, ValueError):
            pass
    return {}


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings) -> list[str]:
    """The ``trtexec`` invocation equivalent to :func:`build_engine` with ``settings``."""
    workspace = f"--memPoolSize=workspace:{settings.workspace_mb}"  # MiB in TensorRT 8.4+ and 10
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", workspace]
    if settings.strongly_typed:
        cmd.append("--stronglyTyped")
    elif settings.precision == "fp16":
        cmd.append("--fp16")
    elif settings.precision == "int8":
        cmd += ["--int8", "--fp16"]  # explicit Q/DQ scales; FP16 allowed for the float remainder
    if settings.dla_core is not None:
        cmd.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            cmd.append("--allowGPUFallback")
    if settings.timing_cache:
        cmd.append(f"--timingCacheFile={settings.timing_cache}")
    cmd += ["--skipInference"]
    return cmd


def write_build_script(path: str | Path, commands: list[list[str]], note: str = "") -> Path:
    """A bash script running each ``trtexec`` command from the script's own folder."""
    path = Path(path)
    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT engines on the target device (engines are tied to its TensorRT version and GPU).",
        *(f"# {line}" for line in note.splitlines() if line),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'command -v trtexec >/dev/null || PATH="$PATH:/usr/src/tensorrt/bin"  # JetPack puts trtexec there',
        *(" ".join(shlex.quote(c) for c in cmd) for cmd in commands),
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


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
        settings: precision, workspace, strong typing, DLA, timing cache.
        description: the ONNX's self-description (copied into the sidecar).

    Returns:
        The sidecar content.

    Raises:
        RuntimeUnavailable: no TensorRT or no GPU here.
        ArtifactError: the parser or the builder failed (parser errors are listed with their nodes).
    """
    from pipeline.io import atomic_write_bytes, atomic_write_json, sha256_file

    ok, reason = tensorrt_status()
    if not ok:
        raise RuntimeUnavailable(reason)
    import tensorrt as trt

    started = time.perf_counter()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt_major = major(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings.strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise ArtifactError(
                f"TensorRT {trt.__version__} has no strongly typed networks; set build.strongly_typed=off"
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
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see the log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    gpu = gpu_info()
    sidecar = {
        **(description or {}),
        "format": "tensorrt",
        "engine": engine_path.name,
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "compute_capability": gpu.get("compute_capability"),
        "build": asdict(settings),
        "source_onnx": onnx_path.name,
        "source_sha256": sha256_file(onnx_path),
        "seconds": round(time.perf_counter() - started, 1),
        "version_compatible": False,
        "hardware_compatible": False,
    }
    atomic_write_json(engine_path.with_name(engine_path.name + ".json"), sidecar)
    log.info(
        "TensorRT %s engine (%s): %s in %.1f s", trt.__version__, settings.precision, engine_path, sidecar["seconds"]
    )
    return sidecar


def read_sidecar_json(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar written by :func:`build_engine` (plain JSON)."""
    path = Path(engine_path)
    path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise ArtifactError(f"engine sidecar {path} not found")
    return json.loads(path.read_text())


def build_tensorrt_engine(
    onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings | None = None
) -> Path:
    """Build an engine for an exported ONNX with settings read from its description; returns the engine path.

    Without ``settings`` the precision is the ONNX's own (``int8`` for Q/DQ, ``fp16``, else ``fp32``) and strong typing
    follows :func:`default_strongly_typed` for the TensorRT installed here.
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

        settings = BuildSettings(precision, strongly_typed=default_strongly_typed(precision, trt.__version__))
    build_engine(onnx_path, engine_path, settings, description)
    return Path(engine_path)
