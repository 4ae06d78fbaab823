"""Metrics for confidences of correctness: calibration, discrimination, selective prediction.

Every metric takes ``y`` (n,) — 1 where the LLM's answer is correct, 0 where it is not — and
``p`` (n,) — the predicted probability that the answer is correct — and returns a float. Names
follow scikit-learn's convention: ``*_score`` is higher-is-better; ``*_error`` and ``*_loss``
are lower-is-better, and so is :func:`aurc` (an area under a risk curve).

:func:`evaluate_confidence` computes every metric in :data:`METRICS` with percentile bootstrap
intervals. Its resamples depend only on ``(n, n_bootstrap, random_state)``, so two scores of the
same rows evaluated with the same seed are compared on the same resamples (a paired bootstrap).
Internally each metric is one vectorised function over a ``(resamples, n)`` matrix; the public
functions run it on a single row, so point estimates and bootstrap values share one code path.

>>> y = [1, 1, 0, 1, 0]
>>> p = [0.9, 0.8, 0.7, 0.6, 0.2]
>>> round(roc_auc_score(y, p), 3)
0.833
>>> result = evaluate_confidence(y, p, n_bootstrap=0)
>>> round(result["brier"].value, 3)
0.148
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import CalibrationError, PerturbprobeWarning

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METRICS",
    "MetricInfo",
    "MetricValue",
    "ReliabilityBins",
    "RiskCoverage",
    "accuracy_score",
    "adaptive_calibration_error",
    "aurc",
    "average_precision_score",
    "brier_score_loss",
    "evaluate_confidence",
    "expected_calibration_error",
    "log_loss",
    "maximum_calibration_error",
    "metrics_table",
    "reliability_bins",
    "risk_coverage_curve",
    "roc_auc_score",
    "selective_accuracy",
]

_EPS = np.finfo(np.float64).eps  # log_loss clipping, as sklearn.metrics.log_loss
# Bootstrap resamples are processed in chunks of at most this many (resample, row) cells, so a
# (chunk, n) float64 matrix stays ~16 MiB whatever n is.
_CHUNK_CELLS = 1 << 21


# ---- validation -------------------------------------------------------------------------------
def _validate(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check labels and confidences; return them as float64 arrays (n,), (n,)."""
    y_arr, p_arr = np.asarray(y), np.asarray(p)
    for name, arr in (("y", y_arr), ("p", p_arr)):
        if arr.ndim != 1:
            raise CalibrationError(f"{name} must be a 1-D array, got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise CalibrationError(f"{name} must be numeric, got dtype {arr.dtype}")
    if len(y_arr) != len(p_arr):
        raise CalibrationError(
            f"y and p must have the same length, got {len(y_arr)} and {len(p_arr)}"
        )
    if len(y_arr) == 0:
        raise CalibrationError("y and p are empty; need at least one row")
    bad_y = (y_arr != 0) & (y_arr != 1)
    if bad_y.any():
        raise CalibrationError(
            f"y must hold only 1 (correct) and 0 (incorrect); got {y_arr[bad_y][0].item()!r} "
            f"in {int(bad_y.sum())} of {len(y_arr)} rows"
        )
    p_float = p_arr.astype(np.float64)
    bad_p = ~((p_float >= 0.0) & (p_float <= 1.0))  # also catches nan
    if bad_p.any():
        raise CalibrationError(
            f"p must be probabilities in [0, 1]; got {p_float[bad_p][0].item()!r} "
            f"in {int(bad_p.sum())} of {len(p_float)} rows"
        )
    return y_arr.astype(np.float64), p_float


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise CalibrationError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_bootstrap(n_bootstrap: Any, confidence_level: Any, random_state: Any) -> int:
    """Check the bootstrap settings of :func:`evaluate_confidence`; return ``n_bootstrap``."""
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, (int, np.integer))
        or (n_bootstrap < 0)
    ):
        raise CalibrationError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0.0 < confidence_level < 1.0:
        raise CalibrationError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer))
    ):
        raise CalibrationError(f"random_state must be an int or None, got {random_state!r}")
    return int(n_bootstrap)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CalibrationError(f"{name} must be one of {choices}; got {value!r}")


