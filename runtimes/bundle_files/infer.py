#!/usr/bin/env python3
"""Segment what a sentence names in an image; write the mask PNG and an overlay.

Usage: ``python3 infer.py --image frame.jpg --text "the red mug left of the laptop" [--backend tensorrt]
[--precision int8] [--out out/]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import BACKENDS, Bundle, PipelineError, fail, read_image, save_mask_and_overlay


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
        proc = bundle.processing()
        texts = proc.checked_texts(args.text)  # every sentence is checked before anything is written
        image_inputs = proc.image(rgb)
        args.out.mkdir(parents=True, exist_ok=True)
        for i, (sentence, text_inputs) in enumerate(zip(args.text, texts)):  # one entry per sentence
            started = time.perf_counter()
            out = rt.infer({**image_inputs, **text_inputs})
            mask = proc.postprocess(out["mask_logits"][0], rgb.shape[:2])
            ms = (time.perf_counter() - started) * 1e3
            stem = args.image.stem if len(args.text) == 1 else f"{args.image.stem}_{i}"
            save_mask_and_overlay(rgb, mask, args.out / f"{stem}_mask.png", args.out / f"{stem}_overlay.png")
            print(f"{sentence!r}: {int(mask.sum())} px ({mask.mean():.1%}) in {ms:.1f} ms -> {args.out / stem}_*.png")
    except PipelineError as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
