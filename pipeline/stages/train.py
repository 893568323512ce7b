"""The ``train`` stage: train ``model.variant`` on the data stage's output (resumable; see
:func:`pipeline.training.loop.fit`).

Usage: ``python -m pipeline run --config configs/demo.yaml --stages train`` (or, on several GPUs,
``torchrun --nproc_per_node=4 -m pipeline.train --config ...``, which runs this same stage).
"""

from __future__ import annotations

from typing import Any

from pipeline.stage import CODE_TRAINING, StageContext, stage


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
    from pipeline.training.jobs import train

    return train(ctx.cfg, ctx.upstream("data"), ctx.out)