def _check_lengths(owner: str, **arrays: np.ndarray) -> None:
    shapes = {name: np.shape(arr) for name, arr in arrays.items()}
    if len(set(shapes.values())) != 1 or any(len(shape) != 1 for shape in shapes.values()):
        raise ValueError(f"{owner} arrays must be 1-D of one length; got shapes {shapes}")


# ---- result types -----------------------------------------------------------------------------
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
        _check_lengths("ReliabilityBins", **vars(self))


@dataclass(frozen=True)
class RiskCoverage:
    """A risk–coverage curve, one point per distinct confidence from high to low.

    Attributes
    ----------
    coverage : ndarray (k,)
        Fraction of rows kept when keeping those with ``p >= threshold``; increasing, ends at 1.
    risk : ndarray (k,)
        Error rate (fraction incorrect) among the kept rows.
    thresholds : ndarray (k,)
        The distinct confidences, decreasing.
    """

    coverage: np.ndarray
    risk: np.ndarray
    thresholds: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths("RiskCoverage", **vars(self))


@dataclass(frozen=True)
class MetricValue:
    """A point estimate with its bootstrap interval (``low``/``high`` nan when not computed)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def to_dict(self) -> dict[str, float | None]:
        """``{"value", "low", "high"}`` with nan as None, so the result is valid JSON."""
        return {key: (v if math.isfinite(v) else None) for key, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, float | None]) -> MetricValue:
        """Inverse of :meth:`to_dict` (None back to nan)."""
        return cls(*(math.nan if data.get(k) is None else float(data[k]) for k in _MV_FIELDS))

    def to_string(self, digits: int = 3) -> str:
        """``"0.812 [0.780, 0.840]"``; just the value without an interval; ``"n/a"`` for nan."""
        if not math.isfinite(self.value):
            return "n/a"
        text = f"{self.value:.{digits}f}"
        if math.isfinite(self.low) and math.isfinite(self.high):
            text += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return text


_MV_FIELDS = ("value", "low", "high")


# ---- the shared batched computation ----------------------------------------------------------
class _Batch:
    """Rows of labels and confidences, each (B, n): B resamples (or 1) of n rows.

    The sorts several metrics need are computed once, on first use.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = y  # (B, n) float 0/1
        self.p = p  # (B, n)

    @classmethod
    def of(cls, y: Any, p: Any) -> _Batch:
        y_arr, p_arr = _validate(y, p)
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


def _one_class(y: np.ndarray) -> np.ndarray:
    """(B,) True where a row of labels (B, n) holds a single class."""
    positives = y.sum(axis=1)
    return (positives == 0) | (positives == y.shape[1])


def _bin_sums(batch: _Batch, n_bins: int, strategy: str) -> tuple[np.ndarray, ...]:
    """Per-bin row count, sum of confidences and sum of labels, each (B, n_bins)."""
    n_rows, n = batch.y.shape
    if strategy == "uniform":
        inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        bin_of = np.searchsorted(inner_edges, batch.p, side="right")  # (B, n) in [0, n_bins)
        y, p = batch.y, batch.p
    else:  # "quantile": consecutive groups of the sorted rows, sized like np.array_split
        bin_of = np.broadcast_to(np.repeat(np.arange(n_bins), _equal_mass_sizes(n, n_bins)), (1, n))
        y, p = batch.sorted_ascending
    flat = (bin_of + n_bins * np.arange(n_rows)[:, None]).ravel()

    def per_bin(weights: np.ndarray | None) -> np.ndarray:
        weights = None if weights is None else weights.ravel()
        sums = np.bincount(flat, weights=weights, minlength=n_rows * n_bins)
        return sums.reshape(n_rows, n_bins).astype(np.float64)

    return per_bin(None), per_bin(p), per_bin(y)


