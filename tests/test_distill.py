"""Distillation: the loss terms, a frozen teacher, the distill stage end to end, and bad teacher checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from foundation.errors import CheckpointError
from pipeline.config import load_config
from pipeline.training.jobs import distill, student_config
from pipeline.training.objectives import DistillObjective, logit_distill_loss
from pipeline.training.optim import param_groups
from tests.test_train import TINY_DATA, _restore_torch_globals, data_dir, write_config  # noqa: F401 (fixtures)


def tiny(img_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    from model import create_model

    torch.manual_seed(seed)
    return create_model("tiny", img_size=img_size)


def test_logit_distillation_is_zero_at_agreement_and_resizes_the_teacher():
    torch.manual_seed(0)
    t = torch.randn(2, 1, 16, 16)
    assert logit_distill_loss(t, t, 2.0).abs().item() < 1e-6
    s = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = logit_distill_loss(s, t, 2.0)  # teacher at twice the student's grid
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0


def test_teacher_stays_frozen_while_the_distillation_loss_falls():
    torch.set_num_threads(1)  # restored by the autouse fixture; 2 threads crawl when other jobs share the cores
    cfg = load_config(None, ["distill.feature_weight=1.0", "distill.temperature=1.0", "train.dropout=0.0"])
    teacher = tiny(seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = DistillObjective(tiny(), teacher, cfg.distill, cfg.train)
    assert len(objective.adapters) == 4
    groups = param_groups(objective, lr=3e-3, encoder_lr=3e-3, weight_decay=0.01, pretrained=set())
    opt = torch.optim.AdamW(groups)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "input_ids": torch.randint(1000, 2000, (2, 12), generator=g),
        "attention_mask": torch.ones(2, 12, dtype=torch.long),
        "mask": (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float(),
    }
    objective.train()
    kd, feat = [], []
    for _ in range(6):
        loss, parts = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        kd.append(parts["kd"].item())
        feat.append(parts["feat"].item())
    assert kd[-1] < kd[0] and feat[-1] < feat[0]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # weights and BN statistics
    assert set(objective.extra_tensors()) == {f"adapters.{i}.{w}" for i in "1234" for w in ("weight", "bias")}


def test_distill_stage_trains_the_student_from_the_train_stage_best(tmp_path, data_dir):  # noqa: F811
    from pipeline.runner import Runner

    path, _ = write_config(tmp_path, steps=2, eval_every=2)
    overrides = [
        "distill.enabled=true",
        "distill.student=tiny",
        "distill.student_img_size=32",
        "distill.steps=6",
        "distill.lr=3e-3",
        "distill.feature_weight=0.5",
        "distill.task_weight=0.0",  # the teacher trained 2 steps: only its imitation is a clear signal
        "train.dropout=0.0",
    ]
    cfg = load_config(path, overrides)
    runner = Runner(cfg)
    outcomes = runner.run(["distill"])
    assert [s.state for s in outcomes] == ["ran", "ran", "ran"]
    out = runner.run_dir / "distill"
    meta = json.loads((out / "best.json").read_text())
    assert meta["spec"]["name"] == "tiny" and meta["spec"]["img_size"] == 32
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    assert len(rows) == 6 and rows[-1]["loss_kd"] < rows[0]["loss_kd"]
    assert "loss_feat" in rows[0] and runner.figures("distill")["teacher"].endswith("train/best.safetensors")
    assert set(load_file(str(out / "last" / "extra.safetensors"))) >= {"adapters.4.weight"}

    # what the pipeline deploys from here on is the student, not the teacher
    fast = ["export.split_graphs=false", "export.fp16=false", "export.openvino=false", "export.parity_samples=1"]
    runner = Runner(load_config(path, [*overrides, *fast]))
    runner.run(["calibrate", "export"])
    assert runner.figures("calibrate")["img_size"] == 32
    from runtimes import get_runtime

    exported = get_runtime("onnxruntime").load(runner.stage_dir("export") / "full.onnx").metadata
    assert exported["variant"] == "tiny" and int(exported["img_size"]) == 32
    from benchmarks.artifacts import find_artifacts
    from pipeline.stage import MEASURED_UPSTREAM as UPSTREAM

    dirs = {u: runner.stage_dir(u) for u in UPSTREAM if u in ("data", "train", "distill", "export")}
    assert find_artifacts(dirs)[0].path == out / "best.safetensors"  # the PyTorch reference of validate and bench


def test_student_config_takes_the_distill_section():
    cfg = load_config(None, ["distill.student=edge", "distill.steps=7", "distill.student_img_size=160"])
    student = student_config(cfg)
    assert (student.model.variant, student.model.img_size, student.train.steps) == ("edge", 160, 7)
    assert student.train.lr == cfg.train.lr and student.distill == cfg.distill


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_teacher_checkpoint_is_refused_clearly(tmp_path, data_dir, damage):  # noqa: F811
    from model.weights import save_checkpoint

    _, cfg = write_config(tmp_path, steps=1)
    teacher = tmp_path / "teacher.safetensors"
    if damage == "truncated":
        save_checkpoint(tiny(), tmp_path / "teacher")
        teacher.write_bytes(teacher.read_bytes()[:1000])
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"student": "tiny"})})
    with pytest.raises(CheckpointError, match="not found" if damage == "missing" else "truncated"):
        distill(cfg, data_dir, teacher, tmp_path / "out")
