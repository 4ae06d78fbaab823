"""Every probe passes scikit-learn's own estimator checks (``parametrize_with_checks``).

The probes get small settings (few trees, epochs and folds) so that the module runs in
seconds; the checks themselves are scikit-learn's, unchanged. The sequence probe, whose X is a
list of token matrices, is checked through :class:`ShortSequences`, which reads every table row
as a sequence of one or two tokens.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from perturbprobe.probes import (
    CCPSProbe,
    CCPSSequenceProbe,
    LightGBMProbe,
    LogisticCVProbe,
    LogisticProbe,
    StackingProbe,
)

pytestmark = [
    pytest.mark.usefixtures("one_intra_op_thread"),
    # The checks fit on a dozen rows: "few rows per class" warnings are expected.
    pytest.mark.filterwarnings("ignore::perturbprobe.errors.PerturbprobeWarning"),
]


def as_sequences(X: np.ndarray) -> list[np.ndarray]:
    """Row i as a sequence of one or two copies of itself (two when its first feature is
    positive): the length depends on the row alone, so padding and masking are exercised while
    a record's prediction must not depend on the batch."""
    return [np.repeat(row[None, :], 1 + int(row[0] > 0), axis=0) for row in X]


class ShortSequences(CCPSSequenceProbe):
    """:class:`CCPSSequenceProbe` on table X: validated as a table, trained and applied on
    :func:`as_sequences` of the rows."""

    input_kind: ClassVar[str] = "table"

    def _fit(self, X, y, groups, sample_weight):
        super()._fit(as_sequences(X), y, groups, sample_weight)

    def _predict_positive(self, X):
        return super()._predict_positive(as_sequences(X))


SMALL_LIGHTGBM = {"n_estimators": 20, "early_stopping_rounds": 5}
SMALL_TORCH = {
    "embedding_dim": 4,
    "head_hidden": (8,),
    "contrastive_epochs": 1,
    "epochs": 10,
    "patience": 3,
    "lr": 3e-2,
    "batch_size": 32,
}
ESTIMATORS = [
    LogisticProbe(),
    LogisticCVProbe(Cs=(0.1, 1.0, 10.0), n_folds=3),
    LightGBMProbe(**SMALL_LIGHTGBM),
    # No column_groups: one group of all columns (the checks vary X's width), a LightGBM base.
    StackingProbe(n_folds=3, base_params=(("features", SMALL_LIGHTGBM),)),
    CCPSProbe(hidden=(8,), **SMALL_TORCH),
    ShortSequences(channels=(8,), max_length=2, **SMALL_TORCH),
]

_REFUSES_WEIGHTS = "the CCPS probes refuse sample_weight (their contrastive loss is over pairs)"
_WEIGHT_CHECKS = (
    "check_sample_weights_pandas_series",
    "check_sample_weights_not_an_array",
    "check_sample_weights_list",
    "check_sample_weights_shape",
    "check_sample_weights_not_overwritten",
    "check_sample_weight_equivalence_on_dense_data",
)
_NOT_REPETITION = {
    LightGBMProbe: "the early-stopping split and the bagging draw rows, so a repeated row is "
    "not the same as a weight of 2",
    LogisticCVProbe: "the cross-validation folds are drawn over rows (a repeated row can land "
    "in two folds) and the preprocessing statistics are unweighted by design",
    StackingProbe: "the out-of-fold predictions are drawn over rows (a repeated row can land in "
    "two folds), and so are the LightGBM base probe's split and bagging",
}


def expected_failures(estimator) -> dict[str, str]:
    """Check name → why the probe deliberately fails it."""
    if isinstance(estimator, (CCPSProbe, CCPSSequenceProbe)):
        return dict.fromkeys(_WEIGHT_CHECKS, _REFUSES_WEIGHTS)
    reason = _NOT_REPETITION.get(type(estimator))
    return {} if reason is None else {"check_sample_weight_equivalence_on_dense_data": reason}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_every_probe_is_checked():
    from perturbprobe.probes.base import PROBES

    checked = {type(e) for e in ESTIMATORS} | {CCPSSequenceProbe}
    assert set(PROBES.values()) <= checked
