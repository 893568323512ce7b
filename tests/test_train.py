"""Training loop: schedule, parameter groups, data order, DDP = one process, exact resume after SIGKILL, bad input.

Everything runs the `tiny` variant on a tiny SynRef generated into a temporary folder, on CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from foundation.errors import CheckpointError, ConfigError, DataError, StageError
from model import ModelError
from pipeline.config import load_config
from pipeline.training import data as td
from pipeline.training import loop, objectives, optim
from pipeline.training import state as ts
from pipeline.training.jobs import train
from pipeline.training.loop import build_model

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = {
    "synref": {
        "images": {"train": 12, "val": 4, "testA": 2, "testB": 2},
        "min_side": 64,
        "max_side": 96,
        "min_objects": 3,
        "max_objects": 4,
    }
}
TINY_TRAIN = {
    "steps": 4,
    "batch_size": 4,
    "lr": 1.0e-3,
    "warmup_steps": 1,
    "eval_every": 2,
    "eval_samples": 6,
    "checkpoint_every": 2,
    "log_every": 1,
    "num_workers": 0,
    "threads": 1,
}


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """fit() sets threads and deterministic mode for its process; give the rest of the suite its defaults back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny SynRef in the data stage's layout (``<dir>/synref``)."""
    from pipeline.data.synref import generate_synref

    out = tmp_path_factory.mktemp("data")
    generate_synref(out, load_config(None, [f"data.synref={json.dumps(TINY_DATA['synref'])}"]).data)
    return out


def write_config(folder: Path, name: str = "t", **train) -> tuple[Path, object]:
    """A YAML config (tiny variant, tiny SynRef, run folder under ``folder``) and its loaded form."""
    tree = {
        "run": {"name": name, "root": str(folder / "runs")},
        "data": TINY_DATA,
        "model": {"variant": "tiny"},
        "train": TINY_TRAIN | train,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, load_config(path)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "last" / "model.safetensors"))


def subprocess_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------------------------------------------- units


def test_lr_warms_up_linearly_then_decays_poly_to_zero():
    f = [optim.lr_factor(s, total=10, warmup=2, power=1.0) for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    assert f[2] == 1.0 and all(a > b for a, b in zip(f[2:], f[3:], strict=False))
    assert f[-1] == pytest.approx(1 / 8)
    assert optim.lr_factor(0, total=5, warmup=0, power=0.9) == 1.0


def test_config_picks_the_vision_backbone():
    cfg = load_config(None, ["model.variant=tiny", "model.vision=resnet10t", 'model.vision_kwargs={"stem_width": 16}'])
    model, _ = build_model(cfg.model)
    assert model.vision.timm_name == "resnet10t" and model.spec.vision_kwargs == {"stem_width": 16}
    with pytest.raises(ModelError, match="unknown timm model 'resnet10'"):
        build_model(load_config(None, ["model.variant=tiny", "model.vision=resnet10"]).model)


def test_param_groups_no_decay_on_norms_biases_position_tables_and_encoder_lr():
    model, _ = build_model(load_config(None, ["model.variant=tiny"]).model)
    text_ids = {id(p) for p in model.text.parameters()}
    groups = optim.param_groups(model, lr=1e-3, encoder_lr=1e-4, weight_decay=0.01, pretrained=text_ids)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"encoder/decay", "encoder/no_decay", "new/decay", "new/no_decay"}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert any("relative_position_bias_table" in n for n in no_decay)
    assert any("position_embeddings" in n for n in no_decay)
    assert all(not n.endswith("bias") for g in groups if g["weight_decay"] for n in (names[id(p)] for p in g["params"]))
    assert all(p.ndim > 1 for g in groups if g["weight_decay"] for p in g["params"])
    assert by_name["encoder/decay"]["lr"] == 1e-4 and by_name["new/decay"]["lr"] == 1e-3
    assert {id(p) for g in groups if g["name"].startswith("encoder") for p in g["params"]} == text_ids


