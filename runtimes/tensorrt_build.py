"""TensorRT engine builder: ONNX → serialized engine + JSON sidecar, with the TensorRT Python API or after trtexec.

Usage: ``build_engine("full_int8_qdq.onnx", "full_int8_qdq.engine", settings)`` (settings from
:func:`runtimes.tensorrt_settings.device_settings`); after a ``trtexec`` build (:mod:`runtimes.tensorrt_commands`),
:func:`write_sidecar` (``python3 -m runtimes.tensorrt_build --sidecar-only ...``) records the sidecar the runtime
needs, and for a DLA engine where its layers run (:mod:`runtimes.tensorrt_placement`).

The sidecar ``<engine>.json`` records the TensorRT version, GPU, compute capability, flags, workspace and the sha256
of the input ONNX, plus the ONNX's own description (I/O, normalization, tokenizer), so the runtime needs nothing else.
Engines are tied to the TensorRT version and GPU they were built on: build on the target device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError, ConfigError, PipelineError, RuntimeUnavailable
from runtimes.tensorrt_placement import describe_placement, record_placement
from runtimes.tensorrt_settings import PRECISIONS, BuildSettings, default_strongly_typed, float_remainder, major

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU: on a Jetson it comes with JetPack (python3-libnvinfer); on an x86 GPU host "
    "pip install tensorrt (from NVIDIA's index) or the project's [trt] extra"
)


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


def _parse_network(trt: Any, builder: Any, logger: Any, settings: BuildSettings, onnx_path: Path) -> tuple[Any, Any]:
    """The network of the ONNX, explicit batch (before 10.x) and strongly typed when asked; returns
    ``(network, parser)``: the parser owns the weights, so it must outlive the build.

    Raises:
        ArtifactError: this TensorRT has no strongly typed networks, or cannot parse the ONNX (its errors listed).
    """
    flags = 0
    if major(trt.__version__) < 10:
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
    return network, parser


def _builder_config(
    trt: Any, builder: Any, network: Any, settings: BuildSettings, onnx_path: Path
) -> tuple[Any, list[str]]:
    """The builder config of ``settings``: workspace, precision flags of a weakly typed build, the FP32 layers and
    the DLA core; returns ``(config, names of the layers pinned to FP32)``."""
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
    return config, pinned


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
    network, parser = _parse_network(trt, builder, logger, settings, onnx_path)  # parser: kept until the build
    config, pinned = _builder_config(trt, builder, network, settings, onnx_path)
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


def build_tensorrt_engine(
    onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings | None = None
) -> Path:
    """Build an engine for an exported ONNX with settings read from its description; returns the engine path.

    Without ``settings`` the precision is the ONNX's own (``int8`` for Q/DQ, ``fp16``, else ``fp32``) and strong typing
    follows :func:`runtimes.tensorrt_settings.default_strongly_typed` for the TensorRT installed here and the ONNX's
    float remainder (GPU build).
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
