"""The command line of the ``train`` and ``distill`` stages: one process, or DDP under torchrun.

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
file; the others wait at a barrier meanwhile. The outputs (in the stage folder or ``--out``) are those of
:func:`pipeline.training.loop.fit`; this module is only the command line around the train and distill stages.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from foundation.errors import StageError
from pipeline.config import Config
from pipeline.layout import RunLayout
from pipeline.training import distributed as tdist

log = logging.getLogger("pipeline.train")


# --------------------------------------------------------------------------------------------------------- CLI


def run_body(cfg: Config, layout: RunLayout, stage: str, out: Path) -> dict[str, Any]:
    """The ``train`` or ``distill`` stage body for ``cfg``'s run folder, writing into ``out``."""
    return _train(cfg, stage, layout.stage_dir("data"), layout.stage_dir("train"), out)


def _train(cfg: Config, stage: str, data_dir: Path, train_dir: Path, out: Path) -> dict[str, Any]:
    """Train (``stage`` ``train``) or distil (``distill``, teacher from ``train_dir``) into ``out``."""
    if stage == "train":
        from pipeline.training.jobs import train

        return train(cfg, data_dir, out)
    from pipeline.training.jobs import distill, teacher_path

    return distill(cfg, data_dir, teacher_path(cfg, train_dir), out)


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

    dist = tdist.setup_distributed(cfg.train.threads)
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
        tdist.teardown_distributed(dist)
        if state == "done":
            log.info("stage %s is done in %s (cached); `pipeline run --force --stages %s` redoes it",
                     stage, runner.run_dir, stage)  # fmt: skip
            return None
        hint = "enable it in the config" if state == "disabled" else "run `python -m pipeline run` for it first"
        raise StageError(f"stage {stage} cannot run in {runner.run_dir}: {state}; {hint}")
    if dist.main:
        runner.run([stage])
        return runner.figures(stage)
    run_body(cfg, runner.layout, stage, runner.layout.work_dir(stage))  # where rank 0's runner trains
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
        layout = RunLayout.of(cfg, ())  # train, distill and data are shared by every device
        if args.out is None:
            train_in_run_folder(cfg, args.stage)
        else:
            _train(cfg, args.stage, args.data or layout.stage_dir("data"), layout.stage_dir("train"), args.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