def _equal_mass_sizes(n: int, n_bins: int) -> np.ndarray:
    """Sizes (n_bins,) of np.array_split(range(n), n_bins): the first n % n_bins get one more."""
    sizes = np.full(n_bins, n // n_bins)
    sizes[: n % n_bins] += 1
    return sizes


# ---- batched cores: (B, n) rows -> (B,) values -------------------------------------------------
def _accuracy(batch: _Batch, threshold: float) -> np.ndarray:
    return ((batch.p >= threshold) == batch.y).mean(axis=1)


def _calibration_error(batch: _Batch, n_bins: int, strategy: str) -> np.ndarray:
    # Σ_b |B_b|/n · |acc_b − conf_b| = Σ_b |Σ_{i∈b} y_i − Σ_{i∈b} p_i| / n
    _, sum_p, sum_y = _bin_sums(batch, n_bins, strategy)
    return np.abs(sum_y - sum_p).sum(axis=1) / batch.y.shape[1]


def _maximum_calibration_error(batch: _Batch, n_bins: int) -> np.ndarray:
    count, sum_p, sum_y = _bin_sums(batch, n_bins, "uniform")
    gap = np.abs(sum_y - sum_p) / np.maximum(count, 1.0)  # 0 for empty bins
    return gap.max(axis=1)


def _brier(batch: _Batch) -> np.ndarray:
    return ((batch.p - batch.y) ** 2).mean(axis=1)


def _nll(batch: _Batch) -> np.ndarray:
    p = np.clip(batch.p, _EPS, 1.0 - _EPS)
    return -(batch.y * np.log(p) + (1.0 - batch.y) * np.log1p(-p)).mean(axis=1)


def _auroc(batch: _Batch) -> np.ndarray:
    # Mann–Whitney: (R_+ − n_+(n_+ + 1)/2) / (n_+ n_−), R_+ the sum of the positives' average
    # increasing ranks. A tie group at decreasing positions [s, e] has average rank n − (s+e)/2.
    start, end = batch.ties
    n = batch.y.shape[1]
    n_pos = batch.y.sum(axis=1)
    rank_sum = (batch.y_desc * (n - (start + end) / 2.0)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))
    return np.where(_one_class(batch.y), np.nan, auc)


def _average_precision(batch: _Batch, positive: str) -> np.ndarray:
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
    return np.where(_one_class(batch.y), np.nan, ap)


def _aurc(batch: _Batch) -> np.ndarray:
    # Σ_groups Δcoverage · risk = mean over rows of the risk at the end of the row's tie group.
    return batch.kept_risk.mean(axis=1)


def _selective_accuracy(batch: _Batch, coverage: float) -> np.ndarray:
    n = batch.y.shape[1]
    # Rounded first so that e.g. 0.7 * 10 = 7.000000000000001 keeps 7 rows, not 8.
    k = max(1, math.ceil(round(coverage * n, 9)))
    return batch.y_desc[:, :k].mean(axis=1)


# ---- public metric functions -----------------------------------------------------------------
def _warn_undefined(names: Sequence[str], y: np.ndarray) -> None:
    label = "correct" if y[0] == 1 else "incorrect"
    warnings.warn(
        f"{', '.join(names)} undefined: every row of y is {label} (one class); returning nan",
        PerturbprobeWarning,
        stacklevel=3,
    )


def accuracy_score(y: Any, p: Any, threshold: float = 0.5) -> float:
    """Fraction of rows where ``(p >= threshold) == y`` — higher is better.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if the LLM's answer is correct, 0 if not.
    p : array-like of float (n,)
        Predicted probability in [0, 1] that the answer is correct.
    threshold : float, default=0.5
        Confidence at or above which an answer is predicted correct.

    Returns
    -------
    float

    >>> accuracy_score([1, 0, 1], [0.9, 0.4, 0.3])
    0.6666666666666666
    """
    if not math.isfinite(threshold):
        raise CalibrationError(f"threshold must be a finite number, got {threshold!r}")
    return float(_accuracy(_Batch.of(y, p), threshold)[0])


