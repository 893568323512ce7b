"""Paired bootstrap over samples: the mIoU and oIoU differences of two runs scored on the same samples (e.g. an INT8
candidate against FP32), each with its percentile interval.

Usage: ``compare(candidate, reference)`` for two :class:`benchmarks.metrics.SegMetrics` that scored the same sample
ids; :func:`bootstrap_diff` / :func:`bootstrap_diff_oiou` take per-sample arrays in the same order. Resamples are drawn
in chunks, so memory stays at a few tens of MB for any sample count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from benchmarks.metrics import SegMetrics, iou_from_iu
from foundation.errors import ConfigError, DataError

_BOOT_CHUNK = 1 << 20  # resample-matrix elements per chunk: bounds bootstrap memory to a few tens of MB


class BootstrapCI(NamedTuple):
    """A difference (a − b) on the full sample set and its percentile bootstrap interval."""

    diff: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready ``{"diff", "lower", "upper"}``."""
        return {"diff": self.diff, "lower": self.lower, "upper": self.upper}


def _paired_columns(*arrays: Any, names: Sequence[str]) -> np.ndarray:
    cols = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    sizes = {name: c.size for name, c in zip(names, cols, strict=True)}
    if len(set(sizes.values())) != 1:
        raise DataError(f"paired bootstrap needs arrays of equal length over the same samples; got {sizes}")
    if cols[0].size == 0:
        raise DataError("paired bootstrap got no samples")
    return np.stack(cols, axis=1)  # n, m


def _bootstrap(
    columns: np.ndarray, stat: Callable[[np.ndarray, int], np.ndarray], n_boot: int, seed: int, ci: float
) -> BootstrapCI:
    """Resample rows of ``columns`` with replacement; ``stat(sums, n)`` maps column sums ``[k, m]`` to ``[k]``."""
    if int(n_boot) < 1:
        raise ConfigError(f"n_boot={n_boot!r}; expected a positive number of resamples, e.g. 1000")
    if not 0.0 < float(ci) < 1.0:
        raise ConfigError(f"ci={ci!r}; expected a coverage in (0, 1), e.g. 0.95")
    n = columns.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK // n)
    stats = []
    for start in range(0, int(n_boot), chunk):
        k = min(chunk, int(n_boot) - start)
        idx = rng.integers(0, n, size=(k, n))  # k resamples of n sample indices
        flat = (idx + (np.arange(k) * n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64)  # k, n: draws per sample
        stats.append(stat(counts @ columns, n))  # k
    boot = np.concatenate(stats)
    alpha = (1.0 - float(ci)) / 2.0
    lower, upper = np.quantile(boot, [alpha, 1.0 - alpha])
    point = float(stat(columns.sum(axis=0, keepdims=True), n)[0])
    return BootstrapCI(point, float(lower), float(upper))


def _mean_stat(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[:, 0] / n


def _oiou_stat(sums: np.ndarray, n: int) -> np.ndarray:
    def ratio(i: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.where(u > 0, i / np.maximum(u, 1.0), 1.0)

    return ratio(sums[:, 0], sums[:, 1]) - ratio(sums[:, 2], sums[:, 3])


def bootstrap_diff(ious_a: Any, ious_b: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> BootstrapCI:
    """Paired bootstrap over samples for the mIoU difference (a − b).

    Args:
        ious_a: Per-sample IoU of system a (e.g. the INT8 candidate).
        ious_b: Per-sample IoU of system b on the same samples in the same order (e.g. FP32).
        n_boot: Number of resamples.
        seed: Seed of the resampling; equal seeds give equal intervals.
        ci: Coverage of the percentile interval.

    Returns:
        ``BootstrapCI(diff, lower, upper)``: ``diff`` is mean(a) − mean(b) on all samples.
    """
    cols = _paired_columns(ious_a, ious_b, names=("ious_a", "ious_b"))
    return _bootstrap(cols[:, :1] - cols[:, 1:], _mean_stat, n_boot, seed, ci)


def bootstrap_diff_oiou(
    i_a: Any, u_a: Any, i_b: Any, u_b: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> BootstrapCI:
    """Paired bootstrap over samples for the oIoU difference ΣI_a/ΣU_a − ΣI_b/ΣU_b.

    Args:
        i_a: Per-sample I of system a.
        u_a: Per-sample U of system a.
        i_b: Per-sample I of system b, same samples and order.
        u_b: Per-sample U of system b.
        n_boot: Number of resamples.
        seed: Seed of the resampling; with the same n it draws the same resamples as ``bootstrap_diff``.
        ci: Coverage of the percentile interval.

    Returns:
        ``BootstrapCI(diff, lower, upper)``.
    """
    cols = _paired_columns(i_a, u_a, i_b, u_b, names=("i_a", "u_a", "i_b", "u_b"))
    return _bootstrap(cols, _oiou_stat, n_boot, seed, ci)


def compare(a: SegMetrics, b: SegMetrics, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Pair two runs by sample id and report both metrics and their bootstrap differences (a − b).

    Returns:
        ``{"n", "mIoU": {"a", "b", "diff", "lower", "upper"}, "oIoU": {...}}``, JSON-ready.

    Raises:
        DataError: a sample has no id, or the two runs scored different samples.
    """
    for name, m in (("a", a), ("b", b)):
        if any(sid is None for sid in m.sample_ids):
            raise DataError(f"run {name} has samples without sample_id; compare() pairs samples by id")
    ids_a, ids_b = a.sample_ids, b.sample_ids
    if set(ids_a) != set(ids_b):
        only_a, only_b = set(ids_a) - set(ids_b), set(ids_b) - set(ids_a)
        raise DataError(
            f"runs scored different samples: {len(only_a)} only in a (e.g. {sorted(map(str, only_a))[:3]}), "
            f"{len(only_b)} only in b (e.g. {sorted(map(str, only_b))[:3]})"
        )
    pos_b = {sid: k for k, sid in enumerate(ids_b)}
    order = np.array([pos_b[sid] for sid in ids_a], dtype=np.intp)
    ia, ua = a.intersections(), a.unions()
    ib, ub = b.intersections()[order], b.unions()[order]
    m_ci = bootstrap_diff(iou_from_iu(ia, ua), iou_from_iu(ib, ub), n_boot, seed, ci)
    o_ci = bootstrap_diff_oiou(ia, ua, ib, ub, n_boot, seed, ci)
    ra, rb = a.result(), b.result()
    return {
        "n": len(ids_a),
        "n_boot": int(n_boot),
        "ci": float(ci),
        "mIoU": {"a": ra["mIoU"], "b": rb["mIoU"], **m_ci.as_dict()},
        "oIoU": {"a": ra["oIoU"], "b": rb["oIoU"], **o_ci.as_dict()},
    }
