"""The ``build`` stage: TensorRT engine for the device profile (when TensorRT and a GPU are here) + ``build_engine.sh``.

Usage: ``python -m pipeline run --config configs/demo.yaml --device jetson-orin-nano --stages build``.

Always writes ``build_engine.sh`` (the equivalent ``trtexec`` commands, to run on the target) and the TensorRT
compatibility check of the ONNX it builds from. Builds ``<name>.engine`` + ``<name>.engine.json`` only where TensorRT
and an NVIDIA GPU exist; elsewhere the figures say ``unavailable: <reason>`` and the pipeline goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.stage import StageContext, stage

log = logging.getLogger(__name__)

SOURCES = {
    "int8": ("quantize", "full_int8_qdq.onnx"),
    "fp16": ("export", "full_fp16.onnx"),
    "fp32": ("export", "full.onnx"),
}


@stage(
    "build",
    upstream=("export", "quantize"),
    sections=("build", "device"),
    version="1",
    toolchain=("onnx", "tensorrt"),
    per_device=True,
)
def run_build(ctx: StageContext) -> dict[str, Any]:
    """Check, script and (where possible) build the TensorRT engine of the device profile's precision."""
    import shutil

    from quantize.trt_compat import check_trt_compat
    from runtimes.export import read_onnx_metadata
    from runtimes.tensorrt_build import (
        BuildSettings,
        build_engine,
        default_strongly_typed,
        tensorrt_status,
        trtexec_command,
        write_build_script,
    )

    b, dev = ctx.cfg.build, ctx.cfg.device
    precision = dev.precision if b.precision == "auto" else b.precision
    # 1. the ONNX for that precision (Q/DQ INT8 from quantize, FP16/FP32 from export), copied beside the script
    stage_name, file_name = SOURCES[precision]
    src = ctx.upstream(stage_name) / file_name
    if not src.is_file():
        from pipeline.errors import ArtifactError

        raise ArtifactError(f"{src} is missing: enable {'quant.qdq' if precision == 'int8' else 'export.fp16'}")
    onnx_path = ctx.out / file_name
    shutil.copy2(src, onnx_path)
    strongly = b.strongly_typed == "on" or (
        b.strongly_typed == "auto" and default_strongly_typed(precision, dev.trt_version)
    )
    settings = BuildSettings(
        precision=precision,
        workspace_mb=b.workspace_mb or dev.workspace_mb,
        strongly_typed=strongly,
        dla_core=dev.dla_core,
        gpu_fallback=b.gpu_fallback,
        timing_cache="timing.cache" if b.timing_cache else None,
    )
    engine_name = Path(file_name).with_suffix(".engine").name
    # 2. the compatibility check (CPU) and the trtexec script (always)
    report = check_trt_compat(onnx_path, dev.trt_version)
    if not report.ok:
        log.warning("build: %s", report.summary())
    note = f"Device profile {dev.name}: TensorRT {dev.trt_version or 'any'}, {precision}, strongly typed: {strongly}"
    write_build_script(ctx.out / "build_engine.sh", [trtexec_command(file_name, engine_name, settings)], note)
    figures: dict[str, Any] = {
        "device": dev.name,
        "precision": precision,
        "source": f"{stage_name}/{file_name}",
        "settings": settings.__dict__,
        "trtexec": " ".join(trtexec_command(file_name, engine_name, settings)),
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
    sidecar = build_engine(onnx_path, ctx.out / engine_name, settings, read_onnx_metadata(onnx_path))
    figures |= {
        "status": "built",
        "engine": engine_name,
        "tensorrt_version": sidecar["tensorrt_version"],
        "gpu": sidecar["gpu"],
        "seconds": sidecar["seconds"],
    }
    return figures
