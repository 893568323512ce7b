#!/usr/bin/env python3
"""Compare this device's engine (or another backend) with the host's golden outputs; print PASS or FAIL.

Usage: ``python3 verify.py [--backend tensorrt] [--precision int8]``. Exit status 0 on PASS, 1 on FAIL.

The golden inputs are the host's pre-processed tensors, so this checks the engine alone. It reports the largest
logit difference and the IoU between the device's and the host's masks (at the model's output size, threshold as in
the metadata); the tolerances come from ``metadata.json`` (a looser one for INT8, whose kernels round differently on
every backend).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from common import BACKENDS, MASK_OUTPUT, ArtifactError, Bundle, PipelineError, fail


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorrt", choices=BACKENDS)
    parser.add_argument("--precision", default=None, help="int8 / fp16 / fp32 (default: every one in the bundle)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    try:
        bundle = Bundle.here()
        golden = np.load(bundle.root / bundle.meta["golden"]["inputs"])
        inputs = {name: golden[name] for name in golden.files}
        cut = float(np.log(bundle.meta["threshold"] / (1 - bundle.meta["threshold"])))
        results, ok = {}, True
        for precision in [args.precision] if args.precision else bundle.precisions:
            entry = bundle.model_entry(precision)
            expected = np.load(bundle.root / bundle.golden_outputs(args.backend, precision))[MASK_OUTPUT]
            rt = bundle.runtime(args.backend, precision, args.threads)
            got = np.concatenate(
                [rt.infer({k: v[i : i + 1] for k, v in inputs.items()})[MASK_OUTPUT] for i in range(len(expected))]
            )
            if got.shape != expected.shape:  # also keeps got - expected from broadcasting
                raise ArtifactError(
                    f"{args.backend} {precision} gave mask_logits of shape {got.shape} for the golden inputs, but "
                    f"the golden outputs have shape {expected.shape}: the model is not the one the host ran"
                )
            max_abs = float(np.abs(got - expected).max())
            ious = [mask_iou(g >= cut, e >= cut) for g, e in zip(got, expected)]
            tol = entry["tolerance"]
            passed = max_abs <= tol["max_abs"] and min(ious) >= tol["mask_iou"]
            ok &= passed
            results[precision] = {
                "max_abs": max_abs,
                "min_mask_iou": min(ious),
                "mean_mask_iou": float(np.mean(ious)),
                "tolerance": tol,
                "passed": passed,
                "samples": len(expected),
            }
            print(
                f"{'PASS' if passed else 'FAIL'} {args.backend} {precision}: max |Δlogit| {max_abs:.4g} "
                f"(≤ {tol['max_abs']}), mask IoU min {min(ious):.4f} mean {np.mean(ious):.4f} "
                f"(≥ {tol['mask_iou']}) over {len(expected)} golden samples"
            )
        if args.json:
            print(json.dumps(results, indent=2))
    except PipelineError as exc:
        return fail(exc)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
