"""The training loop of the ``train`` stage (and of ``distill``): one process, or DDP under torchrun.

Usage: ``python -m pipeline.train --config configs/demo.yaml [--set train.steps=400] [--out DIR]``

Without ``--out`` it trains into the run folder's ``train`` stage exactly as ``python -m pipeline run --stages train``
does (same work folder, same resume, same manifest at the end), so the two can be mixed; the ``data`` stage must be
done first. With ``--out`` it trains into that folder (``--data`` names the data stage's folder).

Several GPUs of one machine (the global ``train.batch_size`` is split across the processes)::

    torchrun --standalone --nproc_per_node=4 -m pipeline.train --config configs/train/paper.yaml

Several machines (run on every node; node 0's address is the rendezvous endpoint; ``run.root`` on a filesystem all
nodes share, since every process reads the data and the resume state and rank 0 writes the checkpoints)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=ris-paper --rdzv_backend=c10d \\
        --rdzv_endpoint=node0.example:29500 -m pipeline.train --config configs/train/paper.yaml \\
        --set run.root=/shared/runs --set data.root=/shared/refer

CPU processes use gloo (``torchrun --nproc_per_node=2`` works on a laptop). Rank 0 logs, validates and writes every
file; the others wait at a barrier meanwhile. Outputs (in the stage folder or ``--out``):

- ``best.safetensors`` + ``best.json``: the model with the best validation ``train.best_metric`` (what export uses);
- ``last/``: the resumable state (see :mod:`pipeline.trainstate`); a rerun into the same folder resumes from it and
  ends with the same weights as an uninterrupted run;
- ``metrics.jsonl``: one row per ``train.log_every`` steps (step, minutes, loss, lr) and per validation
  (val_miou, val_oiou); ``tb/`` TensorBoard logs when ``train.tensorboard``;
- ``nan.json`` when a loss turns non-finite: the step and the sample ids of its batch.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from foundation.errors import StageError
from foundation.io import atomic_write_json, atomic_write_text
from pipeline import trainstate as ts
from pipeline import trainutil as tu
from pipeline.config import Config, ModelConfig

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


class SegObjective(nn.Module):
    """The model plus its Dice + BCE loss: the module the loop optimises (and DDP wraps).

    With ``category_weight`` > 0 an auxiliary :class:`~pipeline.trainutil.CategoryHead`
    on the language-free vision features adds ``category_weight`` × cross-entropy against ``batch["category"]``
    (per-pixel labels of every annotated object at stride 4), once per distinct image of the batch.
    """

    def __init__(
        self,
        model: nn.Module,
        dice_weight: float,
        bce_weight: float,
        category_weight: float = 0.0,
        category_classes: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.category_weight = category_weight
        self.category = tu.CategoryHead(model.vision.channels, category_classes) if category_weight > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats, firsts = tu.forward_shared_images(self.model, batch)  # B, 1, S/4, S/4
        loss, parts = tu.seg_loss(logits, batch["mask"], self.dice_weight, self.bce_weight)
        if self.category is not None:
            aux = F.cross_entropy(self.category(feats).float(), batch["category"][firsts])
            loss = loss + self.category_weight * aux
            parts = parts | {"category": aux.detach()}
        return loss, parts

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Trainable tensors outside the model that a resume needs: the auxiliary category head, if any."""
        if self.category is None:
            return {}
        return {f"category.{k}": v for k, v in self.category.state_dict(keep_vars=True).items()}


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
        with tu.autocast(device, dtype):
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


def stop_on_nan(out: Path, dist: tu.Dist, step: int, loss: float, parts: dict[str, float], ids: list[Any]) -> None:
    """Record the failing step and its samples in ``nan.json`` (rank 0) and stop every process."""
    path = out / "nan.json"
    if dist.main:
        atomic_write_json(path, {"step": step, "loss": str(loss), "parts": parts, "sample_ids": ids})
    tu.barrier(dist)  # every rank saw the same global loss; wait for the record before anyone exits
    raise StageError(
        f"training loss is {loss} at step {step} (loss parts {parts}); the step and the sample ids of its batch are "
        f"in {path}. Lower train.lr, check those samples, or set train.amp=off"
    )


# --------------------------------------------------------------------------------------------------------- the loop


