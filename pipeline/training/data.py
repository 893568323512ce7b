"""What the training loop reads: a deterministic rank-sharded sample order, the batch stream, flips, teacher views.

Usage: ``sampler = EpochSampler(len(ds), 8, seed=0, rank=dist.rank, world=dist.world)``;
``batches = batch_stream(ds, sampler, start_step, num_workers=0, pin_memory=False)``.

Everything here is a pure function of its arguments, so a resumed run reads exactly the batches an uninterrupted one
would have read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from foundation.errors import ConfigError, DataError, StageError

# the inputs the teacher of a distillation reads (its own view of each sample when its input size or tokenizer differ)
TEACHER_KEYS = ("image", "input_ids", "attention_mask")


# --------------------------------------------------------------------------------------------------------- data order


class EpochSampler(Sampler[int]):
    """Deterministic, rank-sharded sample order: epoch ``e`` is a permutation drawn from ``(seed, e)`` alone.

    Global batch ``b`` of an epoch is ``order[b·G:(b+1)·G]``; rank ``r`` takes its ``r``-th slice of ``G / world``
    samples, so a DDP step sees exactly the samples of the matching single-process step. A trailing partial batch is
    dropped. :meth:`start_at` positions the sampler at any optimizer step, which is how a resumed run skips the
    batches it already consumed.

    With ``groups`` (the sample indices of each image) and ``per_group = k > 1`` the order is made of runs of ``k``
    samples of one image (an image with fewer than ``k`` left fills its last run by drawing again from its own
    samples), so the training step encodes each image once for ``k`` expressions: ``k`` times fewer image encodings
    per sample, and the model sees several targets on the same picture, which only the language tells apart.
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        groups: Sequence[Sequence[int]] | None = None,
        per_group: int = 1,
    ) -> None:
        if global_batch % world:
            raise ConfigError(
                f"train.batch_size={global_batch} is not divisible by the {world} processes; use a multiple of {world}"
            )
        if per_group < 1 or (global_batch // world) % per_group:
            raise ConfigError(
                f"train.expressions_per_image={per_group} must divide the per-process batch "
                f"{global_batch // world} (train.batch_size={global_batch} over {world} process(es))"
            )
        self.per_group = per_group
        self.groups = [list(g) for g in groups] if groups is not None and per_group > 1 else None
        if self.groups is not None:
            size = per_group * sum(-(-len(g) // per_group) for g in self.groups if g)
        if size < global_batch:
            raise DataError(f"the train split has {size} samples, fewer than train.batch_size={global_batch}")
        self.size, self.global_batch, self.seed, self.rank, self.world = size, global_batch, seed, rank, world
        self.per_rank = global_batch // world
        self.batches_per_epoch = size // global_batch
        self.epoch, self.first_batch = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch``, in order (a permutation, or runs of ``per_group`` of one image)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.groups is None:
            return rng.permutation(self.size)
        k, runs = self.per_group, []
        for members in self.groups:
            if not members:
                continue
            picks = rng.permutation(members).tolist()
            short = -len(picks) % k
            picks += rng.choice(members, size=short).tolist() if short else []
            runs += [picks[i : i + k] for i in range(0, len(picks), k)]
        return np.asarray([i for r in rng.permutation(len(runs)) for i in runs[r]], dtype=np.int64)

    def global_batch_indices(self, step: int) -> list[int]:
        """Dataset indices of the whole global batch of optimizer step ``step`` (0-based)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return self.order(epoch)[b * self.global_batch : (b + 1) * self.global_batch].tolist()

    def start_at(self, step: int) -> None:
        """Position the sampler so that its next batch is the one of optimizer step ``step``."""
        self.epoch, self.first_batch = divmod(step, self.batches_per_epoch)

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        for b in range(self.first_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            yield from order[start : start + self.per_rank].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.first_batch) * self.per_rank


def batch_stream(
    dataset: Dataset, sampler: EpochSampler, start_step: int, num_workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield this rank's batches from optimizer step ``start_step`` on, epoch after epoch, forever."""
    step = start_step
    while True:
        sampler.start_at(step)
        loader = DataLoader(
            dataset,
            batch_size=sampler.per_rank,
            sampler=sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=True,
            generator=torch.Generator().manual_seed(sampler.seed),  # keeps the global torch RNG untouched
        )
        for batch in loader:
            yield batch
            step += 1


def image_groups(image_ids: Sequence[Any]) -> list[list[int]]:
    """Sample indices grouped by image, in order of first appearance (the ``groups`` of :class:`EpochSampler`)."""
    groups: dict[Any, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(index)
    return list(groups.values())


def swap_token_ids(tokenizer: Any, words: tuple[str, str]) -> tuple[int, int]:
    """The token ids of two words that a flip swaps ("left" and "right", "top" and "bottom").

    Raises:
        StageError: a word is not one token of this tokenizer (a flip could not rewrite the sentence token-wise).
    """
    tokens = tokenizer(list(words))
    ids = []
    for word, row, mask in zip(words, tokens["input_ids"], tokens["attention_mask"], strict=True):
        real = [int(i) for i, m in zip(row, mask, strict=True) if m]
        if len(real) != 3:  # [CLS] word [SEP]
            raise StageError(
                f"a training flip needs {word!r} to be one token of the tokenizer, got {len(real) - 2} tokens; "
                "set train.hflip=0 and train.vflip=0 for this tokenizer"
            )
        ids.append(real[1])
    return ids[0], ids[1]


# the words a flip turns into their mirror image: a horizontal flip swaps left and right, a vertical one top and bottom
HFLIP_WORDS = (("left", "right"),)
VFLIP_WORDS = (("top", "bottom"), ("above", "below"))


def flip_batch(
    batch: dict[str, torch.Tensor], prob: float, swaps: Sequence[tuple[int, int]], seed: int, axis: int = -1
) -> dict[str, torch.Tensor]:
    """Flip each distinct image of a batch along ``axis`` (-1: horizontally, -2: vertically) with probability
    ``prob``, with its masks, category map and every sentence about it: each pair of ``swaps`` token ids ("left",
    "right") trade places, so the sentence stays true.

    All samples of one image (``image_key``) flip together, so the shared image encoding stays valid. The decision
    draws from a generator seeded by ``seed`` (derived from the step): a resumed run flips the same images.
    """
    n = len(batch["image"])
    keys = batch["image_key"].tolist() if "image_key" in batch else list(range(n))
    gen = torch.Generator().manual_seed(seed)
    decision: dict[Any, bool] = {}
    for key in keys:
        if key not in decision:
            decision[key] = bool(torch.rand((), generator=gen) < prob)
    rows = torch.tensor([decision[k] for k in keys], device=batch["image"].device)
    if not bool(rows.any()):
        return batch
    out = dict(batch)
    for name in ("image", "mask", "category"):
        if name in batch:
            x = batch[name]
            out[name] = torch.where(rows.view(-1, *[1] * (x.dim() - 1)), x.flip(axis), x)
    ids = batch["input_ids"]
    swapped = ids
    for a, b in swaps:
        swapped = torch.where(ids == a, b, torch.where(ids == b, a, swapped))
    out["input_ids"] = torch.where(rows[:, None], swapped, ids)
    return out


class TeacherInputs:
    """The student's samples, each with the teacher's own view of it (``teacher_image``, ``teacher_input_ids``...)."""

    def __init__(self, student: Any, teacher: Any) -> None:
        self.student, self.teacher, self.samples = student, teacher, student.samples

    def __len__(self) -> int:
        return len(self.student)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, view = self.student[index], self.teacher[index]
        return item | {f"teacher_{k}": view[k] for k in TEACHER_KEYS}


def with_teacher_inputs(train_set: Any, student_spec: Any, teacher_spec: Any) -> Any:
    """``train_set`` itself when the teacher reads the student's inputs; else a :class:`TeacherInputs` view."""
    from pipeline.data.dataset import RISDataset
    from runtimes.tokenizer import TextTokenizer

    same = [getattr(student_spec, k) == getattr(teacher_spec, k) for k in ("img_size", "text_dir", "max_tokens")]
    if all(same):
        return train_set
    tokenizer = TextTokenizer.from_dir(teacher_spec.text_dir, teacher_spec.max_tokens)
    return TeacherInputs(train_set, RISDataset(train_set.refer, train_set.split, tokenizer, teacher_spec.img_size))
