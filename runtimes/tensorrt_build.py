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
- Optional DLA core with GPU fallback (attention, LayerNorm and Softmax fall back to the GPU).

The sidecar ``<engine>.json`` records the TensorRT version, GPU, compute capability, flags, workspace and the sha256
of the input ONNX, plus the ONNX's own description (I/O, normalization, tokenizer), so the runtime needs nothing else.
Engines are tied to the TensorRT version and GPU they were built on: build on the target device.
"""

from __future__ import annotations

import argparse
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

from pipeline.errors import ArtifactError, ConfigError, PipelineError, RuntimeUnavailable

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_REMAINDERS = ("fp32", "fp16")
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
    from pipeline.io import atomic_write_text

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
    from pipeline.io import atomic_write_bytes

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
    sidecar = write_sidecar(
        onnx_path, engine_path, settings, description, seconds=time.perf_counter() - started, builder="tensorrt"
    )
    log.info(
        "TensorRT %s engine (%s): %s in %.1f s", trt.__version__, settings.precision, engine_path, sidecar["seconds"]
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
    from pipeline.io import atomic_write_json, sha256_file

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
        )
        if args.sidecar_only:
            write_sidecar(args.onnx, args.engine, settings, description)
            print(f"wrote {args.engine}.json")
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