def fit(cfg: Config, data_dir: Path, out: Path, teacher: Path | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on the data stage's folder into ``out``, resuming from ``out/last`` when it is there.

    Args:
        cfg: the resolved config (for distillation: the student's config, see :func:`pipeline.distill.distill`).
        data_dir: the ``data`` stage's output folder.
        out: where checkpoints, curves and logs go (the stage's work folder).
        teacher: a teacher checkpoint: distil into ``cfg.model`` with the ``distill`` settings.

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
    dist = tu.setup_distributed(tc.threads)
    tu.barrier(dist)  # under `pipeline.train` without --out, rank 0 prepares the work folder first
    tu.seed_everything(tc.seed, tc.deterministic)
    amp_dtype = tu.autocast_dtype(tc.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    out.mkdir(parents=True, exist_ok=True)

    # ---- model (random init under the seed, then pretrained weights), data, objective
    model, pretrained = build_model(cfg.model)
    tu.set_dropout(model, tc.dropout, tc.drop_path)
    if tc.freeze_text:
        # the pretrained encoder; a learned sentence pooling still trains. Its dropout stays on (train mode): the demo
        # recipe measured 0.43 val mIoU with it, 0.32 with the encoder in eval mode (seed 0; README, Demo accuracy)
        model.text.body.requires_grad_(False)
    if tc.freeze_vision:
        model.vision.body.requires_grad_(False)
    spec = model.spec
    tokenizer = TextTokenizer.from_dir(spec.text_dir, spec.max_tokens)
    refer = open_dataset(cfg, data_dir)
    category = tc.category_weight > 0 and teacher is None
    side = spec.img_size // 4 if category else None  # the stride of V1
    train_set = RISDataset(refer, cfg.data.train_split, tokenizer, spec.img_size, category_side=side)
    if teacher is None:
        classes = len(refer.categories) + 1  # + background
        objective: nn.Module = SegObjective(model, tc.dice_weight, tc.bce_weight, tc.category_weight, classes)
    else:
        from pipeline.distill import DistillObjective, with_teacher_inputs

        objective = DistillObjective.from_checkpoint(model, teacher, cfg.distill, tc)
        train_set = with_teacher_inputs(train_set, spec, objective.teacher.spec)
    objective.to(dist.device)
    if tc.channels_last:
        objective.to(memory_format=torch.channels_last)
    flips = [  # (probability, swapped token ids, axis, seed offset)
        (p, [tu.swap_token_ids(tokenizer, pair) for pair in words], axis, offset)
        for p, words, axis, offset in ((tc.hflip, tu.HFLIP_WORDS, -1, 0), (tc.vflip, tu.VFLIP_WORDS, -2, 1))
        if p > 0
    ]
    if dist.ddp:
        tu.sync_batchnorm(objective.model, dist.device)  # statistics of the global batch, as in one process

    # ---- data order, optimizer, schedule
    groups = tu.image_groups([s.image_id for s in train_set.samples])
    sampler = tu.EpochSampler(
        len(train_set), tc.batch_size, tc.seed, dist.rank, dist.world, groups, tc.expressions_per_image
    )
    total = tc.epochs * sampler.batches_per_epoch if tc.epochs else tc.steps
    groups = tu.param_groups(
        objective, lr=tc.lr, encoder_lr=tc.encoder_lr or tc.lr, weight_decay=tc.weight_decay, pretrained=pretrained
    )
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=tc.adam_eps)
    schedule = functools.partial(tu.lr_factor, total=total, warmup=tc.warmup_steps, power=tc.poly_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    # ---- resume
    identity = ts.run_identity({s: cfg.section(s) for s in (*SECTIONS, *(["distill"] if teacher else []))}, spec.name)
    extra = objective.extra_tensors()
    step, best, elapsed = 0, {"step": None, "miou": None, "oiou": None}, 0.0
    folder = ts.find_state(out / "last")
    if folder is not None:
        meta = ts.load_state(folder, model, extra, optimizer, scheduler, scaler, identity)
        step, best, elapsed = meta["step"], meta["best"], meta["elapsed_s"]
        log.info("resuming from %s at step %d of %d", folder, step, total)
    start_step = step
    net = tu.wrap_ddp(objective, dist) if dist.ddp else objective

    # ---- the loop
    batches = tu.batch_stream(train_set, sampler, step, tc.num_workers, pin_memory=dist.device.type == "cuda")
    val_samples = functools.partial(iter_eval, refer, tc.val_split, tokenizer, spec.img_size, tc.eval_samples)
    curve = MetricsLog(out, step, tc.tensorboard, dist.main)
    log.info(
        "training %s for %d steps (from %d): global batch %d on %d process(es), %s, %d train samples, autocast %s",
        spec.name, total, step, tc.batch_size, dist.world, dist.device, len(train_set), amp_dtype,
    )  # fmt: skip
    label = f"{'distill' if teacher else 'train'} {spec.name}"
    bar = tqdm(total=total, initial=step, desc=label, disable=not dist.main, dynamic_ncols=True)
    t_start, train_seconds, loss_sum, loss_n = time.perf_counter(), 0.0, 0.0, 0
    tu.train_mode(objective, tc.freeze_vision_bn)
    with logging_redirect_tqdm():
        while step < total:
            t0 = time.perf_counter()
            batch = {k: v.to(dist.device, non_blocking=True) for k, v in next(batches).items()}
            for prob, swaps, axis, offset in flips:
                seed = ((tc.seed * 7919 + dist.rank) * 2 + offset) * 1_000_003 + step
                batch = tu.flip_batch(batch, prob, swaps, seed, axis)
            if tc.channels_last:  # after the flips, which return contiguous tensors
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with tu.autocast(dist.device, amp_dtype):
                loss, parts = net(batch)
            loss_value = tu.mean_across(dist, loss.detach()).item()  # the global batch's mean loss
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
                tu.train_mode(objective, tc.freeze_vision_bn)  # evaluate restores plain train mode
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
                tu.barrier(dist)
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
    tu.teardown_distributed(dist)
    return figures


# --------------------------------------------------------------------------------------------------------- CLI


def run_body(cfg: Config, run_dir: Path, stage: str, out: Path) -> dict[str, Any]:
    """The ``train`` or ``distill`` stage body for ``cfg``'s run folder, writing into ``out``."""
    if stage == "train":
        return fit(cfg, run_dir / "data", out)
    from pipeline.distill import distill
    from pipeline.stages.distill import teacher_path

    return distill(cfg, run_dir / "data", teacher_path(cfg, run_dir / "train"), out)


def train_in_run_folder(cfg: Config, stage: str = "train") -> dict[str, Any] | None:
    """Run the ``train`` (or ``distill``) stage of ``cfg``'s run folder from every torchrun process.

    Rank 0 goes through the stage runner (lock, cache key, work folder, manifest); the other ranks train into the
    same work folder. Nothing runs when the stage is already done; its upstream stages must be done first.

    Returns:
        The stage's figures on rank 0, None on the other ranks or when the stage was cached.

    Raises:
        StageError: an upstream stage is not done, or the stage is disabled by the config.
    """
    from pipeline.runner import Runner
    from pipeline.stage import get_stage

    dist = tu.setup_distributed(cfg.train.threads)
    runner = Runner(cfg)
    box: list[str | None] = [None]
    if dist.main:
        blocked = [f"{up} is {runner.status(up).state}" for up in get_stage(stage).upstream]
        blocked = [b for b in blocked if not b.endswith((" done", " disabled"))]
        box = [f"upstream stage {blocked[0]}" if blocked else runner.status(stage).state]
    if dist.ddp:
        torch.distributed.broadcast_object_list(box, src=0)
    state = str(box[0])
    if state in ("done", "disabled") or state.startswith("upstream"):
        tu.teardown_distributed(dist)
        if state == "done":
            log.info("stage %s is done in %s (cached); `pipeline run --force --stages %s` redoes it",
                     stage, runner.run_dir, stage)  # fmt: skip
            return None
        hint = "enable it in the config" if state == "disabled" else "run `python -m pipeline run` for it first"
        raise StageError(f"stage {stage} cannot run in {runner.run_dir}: {state}; {hint}")
    if dist.main:
        runner.run([stage])
        return runner.figures(stage)
    run_body(cfg, runner.run_dir, stage, runner.run_dir / f".{stage}.work")  # the runner's work folder convention
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.train``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description="Train (single process or torchrun).")
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stage", choices=("train", "distill"), default="train", help="what to train")
    parser.add_argument("--out", type=Path, default=None, help="train into this folder instead of the run folder")
    parser.add_argument("--data", type=Path, default=None, help="with --out: the data stage's folder")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    from foundation.errors import PipelineError
    from pipeline.config import load_config
    from pipeline.logs import setup_logging

    setup_logging(args.log_level if int(os.environ.get("RANK", "0")) == 0 else "WARNING")  # rank 0 speaks
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(cfg.run.root).resolve() / cfg.run.name
        if args.out is None:
            train_in_run_folder(cfg, args.stage)
        elif args.stage == "train":
            fit(cfg, args.data or run_dir / "data", args.out)
        else:
            from pipeline.distill import distill
            from pipeline.stages.distill import teacher_path

            distill(cfg, args.data or run_dir / "data", teacher_path(cfg, run_dir / "train"), args.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
