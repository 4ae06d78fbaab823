"""The logistic-regression probe: the linear baseline every other probe must beat.

P(correct) = σ(w·z + b) with z the standardised features, missing values first replaced by
the training medians: a scikit-learn pipeline ``SimpleImputer(median) → StandardScaler →
LogisticRegression(lbfgs)``, L2-regularised with strength ``1 / C``. Its coefficients are
readable feature effects, and it is usually well calibrated out of the box.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .base import Probe

__all__ = ["LogisticProbe"]

_STATE_FILE = "logistic.joblib"


class LogisticProbe(Probe):
    """L2-regularised logistic regression on median-imputed, standardised features.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength (smaller: stronger shrinkage).
    class_weight : dict, "balanced" or None, default=None
        Passed to :class:`~sklearn.linear_model.LogisticRegression`; ``None`` keeps the
        probabilities calibrated to the training base rate.
    max_iter : int, default=2000
        L-BFGS iterations (hundreds of correlated features converge slowly).
    random_state : int, RandomState or None, default=0
        Unused by L-BFGS; kept for the common probe interface.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted imputer → scaler → logistic regression.
    classes_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Notes
    -----
    The state is saved with joblib (``logistic.joblib``); loading a joblib file runs code from
    it, so load only bundles you trust.

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

    def __init__(self, *, C=1.0, class_weight=None, max_iter=2000, random_state=0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray, groups, sample_weight) -> None:
        self.pipeline_ = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median")),
                ("scale", StandardScaler()),
                (
                    "logistic",
                    LogisticRegression(
                        C=self.C,
                        class_weight=self.class_weight,
                        max_iter=self.max_iter,
                        random_state=self.random_state,
                        solver="lbfgs",
                    ),
                ),
            ]
        ).fit(X, y, logistic__sample_weight=sample_weight)

    def _predict_positive(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict_proba(X)[:, 1]

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        return (*super()._state_errors(), pickle.UnpicklingError)

    def _write_state(self, directory: Path) -> list[str]:
        joblib.dump(
            {"pipeline": self.pipeline_, **self._fitted_metadata()}, directory / _STATE_FILE
        )
        return [_STATE_FILE]

    def _read_state(self, directory: Path) -> None:
        state: Any = joblib.load(directory / _STATE_FILE)
        if not isinstance(state, dict) or not isinstance(state.get("pipeline"), Pipeline):
            raise ValueError(f"{_STATE_FILE} does not hold a fitted logistic pipeline")
        self._restore_metadata(state)
        self.pipeline_ = state["pipeline"]