def expected_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    r"""Expected calibration error with equal-width bins — lower is better.

    The binary "confidence of correctness" ECE (as in the CCPS paper): with bins
    :math:`B_b = [b/M, (b+1)/M)` on ``p`` (the last closed at 1),

    .. math:: \mathrm{ECE} = \sum_{b=1}^{M} \frac{|B_b|}{n}\,
              \bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|,

    where acc is the fraction correct and conf the mean ``p`` of the bin. Empty bins add 0.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if correct, 0 if not.
    p : array-like of float (n,)
        Predicted probability of correct, in [0, 1].
    n_bins : int, default=15
        Number of bins M.

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning", AAAI. Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural
    networks", ICML.

    >>> round(expected_calibration_error([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2), 4)
    0.2
    """
    return float(_calibration_error(_Batch.of(y, p), _check_n_bins(n_bins), "uniform")[0])


def adaptive_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """ECE with equal-mass bins (adaptive calibration error) — lower is better.

    Rows are stably sorted by ``p`` and cut into ``n_bins`` consecutive groups whose sizes
    differ by at most one, the larger first (as :func:`numpy.array_split`); rows with equal
    ``p`` may fall into neighbouring bins. With fewer rows than bins the extra bins are empty.
    The formula is :func:`expected_calibration_error`'s on these bins.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    n_bins : int, default=15

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Nixon, Dusenberry, Zhang, Jerfel & Tran (2019), "Measuring calibration in deep learning",
    CVPR Workshops.

    >>> round(adaptive_calibration_error([0, 1, 1, 1], [0.1, 0.6, 0.8, 0.9], n_bins=2), 4)
    0.15
    """
    return float(_calibration_error(_Batch.of(y, p), _check_n_bins(n_bins), "quantile")[0])


def maximum_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """Largest |accuracy − mean confidence| over non-empty equal-width bins — lower is better.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    n_bins : int, default=15

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Naeini, Cooper & Hauskrecht (2015), AAAI.

    >>> round(maximum_calibration_error([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2), 4)
    0.2333
    """
    return float(_maximum_calibration_error(_Batch.of(y, p), _check_n_bins(n_bins))[0])


def brier_score_loss(y: Any, p: Any) -> float:
    """Mean squared difference between ``p`` and ``y`` — lower is better (Brier, 1950).

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)

    Returns
    -------
    float in [0, 1]

    >>> brier_score_loss([1, 0], [0.8, 0.4])
    0.1
    """
    return float(_brier(_Batch.of(y, p))[0])


def log_loss(y: Any, p: Any) -> float:
    """Mean negative log-likelihood of ``y`` under ``p`` — lower is better.

    ``p`` is clipped to ``[eps, 1 - eps]`` with ``eps = np.finfo(np.float64).eps``, as
    :func:`sklearn.metrics.log_loss` does, so a confident mistake costs about 36, not inf.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)

    Returns
    -------
    float ≥ 0

    >>> round(log_loss([1, 0], [0.5, 0.5]), 4)
    0.6931
    """
    return float(_nll(_Batch.of(y, p))[0])


