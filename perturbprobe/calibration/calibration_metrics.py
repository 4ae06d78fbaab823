r"""Calibration metrics of confidences of correctness: binned calibration errors, the Brier
score, the log-loss and the reliability diagram's data — all lower-is-better.

Each takes labels ``y`` (n,) — 1 where the LLM's answer is correct, 0 where not — and
confidences ``p`` (n,) in [0, 1]. The binned errors compare, per bin ``B_b`` of ``p``, the
fraction correct with the mean confidence:

.. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|

References
----------
Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
binning", AAAI. Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural
networks", ICML. Nixon, Dusenberry, Zhang, Jerfel & Tran (2019), "Measuring calibration in deep
learning", CVPR Workshops. Brier (1950).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .metric_cores import (
    Batch,
    batch_brier,
    batch_calibration_error,
    batch_maximum_calibration_error,
    batch_nll,
    bin_sums,
    equal_mass_sizes,
)
from .validation import check_choice, check_n_bins, check_parallel_arrays

__all__ = [
    "ReliabilityBins",
    "adaptive_calibration_error",
    "brier_score_loss",
    "expected_calibration_error",
    "log_loss",
    "maximum_calibration_error",
    "reliability_bins",
]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram; every array has shape (n_bins,).

    Attributes
    ----------
    lower, upper : ndarray (n_bins,)
        Bin edges for ``strategy="uniform"``; the smallest and largest confidence in the bin
        for ``strategy="quantile"`` (nan when empty).
    count : ndarray (n_bins,)
        Rows per bin (int).
    mean_confidence, accuracy : ndarray (n_bins,)
        Mean ``p`` and fraction correct of the bin; nan for empty bins.
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray

    def __post_init__(self) -> None:
        check_parallel_arrays("ReliabilityBins", **vars(self))


def expected_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """ECE in [0, 1] with ``n_bins`` equal-width bins ``[b/M, (b+1)/M)`` on ``p`` (the last
    closed at 1); empty bins add 0. The binary "confidence of correctness" ECE, as in the CCPS
    paper.

    >>> round(expected_calibration_error([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2), 4)
    0.2
    """
    return float(batch_calibration_error(Batch.of(y, p), check_n_bins(n_bins), "uniform")[0])


def adaptive_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """ECE in [0, 1] with ``n_bins`` equal-mass bins (adaptive calibration error).

    Rows are stably sorted by ``p`` and cut into ``n_bins`` consecutive groups whose sizes
    differ by at most one, the larger first (as :func:`numpy.array_split`); rows with equal
    ``p`` may fall into neighbouring bins. With fewer rows than bins the extra bins are empty.

    >>> round(adaptive_calibration_error([0, 1, 1, 1], [0.1, 0.6, 0.8, 0.9], n_bins=2), 4)
    0.15
    """
    return float(batch_calibration_error(Batch.of(y, p), check_n_bins(n_bins), "quantile")[0])


def maximum_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """Largest |accuracy − mean confidence| in [0, 1] over the non-empty equal-width bins.

    >>> round(maximum_calibration_error([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2), 4)
    0.2333
    """
    return float(batch_maximum_calibration_error(Batch.of(y, p), check_n_bins(n_bins))[0])


def brier_score_loss(y: Any, p: Any) -> float:
    """Mean squared difference between ``p`` and ``y`` (n,), in [0, 1].

    >>> brier_score_loss([1, 0], [0.8, 0.4])
    0.1
    """
    return float(batch_brier(Batch.of(y, p))[0])


def log_loss(y: Any, p: Any) -> float:
    """Mean negative log-likelihood (≥ 0) of ``y`` under ``p`` (n,).

    ``p`` is clipped to ``[eps, 1 - eps]`` with ``eps = np.finfo(np.float64).eps``, as
    :func:`sklearn.metrics.log_loss` does, so a confident mistake costs about 36, not inf.

    >>> round(log_loss([1, 0], [0.5, 0.5]), 4)
    0.6931
    """
    return float(batch_nll(Batch.of(y, p))[0])


def reliability_bins(
    y: Any, p: Any, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy (n_bins,): a reliability diagram's data.

    ``strategy="uniform"``: equal-width bins on [0, 1] (as :func:`expected_calibration_error`);
    ``"quantile"``: equal-mass bins (as :func:`adaptive_calibration_error`). Empty bins have
    nan confidence and accuracy.

    >>> bins = reliability_bins([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2)
    >>> bins.count.tolist(), bins.accuracy.tolist()
    ([1, 3], [0.0, 1.0])
    """
    n_bins = check_n_bins(n_bins)
    check_choice("strategy", strategy, ("uniform", "quantile"))
    batch = Batch.of(y, p)
    count, sum_p, sum_y = (a[0] for a in bin_sums(batch, n_bins, strategy))
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1], edges[1:]
    else:
        sizes = equal_mass_sizes(batch.y.shape[1], n_bins)
        p_sorted = np.append(batch.sorted_ascending[1][0], np.nan)  # nan: index of empty bins
        first = np.where(sizes > 0, np.cumsum(sizes) - sizes, -1)
        lower, upper = p_sorted[first], p_sorted[np.where(sizes > 0, first + sizes - 1, -1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return ReliabilityBins(
            lower=lower,
            upper=upper,
            count=count.astype(np.int64),
            mean_confidence=sum_p / count,
            accuracy=sum_y / count,
        )
