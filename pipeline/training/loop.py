"""The training loop of the ``train`` and ``distill`` stages: one process, or DDP under torchrun.

Usage: ``figures = fit(cfg, data_dir, out, seg_task(cfg.train))`` (the caller picks the objective:
:mod:`pipeline.training.objectives`); ``python -m pipeline.train`` runs it from the command line or torchrun.

Rank 0 logs, validates and writes every file; the others wait at a barrier meanwhile. Outputs (in ``out``):

- ``best.safetensors`` + ``best.json``: the model with the best validation ``train.best_metric`` (what export uses);
- ``last/``: the resumable state (see :mod:`pipeline.training.state`); a rerun into the same folder resumes from it
  and ends with the same weights as an uninterrupted run;
- ``metrics.jsonl``: one row per ``train.log_every`` steps (step, minutes, loss, lr) and per validation
  (val_miou, val_oiou); ``tb/`` TensorBoard logs when ``train.tensorboard``;
- ``nan.json`` when a loss turns non-finite: the step and the sample ids of its batch.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from foundation.errors import StageError
from foundation.io import atomic_write_json, atomic_write_text
from pipeline.config import Config
from pipeline.config_sections import ModelConfig
from pipeline.training import data as td
from pipeline.training import distributed as tdist
from pipeline.training import optim
from pipeline.training import state as ts
from pipeline.training.objectives import Task

log = logging.getLogger("pipeline.train")

SECTIONS = ("data", "model", "train")
EVAL_BATCH = 16


# --------------------------------------------------------------------------------------------------------- pieces


def build_model(mcfg: ModelConfig) -> tuple[nn.Module, set[int]]:
    """Build ``model.variant`` with the config's overrides and load the pretrained parts its spec asks for.

    Returns:
        The model and the ``id()`` of its parameters that came from pretrained weights (their lr is
        ``train.encoder_lr``).
    """
    from model import create_model
    from model.weights import load_pretrained

    model = create_model(
        mcfg.variant,
        img_size=mcfg.img_size,
        vision=mcfg.vision,
        vision_kwargs=mcfg.vision_kwargs,
        vision_weights=mcfg.vision_weights,
        max_tokens=mcfg.max_tokens,
        text_dir=None if mcfg.text_dir is None else str(mcfg.text_dir),
        shift_steps=mcfg.shift_steps,
        balancing=mcfg.balancing,
        casg_attention=mcfg.casg_attention,
        text_head=mcfg.text_head,
        sentence_pool=mcfg.sentence_pool,
        text_adapter=mcfg.text_adapter,
    )
    report = load_pretrained(model, mcfg.vision_checkpoint, mcfg.text_dir, mcfg.allow_download)
    # the pretrained bodies only: a sentence pooling or word adapter on top of them is a new layer (lr, not encoder_lr)
    parts = [body for part, body in (("vision", model.vision.body), ("text", model.text.body)) if part in report]
    return model, {id(p) for part in parts for p in part.parameters()}


def set_dropout(model: nn.Module, dropout: float | None, drop_path: float | None) -> None:
    """Set ``p`` of every ``nn.Dropout`` and the rate of every stochastic-depth module (timm ``DropPath``).

    None keeps the model's own values; zeros make the forward deterministic (needed to compare DDP with one process).
    """
    for module in model.modules():
        if dropout is not None and isinstance(module, nn.Dropout):
            module.p = dropout
        if drop_path is not None and hasattr(module, "drop_prob"):
            module.drop_prob = drop_path


def train_mode(objective: nn.Module, freeze_vision_bn: bool) -> None:
    """Put ``objective`` in train mode; with ``freeze_vision_bn`` the vision encoder's BatchNorm layers stay in eval
    mode (running statistics as loaded, used in the forward pass; their affine weights still train)."""
    objective.train()
    if freeze_vision_bn:
        model = objective.model if hasattr(objective, "model") else objective
        for module in model.vision.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def evaluate(
    model: nn.Module, samples: Any, device: torch.device, dtype: torch.dtype | None, threshold: float
) -> dict[str, Any]:
    """oIoU / mIoU of ``model`` over ``iter_eval`` samples with :mod:`benchmarks.metrics` (the only definition)."""
    from benchmarks.metrics import SegMetrics
    from runtimes.masks import logits_to_mask

    was_training = model.training
    model.eval()
    metrics = SegMetrics()
    samples = iter(samples)
    while chunk := list(itertools.islice(samples, EVAL_BATCH)):
        inputs = {k: torch.from_numpy(np.concatenate([c[0][k] for c in chunk])).to(device) for k in chunk[0][0]}
        with optim.autocast(device, dtype):
            logits = model(inputs["image"], inputs["input_ids"], inputs["attention_mask"])  # B, 1, S/4, S/4
        logits = logits.float().cpu().numpy()
        for k, (_, gt, sample) in enumerate(chunk):
            pred = logits_to_mask(logits[k], gt.shape, threshold)  # H, W at the original size
            metrics.update(pred, gt, sample_id=sample.sent_id, split=sample.split, kind=sample.kind)
    model.train(was_training)
    result = metrics.result()
    kinds = {f"miou_{kind}": r["mIoU"] for kind, r in metrics.by_group("kind").items() if kind != "unlabelled"}
    return {"miou": result["mIoU"], "oiou": result["oIoU"], "n": result["n"]} | kinds


class MetricsLog:
    """``metrics.jsonl`` (and optionally TensorBoard) on rank 0; a resume drops rows past the resumed step."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool, enabled: bool) -> None:
        self.path, self.enabled, self.writer = out / "metrics.jsonl", enabled, None
        if not enabled:
            return
        rows = self.path.read_text().splitlines() if self.path.is_file() else []
        kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= start_step]
        atomic_write_text(self.path, "".join(f"{r}\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "minutes") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def stop_on_nan(out: Path, dist: tdist.Dist, step: int, loss: float, parts: dict[str, float], ids: list[Any]) -> None:
    """Record the failing step and its samples in ``nan.json`` (rank 0) and stop every process."""
    path = out / "nan.json"
    if dist.main:
        atomic_write_json(path, {"step": step, "loss": str(loss), "parts": parts, "sample_ids": ids})
    tdist.barrier(dist)  # every rank saw the same global loss; wait for the record before anyone exits
    raise StageError(
        f"training loss is {loss} at step {step} (loss parts {parts}); the step and the sample ids of its batch are "
        f"in {path}. Lower train.lr, check those samples, or set train.amp=off"
    )


# --------------------------------------------------------------------------------------------------------- the loop


def fit(cfg: Config, data_dir: Path, out: Path, task: Task) -> dict[str, Any]:
    """Train ``cfg.model`` on the data stage's folder into ``out``, resuming from ``out/last`` when it is there.

    Args:
        cfg: the resolved config (for distillation: the student's config, see
            :func:`pipeline.training.jobs.student_config`).
        data_dir: the ``data`` stage's output folder.
        out: where checkpoints, curves and logs go (the stage's work folder).
        task: the objective to optimise around the model (:func:`~pipeline.training.objectives.seg_task`,
            :func:`~pipeline.training.objectives.distill_task`).

    Returns:
        Figures for the stage manifest: best val mIoU/oIoU and their step, steps, minutes, seconds per step.

    Raises:
        CheckpointError: ``out/last`` belongs to another variant or config, or is truncated.
        StageError: the loss became non-finite (``nan.json`` says where).
    """
    from model.weights import save_checkpoint
    from pipeline.data.dataset import RISDataset, iter_eval, open_dataset
    from runtimes.tokenizer import TextTokenizer

    tc = cfg.train
    # ---- set-up: processes, seeds, precision
    dist = tdist.setup_distributed(tc.threads)
    tdist.barrier(dist)  # under `pipeline.train` without --out, rank 0 prepares the work folder first
    ts.seed_everything(tc.seed, tc.deterministic)
    amp_dtype = optim.autocast_dtype(tc.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    out.mkdir(parents=True, exist_ok=True)

    # ---- model (random init under the seed, then pretrained weights), data, objective
    model, pretrained = build_model(cfg.model)
    set_dropout(model, tc.dropout, tc.drop_path)
    if tc.freeze_text:
        # the pretrained encoder; a learned sentence pooling still trains. Its dropout stays on (train mode): the demo
        # recipe measured 0.43 val mIoU with it, 0.32 with the encoder in eval mode (seed 0; README, Demo accuracy)
        model.text.body.requires_grad_(False)
    if tc.freeze_vision:
        model.vision.body.requires_grad_(False)
    spec = model.spec
    tokenizer = TextTokenizer.from_dir(spec.text_dir, spec.max_tokens)
    refer = open_dataset(cfg, data_dir)
    side = spec.img_size // 4 if task.category_maps else None  # the stride of V1
    train_set = RISDataset(refer, cfg.data.train_split, tokenizer, spec.img_size, category_side=side)
    objective, train_set = task.build(model, refer, train_set)
    objective.to(dist.device)
    if tc.channels_last:
        objective.to(memory_format=torch.channels_last)
    flips = [  # (probability, swapped token ids, axis, seed offset)
        (p, [td.swap_token_ids(tokenizer, pair) for pair in words], axis, offset)
        for p, words, axis, offset in ((tc.hflip, td.HFLIP_WORDS, -1, 0), (tc.vflip, td.VFLIP_WORDS, -2, 1))
        if p > 0
    ]
    if dist.ddp:
        tdist.sync_batchnorm(objective.model, dist.device)  # statistics of the global batch, as in one process

    # ---- data order, optimizer, schedule
    groups = td.image_groups([s.image_id for s in train_set.samples])
    sampler = td.EpochSampler(
        len(train_set), tc.batch_size, tc.seed, dist.rank, dist.world, groups, tc.expressions_per_image
    )
    total = tc.epochs * sampler.batches_per_epoch if tc.epochs else tc.steps
    groups = optim.param_groups(
        objective, lr=tc.lr, encoder_lr=tc.encoder_lr or tc.lr, weight_decay=tc.weight_decay, pretrained=pretrained
    )
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=tc.adam_eps)
    schedule = functools.partial(optim.lr_factor, total=total, warmup=tc.warmup_steps, power=tc.poly_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    # ---- resume
    identity = ts.run_identity({s: cfg.section(s) for s in (*SECTIONS, *task.sections)}, spec.name)
    extra = objective.extra_tensors()
    step, best, elapsed = 0, {"step": None, "miou": None, "oiou": None}, 0.0
    folder = ts.find_state(out / "last")
    if folder is not None:
        meta = ts.load_state(folder, model, extra, optimizer, scheduler, scaler, identity)
        step, best, elapsed = meta["step"], meta["best"], meta["elapsed_s"]
        log.info("resuming from %s at step %d of %d", folder, step, total)
    start_step = step
    net = tdist.wrap_ddp(objective, dist) if dist.ddp else objective

    # ---- the loop
    batches = td.batch_stream(train_set, sampler, step, tc.num_workers, pin_memory=dist.device.type == "cuda")
    val_samples = functools.partial(iter_eval, refer, tc.val_split, tokenizer, spec.img_size, tc.eval_samples)
    curve = MetricsLog(out, step, tc.tensorboard, dist.main)
    log.info(
        "training %s for %d steps (from %d): global batch %d on %d process(es), %s, %d train samples, autocast %s",
        spec.name, total, step, tc.batch_size, dist.world, dist.device, len(train_set), amp_dtype,
    )  # fmt: skip
    label = f"{task.name} {spec.name}"
    bar = tqdm(total=total, initial=step, desc=label, disable=not dist.main, dynamic_ncols=True)
    t_start, train_seconds, loss_sum, loss_n = time.perf_counter(), 0.0, 0.0, 0
    train_mode(objective, tc.freeze_vision_bn)
    with logging_redirect_tqdm():
        while step < total:
            t0 = time.perf_counter()
            batch = {k: v.to(dist.device, non_blocking=True) for k, v in next(batches).items()}
            for prob, swaps, axis, offset in flips:
                seed = ((tc.seed * 7919 + dist.rank) * 2 + offset) * 1_000_003 + step
                batch = td.flip_batch(batch, prob, swaps, seed, axis)
            if tc.channels_last:  # after the flips, which return contiguous tensors
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with optim.autocast(dist.device, amp_dtype):
                loss, parts = net(batch)
            loss_value = tdist.mean_across(dist, loss.detach()).item()  # the global batch's mean loss
            if not np.isfinite(loss_value):
                ids = [train_set.samples[i].sent_id for i in sampler.global_batch_indices(step)]
                stop_on_nan(out, dist, step + 1, loss_value, {k: float(v) for k, v in parts.items()}, ids)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(objective.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            seconds = time.perf_counter() - t0
            train_seconds, loss_sum, loss_n = train_seconds + seconds, loss_sum + loss_value, loss_n + 1

            # ---- progress, curve, validation, checkpoints: rank 0 writes, the others wait at the barriers
            minutes = round((elapsed + time.perf_counter() - t_start) / 60, 4)
            lr = optimizer.param_groups[0]["lr"]  # the new layers' group (sorted first); encoders follow the curve
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{tc.batch_size / seconds:.1f}")
            if step % tc.log_every == 0 or step == total:
                row = {"step": step, "minutes": minutes, "loss": loss_sum / loss_n, "lr": lr}
                curve.write(row | {f"loss_{k}": float(v) for k, v in parts.items()})
                loss_sum, loss_n = 0.0, 0
            if (step % tc.eval_every == 0 or step == total) and dist.main:
                scores = evaluate(model, val_samples(), dist.device, amp_dtype, cfg.model.threshold)
                train_mode(objective, tc.freeze_vision_bn)  # evaluate restores plain train mode
                curve.write({"step": step, "minutes": minutes} | {f"val_{k}": v for k, v in scores.items()})
                if best["step"] is None or scores[tc.best_metric] > best[tc.best_metric]:
                    best = {"step": step, "miou": scores["miou"], "oiou": scores["oiou"]}
                    save_checkpoint(model, out / "best", {"step": step, "metrics": scores, "config": cfg.to_dict()})
                log.info(
                    "step %d/%d: val mIoU %.4f oIoU %.4f (n=%d); best %s %.4f at step %d",
                    step, total, scores["miou"], scores["oiou"], scores["n"], tc.best_metric,
                    best[tc.best_metric], best["step"],
                )  # fmt: skip
            if (step % tc.checkpoint_every == 0 or step == total) and dist.main:
                meta = {"step": step, "best": best, "elapsed_s": elapsed + time.perf_counter() - t_start}
                ts.save_state(out / "last", model, extra, optimizer, scheduler, scaler, meta | {"identity": identity})
            if step % tc.eval_every == 0 or step % tc.checkpoint_every == 0 or step == total:
                tdist.barrier(dist)
    bar.close()
    curve.close()
    done = step - start_step
    figures = {
        "variant": spec.name,
        "steps": step,
        "best_step": best["step"],
        "best_val_miou": best["miou"],
        "best_val_oiou": best["oiou"],
        "minutes": round((elapsed + time.perf_counter() - t_start) / 60, 3),
        "s_per_step": round(train_seconds / done, 4) if done else None,
        "world_size": dist.world,
        "resumed_from": start_step or None,
    }
    log.info("training done: %s", figures)
    tdist.teardown_distributed(dist)
    return figures
