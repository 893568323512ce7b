#!/usr/bin/env python3
"""Build this bundle's TensorRT engines on the device they will run on (same as build_engine.sh, in Python).

Usage: ``python3 build_engine.py [--precision int8] [--workspace-mb 1024] [--dla-core 0]``
"""

from __future__ import annotations

import argparse
import sys

from common import Bundle, PipelineError, fail

from runtimes.tensorrt_build import BuildSettings, build_engine, default_strongly_typed


def main(argv: list[str] | None = None) -> int:
    bundle = Bundle.here()
    trt = bundle.meta["tensorrt"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default=None, help="default: every precision in the bundle")
    parser.add_argument("--workspace-mb", type=int, default=trt["workspace_mb"])
    parser.add_argument("--dla-core", type=int, default=trt.get("dla_core"))
    parser.add_argument("--timing-cache", default="timing.cache")
    args = parser.parse_args(argv)
    try:
        for precision in [args.precision] if args.precision else bundle.precisions:
            entry = bundle.model_entry(precision)
            import tensorrt

            settings = BuildSettings(
                precision=precision,
                workspace_mb=args.workspace_mb,
                strongly_typed=default_strongly_typed(precision, tensorrt.__version__),
                dla_core=args.dla_core,
                timing_cache=str(bundle.root / args.timing_cache),
            )
            build_engine(
                bundle.root / entry["onnx"], bundle.root / entry["engine"], settings, bundle.meta["description"]
            )
            print(f"built {entry['engine']} ({precision})")
    except (PipelineError, ImportError) as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
