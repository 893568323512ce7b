"""Parameters, GFLOPs and (optionally) PyTorch CPU latency per part of a model variant.

Usage: ``python -m model.summary edge --latency --runs 20 --threads 2 [-o img_size=256] [--json out.json]``.

Parts: ``vision`` (image encoder), ``text`` (text encoder), ``fusion`` (S²RM blocks), ``decoder`` (CASG). FLOPs are
counted by ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 (matmuls and convolutions; 1 multiply-add = 2
FLOPs); latency is the median of ``runs`` timed eager forwards after warm-up, batch 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.graphs import graph_specs
from model.ris import RISModel
from model.variants import create_model, list_variants

PARTS = ("vision", "text", "fusion", "decoder")


def _part_calls(model: RISModel) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables running each part (and the whole model) on batch-1 example inputs."""
    image, input_ids, attention_mask = graph_specs(model)["full"].example_inputs()
    with torch.inference_mode():
        feats = model.encode_image(image)
        words, sentence = model.encode_text(input_ids, attention_mask)
        fused = model.fuse(feats, words, sentence, attention_mask)
    return {
        "vision": lambda: model.encode_image(image),
        "text": lambda: model.encode_text(input_ids, attention_mask),
        "fusion": lambda: model.fuse(feats, words, sentence, attention_mask),
        "decoder": lambda: model.decoder(fused, sentence),
        "decode": lambda: model.decode(*feats, words, sentence, attention_mask),
        "full": lambda: model(image, input_ids, attention_mask),
    }


def summarize(model: RISModel) -> dict[str, dict[str, float]]:
    """``{part: {"params_m": millions, "gflops": GFLOPs at batch 1}}`` for the four parts and ``total``."""
    model.eval()
    calls = _part_calls(model)
    modules = {"vision": model.vision, "text": model.text, "fusion": model.fusion, "decoder": model.decoder}
    out: dict[str, dict[str, float]] = {}
    for part in PARTS:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            calls[part]()
        params = sum(p.numel() for p in modules[part].parameters())
        out[part] = {"params_m": params / 1e6, "gflops": counter.get_total_flops() / 1e9}
    out["total"] = {k: sum(out[p][k] for p in PARTS) for k in ("params_m", "gflops")}
    return out


def measure_latency(model: RISModel, runs: int = 20, threads: int = 2, warmup: int = 3) -> dict[str, dict[str, float]]:
    """PyTorch eager CPU latency (ms) at batch 1: median, p90 and min of ``runs`` for the full and split graphs.

    The minimum is the figure to trust on a machine shared with other jobs; the median on a quiet one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    calls = _part_calls(model)
    out = {}
    try:
        for name in ("full", "vision", "text", "decode"):
            times = []
            with torch.inference_mode():
                for i in range(warmup + runs):
                    start = time.perf_counter()
                    calls[name]()
                    if i >= warmup:
                        times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            p90 = times[int(0.9 * (len(times) - 1))]
            out[name] = {"median_ms": statistics.median(times), "p90_ms": p90, "min_ms": times[0]}
    finally:
        torch.set_num_threads(previous)
    return out


def extra_expression_cost(latency: dict[str, dict[str, float]]) -> dict[str, float]:
    """Cost of one more expression on an already-encoded frame, in % of a full forward (medians of
    :func:`measure_latency`): a new sentence runs text + decode, a cached one (a fixed robot command) decode only."""
    full = latency["full"]["median_ms"]
    text, decode = latency["text"]["median_ms"], latency["decode"]["median_ms"]
    return {"new_pct": 100 * (text + decode) / full, "cached_pct": 100 * decode / full}


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"override {text!r} must be key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    """Print the summary table of a variant; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m model.summary", description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=list_variants())
    parser.add_argument("-o", "--override", action="append", type=_parse_override, default=[], help="key=json value")
    parser.add_argument("--latency", action="store_true", help="also time PyTorch CPU inference at batch 1")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    model = create_model(args.variant, **dict(args.override))
    figures: dict[str, Any] = {"variant": args.variant, "spec": model.spec.to_dict(), "parts": summarize(model)}
    print(f"{args.variant}: img_size {model.spec.img_size}, tokens {model.spec.max_tokens}")
    print(f"{'part':<10}{'params (M)':>12}{'GFLOPs':>10}")
    for part, row in figures["parts"].items():
        print(f"{part:<10}{row['params_m']:>12.2f}{row['gflops']:>10.2f}")
    if args.latency:
        figures["latency"] = measure_latency(model, args.runs, args.threads)
        figures["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
        print(f"PyTorch CPU latency, batch 1, {args.threads} threads, median of {args.runs}:")
        for name, row in figures["latency"].items():
            print(f"  {name:<8}{row['median_ms']:>9.1f} ms  (p90 {row['p90_ms']:.1f}, min {row['min_ms']:.1f})")
        figures["extra_expression"] = extra = extra_expression_cost(figures["latency"])
        print(
            f"each extra expression on an encoded frame: {extra['new_pct']:.1f}% of a full forward "
            f"(text + decode), {extra['cached_pct']:.1f}% with its text embedding cached (decode only)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
