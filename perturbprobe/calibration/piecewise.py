"""Non-parametric calibrators: isotonic regression (piecewise linear, non-decreasing) and
histogram binning (piecewise constant). Flexible, but they need more rows than the
parametric maps of :mod:`perturbprobe.calibration.parametric`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CalibrationError
from .calibrator_base import Calibrator, register, state_curve

__all__ = ["HistogramCalibrator", "IsotonicCalibrator"]


@register
class IsotonicCalibrator(Calibrator):
    """Isotonic regression: the non-decreasing step map minimising squared error to ``y``
    (Zadrozny & Elkan 2002), linearly interpolated between its knots.

    Fitted with ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip", y_min=0,
    y_max=1)``; only its knots are kept, and ``transform`` is ``np.interp`` over them (which
    clips outside the knots, as ``out_of_bounds="clip"`` does), so loading needs no
    scikit-learn object. Flexible but data-hungry: it overfits small calibration sets.

    Attributes
    ----------
    X_thresholds_ : ndarray of float64, shape (k,)
        Strictly increasing knot positions (input scores).
    y_thresholds_ : ndarray of float64, shape (k,)
        Non-decreasing calibrated values at the knots.
    """

    name = "isotonic"
    _state = ("X_thresholds_", "y_thresholds_")

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        self.X_thresholds_ = np.asarray(fitted.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(fitted.y_thresholds_, dtype=np.float64)

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.X_thresholds_, self.y_thresholds_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        x = state_curve(state, "X_thresholds_", order="strict")
        y = state_curve(state, "y_thresholds_", order="weak")
        if len(x) != len(y):
            raise CalibrationError(
                f"calibrator state 'X_thresholds_' and 'y_thresholds_' must have the same "
                f"length; got {len(x)} and {len(y)}"
            )
        return {"X_thresholds_": x, "y_thresholds_": y}


@register
class HistogramCalibrator(Calibrator):
    """Histogram binning: ``p'`` = the fraction of correct answers in ``p``'s bin
    (Zadrozny & Elkan 2001), with equal-mass bins.

    Edges: the inverted-CDF quantiles of the fit scores at 1/n_bins, …, (n_bins − 1)/n_bins
    (so every edge is a fit score), deduplicated, minus any edge equal to the largest fit
    score. Bin ``k`` holds the scores in ``(e[k−1], e[k]]`` with ``e[−1] = −∞`` and
    ``e[m] = +∞`` (``np.searchsorted(edges, p, side="left")``). Hence every bin holds at
    least one fit row, tied scores always share a bin, there are at most ``n_bins`` bins, and
    new scores below or above the fit range fall into the first or last bin. The map is
    piecewise constant and need not be monotone.

    Parameters
    ----------
    n_bins : int, default 10
        The number of equal-mass bins (fewer when scores tie).

    Attributes
    ----------
    bin_edges_ : ndarray of float64, shape (m,)
        Strictly increasing interior edges.
    bin_values_ : ndarray of float64, shape (m + 1,)
        Mean label per bin.
    """

    name = "histogram"
    _params = ("n_bins",)
    _state = ("bin_edges_", "bin_values_")

    def __init__(self, *, n_bins: int = 10) -> None:
        self.n_bins = n_bins

    def _check_params(self) -> None:
        n_bins = self.n_bins
        if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
            raise CalibrationError(
                f"The 'n_bins' parameter of HistogramCalibrator must be an int >= 1. "
                f"Got {n_bins!r} instead."
            )

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        levels = np.arange(1, self.n_bins) / self.n_bins
        edges = np.unique(np.quantile(p, levels, method="inverted_cdf"))
        self.bin_edges_ = edges[edges < p.max()]
        bins = np.searchsorted(self.bin_edges_, p, side="left")  # (n,) in 0..m
        counts = np.bincount(bins, minlength=len(self.bin_edges_) + 1)
        self.bin_values_ = np.bincount(bins, weights=y, minlength=len(counts)) / counts

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return self.bin_values_[np.searchsorted(self.bin_edges_, p, side="left")]

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        edges = state_curve(state, "bin_edges_", order="strict", allow_empty=True)
        values = state_curve(state, "bin_values_", order=None)
        if len(values) != len(edges) + 1:
            raise CalibrationError(
                f"calibrator state 'bin_values_' must have one more entry than 'bin_edges_'; "
                f"got {len(values)} and {len(edges)}"
            )
        return {"bin_edges_": edges, "bin_values_": values}
