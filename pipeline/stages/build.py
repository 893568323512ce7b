"""The ``build`` stage: TensorRT engine for the device profile (when TensorRT and a GPU are here) + ``build_engine.sh``.

Usage: ``python -m pipeline run --config configs/demo.yaml --device jetson-orin-nano --stages build``.

Always writes ``build_engine.sh`` (the equivalent ``trtexec`` command followed by the sidecar step, to run on the
target from a checkout of the project) and the TensorRT compatibility check of the ONNX it builds from. Builds
``<name>.engine`` + ``<name>.engine.json`` only where TensorRT and an NVIDIA GPU exist; elsewhere the figures say
``unavailable: <reason>`` and the pipeline goes on. The deploy path to a robot is the ``bundle`` stage, whose
``build_engine.sh`` needs nothing but JetPack and the bundle.

The settings come from :func:`runtimes.tensorrt_settings.device_settings`: ``build.strongly_typed`` ``on``/``off`` is
used as given (refused where the profile's TensorRT lacks it); ``auto`` follows
:func:`runtimes.tensorrt_settings.default_strongly_typed` for the profile's TensorRT version, the ONNX's float remainder
and the DLA core; only an FP16 engine goes to the profile's DLA core (DLA does not run Q/DQ INT8); a weakly typed
build keeps the ONNX's decomposed LayerNorms and softmax inputs in FP32. ``build_engine.sh`` holds only the trtexec
options of the profile's TensorRT version.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from pipeline.stage import CODE_BASE, StageContext, stage
from runtimes.formats import FORMATS

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# precision -> the format (runtimes.formats) an engine of that precision is built from
SOURCES = {"int8": "onnxruntime-int8", "fp16": "onnx-fp16", "fp32": "onnxruntime-fp32"}


@stage(
    "build",
    upstream=("export", "quantize"),
    sections=("build", "device"),
    version="1",
    toolchain=("onnx", "tensorrt"),
    code=(
        *CODE_BASE,
        "quantize.data",
        "quantize.trt_compat",
        "runtimes.base",
        "runtimes.data",
        "runtimes.export",
        "runtimes.tensorrt_build",
        "runtimes.fp32_layers",
        "runtimes.tensorrt_commands",
        "runtimes.tensorrt_placement",
        "runtimes.tensorrt_settings",
    ),
    per_device=True,
)
def run_build(ctx: StageContext) -> dict[str, Any]:
    """Check, script and (where possible) build the TensorRT engine of the device profile's precision."""
    from quantize.trt_compat import check_trt_compat
    from runtimes.export import read_onnx_metadata
    from runtimes.tensorrt_build import build_engine, tensorrt_status
    from runtimes.tensorrt_commands import sidecar_command, trtexec_command

    b, dev = ctx.cfg.build, ctx.cfg.device
    precision = dev.precision if b.precision == "auto" else b.precision
    # 1. the ONNX for that precision (Q/DQ INT8 from quantize, FP16/FP32 from export), copied beside the script
    fmt = FORMATS[SOURCES[precision]]
    onnx_path = copy_source(ctx, fmt, precision)
    description = read_onnx_metadata(onnx_path)
    settings, remainder = engine_settings(ctx, precision, onnx_path, description)
    engine_name = Path(fmt.file).with_suffix(".engine").name
    # 2. the compatibility check (CPU) and the trtexec script (always)
    report = check_trt_compat(onnx_path, dev.trt_version)
    if not report.ok:
        log.warning("build: %s", report.summary())
    trtexec = trtexec_command(fmt.file, engine_name, settings, dev.trt_version)
    sidecar_step = sidecar_command(fmt.file, engine_name, settings)
    write_script(ctx, f"{precision}, float remainder {remainder or '-'}", settings, [trtexec, sidecar_step])
    figures: dict[str, Any] = {
        "device": dev.name,
        "precision": precision,
        "source": f"{fmt.stage}/{fmt.file}",
        "float_remainder": remainder,
        "settings": settings.__dict__,
        "trtexec": shlex.join(trtexec),
        "sidecar": sidecar_step,
        "trt_compat": report.to_dict() | {"ops": None},
    }
    # 3. the engine, where TensorRT and a GPU exist
    ok, reason = tensorrt_status()
    if not ok:
        figures["status"] = f"unavailable: {reason}"
        log.info("build: engine not built here (%s); run build_engine.sh on the device", reason)
        return figures
    if settings.timing_cache:
        settings.timing_cache = str(ctx.out / settings.timing_cache)
    sidecar = build_engine(onnx_path, ctx.out / engine_name, settings, description)
    return figures | {
        "status": "built",
        "engine": engine_name,
        "tensorrt_version": sidecar["tensorrt_version"],
        "gpu": sidecar["gpu"],
        "seconds": sidecar["seconds"],
    }


