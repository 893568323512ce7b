"""Mechanism checks: the model and its three ablations (no cyclic shifts, no balancing, no CASG attention), same budget.

Usage: ``python -m pipeline.ablations --config configs/demo.yaml --seeds 0 1`` (``make ablations``); extra
``--set key=value`` overrides apply to every run (e.g. ``--set train.steps=600`` for a shorter budget).

Each (ablation, seed) is a run folder ``<run.root>/ablation-<name>-s<seed>`` driven by the cached stage runner, so an
interrupted study resumes where it stopped (training resumes mid-run) and a finished run is not redone; the data stage
is generated once and adopted by the other runs (same cache key). Each best checkpoint is scored with PyTorch on the
SynRef splits val, testA (attribute expressions) and testB (location, relation and ordinal expressions); the scores of
a run are cached next to it (``ablation_eval.json``, keyed by the train stage's key).

Outputs in ``--out`` (default ``<run.root>/ablations``): ``ablations.md``, ``ablations.json`` and ``ablations.png``:
mean ± std over seeds of oIoU and mIoU per variant and split, the difference to the full model with a paired bootstrap
95% CI (samples of all seeds pooled, each paired with the full model of the same seed), parameters and PyTorch CPU
latency per variant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import PipelineError

log = logging.getLogger("pipeline.ablations")

ABLATIONS: dict[str, tuple[str, ...]] = {
    "full": (),
    "no-shifts": ("model.shift_steps=0",),
    "no-balancing": ("model.balancing=false",),
    "no-casg": ("model.casg_attention=false",),
}
DESCRIPTIONS = {
    "full": "S²RM (cyclic shifts, balancing) + CASG",
    "no-shifts": "K = 0: one un-shifted coparsing step per map",
    "no-balancing": "plain sum of the four parsed maps",
    "no-casg": "plain FPN decoder (no cross-scale guidance)",
}
SPLITS = ("val", "testA", "testB")
EVAL_FILE = "ablation_eval.json"
EVAL_VERSION = 1


def run_config(base: str | None, overrides: list[str], name: str, seed: int, root: Path | None) -> Any:
    """The resolved config of one (ablation, seed) run."""
    from pipeline.config import load_config

    if name not in ABLATIONS:
        from foundation.errors import choice_error

        raise choice_error("ablation", name, ABLATIONS)
    extra = [*ABLATIONS[name], f"train.seed={seed}", f"run.name=ablation-{name}-s{seed}"]
    extra += [] if root is None else [f"run.root={root}"]
    return load_config(base, [*overrides, *extra])


def train_run(cfg: Any, shared_data: Path | None) -> tuple[Path, str]:
    """Run (or reuse) the data and train stages of one run; return the train stage folder and its cache key."""
    from pipeline.runner import Runner

    runner = Runner(cfg)
    if shared_data is not None and shared_data != runner.run_dir:
        runner.adopt("data", shared_data)
    runner.run(["data", "train"])
    man = runner.manifest("train")
    assert man is not None  # run() raised otherwise
    return runner.stage_dir("train"), man["key"]


def score_run(train_dir: Path, train_key: str, cfg: Any, limit: int | None, threads: int) -> dict[str, Any]:
    """Per-sample I/U of the best checkpoint on :data:`SPLITS` (cached in the run folder by the train key)."""
    from foundation.io import atomic_write_json
    from pipeline.data.dataset import open_dataset

    cache = train_dir.parent / EVAL_FILE
    want = {"version": EVAL_VERSION, "train_key": train_key, "limit": limit, "splits": list(SPLITS)}
    if cache.is_file():
        import json

        data = json.loads(cache.read_text())
        if all(data.get(k) == v for k, v in want.items()):
            return data
    from benchmarks.accuracy import eval_samples, evaluate
    from runtimes import get_runtime
    from runtimes.processing import Processing

    rt = get_runtime("torch").load(train_dir / "best.safetensors", threads=threads)
    proc = Processing.from_metadata(rt.metadata)
    refer = open_dataset(cfg, train_dir.parent / "data")
    splits = [s for s in SPLITS if refer.samples(s)]
    state = evaluate({"torch": rt}, eval_samples(refer, splits, proc, limit), "torch", processing=proc)["torch"]
    if state.error:
        raise PipelineError(f"scoring {train_dir} failed: {state.error}")
    m = state.metrics
    data = want | {
        "sample_ids": [str(s) for s in m.sample_ids],
        "splits_of": [s.split(":", 1)[0] for s in map(str, m.sample_ids)],
        "i": m.intersections().tolist(),
        "u": m.unions().tolist(),
    }
    atomic_write_json(cache, data)
    return data


def metrics_of(runs: list[dict[str, Any]], split: str, seeds: list[int]) -> Any:
    """One :class:`SegMetrics` pooling the runs (one per seed) on ``split``; ids are prefixed by the seed."""
    from benchmarks.metrics import SegMetrics

    m = SegMetrics()
    for seed, run in zip(seeds, runs, strict=True):
        for sid, sp, i, u in zip(run["sample_ids"], run["splits_of"], run["i"], run["u"], strict=True):
            if sp == split:
                m.add(i, u, sample_id=f"s{seed}:{sid}", split=sp)
    return m


def model_facts(train_dir: Path, runs: int, threads: int) -> dict[str, Any]:
    """Parameters and PyTorch eager latency of the full graph at batch 1 (median and p90 over ``runs``)."""
    from model.summary import measure_latency
    from model.weights import load_checkpoint

    model, _ = load_checkpoint(train_dir / "best")
    full = measure_latency(model.eval(), runs=runs, threads=threads)["full"]
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "latency": {"p50_ms": full["median_ms"], "p90_ms": full["p90_ms"]}}


def summarize(scores: dict[str, list[dict[str, Any]]], seeds: list[int], n_boot: int = 1000) -> dict[str, Any]:
    """Mean ± std per variant and split, and the pooled paired difference to ``full`` with its bootstrap CI."""
    from benchmarks.bootstrap import compare

    out: dict[str, Any] = {}
    splits = [s for s in SPLITS if any(s in r["splits_of"] for r in scores["full"])]
    for name, runs in scores.items():
        row: dict[str, Any] = {"description": DESCRIPTIONS[name], "splits": {}}
        for split in splits:
            per_seed = [metrics_of([r], split, [s]).result() for r, s in zip(runs, seeds, strict=True)]
            entry: dict[str, Any] = {}
            for metric in ("mIoU", "oIoU"):
                values = np.array([p[metric] for p in per_seed])
                entry[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
                                 else 0.0, "per_seed": values.tolist()}  # fmt: skip
            entry["n"] = per_seed[0]["n"]
            if name != "full":
                diff = compare(metrics_of(runs, split, seeds), metrics_of(scores["full"], split, seeds), n_boot)
                entry["diff_to_full"] = {k: diff[k] for k in ("mIoU", "oIoU")}
            row["splits"][split] = entry
        out[name] = row
    return out


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def write_markdown(summary: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """``ablations.md``: one table per metric, then the differences to the full model."""
    from foundation.io import atomic_write_text

    names = list(summary)
    splits = list(summary["full"]["splits"])
    lines = [
        "# Mechanism ablations on SynRef",
        "",
        f"{meta['seeds_n']} seeds per variant ({', '.join(map(str, meta['seeds']))}), identical budgets "
        f"({meta['budget']}). Scores in IoU points (×100), mean ± std over seeds; val has every expression kind, "
        "testA attribute expressions only, testB location, relation and ordinal expressions.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    for metric in ("mIoU", "oIoU"):
        lines += [f"## {metric}", "", "| variant | " + " | ".join(splits) + " | params (M) | latency p50 (ms) |"]
        lines.append("|---" * (len(splits) + 3) + "|")
        for name in names:
            row = summary[name]
            cells = [f"{_pts(row['splits'][s][metric]['mean'])} ± {_pts(row['splits'][s][metric]['std'])}"
                     for s in splits]  # fmt: skip
            facts = f"{row['params'] / 1e6:.2f} | {row['latency']['p50_ms']:.1f}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {facts} |")
        lines.append("")
    lines += [
        "## Difference to the full model (variant − full, points, paired bootstrap 95% CI over pooled samples)",
        "",
        "| variant | what is removed | "
        + " | ".join(f"{s} mIoU" for s in splits)
        + " | "
        + " | ".join(f"{s} oIoU" for s in splits)
        + " |",
        "|---" * (2 * len(splits) + 2) + "|",
    ]
    for name in names[1:]:
        row = summary[name]
        cells = []
        for metric in ("mIoU", "oIoU"):
            for s in splits:
                d = row["splits"][s]["diff_to_full"][metric]
                cells.append(f"{100 * d['diff']:+.1f} [{100 * d['lower']:+.1f}, {100 * d['upper']:+.1f}]")
        lines.append(f"| {name} | {row['description']} | " + " | ".join(cells) + " |")
    lines += ["", f"Latency: PyTorch eager, batch 1, {meta['threads']} thread(s), {meta['machine']}.", ""]
    atomic_write_text(path, "\n".join(lines))


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of mIoU per split and variant with the seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    splits = list(summary["full"]["splits"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for k, name in enumerate(names):
        means = [100 * summary[name]["splits"][s]["mIoU"]["mean"] for s in splits]
        stds = [100 * summary[name]["splits"][s]["mIoU"]["std"] for s in splits]
        xs = np.arange(len(splits)) + (k - (len(names) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(np.arange(len(splits)), splits)
    ax.set_ylabel("mIoU (points)")
    ax.set_title("SynRef ablations (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, -0.32))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.ablations``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.ablations", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--limit", type=int, default=None, help="samples per split scored (default: all)")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: <run.root>/ablations")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe_machine, machine_info
    from foundation.io import atomic_write_json
    from pipeline.logs import setup_logging

    setup_logging("INFO")
    if "full" not in args.variants:
        args.variants.insert(0, "full")
    if len(args.seeds) < 1 or len(set(args.seeds)) != len(args.seeds):
        print(f"error: --seeds {args.seeds} must be distinct", file=sys.stderr)
        return 2
    try:
        scores: dict[str, list[dict[str, Any]]] = {}
        shared, facts, budget = None, {}, ""
        for name in args.variants:
            for seed in args.seeds:
                cfg = run_config(args.config, args.overrides, name, seed, None)
                budget = f"{cfg.train.steps} steps × batch {cfg.train.batch_size}"
                train_dir, key = train_run(cfg, shared)
                shared = shared or train_dir.parent
                log.info("ablation %s seed %d: scoring %s", name, seed, train_dir)
                scores.setdefault(name, []).append(score_run(train_dir, key, cfg, args.limit, args.threads))
            facts[name] = model_facts(train_dir, args.latency_runs, args.threads)
        summary = summarize(scores, args.seeds)
        for name, extra in facts.items():
            summary[name].update(extra)
        out = args.out or Path(cfg.run.root) / "ablations"
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "seeds": args.seeds,
            "seeds_n": len(args.seeds),
            "budget": budget,
            "threads": args.threads,
            "machine": describe_machine(machine_info(args.threads)),
            "command": "python -m pipeline.ablations " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        atomic_write_json(out / "ablations.json", {"meta": meta, "variants": summary})
        write_markdown(summary, meta, out / "ablations.md")
        write_plot(summary, out / "ablations.png")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ablations: {out / 'ablations.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
