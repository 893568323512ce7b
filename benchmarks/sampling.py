"""Which samples an evaluation scores: a deterministic subset spread evenly over a list. Numpy only.

Usage: ``picked = select(refer.samples("val"), 200)``.

One rule for every subset the project takes (training's ``limit``, validation, the INT8 tuning subset, the
ablations), so two tools asked for the same number of samples of a split score the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def select(samples: Sequence[T], limit: int | None) -> list[T]:
    """At most ``limit`` samples spread evenly over the list (deterministic); all of them when ``limit`` is None."""
    if limit is None or limit >= len(samples):
        return list(samples)
    picks = np.unique(np.linspace(0, len(samples) - 1, max(limit, 0)).round().astype(int))
    return [samples[i] for i in picks]