def copy_source(ctx: StageContext, fmt: Any, precision: str) -> Path:
    """Copy the engine's source ONNX from its stage into this stage's folder (atomically).

    Raises:
        ArtifactError: the source was not made (its stage's switch is off).
    """
    import shutil

    from foundation.errors import ArtifactError
    from foundation.io import atomic_path

    src = ctx.upstream(fmt.stage) / fmt.file
    if not src.is_file():
        raise ArtifactError(f"{src} is missing: enable {'quant.qdq' if precision == 'int8' else 'export.fp16'}")
    onnx_path = ctx.out / fmt.file
    with atomic_path(onnx_path) as tmp:
        shutil.copy2(src, tmp)
    return onnx_path


def engine_settings(
    ctx: StageContext, precision: str, onnx_path: Path, description: dict[str, Any]
) -> tuple[Any, str | None]:
    """The engine's build settings for the device profile's TensorRT version and the ``build`` section, and the
    float remainder of a Q/DQ INT8 source (None otherwise)."""
    from runtimes.fp32_layers import fp32_layer_names
    from runtimes.tensorrt_settings import device_settings, float_remainder

    b, dev = ctx.cfg.build, ctx.cfg.device
    remainder = float_remainder(description) if precision == "int8" else None
    settings = device_settings(
        precision,
        dev.trt_version,
        dla_core=dev.dla_core,
        workspace_mb=b.workspace_mb or dev.workspace_mb,
        strongly_typed=b.strongly_typed,
        gpu_fallback=b.gpu_fallback,
        timing_cache="timing.cache" if b.timing_cache else None,
        remainder=remainder,
        fp32_layers=fp32_layer_names(onnx_path),
    )
    return settings, remainder


def write_script(ctx: StageContext, what: str, settings: Any, commands: list[Any]) -> None:
    """``build_engine.sh``: trtexec, then the sidecar step, run from a checkout of the project."""
    from runtimes.tensorrt_commands import python_check, write_build_script

    dev = ctx.cfg.device
    note = (
        f"Device profile {dev.name}: TensorRT {dev.trt_version or 'any'}, {what}, strongly typed: "
        f"{settings.strongly_typed}, DLA core: {settings.dla_core}, FP32 layers: {len(settings.fp32_layers)}.\n"
        "After trtexec, the project's runtimes.tensorrt_build writes the engine's JSON sidecar (the runtime\n"
        "refuses an engine without one): run this from a checkout of the project, with PYTHON=<an interpreter\n"
        "that has onnx and tensorrt> if python3 lacks them. To deploy to a robot, use the deploy bundle\n"
        "(make <device>): its build_engine.sh needs only JetPack."
    )
    preamble = [
        "export PYTHONPATH=" + '"${PYTHONPATH:+$PYTHONPATH:}"' + shlex.quote(str(PROJECT_ROOT)),
        python_check(
            ["onnx", "tensorrt", "runtimes.tensorrt_build"],
            "the sidecar step needs (set PYTHON to an interpreter that has them, PYTHONPATH to the project checkout)",
        ),
    ]
    write_build_script(ctx.out / "build_engine.sh", commands, note, preamble=preamble)
