"""Vectorised metric cores: each metric as one function of a :class:`Batch` of rows (B, n).

A batch holds ``B`` rows of ``n`` labels and confidences: one row for a point estimate, or
``B`` bootstrap resamples. Each core returns the metric per row, shape (B,), so point estimates
and bootstrap values share one code path. The resamples of :func:`bootstrap_batches` depend
only on ``(n, n_bootstrap, random_state)``, which makes two scores evaluated with one seed a
paired comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np

from .validation import check_labels_and_scores

__all__ = [
    "CHUNK_CELLS",
    "Batch",
    "batch_accuracy",
    "batch_aurc",
    "batch_auroc",
    "batch_average_precision",
    "batch_brier",
    "batch_calibration_error",
    "batch_maximum_calibration_error",
    "batch_nll",
    "batch_selective_accuracy",
    "bin_sums",
    "bootstrap_batches",
    "equal_mass_sizes",
    "one_class",
    "percentile_interval",
    "resample_chunks",
]

_EPS = np.finfo(np.float64).eps  # log_loss clipping, as sklearn.metrics.log_loss
# Bootstrap resamples are processed in chunks of at most this many (resample, row) cells, so a
# (chunk, n) float64 matrix stays ~16 MiB whatever n is.
CHUNK_CELLS = 1 << 21


# ---- the batch ---------------------------------------------------------------------------------
class Batch:
    """Rows of labels and confidences, each (B, n): B resamples (or 1) of n rows.

    The sorts several metrics need are computed once, on first use.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = y  # (B, n) float 0/1
        self.p = p  # (B, n)

    @classmethod
    def of(cls, y: Any, p: Any) -> Batch:
        """The single-row batch (1, n) of labels ``y`` and confidences ``p`` (n,), checked."""
        y_arr, p_arr = check_labels_and_scores(y, p)
        return cls(y_arr[None, :], p_arr[None, :])

    @cached_property
    def order(self) -> np.ndarray:
        """Stable sort by decreasing confidence (B, n): ties keep their row order."""
        return np.argsort(-self.p, axis=1, kind="stable")

    @cached_property
    def y_desc(self) -> np.ndarray:
        return np.take_along_axis(self.y, self.order, axis=1)  # (B, n)

    @cached_property
    def p_desc(self) -> np.ndarray:
        return np.take_along_axis(self.p, self.order, axis=1)  # (B, n)

    @cached_property
    def ties(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last position (B, n) of each element's tie group in the decreasing order."""
        s = self.p_desc
        n = s.shape[1]
        pos = np.arange(n)
        first = np.ones(s.shape, dtype=bool)
        first[:, 1:] = s[:, 1:] != s[:, :-1]
        last = np.ones(s.shape, dtype=bool)
        last[:, :-1] = first[:, 1:]
        start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
        return start, end

    @cached_property
    def kept_risk(self) -> np.ndarray:
        """(B, n), in decreasing order: error rate of the rows with ``p >=`` this row's ``p``."""
        _, end = self.ties
        return _precision_at_group_end(1.0 - self.y_desc, end)

    @cached_property
    def sorted_ascending(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidences (B, n) in a stable sort by increasing confidence."""
        order = np.argsort(self.p, axis=1, kind="stable")
        return np.take_along_axis(self.y, order, axis=1), np.take_along_axis(self.p, order, axis=1)


def _precision_at_group_end(labels: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Fraction of positives among positions 0..end[i] of ``labels`` (B, n), per element."""
    hits = np.cumsum(labels, axis=1)
    return np.take_along_axis(hits, end, axis=1) / (end + 1)


def one_class(y: np.ndarray) -> np.ndarray:
    """(B,) True where a row of labels (B, n) holds a single class."""
    positives = y.sum(axis=1)
    return (positives == 0) | (positives == y.shape[1])


def bin_sums(batch: Batch, n_bins: int, strategy: str) -> tuple[np.ndarray, ...]:
    """Per-bin row count, sum of confidences and sum of labels, each (B, n_bins)."""
    n_rows, n = batch.y.shape
    if strategy == "uniform":
        inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        bin_of = np.searchsorted(inner_edges, batch.p, side="right")  # (B, n) in [0, n_bins)
        y, p = batch.y, batch.p
    else:  # "quantile": consecutive groups of the sorted rows, sized like np.array_split
        bin_of = np.broadcast_to(np.repeat(np.arange(n_bins), equal_mass_sizes(n, n_bins)), (1, n))
        y, p = batch.sorted_ascending
    flat = (bin_of + n_bins * np.arange(n_rows)[:, None]).ravel()

    def per_bin(weights: np.ndarray | None) -> np.ndarray:
        weights = None if weights is None else weights.ravel()
        sums = np.bincount(flat, weights=weights, minlength=n_rows * n_bins)
        return sums.reshape(n_rows, n_bins).astype(np.float64)

    return per_bin(None), per_bin(p), per_bin(y)


def equal_mass_sizes(n: int, n_bins: int) -> np.ndarray:
    """Sizes (n_bins,) of np.array_split(range(n), n_bins): the first n % n_bins get one more."""
    sizes = np.full(n_bins, n // n_bins)
    sizes[: n % n_bins] += 1
    return sizes


# ---- batched cores: (B, n) rows -> (B,) values -------------------------------------------------
def batch_accuracy(batch: Batch, threshold: float) -> np.ndarray:
    return ((batch.p >= threshold) == batch.y).mean(axis=1)


def batch_calibration_error(batch: Batch, n_bins: int, strategy: str) -> np.ndarray:
    # Σ_b |B_b|/n · |acc_b − conf_b| = Σ_b |Σ_{i∈b} y_i − Σ_{i∈b} p_i| / n
    _, sum_p, sum_y = bin_sums(batch, n_bins, strategy)
    return np.abs(sum_y - sum_p).sum(axis=1) / batch.y.shape[1]


def batch_maximum_calibration_error(batch: Batch, n_bins: int) -> np.ndarray:
    count, sum_p, sum_y = bin_sums(batch, n_bins, "uniform")
    gap = np.abs(sum_y - sum_p) / np.maximum(count, 1.0)  # 0 for empty bins
    return gap.max(axis=1)


def batch_brier(batch: Batch) -> np.ndarray:
    return ((batch.p - batch.y) ** 2).mean(axis=1)


def batch_nll(batch: Batch) -> np.ndarray:
    p = np.clip(batch.p, _EPS, 1.0 - _EPS)
    return -(batch.y * np.log(p) + (1.0 - batch.y) * np.log1p(-p)).mean(axis=1)


def batch_auroc(batch: Batch) -> np.ndarray:
    # Mann–Whitney: (R_+ − n_+(n_+ + 1)/2) / (n_+ n_−), R_+ the sum of the positives' average
    # increasing ranks. A tie group at decreasing positions [s, e] has average rank n − (s+e)/2.
    start, end = batch.ties
    n = batch.y.shape[1]
    n_pos = batch.y.sum(axis=1)
    rank_sum = (batch.y_desc * (n - (start + end) / 2.0)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))
    return np.where(one_class(batch.y), np.nan, auc)


def batch_average_precision(batch: Batch, positive: str) -> np.ndarray:
    # AP = Σ_k (R_k − R_{k−1}) P_k over distinct thresholds (sklearn's step integral): each
    # positive contributes 1/n_+ times the precision at the end of its tie group.
    start, end = batch.ties
    if positive == "correct":
        labels, group_end = batch.y_desc, end
    else:  # score 1 − p: the decreasing order reversed, with tie groups reversed too
        labels = 1.0 - batch.y_desc[:, ::-1]
        group_end = batch.y.shape[1] - 1 - start[:, ::-1]
    precision = _precision_at_group_end(labels, group_end)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (labels * precision).sum(axis=1) / labels.sum(axis=1)
    return np.where(one_class(batch.y), np.nan, ap)


def batch_aurc(batch: Batch) -> np.ndarray:
    # Σ_groups Δcoverage · risk = mean over rows of the risk at the end of the row's tie group.
    return batch.kept_risk.mean(axis=1)


def batch_selective_accuracy(batch: Batch, coverage: float) -> np.ndarray:
    n = batch.y.shape[1]
    # Rounded first so that e.g. 0.7 * 10 = 7.000000000000001 keeps 7 rows, not 8.
    k = max(1, math.ceil(round(coverage * n, 9)))
    return batch.y_desc[:, :k].mean(axis=1)


# ---- the bootstrap ----------------------------------------------------------------------------
def resample_chunks(
    n_bootstrap: int, n: int, chunk_cells: int = CHUNK_CELLS
) -> Iterator[tuple[int, int]]:
    """``(first, size)`` of consecutive chunks of the ``n_bootstrap`` resamples of ``n`` rows,
    each of at most ``chunk_cells`` (resample, row) cells (at least one resample)."""
    chunk = max(1, chunk_cells // n)
    for first in range(0, n_bootstrap, chunk):
        yield first, min(chunk, n_bootstrap - first)


def bootstrap_batches(
    y: np.ndarray,
    p: np.ndarray,
    n_bootstrap: int,
    random_state: int | None,
    chunk_cells: int = CHUNK_CELLS,
) -> Iterator[Batch]:
    """Resamples of the rows of ``y``, ``p`` (n,), in chunks (B, n); the indices depend only on
    (n, n_bootstrap, seed), not on the chunks."""
    n = len(y)
    rng = np.random.default_rng(random_state)
    for _, size in resample_chunks(n_bootstrap, n, chunk_cells):
        rows = rng.integers(0, n, size=(size, n))  # (size, n)
        yield Batch(y[rows], p[rows])


def percentile_interval(draws: np.ndarray, confidence_level: float) -> tuple[float, float]:
    """The ``(1 ± confidence_level) / 2`` quantiles of the non-nan ``draws`` (k,); nan, nan
    when there are none."""
    draws = draws[~np.isnan(draws)]
    if not draws.size:
        return math.nan, math.nan
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)