def test_autocast_on_cpu_is_opt_in_bf16_and_refuses_fp16():
    cpu = torch.device("cpu")
    assert optim.autocast_dtype("auto", cpu) is None and optim.autocast_dtype("off", cpu) is None
    assert optim.autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match=r"train.amp 'fp16' needs a CUDA device \(this run is on cpu\).*'bf16'"):
        optim.autocast_dtype("fp16", cpu)


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch_and_shards_the_global_batch():
    one = td.EpochSampler(23, global_batch=6, seed=3)
    assert one.batches_per_epoch == 3 and len(one) == 18
    assert np.array_equal(one.order(1), td.EpochSampler(23, 6, seed=3).order(1))
    assert not np.array_equal(one.order(0), one.order(1))
    ranks = [td.EpochSampler(23, 6, seed=3, rank=r, world=2) for r in range(2)]
    for step in (0, 4):  # step 4 = epoch 1, batch 1
        for s in [one, *ranks]:
            s.start_at(step)
        firsts = [list(s)[:3] for s in ranks]
        assert firsts[0] + firsts[1] == list(one)[:6] == one.global_batch_indices(step)
    one.start_at(2)
    assert list(one) == one.global_batch_indices(2)  # resumed mid-epoch: only the batches not consumed yet
    with pytest.raises(ConfigError, match="divisible"):
        td.EpochSampler(23, 5, seed=0, world=2)
    with pytest.raises(DataError, match="fewer than"):
        td.EpochSampler(3, 4, seed=0)


def test_grouped_sampler_gives_runs_of_one_image_covering_every_sample_and_shards_whole_runs():
    image_of = [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]
    groups = td.image_groups(image_of)
    assert groups == [[0, 1, 2], [3], [4, 5, 6, 7, 8], [9, 10]]
    one = td.EpochSampler(len(image_of), 4, seed=1, groups=groups, per_group=2)
    assert one.size == 2 * (2 + 1 + 3 + 1)  # each image padded up to whole runs of 2
    for epoch in (0, 1):
        order = one.order(epoch).tolist()
        assert len(order) == one.size and set(order) == set(range(len(image_of)))
        runs = [order[i : i + 2] for i in range(0, len(order), 2)]
        assert all(image_of[a] == image_of[b] for a, b in runs)
    assert not np.array_equal(one.order(0), one.order(1))
    ranks = [td.EpochSampler(len(image_of), 4, 1, r, 2, groups, 2) for r in range(2)]
    for s in [one, *ranks]:
        s.start_at(1)
    assert list(ranks[0])[:2] + list(ranks[1])[:2] == one.global_batch_indices(1)
    with pytest.raises(ConfigError, match="expressions_per_image=3"):
        td.EpochSampler(len(image_of), 4, seed=0, groups=groups, per_group=3)


def test_shared_image_forward_equals_the_plain_forward(one_torch_thread):
    from model import create_model

    model = create_model("tiny").eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    batch = {
        "image": images[[0, 1, 0, 0]],
        "input_ids": torch.randint(1000, 2000, (4, 12), generator=gen),
        "attention_mask": torch.ones(4, 12, dtype=torch.int64),
        "image_key": torch.tensor([7, 3, 7, 7]),
    }
    with torch.no_grad():
        shared, distinct, firsts = objectives.forward_shared_images(model, batch)
        plain = model(batch["image"], batch["input_ids"], batch["attention_mask"])
        feats = model.encode_image(images[[0, 1]])
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    assert firsts.tolist() == [0, 1]  # image 7 first seen at row 0, image 3 at row 1
    for got, want in zip(distinct, feats, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_seg_loss_is_a_per_sample_mean_and_rewards_the_right_mask():
    torch.manual_seed(0)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    good = (mask * 2 - 1) * 8  # logits at 1/1 scale, sure and right
    logits = torch.randn(4, 1, 8, 8)
    loss, parts = objectives.seg_loss(logits, mask, 1.0, 1.0)
    halves = [objectives.seg_loss(logits[i : i + 2], mask[i : i + 2], 1.0, 1.0)[0] for i in (0, 2)]
    assert loss.item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-6)  # DDP's average = the mean
    assert objectives.seg_loss(good, mask, 1.0, 1.0)[0] < 0.01 < loss
    assert set(parts) == {"dice", "bce"}


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    state = ts.rng_state()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    ts.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# ------------------------------------------------------------------------------------------------------- the loop


def test_fit_writes_best_last_curve_and_figures(tmp_path, data_dir):
    _, cfg = write_config(tmp_path)
    figures = train(cfg, data_dir, tmp_path / "out")
    out = tmp_path / "out"
    assert figures["steps"] == 4 and figures["best_step"] in (2, 4) and 0 <= figures["best_val_miou"] <= 1
    assert figures["s_per_step"] > 0 and figures["resumed_from"] is None
    best = json.loads((out / "best.json").read_text())
    assert best["spec"]["name"] == "tiny" and best["meta"]["step"] == figures["best_step"]
    assert (out / "best.safetensors").is_file()
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_miou" in r] == [2, 4]
    assert all({"minutes", "lr"} <= set(r) for r in rows if "loss" in r)
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["step"] == 4 and set(state["files"]) == {"model.safetensors", "model.json", "optim.pt"}
    torch.load(out / "last" / "optim.pt", weights_only=True)  # plain tensors and containers only


