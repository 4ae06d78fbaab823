"""The logistic-regression probe: the linear baseline every other probe must beat.

P(correct) = σ(w·z + b) with z the standardised features, missing values first replaced by
the training medians: median imputation → standardisation → L2-regularised logistic
regression (scikit-learn's ``LogisticRegression``, L-BFGS) with strength ``1 / C``. Its
coefficients are readable feature effects, and it is usually well calibrated out of the box.

``sample_weight`` are frequency weights throughout: the medians, means and standard deviations
are weighted like the loss, so a weight of 2 is the same as a repeated row and a weight of 0
the same as a dropped one.

Persistence never unpickles: the fitted arrays (medians, mean, scale, coefficients, intercept)
are float64 tensors in ``logistic.safetensors``, the iteration count and the fitted metadata
are in ``logistic.json``. Predictions are computed from exactly these arrays by one numpy code
path (:meth:`LogisticProbe._predict_positive`), after a fit and after a load alike, so a loaded
probe predicts bitwise identically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors import SafetensorError
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ..errors import ProbeError
from ._scaling import standardisation_scale
from .base import Probe
from .state import check_shapes, read_arrays, read_json, write_arrays

__all__ = ["LogisticProbe"]

_ARRAYS_FILE = "logistic.safetensors"
_META_FILE = "logistic.json"
_PICKLE_FILE = "logistic.joblib"  # the pickle earlier versions wrote; never loaded
_ARRAYS = ("medians", "mean", "scale", "coef", "intercept")


def _weighted_nan_median(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Median of every column over its non-missing values, each counted ``w`` times: float64
    (F,) (``np.nanmedian`` without weights; the median of the repeated rows with integer
    weights)."""
    order = np.argsort(X, axis=0, kind="stable")  # NaN sorts last
    values = np.take_along_axis(X, order, axis=0)
    weights = np.ones(len(X)) if w is None else w
    cumulative = np.cumsum(np.where(np.isnan(values), 0.0, weights[order]), axis=0)
    half = cumulative[-1] / 2
    empty = np.flatnonzero(half == 0)
    if empty.size:
        raise ProbeError(
            f"features {empty[:5].tolist()} have no value in the records of positive weight; "
            "drop them"
        )
    columns = np.arange(X.shape[1])
    low = values[np.argmax(cumulative >= half, axis=0), columns]
    high = values[np.argmax(cumulative > half, axis=0), columns]
    return (low + high) / 2


class LogisticProbe(Probe):
    """L2-regularised logistic regression on median-imputed, standardised features.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength (smaller: stronger shrinkage).
    class_weight : dict, "balanced" or None, default=None
        Passed to :class:`~sklearn.linear_model.LogisticRegression`, a dict keyed by the labels
        of y; ``None`` keeps the probabilities calibrated to the training base rate.
    max_iter : int, default=2000
        L-BFGS iterations (hundreds of correlated features converge slowly).
    random_state : int, RandomState or None, default=0
        Unused by L-BFGS; kept for the common probe interface.
    pos_label : label or None, default=None
        The label of y meaning "answer correct" (None: ``classes_[1]``); see
        :class:`~perturbprobe.probes.base.Probe`.

    Attributes
    ----------
    medians_, mean_, scale_ : ndarray of float64, shape (F,)
        Imputation values and standardisation; a feature constant up to float32 rounding
        gets its magnitude as ``scale_`` (see :mod:`perturbprobe.probes._scaling`).
    coef_ : ndarray of float64, shape (F,)
        Coefficients on the standardised features.
    intercept_ : float
        Intercept.
    n_iter_ : ndarray of int32, shape (1,)
        L-BFGS iterations of the fit (as :class:`~sklearn.linear_model.LogisticRegression`).
    classes_, pos_label_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Notes
    -----
    State files: ``logistic.safetensors`` (float64 arrays) and ``logistic.json``; nothing is
    unpickled at load. A directory holding only the ``logistic.joblib`` pickle of an older
    version is refused without being read: fit the probe again.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = (X[:, 0] > 0).astype(int)
    >>> LogisticProbe().fit(X, y).predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "logistic"
    input_kind: ClassVar[str] = "table"

    def __init__(self, *, C=1.0, class_weight=None, max_iter=2000, random_state=0, pos_label=None):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.pos_label = pos_label

    def _encoded_class_weight(self) -> Any:
        """``class_weight`` keyed by the 0/1 codes the fit sees instead of y's labels."""
        if not isinstance(self.class_weight, Mapping):
            return self.class_weight
        classes = self.classes_.tolist()
        unknown = [label for label in self.class_weight if label not in classes]
        if unknown:
            raise ProbeError(f"class_weight names {unknown}, which are not labels of y ({classes})")
        return {int(label == self.pos_label_): w for label, w in self.class_weight.items()}

    def _fit(self, X: np.ndarray, y: np.ndarray, groups, sample_weight) -> None:
        medians = _weighted_nan_median(X, sample_weight)
        filled = np.where(np.isnan(X), medians, X)
        scaler = StandardScaler().fit(filled, sample_weight=sample_weight)
        scaler.scale_ = standardisation_scale(filled, np.sqrt(scaler.var_))
        model = LogisticRegression(
            C=self.C,
            class_weight=self._encoded_class_weight(),
            max_iter=self.max_iter,
            random_state=self.random_state,
            solver="lbfgs",
        ).fit(scaler.transform(filled), y, sample_weight=sample_weight)
        self.medians_ = medians
        self.mean_ = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale_ = scaler.scale_
        self.coef_ = np.asarray(model.coef_[0], dtype=np.float64)
        self.intercept_ = float(model.intercept_[0])
        self.n_iter_ = np.asarray(model.n_iter_, dtype=np.int32)

    def _predict_positive(self, X: np.ndarray) -> np.ndarray:
        z = (np.where(np.isnan(X), self.medians_, X) - self.mean_) / self.scale_
        return expit(z @ self.coef_ + self.intercept_)

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        return (*super()._state_errors(), SafetensorError)

    def _write_state(self, directory: Path) -> list[str]:
        write_arrays(
            directory / _ARRAYS_FILE,
            {
                "medians": self.medians_,
                "mean": self.mean_,
                "scale": self.scale_,
                "coef": self.coef_,
                "intercept": np.array([self.intercept_]),
            },
        )
        metadata = {"n_iter": self.n_iter_.tolist(), **self._fitted_metadata()}
        (directory / _META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return [_ARRAYS_FILE, _META_FILE]

    def _read_state(self, directory: Path) -> None:
        if not (directory / _META_FILE).is_file() and (directory / _PICKLE_FILE).is_file():
            raise ValueError(
                f"it holds {_PICKLE_FILE}, a pickle written by an older perturbprobe, which is "
                "never loaded (unpickling can run code); fit the probe again"
            )
        metadata = read_json(directory / _META_FILE)
        arrays = read_arrays(directory / _ARRAYS_FILE, set(_ARRAYS))
        self._restore_metadata(metadata)
        F = self.n_features_in_
        shapes = {name: (F,) for name in _ARRAYS}
        check_shapes(arrays, {**shapes, "intercept": (1,)}, _ARRAYS_FILE, F)
        self.medians_, self.mean_, self.scale_ = arrays["medians"], arrays["mean"], arrays["scale"]
        self.coef_ = arrays["coef"]
        self.intercept_ = float(arrays["intercept"][0])
        self.n_iter_ = np.asarray(metadata["n_iter"], dtype=np.int32)
