"""The ``train`` stage: train ``model.variant`` on the data stage's output (resumable; see
:func:`pipeline.training.loop.fit`).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages train`` (or, on several GPUs,
``torchrun --nproc_per_node=4 -m pipeline.train --config ...``, which runs this same stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.stage import CODE_TRAINING, StageContext, stage


def train(cfg: Config, data_dir: Path, out: Path) -> dict[str, Any]:
    """Train ``cfg.model`` against the ground truth (:func:`~pipeline.training.objectives.seg_task`) into ``out``.

    Returns:
        The training figures (see :func:`pipeline.training.loop.fit`).
    """
    from pipeline.training.loop import fit
    from pipeline.training.objectives import seg_task

    return fit(cfg, data_dir, out, seg_task(cfg.train))


@stage(
    "train",
    upstream=("data",),
    sections=("data", "model", "train"),
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers"),
    code=CODE_TRAINING,
    resumable=True,
)
def run_train(ctx: StageContext) -> dict[str, Any]:
    """Write ``best.safetensors`` + ``best.json``, ``last/``, ``metrics.jsonl``; return the training figures."""
    return train(ctx.cfg, ctx.upstream("data"), ctx.out)