def test_bf16_autocast_on_cpu_trains_with_a_frozen_text_encoder(tmp_path, data_dir, caplog):
    _, cfg = write_config(tmp_path, amp="bf16", freeze_text=True)
    with caplog.at_level("INFO", logger="pipeline.train"):
        figures = train(cfg, data_dir, tmp_path / "out")
    assert "autocast torch.bfloat16" in caplog.text
    rows = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 4 and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert 0 <= figures["best_val_miou"] <= 1
    saved = weights(tmp_path / "out")
    # autocast computes in bf16; the weights stay float32
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    ts.seed_everything(cfg.train.seed, cfg.train.deterministic)  # the random init fit() started from
    model, _ = build_model(cfg.model)
    text = {k: v for k, v in saved.items() if k.startswith("text.body.")}
    assert text and all(torch.equal(v, model.state_dict()[k]) for k, v in text.items())  # frozen: as built


def test_category_loss_trains_a_head_that_resume_keeps_and_the_model_does_not_carry(tmp_path, data_dir):
    _, cfg = write_config(tmp_path, category_weight=1.0, expressions_per_image=2)
    train(cfg, data_dir, tmp_path / "out")
    rows = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_category"] for r in rows if "loss_category" in r]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[0] > 0
    extra = load_file(str(tmp_path / "out" / "last" / "extra.safetensors"))
    assert extra and all(k.startswith("category.heads.") for k in extra)
    classes = len(json.loads((data_dir / "synref" / "instances.json").read_text())["categories"]) + 1
    assert extra["category.heads.0.weight"].shape[0] == classes
    assert not any("category" in k for k in weights(tmp_path / "out"))  # training-only: not in the model


