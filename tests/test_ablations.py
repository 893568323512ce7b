"""The ablation study tool: aggregation over seeds, paired differences, the report files, and a tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import ablations as ab

REPO = Path(__file__).resolve().parents[1]


def _fake_run(rng: np.random.Generator, shift: float, n: int = 40) -> dict:
    ids = [f"{split}:{k}:0" for split in ("val", "testA") for k in range(n)]
    u = rng.integers(50, 100, size=len(ids))
    base = np.clip(rng.uniform(0.3, 0.9, size=len(ids)) + shift, 0, 1)
    return {"sample_ids": ids, "splits_of": [i.split(":")[0] for i in ids], "i": (u * base).astype(int).tolist(),
            "u": u.tolist()}  # fmt: skip


def test_summary_has_mean_std_over_seeds_and_a_paired_difference_with_ci(tmp_path):
    rng = np.random.default_rng(0)
    scores = {
        "full": [_fake_run(rng, 0.0), _fake_run(rng, 0.0)],
        "no-shifts": [_fake_run(rng, -0.2), _fake_run(rng, -0.2)],
    }
    summary = ab.summarize(scores, seeds=[0, 1], n_boot=200)
    full, worse = summary["full"]["splits"]["val"], summary["no-shifts"]["splits"]["val"]
    assert len(full["mIoU"]["per_seed"]) == 2 and full["mIoU"]["std"] > 0
    assert full["mIoU"]["mean"] == pytest.approx(np.mean(full["mIoU"]["per_seed"]))
    diff = worse["diff_to_full"]["mIoU"]
    assert diff["lower"] <= diff["diff"] <= diff["upper"] < 0  # clearly worse, CI excludes 0
    assert diff["diff"] == pytest.approx(worse["mIoU"]["mean"] - full["mIoU"]["mean"], abs=1e-9)
    assert "diff_to_full" not in full and set(summary["full"]["splits"]) == {"val", "testA"}

    for name in summary:
        summary[name] |= {"params": 1_000_000, "latency": {"p50_ms": 12.5, "p90_ms": 13.0}}
    meta = {"seeds": [0, 1], "seeds_n": 2, "budget": "4 steps × batch 4", "threads": 1, "machine": "test",
            "command": "python -m pipeline.ablations"}  # fmt: skip
    ab.write_markdown(summary, meta, tmp_path / "a.md")
    text = (tmp_path / "a.md").read_text()
    assert "| no-shifts | K = 0" in text and "12.5" in text and "±" in text
    ab.write_plot(summary, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_ablation_is_refused_with_the_valid_names():
    from foundation.errors import ConfigError

    with pytest.raises(ConfigError, match="no-casg"):
        ab.run_config(None, [], "no-shift", 0, None)


@pytest.mark.slow
def test_tiny_study_end_to_end_then_cached(tmp_path):
    import subprocess

    data = {"synref": {"images": {"train": 8, "val": 3, "testA": 2, "testB": 2}, "min_side": 64, "max_side": 80,
                       "min_objects": 3, "max_objects": 4}}  # fmt: skip
    sets = [f"run.root={tmp_path / 'runs'}", "model.variant=tiny", f"data={json.dumps(data)}", "train.steps=2",
            "train.batch_size=4", "train.expressions_per_image=2", "train.eval_every=2", "train.eval_samples=3",
            "train.num_workers=0", "train.threads=1", "train.warmup_steps=0"]  # fmt: skip
    config = str(REPO / "configs" / "demo.yaml")
    cmd = [sys.executable, "-m", "pipeline.ablations", "--config", config, "--seeds", "0", "1", "--latency-runs", "2",
           "--threads", "1", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "runs" / "ablations"
    result = json.loads((out / "ablations.json").read_text())
    assert set(result["variants"]) == set(ab.ABLATIONS)
    assert {"val", "testA", "testB"} == set(result["variants"]["full"]["splits"])
    assert "adopted" in first.stderr  # one data set generated, the other runs adopt it
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and "running" not in second.stderr  # every stage cached, every score cached
