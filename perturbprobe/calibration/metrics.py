"""Metrics for confidences of correctness: calibration, discrimination, selective prediction.

Every metric takes ``y`` (n,) — 1 where the LLM's answer is correct, 0 where it is not — and
``p`` (n,) — the predicted probability that the answer is correct — and returns a float. Names
follow scikit-learn's convention: ``*_score`` is higher-is-better; ``*_error`` and ``*_loss``
are lower-is-better, and so is :func:`aurc` (an area under a risk curve).

The metrics live in :mod:`~perturbprobe.calibration.calibration_metrics` (ECE, Brier, …) and
:mod:`~perturbprobe.calibration.classification_metrics` (AUROC, AURC, …), each a thin wrapper
of a vectorised core of :mod:`~perturbprobe.calibration.metric_cores`; this module holds their
registry :data:`METRICS` and :func:`evaluate_confidence`, which computes every one with
percentile bootstrap intervals. Its resamples depend only on ``(n, n_bootstrap,
random_state)``, so two scores of the same rows evaluated with the same seed are compared on
the same resamples (a paired bootstrap).

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import CalibrationError
from .calibration_metrics import (
    ReliabilityBins,
    adaptive_calibration_error,
    brier_score_loss,
    expected_calibration_error,
    log_loss,
    maximum_calibration_error,
    reliability_bins,
)
from .classification_metrics import (
    RiskCoverage,
    accuracy_score,
    aurc,
    average_precision_score,
    risk_coverage_curve,
    roc_auc_score,
    selective_accuracy,
    warn_one_class,
)
from .metric_cores import (
    CHUNK_CELLS,
    Batch,
    batch_accuracy,
    batch_aurc,
    batch_auroc,
    batch_average_precision,
    batch_brier,
    batch_calibration_error,
    batch_maximum_calibration_error,
    batch_nll,
    batch_selective_accuracy,
    bootstrap_batches,
    one_class,
    percentile_interval,
)
from .validation import check_bootstrap, check_labels_and_scores, check_n_bins

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


# ---- result types -----------------------------------------------------------------------------
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


# ---- the registry and the bootstrap ----------------------------------------------------------
class MetricInfo(NamedTuple):
    """What :data:`METRICS` holds per metric."""

    function: Callable[..., float]
    higher_is_better: bool
    description: str


# Cells per chunk of evaluate_confidence's bootstrap resamples (a module global: tests shrink it).
_CHUNK_CELLS = CHUNK_CELLS
_Core = Callable[[Batch, int], np.ndarray]  # (batch, n_bins) -> (B,)
_RANKING = ("auroc", "auprc_correct", "auprc_incorrect")  # undefined with one class

_TABLE: tuple[tuple[str, Callable[..., float], _Core, bool, str], ...] = (
    ("accuracy", accuracy_score, lambda b, nb: batch_accuracy(b, 0.5), True,
     "fraction right when predicting correct at p >= 0.5"),
    ("ece", expected_calibration_error, lambda b, nb: batch_calibration_error(b, nb, "uniform"),
     False, "expected calibration error, equal-width bins"),
    ("adaptive_ece", adaptive_calibration_error,
     lambda b, nb: batch_calibration_error(b, nb, "quantile"), False,
     "expected calibration error, equal-mass bins"),
    ("mce", maximum_calibration_error, batch_maximum_calibration_error, False,
     "largest calibration gap of a bin"),
    ("brier", brier_score_loss, lambda b, nb: batch_brier(b), False, "mean squared error of p"),
    ("nll", log_loss, lambda b, nb: batch_nll(b), False, "mean negative log-likelihood"),
    ("auroc", roc_auc_score, lambda b, nb: batch_auroc(b), True,
     "area under the ROC curve, correct vs incorrect"),
    ("auprc_correct", partial(average_precision_score, positive="correct"),
     lambda b, nb: batch_average_precision(b, "correct"), True,
     "average precision of finding correct answers by high p"),
    ("auprc_incorrect", partial(average_precision_score, positive="incorrect"),
     lambda b, nb: batch_average_precision(b, "incorrect"), True,
     "average precision of finding errors by low p"),
    ("aurc", aurc, lambda b, nb: batch_aurc(b), False, "area under the risk-coverage curve"),
    *(
        (f"selective_accuracy@{round(100 * c)}", partial(selective_accuracy, coverage=c),
         partial(lambda b, nb, c: batch_selective_accuracy(b, c), c=c), True,
         f"accuracy of the {round(100 * c)}% most confident answers")
        for c in (0.5, 0.8, 0.9)
    ),
)  # fmt: skip

METRICS: Mapping[str, MetricInfo] = MappingProxyType(
    {name: MetricInfo(function, better, text) for name, function, _, better, text in _TABLE}
)
"""Every metric :func:`evaluate_confidence` reports, in report order: name → MetricInfo."""

_CORES: dict[str, _Core] = {name: core for name, _, core, _, _ in _TABLE}


def evaluate_confidence(
    y: Any,
    p: Any,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
) -> dict[str, MetricValue]:
    """Every metric of :data:`METRICS` of ``y``, ``p`` (n,), with percentile bootstrap intervals.

    Rows are resampled with replacement ``n_bootstrap`` times (0: no bootstrap, ``low`` and
    ``high`` nan); the interval is the ``(1 ± confidence_level) / 2`` quantiles of the
    resampled values. The resamples depend only on ``(n, n_bootstrap, random_state)``: scores
    of the same rows evaluated with the same seed see the same resamples (paired comparison;
    ``random_state=None`` draws fresh ones). Resamples holding one class are skipped for the
    ranking metrics (auroc, auprc_*), silently; their intervals come from the other resamples.
    ``n_bins`` are the bins of ece, adaptive_ece and mce.

    The binned errors (ece, adaptive_ece and most of all mce) are biased upward on resamples,
    whose bins hold fewer distinct rows: their percentile intervals lean high and may even sit
    above the point estimate. Compare them between scores (paired), not against zero.

    Returns metric name → :class:`MetricValue`, in :data:`METRICS` order. The ranking metrics
    are nan, with one :class:`PerturbprobeWarning`, when ``y`` has a single class.

    >>> r = evaluate_confidence([1, 0, 1, 1, 0, 1], [0.9, 0.2, 0.7, 0.6, 0.5, 0.8],
    ...                         n_bootstrap=200)
    >>> r["auroc"].value
    1.0
    """
    y_arr, p_arr = check_labels_and_scores(y, p)
    n_bins = check_n_bins(n_bins)
    n_bootstrap = check_bootstrap(n_bootstrap, confidence_level, random_state)

    full = Batch(y_arr[None, :], p_arr[None, :])
    values = {name: float(core(full, n_bins)[0]) for name, core in _CORES.items()}
    if one_class(full.y)[0]:
        warn_one_class(_RANKING, y_arr)

    resampled: dict[str, list[np.ndarray]] = {name: [] for name in _CORES}
    for batch in bootstrap_batches(y_arr, p_arr, n_bootstrap, random_state, _CHUNK_CELLS):
        for name, core in _CORES.items():
            resampled[name].append(core(batch, n_bins))
    result = {}
    for name, value in values.items():
        draws = np.concatenate(resampled[name]) if resampled[name] else np.empty(0)
        result[name] = MetricValue(value, *percentile_interval(draws, confidence_level))
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