@pytest.mark.parametrize("per_image", [1, 2], ids=["plain", "2-expressions-per-image"])
def test_ddp_step_on_two_processes_equals_one_process_step(tmp_path, data_dir, per_image):
    # Adam's first step is lr·g/(|g|+eps): with the default eps it is lr·sign(g), so float round-off of near-zero
    # gradients (and of ReLU decisions at near-zero BatchNorm outputs) flips whole steps. eps=1 makes the step
    # ≈ lr·g/(1+|g|): the comparison then checks the averaged gradient itself (a sum instead of a mean would be
    # ~30× over the tolerance), and clipping, which would hide a wrong scale, is off.
    cfg_path, cfg = write_config(
        tmp_path, steps=1, lr=1e-4, adam_eps=1.0, grad_clip=0.0, dropout=0.0, drop_path=0.0, warmup_steps=0,
        expressions_per_image=per_image,
    )  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pipeline.train", "--config", str(cfg_path), "--out", str(tmp_path / "ddp"), "--data", str(data_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(cfg, data_dir, tmp_path / "one")
    ddp, one = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    ts.seed_everything(cfg.train.seed, True)
    init = build_model(cfg.model)[0].state_dict()
    params = [k for k in one if "running_" not in k and "num_batches" not in k]
    assert max((ddp[k] - one[k]).abs().max().item() for k in params) <= 1e-6
    assert max((one[k] - init[k]).abs().max().item() for k in params) > 2e-5  # the step moved the weights
    assert max((ddp[k] - one[k]).abs().max().item() for k in one if "running_" in k) <= 1e-5  # synced BN statistics
    rows = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0]) for d in ("ddp", "one")]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-6)


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
    from pipeline.runner import Runner

    cfg_path, cfg = write_config(tmp_path, name="k", steps=12, eval_every=4, checkpoint_every=2, warmup_steps=2)
    train(cfg, data_dir, tmp_path / "reference")  # dropout and drop-path on: the RNG state must resume too

    runner = Runner(cfg)
    runner.run(["data"])
    work = runner.run_dir / ".train.work"
    cmd = [sys.executable, "-m", "pipeline.train", "--config", str(cfg_path)]  # trains the run folder's train stage
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            state = work / "last" / "state.json"
            if state.is_file() and json.loads(state.read_text())["step"] >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.loads((work / "last" / "state.json").read_text())["step"]
    assert 2 <= killed_at < 12 and not (runner.run_dir / "train").exists()

    outcome = Runner(cfg).run(["train"])
    assert [s.state for s in outcome] == ["cached", "ran"]
    figures = runner.figures("train")
    assert figures["resumed_from"] == killed_at and figures["steps"] == 12
    resumed, reference = weights(runner.run_dir / "train"), weights(tmp_path / "reference")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    curve = [json.loads(r) for r in (runner.run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(r) for r in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    drop = ("minutes",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in curve] == [
        {k: v for k, v in r.items() if k not in drop} for r in expected
    ]


# ------------------------------------------------------------------------------------------------------- bad input


def test_resume_refuses_a_state_of_another_config_or_variant(tmp_path, data_dir):
    _, cfg = write_config(tmp_path, steps=2)
    train(cfg, data_dir, tmp_path / "out")
    _, other = write_config(tmp_path, name="o", steps=2, lr=5e-4)
    with pytest.raises(CheckpointError, match=r"train\.lr: checkpoint 0\.001 vs run 0\.0005"):
        train(other, data_dir, tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "last" / "state.json").read_text())["identity"]
    wanted = ts.run_identity({s: other.section(s) for s in ("data", "model", "train")}, "demo")
    with pytest.raises(CheckpointError, match="variant 'tiny' with config [0-9a-f]{12}.*variant 'demo' with config"):
        ts.check_identity(tmp_path / "out" / "last", stored, wanted)
    _, same = write_config(tmp_path, name="s", steps=2, num_workers=1, eval_every=5)  # runtime keys may change
    assert train(same, data_dir, tmp_path / "out")["resumed_from"] == 2


@pytest.mark.parametrize("victim", ["model.safetensors", "optim.pt", "state.json"])
def test_truncated_state_gives_a_clear_error(tmp_path, data_dir, victim):
    _, cfg = write_config(tmp_path, steps=2)
    train(cfg, data_dir, tmp_path / "out")
    path = tmp_path / "out" / "last" / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        train(cfg, data_dir, tmp_path / "out")


def test_nan_loss_stops_with_step_and_sample_ids(tmp_path, data_dir, monkeypatch):
    calls = []
    real = objectives.seg_loss

    def poisoned(logits, mask, dice_weight, bce_weight):
        calls.append(1)
        loss, parts = real(logits, mask, dice_weight, bce_weight)
        return (loss * float("nan"), parts) if len(calls) == 3 else (loss, parts)

    monkeypatch.setattr(objectives, "seg_loss", poisoned)
    _, cfg = write_config(tmp_path, steps=4)
    with pytest.raises(StageError, match="step 3"):
        train(cfg, data_dir, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "nan.json").read_text())
    assert record["step"] == 3 and len(record["sample_ids"]) == 4
    assert all(isinstance(i, int) for i in record["sample_ids"])


def test_resume_loads_nothing_through_pickle(tmp_path, data_dir, monkeypatch):
    _, cfg = write_config(tmp_path, steps=2)
    train(cfg, data_dir, tmp_path / "out")
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert train(cfg, data_dir, tmp_path / "out")["resumed_from"] == 2
    assert seen and all(w is True for w in seen)


# ---------------------------------------------------------------------------------------------------------------------
# horizontal flip with the sentence rewritten, frozen BatchNorm statistics
# ---------------------------------------------------------------------------------------------------------------------


def test_hflip_flips_each_image_with_its_masks_and_swaps_left_and_right_in_its_sentences():
    from runtimes.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(None, 12)
    left, right = td.swap_token_ids(tok, ("left", "right"))
    texts = ["the star on the left", "the circle right of the square", "the top left ring", "the red cross"]
    tokens = tok(texts)
    image = torch.arange(4 * 3 * 2 * 4, dtype=torch.float32).reshape(4, 3, 2, 4)
    batch = {
        "image": image,
        "mask": (image[:, :1] > 40).float(),
        "category": image[:, 0].long(),
        "input_ids": torch.from_numpy(tokens["input_ids"]),
        "image_key": torch.tensor([7, 7, 9, 9]),  # two images, two sentences each
    }
    flipped = td.flip_batch(batch, 1.0, [(left, right)], seed=0)
    assert torch.equal(flipped["image"], image.flip(-1)) and torch.equal(flipped["mask"], batch["mask"].flip(-1))
    assert torch.equal(flipped["category"], batch["category"].flip(-1))
    expected = tok(["the star on the right", "the circle left of the square", "the top right ring", "the red cross"])
    assert torch.equal(flipped["input_ids"], torch.from_numpy(expected["input_ids"]))
    assert torch.equal(td.flip_batch(batch, 0.0, [(left, right)], seed=0)["image"], image)  # p = 0: untouched
    # p = 0.5: both sentences of an image flip with it, never one without the other; the seed fixes the choice
    for seed in range(8):
        out = td.flip_batch(batch, 0.5, [(left, right)], seed=seed)
        rows = [not torch.equal(out["image"][i], image[i]) for i in range(4)]
        assert rows[0] == rows[1] and rows[2] == rows[3]
        ids_changed = [not torch.equal(out["input_ids"][i], batch["input_ids"][i]) for i in range(3)]
        assert ids_changed == rows[:3]  # the fourth sentence has no left/right word to swap
        assert torch.equal(out["image"], td.flip_batch(batch, 0.5, [(left, right)], seed=seed)["image"])


