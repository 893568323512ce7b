"""The backbone study driver: which runs it configures, and the figures it collects from validate and bench."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from foundation.errors import ConfigError
from pipeline import backbones as bb
from pipeline.layout import RunLayout


def test_each_backbone_run_names_its_weights_seed_and_folder():
    cfg = bb.run_config("configs/backbones.yaml", ["train.steps=10"], "mobilenetv2", 1)
    assert cfg.model.vision_weights == "mobilenetv2_100.tv_in1k" and cfg.model.variant == "demo"
    assert cfg.train.seed == 1 and cfg.run.name == "backbone-mobilenetv2-s1" and cfg.train.steps == 10
    assert cfg.device.name == "x86-cpu"
    swin = bb.run_config("configs/backbones.yaml", [], "swin-scratch", 0)
    assert swin.model.variant == "demo_swin" and swin.model.vision_weights is None
    with pytest.raises(ConfigError, match="'efficientnet-lite3'.*did you mean 'efficientnet-lite2'"):
        bb.run_config("configs/backbones.yaml", [], "efficientnet-lite3", 0)


def _metrics(miou: float) -> dict:
    return {"mIoU": miou, "oIoU": miou - 0.05, "n": 10}


def _fake_run(root, miou: float, drop: float, slowdown: float = 1.0) -> object:
    device = root / "devices" / "x86-cpu"
    (device / "validate").mkdir(parents=True)
    (device / "bench").mkdir(parents=True)
    ref = {"metrics": {"overall": _metrics(miou), "by_split": {"val": _metrics(miou), "testB": _metrics(miou - 0.1)},
                       "by_kind": {"attribute": _metrics(miou + 0.1), "ordinal": _metrics(miou - 0.2)}}}  # fmt: skip
    int8 = {"status": "ok", "drop_vs_reference": {"mIoU": {"diff": -drop, "lower": -drop - 0.002,
            "upper": -drop + 0.002}}, "agreement": {"mean_iou": 0.97}}  # fmt: skip
    validation = {"n_samples": 30, "artifacts": {"pytorch-fp32": ref, "openvino-int8": int8,
                  "onnxruntime-int8": {"status": "unavailable: not produced"}}}  # fmt: skip
    (device / "validate" / "results.json").write_text(json.dumps(validation))
    latency = {"pytorch-fp32": 30.0 * slowdown, "openvino-int8": 6.0 * slowdown}
    bench = {"artifacts": {name: {"latency": {"p50_ms": p50}} for name, p50 in latency.items()}}
    (device / "bench" / "results.json").write_text(json.dumps(bench))
    (root / "train").mkdir()
    save_file({"w": torch.zeros(10, 3), "bn.running_mean": torch.zeros(3), "b": torch.zeros(2)},
              str(root / "train" / "best.safetensors"))  # fmt: skip
    return RunLayout(root, "x86-cpu", frozenset({"validate", "bench"}))


def test_collect_and_the_study_table(tmp_path):
    runs = {}
    for name, seeds in (("efficientnet-lite0", (0.6, 0.64)), ("swin-scratch", (0.4,))):
        for k, miou in enumerate(seeds):
            device = _fake_run(tmp_path / f"{name}-{k}", miou, drop=0.004, slowdown=1.0 + 9 * k)  # seed 1: loaded
            figures = bb.collect(device) | {"params": bb.params_of(device), "seed": k}
            runs.setdefault(name, []).append(figures)
    first = runs["efficientnet-lite0"][0]
    assert first["params"] == 32  # running statistics are not parameters
    assert first["splits"]["val"]["mIoU"] == 0.6 and first["kinds"]["ordinal"] == pytest.approx(0.4)
    assert first["int8"]["openvino-int8"]["drop_points"] == pytest.approx(0.4)
    assert first["int8"]["openvino-int8"]["ci_points"] == pytest.approx([0.2, 0.6])
    assert first["int8"]["onnxruntime-int8"]["drop_points"] is None and first["p50_ms"]["openvino-int8"] == 6.0
    meta = {"seeds": [0, 1], "budget": "800 steps × batch 16", "machine": "test CPU", "command": "python -m ..."}
    bb.write_markdown(runs, meta, tmp_path / "backbones.md")
    md = (tmp_path / "backbones.md").read_text()
    assert "| efficientnet-lite0 | 62.0 ± 2.8 | 52.0 ± 2.8 |" in md  # val and testB mIoU, mean ± std over seeds
    assert "| swin-scratch | 40.0 | 30.0 |" in md  # one seed: its value alone
    assert "runs: efficientnet-lite0 2, swin-scratch 1" in md
    assert "| efficientnet-lite0 | 0 | +0.40 [+0.20, +0.60] | 0.970 | unavailable: not produced | – |" in md
    assert "| efficientnet-lite0 | 30.0 | – | – | 6.0 | – |" in md  # the undisturbed run, not the mean (165.0)
