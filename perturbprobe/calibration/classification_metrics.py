"""Discrimination and selective-prediction metrics of confidences of correctness.

Each takes labels ``y`` (n,) — 1 where the LLM's answer is correct, 0 where not — and
confidences ``p`` (n,) in [0, 1]. Accuracy, AUROC, average precision and selective accuracy
are higher-is-better; AURC (an area under a risk curve) is lower-is-better.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CalibrationError, PerturbprobeWarning
from .metric_cores import (
    Batch,
    batch_accuracy,
    batch_aurc,
    batch_auroc,
    batch_average_precision,
    batch_selective_accuracy,
)
from .validation import check_choice, check_parallel_arrays

__all__ = [
    "RiskCoverage",
    "accuracy_score",
    "aurc",
    "average_precision_score",
    "risk_coverage_curve",
    "roc_auc_score",
    "selective_accuracy",
    "warn_one_class",
]


@dataclass(frozen=True)
class RiskCoverage:
    """A risk–coverage curve, one point per distinct confidence from high to low:
    ``coverage`` (k,), the fraction of rows kept with ``p >= threshold`` (increasing, ends at
    1); ``risk`` (k,), the error rate among the kept rows; ``thresholds`` (k,), the distinct
    confidences (decreasing)."""

    coverage: np.ndarray
    risk: np.ndarray
    thresholds: np.ndarray

    def __post_init__(self) -> None:
        check_parallel_arrays("RiskCoverage", **vars(self))


def warn_one_class(names: Sequence[str], y: np.ndarray) -> None:
    """Warn that the metrics ``names`` are nan because the labels ``y`` (n,) hold one class
    (``stacklevel`` points at the caller of the public metric)."""
    label = "correct" if y[0] == 1 else "incorrect"
    warnings.warn(
        f"{', '.join(names)} undefined: every row of y is {label} (one class); returning nan",
        PerturbprobeWarning,
        stacklevel=3,
    )


def accuracy_score(y: Any, p: Any, threshold: float = 0.5) -> float:
    """Fraction of rows (n,) where ``(p >= threshold) == y``, i.e. predicting "correct" at
    confidences of at least ``threshold``.

    >>> accuracy_score([1, 0, 1], [0.9, 0.4, 0.3])
    0.6666666666666666
    """
    if not math.isfinite(threshold):
        raise CalibrationError(f"threshold must be a finite number, got {threshold!r}")
    return float(batch_accuracy(Batch.of(y, p), threshold)[0])


def roc_auc_score(y: Any, p: Any) -> float:
    """Area under the ROC curve of ``p`` (n,) for separating correct from incorrect.

    The Mann–Whitney statistic with average ranks for ties (a tie between a correct and an
    incorrect row counts one half); equal to :func:`sklearn.metrics.roc_auc_score`. In [0, 1];
    nan, with a :class:`PerturbprobeWarning`, when ``y`` has one class.

    >>> roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    batch = Batch.of(y, p)
    value = float(batch_auroc(batch)[0])
    if math.isnan(value):
        warn_one_class(["roc_auc_score"], batch.y[0])
    return value


def average_precision_score(y: Any, p: Any, positive: str = "correct") -> float:
    """Average precision (area under the precision–recall step curve) of ``p`` (n,).

    ``AP = Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds, tied scores forming one
    step, exactly as :func:`sklearn.metrics.average_precision_score`. ``positive="correct"``:
    how well high ``p`` finds correct answers (sklearn's ``(y, p)``); ``"incorrect"``: how
    well low ``p`` finds the errors (sklearn's ``(1 - y, 1 - p)``, ranked by ``-p`` so no ties
    are created by rounding ``1 - p``). In [0, 1]; nan, with a :class:`PerturbprobeWarning`,
    when ``y`` has one class (sklearn gives 1.0 or a warning there; either says nothing about
    the ranking).

    >>> round(average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    check_choice("positive", positive, ("correct", "incorrect"))
    batch = Batch.of(y, p)
    value = float(batch_average_precision(batch, positive)[0])
    if math.isnan(value):
        warn_one_class([f"average_precision_score (positive={positive!r})"], batch.y[0])
    return value


def risk_coverage_curve(y: Any, p: Any) -> RiskCoverage:
    """Risk (error rate) of the rows kept with ``p >= t``, for each distinct ``t`` high to low:
    a :class:`RiskCoverage` of (k,) arrays, k the number of distinct confidences.

    >>> curve = risk_coverage_curve([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2])
    >>> curve.coverage.tolist(), curve.risk.tolist()
    ([0.25, 0.75, 1.0], [0.0, 0.3333333333333333, 0.5])
    """
    batch = Batch.of(y, p)
    _, end = batch.ties
    last = np.flatnonzero(end[0] == np.arange(end.shape[1]))  # the end of each tie group
    return RiskCoverage(
        coverage=(last + 1) / end.shape[1],
        risk=batch.kept_risk[0, last],
        thresholds=batch.p_desc[0, last],
    )


def aurc(y: Any, p: Any) -> float:
    """Area under the risk–coverage curve, in [0, 1] — lower is better.

    ``AURC = Σ_k (c_k − c_{k−1}) r_k`` over the points of :func:`risk_coverage_curve` (with
    ``c_0 = 0``); without ties this is the mean over k = 1..n of the error rate of the k most
    confident rows. A perfect ranking gets the minimum for the data's error rate, not 0.
    Geifman, Uziel & El-Yaniv (2019), ICLR.

    >>> round(aurc([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2]), 4)
    0.2917
    """
    return float(batch_aurc(Batch.of(y, p))[0])


def selective_accuracy(y: Any, p: Any, coverage: float) -> float:
    """Accuracy of the ``ceil(coverage · n)`` most confident rows, ``coverage`` in (0, 1].

    Rows are stably sorted by decreasing ``p``: among equal confidences, earlier rows are kept
    first, so ties at the cut are broken by row order. At least one row is kept.

    >>> selective_accuracy([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2], coverage=0.5)
    0.5
    """
    if not 0.0 < coverage <= 1.0:
        raise CalibrationError(f"coverage must be in (0, 1], got {coverage!r}")
    return float(batch_selective_accuracy(Batch.of(y, p), coverage)[0])