def test_vflip_flips_rows_and_swaps_top_bottom_above_below():
    from runtimes.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(None, 12)
    swaps = [td.swap_token_ids(tok, pair) for pair in td.VFLIP_WORDS]
    texts = ["the star at the top", "the ring above the red cross", "the second square from the bottom"]
    image = torch.arange(3 * 3 * 4 * 2, dtype=torch.float32).reshape(3, 3, 4, 2)
    batch = {"image": image, "mask": image[:, :1] > 30, "input_ids": torch.from_numpy(tok(texts)["input_ids"])}
    out = td.flip_batch(batch, 1.0, swaps, seed=3, axis=-2)
    assert torch.equal(out["image"], image.flip(-2)) and torch.equal(out["mask"], batch["mask"].flip(-2))
    mirrored = ["the star at the bottom", "the ring below the red cross", "the second square from the top"]
    assert torch.equal(out["input_ids"], torch.from_numpy(tok(mirrored)["input_ids"]))


def test_hflip_refuses_a_tokenizer_that_splits_the_words():
    split = lambda texts: {  # noqa: E731 — "left" as two tokens
        "input_ids": np.array([[101, 5, 6, 102], [101, 7, 102, 0]]),
        "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    with pytest.raises(StageError, match=r"flip needs 'left' to be one token of the tokenizer, got 2 tokens"):
        td.swap_token_ids(split, ("left", "right"))


def test_frozen_vision_batchnorm_keeps_its_statistics_through_training_mode():
    from model import create_model

    model = create_model("demo")
    objective = torch.nn.Module()
    objective.model = model
    loop.train_mode(objective, freeze_vision_bn=True)
    bns = [m for m in model.vision.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.fusion.training
    before = bns[0].running_mean.clone()
    with torch.no_grad():
        model.vision(torch.randn(2, 3, model.spec.img_size, model.spec.img_size) * 5)
    assert torch.equal(bns[0].running_mean, before)
    loop.train_mode(objective, freeze_vision_bn=False)
    assert all(m.training for m in bns)


def test_channels_last_training_gives_the_contiguous_run_to_rounding(tmp_path, data_dir):
    """``train.channels_last`` changes the memory layout only: same losses, same weights to float rounding."""
    runs = {}
    for layout in (False, True):
        (tmp_path / str(layout)).mkdir()
        _, cfg = write_config(tmp_path / str(layout), channels_last=layout, category_weight=1.0, hflip=0.5)
        train(cfg, data_dir, tmp_path / str(layout) / "out")
        rows = [json.loads(r) for r in (tmp_path / str(layout) / "out" / "metrics.jsonl").read_text().splitlines()]
        runs[layout] = ([r["loss"] for r in rows if "loss" in r], weights(tmp_path / str(layout) / "out"))
    (loss_a, w_a), (loss_b, w_b) = runs[False], runs[True]
    assert len(loss_a) == 4 and np.allclose(loss_a, loss_b, rtol=1e-4, atol=1e-5)
    assert w_a.keys() == w_b.keys()
    diff = torch.cat([(w_a[k] - w_b[k]).abs().flatten() for k in w_a if w_a[k].is_floating_point()])
    # Adam moves a weight by up to lr per step whatever its gradient's size: where a gradient is ~0, rounding decides
    # the step's sign. Almost every weight agrees to rounding, none by more than one step (lr = 1e-3).
    assert (diff > 1e-5).float().mean() < 0.01 and diff.max() < 1e-3
    assert all(v.is_contiguous() for v in w_b.values())  # the checkpoint is stored in the standard layout
