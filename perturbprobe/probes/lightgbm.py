"""The LightGBM probe: gradient-boosted trees, the strongest tabular probe in practice.

Trees capture thresholds and interactions between feature families that a linear probe cannot
(e.g. "low margin *and* a large perturbation effect"). Data sets here are small (hundreds to a
few thousand answers, up to a few hundred features), so the defaults favour many small,
regularised trees with early stopping:

- ``learning_rate=0.03`` with up to ``n_estimators=1000`` rounds and early stopping after 50
  rounds without improvement of the validation log-loss: the number of trees adapts to the data
  size (log-loss, not AUROC, because the output is used as a probability);
- ``num_leaves=15``, ``min_child_samples=10``: shallow trees whose leaves still average over
  several answers;
- ``subsample=0.8`` (every round) and ``colsample_bytree=0.5``: row and column bagging, which
  decorrelate trees when many features are redundant (token aggregates of one signal);
- ``reg_lambda=1.0``: L2 shrinkage of leaf values.

Early stopping uses an internal validation split (grouped by question when ``groups`` is
given); the validation rows choose the number of trees and are not trained on. Training is
deterministic (``deterministic=True``, ``force_row_wise=True``, seeded bagging).
Missing values (NaN) go to LightGBM's native handling, which learns a default direction per
split from the training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd

from ._scaling import noise_constant
from .base import Probe
from .early_stopping import validation_split
from .inputs import ParameterRule, check_parameters, derive_seed, int_at_least

__all__ = ["LightGBMProbe"]

_MODEL_FILE = "lightgbm.txt"
_META_FILE = "lightgbm.json"
_PARAMETER_RULES: tuple[ParameterRule, ...] = (
    ("n_estimators", int_at_least(1), "an int >= 1"),
    ("learning_rate", lambda v: v > 0, "a float > 0"),
    ("validation_fraction", lambda v: 0 < v < 1, "a float in (0, 1)"),
    ("early_stopping_rounds", int_at_least(1), "an int >= 1"),
)


class LightGBMProbe(Probe):
    """Gradient-boosted decision trees (LightGBM) with early stopping.

    Parameters
    ----------
    n_estimators : int, default=1000
        Maximum boosting rounds; early stopping usually ends far sooner.
    learning_rate : float, default=0.03
        Shrinkage of each tree.
    num_leaves : int, default=15
        Leaves per tree.
    max_depth : int, default=-1
        Depth limit (-1: none; ``num_leaves`` already bounds the tree).
    min_child_samples : int, default=10
        Minimum rows in a leaf.
    subsample : float, default=0.8
        Share of rows bagged for each tree (re-drawn every round).
    colsample_bytree : float, default=0.5
        Share of features considered by each tree.
    reg_lambda : float, default=1.0
        L2 penalty on leaf values.
    validation_fraction : float in (0, 1), default=0.2
        Share of rows (of question groups, when grouped) held out for early stopping.
    early_stopping_rounds : int, default=50
        Stop after this many rounds without a lower validation log-loss.
    random_state : int, RandomState or None, default=0
        Seed of the validation split and of the bagging.
    n_jobs : int, default=1
        LightGBM threads.
    pos_label : label or None, default=None
        The label of y meaning "answer correct" (None: ``classes_[1]``); see
        :class:`~perturbprobe.probes.base.Probe`.

    Attributes
    ----------
    booster_ : lightgbm.Booster
        The model, trimmed to ``best_iteration_`` trees.
    best_iteration_ : int
        Number of boosting rounds kept (the best validation log-loss).
    feature_importances_ : pandas.Series, shape (F,)
        Total split gain per feature, indexed by feature name (or position).
    classes_, pos_label_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> probe = LightGBMProbe(n_estimators=50).fit(X, y)
    >>> probe.predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "lightgbm"
    input_kind: ClassVar[str] = "table"

    def __init__(
        self,
        *,
        n_estimators=1000,
        learning_rate=0.03,
        num_leaves=15,
        max_depth=-1,
        min_child_samples=10,
        subsample=0.8,
        colsample_bytree=0.5,
        reg_lambda=1.0,
        validation_fraction=0.2,
        early_stopping_rounds=50,
        random_state=0,
        n_jobs=1,
        pos_label=None,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.validation_fraction = validation_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.pos_label = pos_label

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        return (*super()._state_errors(), lgb.basic.LightGBMError)

    def _fit(self, X: np.ndarray, y: np.ndarray, groups, sample_weight) -> None:
        check_parameters(self, _PARAMETER_RULES)
        seed = derive_seed(self.random_state)
        train, validation = validation_split(y, groups, self.validation_fraction, seed)
        # A column constant up to float32 rounding is made exactly constant, so no tree splits
        # on noise that depends on which batch an answer was scored in (see ._scaling).
        constant = noise_constant(X)
        if constant.any():
            X = X.copy()
            X[:, constant] = np.nanmedian(X[:, constant], axis=0)
        params = {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": 1,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "seed": seed,
            "num_threads": self.n_jobs,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        w = sample_weight
        train_set = lgb.Dataset(
            X[train],
            label=y[train],
            weight=None if w is None else w[train],
            params={"verbosity": -1},
        )
        validation_set = lgb.Dataset(
            X[validation],
            label=y[validation],
            weight=None if w is None else w[validation],
            reference=train_set,
        )
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.n_estimators,
            valid_sets=[validation_set],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration_ = int(booster.best_iteration)
        # Rebuilt from its text form: the booster in memory is the one a load gives back.
        self.booster_ = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=self.best_iteration_)
        )

    def _predict_positive(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster_.predict(X, num_threads=self.n_jobs), dtype=np.float64)

    @property
    def feature_importances_(self) -> pd.Series:
        """Total split gain per feature (pandas Series, shape (F,))."""
        gain = self.booster_.feature_importance(importance_type="gain")
        names = getattr(self, "feature_names_in_", None)
        return pd.Series(gain, index=None if names is None else list(names), name="gain")

    def _write_state(self, directory: Path) -> list[str]:
        self.booster_.save_model(str(directory / _MODEL_FILE))
        metadata = {"best_iteration": self.best_iteration_, **self._fitted_metadata()}
        (directory / _META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return [_MODEL_FILE, _META_FILE]

    def _read_state(self, directory: Path) -> None:
        metadata = json.loads((directory / _META_FILE).read_text())
        model_file = directory / _MODEL_FILE
        if not model_file.is_file():  # LightGBM would report it as a cryptic C++ error
            raise FileNotFoundError(f"{model_file} does not exist")
        booster = lgb.Booster(model_file=str(model_file))
        self._restore_metadata(metadata)
        if booster.num_feature() != self.n_features_in_:
            raise ValueError(
                f"{_MODEL_FILE} has {booster.num_feature()} features, "
                f"{_META_FILE} says {self.n_features_in_}"
            )
        self.best_iteration_ = int(metadata["best_iteration"])
        self.booster_ = booster