def roc_auc_score(y: Any, p: Any) -> float:
    """Area under the ROC curve of ``p`` for separating correct from incorrect — higher is better.

    Computed as the Mann–Whitney statistic with average ranks for ties (a tie between a correct
    and an incorrect row counts one half); equal to :func:`sklearn.metrics.roc_auc_score`.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)

    Returns
    -------
    float in [0, 1]; nan, with a :class:`PerturbprobeWarning`, when ``y`` has one class.

    >>> roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    batch = _Batch.of(y, p)
    value = float(_auroc(batch)[0])
    if math.isnan(value):
        _warn_undefined(["roc_auc_score"], batch.y[0])
    return value


def average_precision_score(y: Any, p: Any, positive: str = "correct") -> float:
    """Average precision (area under the precision–recall step curve) — higher is better.

    ``AP = Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds, tied scores forming one
    step, exactly as :func:`sklearn.metrics.average_precision_score`.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    positive : {"correct", "incorrect"}, default="correct"
        ``"correct"``: how well high ``p`` finds correct answers (sklearn's ``(y, p)``).
        ``"incorrect"``: how well low ``p`` finds the errors (sklearn's ``(1 - y, 1 - p)``,
        ranked by ``-p`` so no ties are created by rounding ``1 - p``).

    Returns
    -------
    float in [0, 1]; nan, with a :class:`PerturbprobeWarning`, when ``y`` has one class
    (sklearn gives 1.0 or a warning there; either says nothing about the ranking).

    >>> round(average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    _check_choice("positive", positive, ("correct", "incorrect"))
    batch = _Batch.of(y, p)
    value = float(_average_precision(batch, positive)[0])
    if math.isnan(value):
        _warn_undefined([f"average_precision_score (positive={positive!r})"], batch.y[0])
    return value


def risk_coverage_curve(y: Any, p: Any) -> RiskCoverage:
    """Risk (error rate) of the rows kept with ``p >= t``, for each distinct ``t`` high to low.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)

    Returns
    -------
    RiskCoverage
        ``coverage``, ``risk`` and ``thresholds``, each (k,) with k the number of distinct
        confidences.

    >>> curve = risk_coverage_curve([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2])
    >>> curve.coverage.tolist(), curve.risk.tolist()
    ([0.25, 0.75, 1.0], [0.0, 0.3333333333333333, 0.5])
    """
    batch = _Batch.of(y, p)
    _, end = batch.ties
    last = np.flatnonzero(end[0] == np.arange(end.shape[1]))  # the end of each tie group
    return RiskCoverage(
        coverage=(last + 1) / end.shape[1],
        risk=batch.kept_risk[0, last],
        thresholds=batch.p_desc[0, last],
    )


def aurc(y: Any, p: Any) -> float:
    """Area under the risk–coverage curve — lower is better.

    ``AURC = Σ_k (c_k − c_{k−1}) r_k`` over the points of :func:`risk_coverage_curve` (with
    ``c_0 = 0``); without ties this is the mean over k = 1..n of the error rate of the k most
    confident rows. A perfect ranking gets the minimum for the data's error rate, not 0.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Geifman, Uziel & El-Yaniv (2019), "Bias-reduced uncertainty estimation for deep neural
    classifiers", ICLR.

    >>> round(aurc([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2]), 4)
    0.2917
    """
    return float(_aurc(_Batch.of(y, p))[0])


def selective_accuracy(y: Any, p: Any, coverage: float) -> float:
    """Accuracy of the ``ceil(coverage · n)`` most confident rows — higher is better.

    Rows are stably sorted by decreasing ``p``: among equal confidences, earlier rows are kept
    first, so ties at the cut are broken by row order.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    coverage : float in (0, 1]
        Fraction of rows to keep (at least one row is kept).

    Returns
    -------
    float in [0, 1]

    >>> selective_accuracy([1, 0, 1, 0], [0.9, 0.7, 0.7, 0.2], coverage=0.5)
    0.5
    """
    if not 0.0 < coverage <= 1.0:
        raise CalibrationError(f"coverage must be in (0, 1], got {coverage!r}")
    return float(_selective_accuracy(_Batch.of(y, p), coverage)[0])


def reliability_bins(
    y: Any, p: Any, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy: the data of a reliability diagram.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    n_bins : int, default=15
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins on [0, 1] (as :func:`expected_calibration_error`) or equal-mass bins
        (as :func:`adaptive_calibration_error`).

    Returns
    -------
    ReliabilityBins
        Arrays of shape (n_bins,); empty bins have nan confidence and accuracy.

    >>> bins = reliability_bins([1, 0, 1, 1], [0.9, 0.1, 0.8, 0.6], n_bins=2)
    >>> bins.count.tolist(), bins.accuracy.tolist()
    ([1, 3], [0.0, 1.0])
    """
    n_bins = _check_n_bins(n_bins)
    _check_choice("strategy", strategy, ("uniform", "quantile"))
    batch = _Batch.of(y, p)
    count, sum_p, sum_y = (a[0] for a in _bin_sums(batch, n_bins, strategy))
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1], edges[1:]
    else:
        sizes = _equal_mass_sizes(batch.y.shape[1], n_bins)
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


# ---- the registry and the bootstrap ----------------------------------------------------------
class MetricInfo(NamedTuple):
    """What :data:`METRICS` holds per metric."""

    function: Callable[..., float]
    higher_is_better: bool
    description: str


_Core = Callable[[_Batch, int], np.ndarray]  # (batch, n_bins) -> (B,)
_RANKING = ("auroc", "auprc_correct", "auprc_incorrect")  # undefined with one class

_TABLE: tuple[tuple[str, Callable[..., float], _Core, bool, str], ...] = (
    ("accuracy", accuracy_score, lambda b, nb: _accuracy(b, 0.5), True,
     "fraction right when predicting correct at p >= 0.5"),
    ("ece", expected_calibration_error, lambda b, nb: _calibration_error(b, nb, "uniform"), False,
     "expected calibration error, equal-width bins"),
    ("adaptive_ece", adaptive_calibration_error,
     lambda b, nb: _calibration_error(b, nb, "quantile"), False,
     "expected calibration error, equal-mass bins"),
    ("mce", maximum_calibration_error, _maximum_calibration_error, False,
     "largest calibration gap of a bin"),
    ("brier", brier_score_loss, lambda b, nb: _brier(b), False, "mean squared error of p"),
    ("nll", log_loss, lambda b, nb: _nll(b), False, "mean negative log-likelihood"),
    ("auroc", roc_auc_score, lambda b, nb: _auroc(b), True,
     "area under the ROC curve, correct vs incorrect"),
    ("auprc_correct", partial(average_precision_score, positive="correct"),
     lambda b, nb: _average_precision(b, "correct"), True,
     "average precision of finding correct answers by high p"),
    ("auprc_incorrect", partial(average_precision_score, positive="incorrect"),
     lambda b, nb: _average_precision(b, "incorrect"), True,
     "average precision of finding errors by low p"),
    ("aurc", aurc, lambda b, nb: _aurc(b), False, "area under the risk-coverage curve"),
    *(
        (f"selective_accuracy@{round(100 * c)}", partial(selective_accuracy, coverage=c),
         partial(lambda b, nb, c: _selective_accuracy(b, c), c=c), True,
         f"accuracy of the {round(100 * c)}% most confident answers")
        for c in (0.5, 0.8, 0.9)
    ),
)  # fmt: skip

METRICS: Mapping[str, MetricInfo] = MappingProxyType(
    {name: MetricInfo(function, better, text) for name, function, _, better, text in _TABLE}
)
"""Every metric :func:`evaluate_confidence` reports, in report order: name → MetricInfo."""

_CORES: dict[str, _Core] = {name: core for name, _, core, _, _ in _TABLE}


def _bootstrap_batches(
    y: np.ndarray, p: np.ndarray, n_bootstrap: int, random_state: int | None
) -> Iterator[_Batch]:
    """Resamples of the rows, in chunks; the indices depend only on (n, n_bootstrap, seed)."""
    n = len(y)
    rng = np.random.default_rng(random_state)
    chunk = max(1, _CHUNK_CELLS // n)
    for first in range(0, n_bootstrap, chunk):
        rows = rng.integers(0, n, size=(min(chunk, n_bootstrap - first), n))  # (chunk, n)
        yield _Batch(y[rows], p[rows])


def evaluate_confidence(
    y: Any,
    p: Any,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
) -> dict[str, MetricValue]:
    """Every metric of :data:`METRICS`, with percentile bootstrap intervals.

    Rows are resampled with replacement ``n_bootstrap`` times; the interval is the
    ``(1 ± confidence_level) / 2`` quantiles of the resampled values. The resamples depend only
    on ``(n, n_bootstrap, random_state)``: scores of the same rows evaluated with the same seed
    see the same resamples (paired comparison). Resamples holding one class are skipped for the
    ranking metrics (auroc, auprc_*), silently; their intervals come from the other resamples.

    The binned errors (ece, adaptive_ece and most of all mce) are biased upward on resamples,
    whose bins hold fewer distinct rows: their percentile intervals lean high and may even sit
    above the point estimate. Compare them between scores (paired), not against zero.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if correct, 0 if not.
    p : array-like of float (n,)
        Predicted probability of correct, in [0, 1].
    n_bins : int, default=15
        Bins of ece, adaptive_ece and mce.
    n_bootstrap : int, default=1000
        Resamples; 0 skips the bootstrap (``low`` and ``high`` are nan).
    confidence_level : float in (0, 1), default=0.95
    random_state : int or None, default=0
        Seed of the resamples; None draws fresh ones (not reproducible, not paired).

    Returns
    -------
    dict[str, MetricValue]
        Metric name → value with interval, in :data:`METRICS` order. The ranking metrics are
        nan, with one :class:`PerturbprobeWarning`, when ``y`` has a single class.

    >>> r = evaluate_confidence([1, 0, 1, 1, 0, 1], [0.9, 0.2, 0.7, 0.6, 0.5, 0.8],
    ...                         n_bootstrap=200)
    >>> r["auroc"].value
    1.0
    """
    y_arr, p_arr = _validate(y, p)
    n_bins = _check_n_bins(n_bins)
    n_bootstrap = _check_bootstrap(n_bootstrap, confidence_level, random_state)

    full = _Batch(y_arr[None, :], p_arr[None, :])
    values = {name: float(core(full, n_bins)[0]) for name, core in _CORES.items()}
    if _one_class(full.y)[0]:
        _warn_undefined(_RANKING, y_arr)

    resampled: dict[str, list[np.ndarray]] = {name: [] for name in _CORES}
    for batch in _bootstrap_batches(y_arr, p_arr, n_bootstrap, random_state):
        for name, core in _CORES.items():
            resampled[name].append(core(batch, n_bins))
    tail = (1.0 - confidence_level) / 2.0
    result = {}
    for name, value in values.items():
        draws = np.concatenate(resampled[name]) if resampled[name] else np.empty(0)
        draws = draws[~np.isnan(draws)]
        low, high = np.quantile(draws, [tail, 1.0 - tail]) if draws.size else (np.nan, np.nan)
        result[name] = MetricValue(value, float(low), float(high))
    return result


def metrics_table(
    results: Mapping[str, Mapping[str, MetricValue]],
    metrics: Sequence[str] | None = None,
    *,
    formatted: bool = True,
    digits: int = 3,
) -> pd.DataFrame:
    """Scores side by side: one row per score, one column per metric.

    Parameters
    ----------
    results : mapping of str to mapping of str to MetricValue
        Score name (e.g. ``"lightgbm"``, ``"baseline: mean token prob"``) → the output of
        :func:`evaluate_confidence`.
    metrics : sequence of str, optional
        Columns, in order. Default: every metric present, :data:`METRICS` ones first.
    formatted : bool, default=True
        True: cells are text, ``"0.812 [0.780, 0.840]"`` (``"n/a"`` where missing or nan).
        False: cells are the point estimates as floats (nan where missing).
    digits : int, default=3
        Decimals of the formatted cells.

    Returns
    -------
    pandas.DataFrame (n_scores, n_metrics)
        Index named ``"score"``.

    >>> r = {"probe": evaluate_confidence([1, 0, 1], [0.8, 0.3, 0.6], n_bootstrap=0)}
    >>> metrics_table(r, ["accuracy", "brier"]).loc["probe", "brier"]
    '0.097'
    """
    import pandas as pd

    present = list(dict.fromkeys(name for row in results.values() for name in row))
    if metrics is None:
        metrics = [name for name in METRICS if name in present]
        metrics += [name for name in present if name not in METRICS]
    unknown = [name for name in metrics if name not in present]
    if unknown:
        raise CalibrationError(f"unknown metric(s) {unknown}; the results hold {present}")
    missing = MetricValue(math.nan)
    cells = [
        [
            row.get(name, missing).to_string(digits) if formatted else row.get(name, missing).value
            for name in metrics
        ]
        for row in results.values()
    ]
    return pd.DataFrame(cells, index=pd.Index(list(results), name="score"), columns=list(metrics))
