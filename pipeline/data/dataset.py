"""Model-ready samples: a map-style training dataset and a batch-1 numpy evaluation iterator. Imports no torch.

Usage::

    refer = open_dataset(cfg, run_dir / "data")
    loader = torch.utils.data.DataLoader(RISDataset(refer, "train", tokenizer, 224), batch_size=8, shuffle=True)
    for inputs, gt, sample in iter_eval(refer, "val", tokenizer, 224): ...

:class:`RISDataset` returns numpy arrays; torch's default collate stacks them into tensors, so the module never
needs torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sampling import select
from foundation.errors import DataError
from pipeline.config import Config
from pipeline.config_sections import DataConfig
from pipeline.data.refer import ReferDataset, Sample, load_refer
from pipeline.data.transforms import resize_mask
from runtimes.image import preprocess_image
from runtimes.tokenizer import TextTokenizer


def open_dataset(cfg: Config | DataConfig, data_dir: str | Path) -> ReferDataset:
    """Open the data set a config names: SynRef from the ``data`` stage's output, or REFER data from ``data.root``.

    Args:
        cfg: the run config (or its ``data`` section).
        data_dir: the ``data`` stage's output folder (holds ``synref/`` for SynRef).
    """
    data = cfg.data if isinstance(cfg, Config) else cfg
    if data.dataset == "synref":
        return load_refer(data_dir, "synref", "unc")
    if data.root is None:
        raise DataError(f"data.dataset is {data.dataset!r} but data.root is not set; point it at the REFER data root")
    return load_refer(data.root, data.dataset, data.split_by, data.images)


class RISDataset:
    """Training samples of one split, for ``torch.utils.data.DataLoader`` (map-style: ``len`` and ``[i]``).

    All sentences are tokenized up front; images and masks are decoded per item.

    Args:
        refer: the loaded data set.
        split: which split.
        tokenizer: fixed-length tokenizer (its ``stats`` count the truncated sentences).
        size: square input side S.
        limit: keep at most this many samples (spread evenly).
        category_side: also return ``category``, the image's per-pixel category labels (every annotated object,
            :meth:`ReferDataset.category_map`) resized to this side, for the auxiliary category loss; None: not.
    """

    def __init__(
        self,
        refer: ReferDataset,
        split: str,
        tokenizer: TextTokenizer,
        size: int,
        limit: int | None = None,
        category_side: int | None = None,
    ) -> None:
        self.refer = refer
        self.split = split
        self.size = size
        self.category_side = category_side
        self.samples = select(refer.samples(split), limit)
        tokens = tokenizer([s.text for s in self.samples])
        self.input_ids = tokens["input_ids"]  # B, N int64
        self.attention_mask = tokens["attention_mask"]  # B, N int64

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``image`` float32 [3, S, S], ``input_ids``/``attention_mask`` int64 [N], ``mask`` float32 [1, S, S]
        (and ``category`` int64 [side, side] with ``category_side``)."""
        sample = self.samples[index]
        image = preprocess_image(self.refer.image(sample.image_id), self.size)
        target = resize_mask(self.refer.mask(sample.ann_id), self.size)
        extra = {}
        if self.category_side is not None:
            labels = resize_mask(self.refer.category_map(sample.image_id), self.category_side)
            extra["category"] = labels.astype(np.int64)
        return extra | {
            "image": image,
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "mask": target.astype(np.float32)[None],  # 1, S, S
            "index": index,
            "image_key": np.int64(sample.image_id),
        }


def iter_eval(
    refer: ReferDataset, split: str, tokenizer: TextTokenizer, size: int, limit: int | None = None
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, Sample]]:
    """Evaluation samples one at a time, ready for any runtime.

    Yields:
        ``(inputs, gt, sample)``: inputs ``image`` float32 [1, 3, S, S], ``input_ids`` and ``attention_mask`` int64
        [1, N]; gt the bool mask at the image's original resolution [H, W]; sample the :class:`Sample`.
    """
    samples = select(refer.samples(split), limit)
    last_id, image = None, None
    for sample in samples:
        if sample.image_id != last_id:  # a ref's sentences (and often its neighbours) share one image
            image = preprocess_image(refer.image(sample.image_id), size)[None]  # 1, 3, S, S
            last_id = sample.image_id
        tokens = tokenizer(sample.text)
        yield {"image": image, **tokens}, refer.mask(sample.ann_id), sample
