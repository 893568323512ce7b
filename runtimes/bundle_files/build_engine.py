#!/usr/bin/env python3
"""Build this bundle's TensorRT engines on the device they will run on (same as build_engine.sh, in Python).

Usage: ``python3 build_engine.py [--precision int8] [--workspace-mb 1024] [--dla-core 0]``;
``python3 build_engine.py --sidecar-only [--precision int8]`` writes the JSON sidecar of an engine that trtexec just
built (``build_engine.sh`` runs it after each trtexec line) with the settings of that trtexec line, which
``metadata.json`` records (``models[precision]["build"]``); for a DLA engine it also reads the layer information the
trtexec line exported (``<engine>.layers.json``) and records and prints how many layers run on DLA and on the GPU.

Each sidecar gets the description of its own model (``models[precision]["description"]``), the TensorRT version
installed here and this device's GPU: the runtime refuses an engine without a sidecar, or built elsewhere. The Python
build takes the bundle's ``build`` settings (``metadata.json``'s ``tensorrt``: strong typing, workspace, GPU fallback,
timing cache) for the TensorRT installed here: only the FP16 engine goes to the DLA core, and a weakly typed build
keeps the model's decomposed LayerNorms and softmax inputs in FP32 (``models[precision]["fp32_layers"]``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import Bundle, PipelineError, fail

from foundation.errors import ArtifactError
from runtimes.tensorrt_build import build_engine, write_sidecar
from runtimes.tensorrt_placement import describe_placement, record_placement
from runtimes.tensorrt_settings import BuildSettings, device_settings, float_remainder


def model_description(bundle: Bundle, precision: str) -> dict[str, Any]:
    """The description of the model a precision's engine is built from (older bundles: the bundle's)."""
    return dict(bundle.model_entry(precision).get("description") or bundle.meta["description"])


def recorded_settings(bundle: Bundle, precision: str) -> BuildSettings:
    """The settings build_engine.sh's trtexec line for ``precision`` was made with.

    Raises:
        ArtifactError: ``metadata.json`` records none (a bundle made before the settings were recorded).
    """
    recorded = bundle.model_entry(precision).get("build")
    if not isinstance(recorded, dict):
        raise ArtifactError(
            f"metadata.json records no trtexec build settings for the {precision} engine (expected "
            f"models.{precision}.build), so a sidecar cannot say how it was built; build with python3 build_engine.py "
            "instead, or remake the bundle with the pipeline"
        )
    return BuildSettings(**recorded)


def main(argv: list[str] | None = None) -> int:
    bundle = Bundle.here()
    trt = bundle.meta["tensorrt"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default=None, help="default: every precision in the bundle")
    parser.add_argument("--workspace-mb", type=int, default=None, help=f"default: {trt['workspace_mb']}")
    parser.add_argument("--dla-core", type=int, default=None, help=f"default: {trt.get('dla_core')}")
    parser.add_argument(
        "--timing-cache", default=None, help="default: timing.cache, unless the bundle was made without a timing cache"
    )
    parser.add_argument(
        "--sidecar-only",
        action="store_true",
        help="write the sidecar of an engine trtexec already built (settings from metadata.json)",
    )
    args = parser.parse_args(argv)
    if args.sidecar_only and (args.workspace_mb is not None or args.dla_core is not None):
        return fail(
            ValueError(
                "--sidecar-only records the settings build_engine.sh's trtexec lines used (metadata.json); "
                f"--workspace-mb {args.workspace_mb} / --dla-core {args.dla_core} cannot change how an engine was built"
            )
        )
    try:
        for precision in [args.precision] if args.precision else bundle.precisions:
            entry = bundle.model_entry(precision)
            if not entry.get("engine"):
                raise ArtifactError(f"the {precision} model has no TensorRT engine in this bundle (it has {entry})")
            onnx_path, engine_path = bundle.root / entry["onnx"], bundle.root / entry["engine"]
            description = model_description(bundle, precision)
            if args.sidecar_only:
                settings = recorded_settings(bundle, precision)
                write_sidecar(onnx_path, engine_path, settings, description)
                print(f"wrote {entry['engine']}.json ({precision})")
                placement = record_placement(engine_path, settings)
                if placement is not None:
                    print(f"{entry['engine']} ({precision}): {describe_placement(placement)}")
                continue
            import tensorrt

            cache = args.timing_cache or ("timing.cache" if trt.get("timing_cache", True) else None)
            settings = device_settings(
                precision,
                tensorrt.__version__,
                dla_core=trt.get("dla_core") if args.dla_core is None else args.dla_core,
                workspace_mb=trt["workspace_mb"] if args.workspace_mb is None else args.workspace_mb,
                strongly_typed=trt.get("strongly_typed", "auto"),
                gpu_fallback=trt.get("gpu_fallback", True),
                timing_cache=str(bundle.root / cache) if cache else None,
                remainder=float_remainder(description) if precision == "int8" else None,
                fp32_layers=entry.get("fp32_layers") or (),
            )
            build_engine(onnx_path, engine_path, settings, description)
            print(f"built {entry['engine']} ({precision})")
    except (PipelineError, ImportError) as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
