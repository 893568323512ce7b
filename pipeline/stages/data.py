"""The ``data`` stage: generate SynRef, or validate a REFER data set on disk and point at it.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages data``.

SynRef is written into the stage folder (``synref/`` in the REFER layout). Real REFER data is not copied: the stage
loads and cross-checks it, checks every referenced image file exists, and writes ``dataset.json`` (where it is, what
it holds). Both return counts per split and per expression kind, and how many sentences the configured tokenizer
truncates at ``model.max_tokens``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundation.errors import DataError, PipelineError
from foundation.io import atomic_write_json
from pipeline.stage import CODE_DATA, StageContext, stage

if TYPE_CHECKING:
    from pipeline.data.refer import ReferDataset

log = logging.getLogger(__name__)


@stage(
    "data",
    sections=("data",),
    version="1",
    toolchain=("tokenizers", "transformers"),
    code=CODE_DATA,
)
def run_data(ctx: StageContext) -> dict[str, Any]:
    from pipeline.data.dataset import open_dataset
    from pipeline.data.synref import generate_synref

    data = ctx.cfg.data
    if data.dataset == "synref":
        stats = generate_synref(ctx.out, data)
        refer = open_dataset(ctx.cfg, ctx.out)  # read back through the loader: what later stages will see
    else:
        refer = open_dataset(ctx.cfg, ctx.out)
        stats = {"dataset": data.dataset, "split_by": data.split_by, **refer.counts()}
        stats["images_checked"] = _check_images(refer)
        pointer = {
            "dataset": data.dataset,
            "split_by": data.split_by,
            "root": str(Path(data.root).resolve()),
            "images": str(refer.images_dir.resolve()),
            "counts": stats,
        }
        atomic_write_json(ctx.out / "dataset.json", pointer)
    for split in (data.train_split, *data.eval_splits):
        refer.samples(split)  # a configured split that the data lacks fails here, naming the valid ones
    stats["truncations"] = _truncations(ctx, refer)
    log.info("data %s: sentences per split %s", data.dataset, stats.get("sentences"))
    return stats


def _check_images(refer: ReferDataset) -> int:
    """Check every image a ref uses exists (decoding them all would be too slow for COCO); return how many."""
    used = sorted({ref["image_id"] for ref in refer.refs.values()})
    missing = [i for i in used if not refer.image_path(i).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(used)} images are missing under {refer.images_dir}, e.g. image {missing[0]} "
            f"({refer.image_path(missing[0])}); set data.images to the folder that holds them"
        )
    return len(used)


def _truncations(ctx: StageContext, refer: ReferDataset) -> dict[str, Any] | None:
    """Sentences longer than ``model.max_tokens`` per split, with the configured tokenizer (informational).

    The tokenizer is a ``model`` setting, outside this stage's cache key: the training stage counts again.
    """
    from runtimes.tokenizer import TextTokenizer

    try:
        tok = TextTokenizer.from_dir(ctx.cfg.model.text_dir, ctx.cfg.model.max_tokens)
    except PipelineError as exc:
        log.warning("no truncation statistics: %s", exc)
        return None
    out: dict[str, Any] = {"tokenizer": tok.source, "max_tokens": tok.max_length}
    for split in refer.splits:
        before = tok.stats["truncated"]
        tok([s.text for s in refer.samples(split)])
        out[split] = tok.stats["truncated"] - before
    return out
