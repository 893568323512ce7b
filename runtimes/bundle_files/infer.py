#!/usr/bin/env python3
"""Segment what a sentence names in an image; write the mask PNG and an overlay.

Usage: ``python3 infer.py --image frame.jpg --text "the red mug left of the laptop" [--backend tensorrt]
[--precision int8] [--out out/]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import BACKENDS, Bundle, PipelineError, fail, read_image, segment_to_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--text", required=True, action="append", help="a sentence (repeat for several)")
    parser.add_argument("--backend", default="tensorrt", choices=BACKENDS)
    parser.add_argument("--precision", default=None, help="int8 / fp16 / fp32 (default: the profile's)")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        bundle = Bundle.here()
        precision = args.precision or bundle.precisions[0]
        rgb = read_image(args.image)  # before the (slower) model load: a bad image fails fast
        rt = bundle.runtime(args.backend, precision, args.threads)
        for prediction in segment_to_files(rt, bundle.processing(), rgb, args.text, args.image.stem, args.out):
            print(prediction.line())
    except PipelineError as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
