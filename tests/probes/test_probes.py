"""The probe estimators: the contract every registered probe honours (conformance), the shared
validation, and each probe against an independent computation (scikit-learn, LightGBM's own
estimator, naive loops, per-record forward passes)."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from sklearn.base import clone
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import perturbprobe.probes
from perturbprobe.errors import PerturbprobeError, PerturbprobeWarning, ProbeError
from perturbprobe.probes._contrastive import (
    ACTIVATIONS,
    Standardiser,
    contrastive_loss,
    contrastive_pair_losses,
)
from perturbprobe.probes.base import PROBES, make_probe
from perturbprobe.probes.ccps import CCPSProbe, CCPSSequenceProbe, MaskedCNNEncoder
from perturbprobe.probes.early_stopping import validation_split
from perturbprobe.probes.inputs import ProbeTypeError, derive_seed
from perturbprobe.probes.lightgbm import LightGBMProbe
from perturbprobe.probes.logistic import LogisticProbe

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

N_TRAIN, N_TEST, N_FEATURES = 300, 150, 12
# Few epochs keep the torch fits to about a second; the synthetic signal is strong enough.
FAST = {
    "ccps": {"contrastive_epochs": 5, "epochs": 30, "patience": 5},
    "ccps-cnn": {
        "contrastive_epochs": 5,
        "epochs": 30,
        "patience": 5,
        "max_length": 12,
        "batch_size": 32,
    },
    "lightgbm": {},
    "logistic": {},
    "logistic-cv": {},
    "stacking": {},
}
TINY = {  # for tests that only need a fitted torch probe, not a good one
    "ccps": {"contrastive_epochs": 1, "epochs": 2},
    "ccps-cnn": {"contrastive_epochs": 1, "epochs": 2},
}


def make_table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Label from a logistic model of 3 of the 12 features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    logit = 2.5 * (X[:, 0] + X[:, 1] - X[:, 2])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(X, columns=[f"family/f{i}" for i in range(N_FEATURES)]), y


def make_sequences(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Responses of 3–40 tokens × 6 features; correct ones have feature 0 raised by 3 in
    two random tokens among their first 8."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    sequences = []
    for label in y:
        tokens = rng.normal(size=(int(rng.integers(3, 41)), 6))
        tokens[rng.choice(min(8, len(tokens)), size=2, replace=False), 0] += 3.0 * label
        sequences.append(tokens)
    return sequences, y


TABLE_TRAIN, TABLE_TEST = make_table(N_TRAIN, 0), make_table(N_TEST, 1)
SEQ_TRAIN, SEQ_TEST = make_sequences(N_TRAIN, 2), make_sequences(N_TEST, 3)
GROUPS = np.arange(N_TRAIN) // 3  # three answers per question


def data(name: str, part: str = "train"):
    sequence = PROBES[name].input_kind == "sequence"
    if part == "train":
        return SEQ_TRAIN if sequence else TABLE_TRAIN
    return SEQ_TEST if sequence else TABLE_TEST


def with_first(X, value: float, n_rows: int = 1):
    """A copy of X whose first feature of the first ``n_rows`` records is ``value``."""
    if isinstance(X, list):
        X = [x.copy() for x in X]
        for x in X[:n_rows]:
            x[0, 0] = value
        return X
    X = X.copy()
    X.iloc[:n_rows, 0] = value
    return X


@pytest.fixture(scope="module")
def fitted(one_intra_op_thread):
    """Every registered probe fitted once on its training data (grouped)."""
    probes = {}
    for name in PROBES:
        X, y = data(name)
        probes[name] = make_probe(name, **FAST[name]).fit(X, y, groups=GROUPS)
    return probes


ALL = sorted(PROBES)
TORCH = ["ccps", "ccps-cnn"]


# -- conformance: the same checks over every registered probe ---------------------------------


@pytest.mark.parametrize("name", ALL)
def test_registry_and_clone(name):
    probe = make_probe(name, random_state=3)
    assert type(probe).name == name and probe.random_state == 3
    twin = clone(probe)
    assert twin is not probe and twin.get_params() == probe.get_params()


@pytest.mark.parametrize("name", ALL)
def test_unfitted_probe_raises_not_fitted(name):
    X, _ = data(name, "test")
    for method in ("predict_proba", "predict", "save_state"):
        with pytest.raises(NotFittedError):
            getattr(make_probe(name), method)(X)


@pytest.mark.parametrize("name", ALL)
def test_fit_and_predict_contract(name, fitted):
    (X, y), (X_test, y_test) = data(name), data(name, "test")
    X_before, X_test_before = copy.deepcopy(X), copy.deepcopy(X_test)
    probe = make_probe(name, **FAST[name])
    assert probe.fit(X, y, groups=GROUPS) is probe
    proba = probe.predict_proba(X_test)
    assert proba.shape == (len(y_test), 2) and proba.dtype == np.float64
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(probe.classes_, [0, 1])
    assert probe.pos_label_ == 1
    np.testing.assert_array_equal(probe.predict_positive(X_test), proba[:, 1])
    np.testing.assert_array_equal(probe.predict(X_test), proba.argmax(axis=1))
    assert roc_auc_score(y_test, proba[:, 1]) > 0.8  # the signal is strong
    # Same random_state → identical predictions (the module fixture is an independent fit).
    np.testing.assert_array_equal(fitted[name].predict_proba(X_test), proba)
    for before, after in ((X_before, X), (X_test_before, X_test)):  # inputs not mutated
        if isinstance(before, list):
            assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
        else:
            pd.testing.assert_frame_equal(before, after)


@pytest.mark.parametrize("name", ALL)
def test_predictions_do_not_depend_on_the_batch(name, fitted):
    X_test = data(name, "test")[0]
    batch = fitted[name].predict_proba(X_test)
    one = X_test[3:4] if isinstance(X_test, list) else X_test.iloc[3:4]
    # float32 matrix products may sum in another order for another batch size: ~1e-7 relative
    np.testing.assert_allclose(fitted[name].predict_proba(one), batch[3:4], rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_save_then_load_predicts_identically(name, fitted, tmp_path):
    probe, X_test = fitted[name], data(name, "test")[0]
    saved, fresh = tmp_path / "saved", tmp_path / "fresh"
    saved.mkdir(), fresh.mkdir()
    names = probe.save_state(saved)
    written = [p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()]
    assert sorted(written) == sorted(names)
    for file_name in names:  # the listed files are all a load needs
        (fresh / file_name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / file_name, fresh / file_name)
    loaded = type(probe).load_state(fresh, probe.get_params())
    np.testing.assert_array_equal(loaded.predict_proba(X_test), probe.predict_proba(X_test))
    assert loaded.n_features_in_ == probe.n_features_in_
    names_in = getattr(probe, "feature_names_in_", None)
    np.testing.assert_array_equal(getattr(loaded, "feature_names_in_", None), names_in)


@pytest.mark.parametrize("name", ALL)
def test_load_refuses_missing_and_corrupt_state(name, fitted, tmp_path):
    probe = fitted[name]
    names = probe.save_state(tmp_path)
    for file_name in names:
        good = (tmp_path / file_name).read_bytes()
        (tmp_path / file_name).write_bytes(b"\x00garbage{" + good[: len(good) // 3])
        with pytest.raises(ProbeError, match=f"cannot load the {name} probe's state"):
            type(probe).load_state(tmp_path, probe.get_params())
        (tmp_path / file_name).unlink()
        with pytest.raises(ProbeError, match=f"cannot load the {name} probe's state"):
            type(probe).load_state(tmp_path, probe.get_params())
        (tmp_path / file_name).write_bytes(good)


def test_save_refuses_a_missing_directory(fitted, tmp_path):
    with pytest.raises(ProbeError, match="is not a directory"):
        fitted["logistic"].save_state(tmp_path / "absent")


# -- shared validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_label_errors(name):
    X, y = data(name)
    probe = make_probe(name)
    with pytest.raises(ProbeError, match=r"y contains only one class: 1 \(300 records\)"):
        probe.fit(X, np.ones_like(y))
    with pytest.raises(ProbeError, match="at least 2 answers of each class; got 1 correct"):
        probe.fit(X, np.r_[1, np.zeros(len(y) - 1, dtype=int)])
    with pytest.raises(ProbeError, match=r"Only binary classification .* 3 classes: 0, 1, 2"):
        probe.fit(X, np.r_[2, y[1:]])
    with pytest.raises(ProbeError, match="Unknown label type: continuous"):
        probe.fit(X, y + 0.5 * (np.arange(len(y)) % 3))
    with pytest.raises(ProbeError, match="pos_label='yes' is not a class of y"):
        make_probe(name, pos_label="yes").fit(X, y)
    with pytest.raises(ProbeError, match=f"X has {len(y)} records but y has 3 labels"):
        probe.fit(X, y[:3])


@pytest.mark.parametrize("name", ALL)
def test_infinite_values_are_refused(name, fitted):
    X, y = data(name)
    where = "records 0, 1" if isinstance(X, list) else "columns 'family/f0'"
    with pytest.raises(ProbeError, match=f"infinite values in {where}"):
        make_probe(name).fit(with_first(X, np.inf, n_rows=2), y)
    with pytest.raises(ProbeError, match="infinite values"):
        fitted[name].predict_proba(with_first(data(name, "test")[0], -np.inf))


def test_infinite_columns_are_listed_up_to_five():
    X, y = TABLE_TRAIN
    bad = X.copy()
    bad.iloc[0, :7] = np.inf
    listed = ", ".join(f"'family/f{i}'" for i in range(5))
    with pytest.raises(ProbeError, match=re.escape(f"columns {listed} (and 2 more)")):
        LogisticProbe().fit(bad, y)
    with pytest.raises(ProbeError, match=re.escape("columns 3, 5")):
        LogisticProbe().fit(np.where(np.isin(np.arange(12), [3, 5]), np.inf, X), y)


@pytest.mark.parametrize("name", ALL)
def test_all_missing_feature_is_refused(name):
    X, y = data(name)
    if isinstance(X, list):
        X = [x.copy() for x in X]
        for x in X:
            x[:, 4] = np.nan
        match = "features 4 are missing in every training record"
    else:
        X = X.assign(**{"family/f4": np.nan})
        match = "features 'family/f4' are missing in every training record"
    with pytest.raises(ProbeError, match=match):
        make_probe(name).fit(X, y)


@pytest.mark.parametrize("name", ALL)
def test_wrong_feature_count_is_refused(name, fitted):
    X_test = data(name, "test")[0]
    fewer = [x[:, :-1] for x in X_test] if isinstance(X_test, list) else X_test.to_numpy()[:, :-1]
    n_features = fitted[name].n_features_in_
    message = (
        f"X has {n_features - 1} features, but {type(fitted[name]).__name__} is expecting "
        f"{n_features} features as input."
    )
    with pytest.raises(ProbeError, match=re.escape(message)):
        fitted[name].predict_proba(fewer)


@pytest.mark.parametrize("name", ["logistic", "lightgbm", "ccps"])
def test_wrong_column_names_or_order_are_refused(name, fitted):
    X_test = TABLE_TEST[0]
    swapped = X_test[[X_test.columns[1], X_test.columns[0], *X_test.columns[2:]]]
    message = "column 0: expected 'family/f0', got 'family/f1'; column 1: expected 'family/f1'"
    with pytest.raises(ProbeError, match=re.escape(message)):
        fitted[name].predict_proba(swapped)
    with pytest.raises(ProbeError, match="column 11: expected 'family/f11', got 'other'"):
        fitted[name].predict_proba(X_test.rename(columns={"family/f11": "other"}))
    # A bare array in the fitted order is accepted.
    np.testing.assert_array_equal(
        fitted[name].predict_proba(X_test.to_numpy()), fitted[name].predict_proba(X_test)
    )


def test_sequence_input_errors(fitted):
    probe = fitted["ccps-cnn"]
    X, y = SEQ_TRAIN
    with pytest.raises(ProbeError, match="takes a list of 2-D arrays"):
        make_probe("ccps-cnn").fit(np.stack([x[:3] for x in X]), y)
    with pytest.raises(ProbeError, match="record 1 has 5 features but record 0 has 6"):
        make_probe("ccps-cnn").fit([X[0], X[1][:, :5], *X[2:]], y)
    with pytest.raises(ProbeError, match=r"record 2 must be a 2-D array \(T_i ≥ 1, F\)"):
        probe.predict_proba([X[0], X[1], np.zeros((0, 6))])
    with pytest.raises(ProbeError, match="X is empty"):
        probe.predict_proba([])


@pytest.mark.parametrize("name", ALL)
def test_missing_values_are_imputed_with_a_warning(name):
    X, y = data(name)
    X = with_first(X, np.nan, n_rows=7)
    with pytest.warns(PerturbprobeWarning, match="7 missing feature values .* training medians"):
        probe = make_probe(name, **TINY.get(name, FAST[name])).fit(X, y)
    assert np.isfinite(probe.predict_proba(with_first(data(name, "test")[0], np.nan))).all()


def test_a_failed_fit_leaves_no_fitted_state_and_a_refit_forgets_column_names():
    X, y = TABLE_TRAIN
    probe = CCPSProbe(epochs=0)
    with pytest.raises(ProbeError, match="'epochs' parameter"):
        probe.fit(X, y)
    with pytest.raises(NotFittedError):
        probe.predict_proba(X)
    probe = LogisticProbe().fit(X, y)
    assert list(probe.feature_names_in_) == list(X.columns)
    assert not hasattr(probe.fit(X.to_numpy(), y), "feature_names_in_")
    with pytest.raises(ProbeError, match="only one class"):  # a failed refit: unfitted again
        probe.fit(X, np.zeros_like(y))
    with pytest.raises(NotFittedError):
        probe.predict_proba(X)


def test_non_numeric_complex_empty_and_sparse_inputs_are_refused():
    X, y = TABLE_TRAIN
    with pytest.raises(ProbeError, match="non-numeric columns: 'family/f3'"):
        LogisticProbe().fit(X.assign(**{"family/f3": "high"}), y)
    with pytest.raises(ProbeError, match="sparse X is not supported"):
        LogisticProbe().fit(scipy.sparse.csr_matrix(X.to_numpy()), y)
    with pytest.raises(ProbeError, match="Complex data not supported"):
        LogisticProbe().fit(X.to_numpy() + 1j, y)
    objects = X.to_numpy().astype(object)
    objects[0, 0] = {"a": 1}
    with pytest.raises(ProbeTypeError, match=r"must be numeric: float\(\) argument"):
        LogisticProbe().fit(objects, y)
    assert issubclass(ProbeTypeError, PerturbprobeError) and issubclass(ProbeTypeError, TypeError)
    with pytest.raises(ProbeError, match=r"0 feature\(s\) \(shape=\(300, 0\)\)"):
        LogisticProbe().fit(np.empty((300, 0)), y)
    probe = LogisticProbe().fit(X, y)
    with pytest.raises(ProbeError, match="Reshape your data"):
        probe.predict_proba(X.to_numpy()[0])
    with pytest.raises(ProbeError, match="requires y to be passed, but the target y is None"):
        LogisticProbe().fit(X, None)


# -- labels: any two, pos_label the correct one -------------------------------------------------


@pytest.mark.parametrize("name", ["logistic", "lightgbm"])
@pytest.mark.parametrize(
    ("incorrect", "correct", "pos_label"),
    [("wrong", "right", "right"), (False, True, None), (-1, 1, None), (1, 0, 0)],
)
def test_any_two_labels_with_pos_label_as_the_correct_one(
    name, incorrect, correct, pos_label, fitted, tmp_path
):
    """Columns follow the sorted classes_; P(pos_label) and the saved and loaded state are
    those of the 0/1 fit."""
    (X, y), X_test = TABLE_TRAIN, TABLE_TEST[0]
    labels = np.where(y == 1, correct, incorrect)
    probe = make_probe(name, **FAST[name], pos_label=pos_label).fit(X, labels, groups=GROUPS)
    np.testing.assert_array_equal(probe.classes_, sorted([incorrect, correct]))
    assert probe.pos_label_ == correct
    expected = fitted[name].predict_positive(X_test)
    np.testing.assert_array_equal(probe.predict_positive(X_test), expected)
    proba = probe.predict_proba(X_test)
    np.testing.assert_array_equal(proba[:, list(probe.classes_).index(correct)], expected)
    predicted = np.where(fitted[name].predict_positive(X_test) > 0.5, correct, incorrect)
    np.testing.assert_array_equal(probe.predict(X_test), predicted)
    probe.save_state(tmp_path)
    loaded = type(probe).load_state(tmp_path, probe.get_params())
    np.testing.assert_array_equal(loaded.classes_, probe.classes_)
    assert loaded.pos_label_ == correct and type(loaded.pos_label_) is type(probe.pos_label_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), proba)
    with pytest.raises(ProbeError, match="fitted with pos_label="):
        type(probe).load_state(tmp_path, {**probe.get_params(), "pos_label": incorrect})


def test_a_column_y_is_flattened_with_a_warning(fitted):
    (X, y), X_test = TABLE_TRAIN, TABLE_TEST[0]
    with pytest.warns(DataConversionWarning, match="A column-vector y was passed"):
        probe = LogisticProbe().fit(X, y[:, None], groups=GROUPS)
    np.testing.assert_array_equal(
        probe.predict_proba(X_test), fitted["logistic"].predict_proba(X_test)
    )


def test_states_without_labels_load_as_zero_one(fitted, tmp_path):
    """States saved before the labels were: 0 and 1, 1 the correct one."""
    probe = fitted["lightgbm"]
    probe.save_state(tmp_path)
    metadata = json.loads((tmp_path / "lightgbm.json").read_text())
    del metadata["classes"], metadata["pos_label"]
    (tmp_path / "lightgbm.json").write_text(json.dumps(metadata))
    loaded = LightGBMProbe.load_state(tmp_path, probe.get_params())
    np.testing.assert_array_equal(loaded.classes_, [0, 1])
    assert loaded.pos_label_ == 1


def test_labels_that_json_cannot_hold_are_refused_before_saving(tmp_path):
    X, y = TABLE_TRAIN
    dates = np.where(y == 1, np.datetime64("2024-01-02"), np.datetime64("2024-01-01"))
    probe = LogisticProbe().fit(X, dates)
    assert probe.predict(X[:1])[0] in dates
    with pytest.raises(ProbeError, match="ints, floats, strings or bools to be saved; got date"):
        probe.save_state(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_class_weight_is_keyed_by_the_labels():
    X, y = TABLE_TRAIN
    named = np.where(y == 1, "right", "wrong")
    by_label = LogisticProbe(class_weight={"right": 3.0, "wrong": 1.0}, pos_label="right")
    by_code = LogisticProbe(class_weight={1: 3.0, 0: 1.0})
    np.testing.assert_array_equal(
        by_label.fit(X, named).predict_positive(X), by_code.fit(X, y).predict_positive(X)
    )
    with pytest.raises(ProbeError, match=r"class_weight names \['maybe'\], which are not labels"):
        LogisticProbe(class_weight={"maybe": 2.0}).fit(X, named)


def test_few_rows_per_class_warn():
    X, y = TABLE_TRAIN
    keep = np.r_[np.flatnonzero(y == 0)[:60], np.flatnonzero(y == 1)[:12]]
    with pytest.warns(PerturbprobeWarning, match="only 12 correct and 60 incorrect answers"):
        LogisticProbe().fit(X.iloc[keep], y[keep])


def test_unknown_probe_and_parameter():
    message = (
        "unknown probe 'foo'; choose one of: ccps, ccps-cnn, lightgbm, logistic, logistic-cv, "
        "stacking"
    )
    with pytest.raises(ProbeError, match=re.escape(message)):
        make_probe("foo")
    with pytest.raises(ProbeError, match="unknown parameters for probe 'logistic': alpha"):
        make_probe("logistic", alpha=1.0)
    assert list(PROBES) == ["ccps", "ccps-cnn", "lightgbm", "logistic", "logistic-cv", "stacking"]
    assert {name: cls.name for name, cls in PROBES.items()} == {n: n for n in PROBES}


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (CCPSProbe(activation="swish"), "The 'activation' parameter of CCPSProbe must be one of"),
        (CCPSProbe(hidden=(8, 0)), "The 'hidden' parameter of CCPSProbe must be a non-empty"),
        (CCPSProbe(batch_size=1), "The 'batch_size' parameter of CCPSProbe must be an int >= 2"),
        (CCPSProbe(device="gpu?"), "The 'device' parameter of CCPSProbe must be a torch device"),
        (CCPSSequenceProbe(max_length=0), "'max_length' parameter of CCPSSequenceProbe"),
        (CCPSSequenceProbe(channels=()), "'channels' parameter of CCPSSequenceProbe"),
        (CCPSProbe(lr="fast"), r"'lr' parameter of CCPSProbe must be a float > 0. Got 'fast'"),
        (LightGBMProbe(validation_fraction=1.0), "'validation_fraction' parameter of LightGBM"),
        (LightGBMProbe(random_state=-1), r"random_state must be in \[0, 2\*\*31\); got -1"),
    ],
)
def test_bad_parameters_are_refused(probe, message):
    X, y = data(probe.name)
    with pytest.raises(ProbeError, match=message):
        probe.fit(X, y)


# -- validation split ---------------------------------------------------------------------------


def test_grouped_validation_split_never_splits_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=200)
    y = rng.integers(0, 2, size=200)
    for seed in range(5):
        train, validation = validation_split(y, groups, 0.25, seed)
        assert np.intersect1d(groups[train], groups[validation]).size == 0
        assert np.array_equal(np.sort(np.r_[train, validation]), np.arange(200))
        assert set(y[train]) == set(y[validation]) == {0, 1}


def test_stratified_validation_split_keeps_the_class_ratio():
    y = np.r_[np.zeros(80, dtype=int), np.ones(20, dtype=int)]
    train, validation = validation_split(y, None, 0.2, 0)
    assert (len(train), len(validation)) == (80, 20)
    assert y[validation].sum() == 4  # 20 % of each class, as StratifiedShuffleSplit does


def test_validation_split_that_cannot_hold_both_classes_raises():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # each question has one class only
    with pytest.raises(ProbeError, match=r"cannot split 8 rows .* more question groups"):
        validation_split(y, groups, 0.5, 0)
    with pytest.raises(ProbeError, match="cannot make an early-stopping validation split"):
        validation_split(np.array([0, 0, 1, 1]), None, 0.2, 0)


# -- logistic -----------------------------------------------------------------------------------


def test_logistic_equals_a_hand_built_pipeline():
    (X, y), (X_test, _) = TABLE_TRAIN, TABLE_TEST
    X = with_first(X, np.nan, n_rows=5)
    reference = make_pipeline(
        SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(C=0.3, max_iter=2000)
    ).fit(X, y)
    with pytest.warns(PerturbprobeWarning, match="missing"):
        probe = LogisticProbe(C=0.3).fit(X, y)
    X_test = with_first(X_test, np.nan)
    np.testing.assert_allclose(
        probe.predict_proba(X_test), reference.predict_proba(X_test), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(probe.n_iter_, reference[-1].n_iter_)


def test_logistic_weights_are_repeated_rows_for_imputation_and_scaling_too():
    (X, y), X_test = TABLE_TRAIN, TABLE_TEST[0]
    X = with_first(X, np.nan, n_rows=40).to_numpy()
    weights = np.random.default_rng(0).integers(0, 4, size=len(y))
    with pytest.warns(PerturbprobeWarning, match="missing"):
        weighted = LogisticProbe().fit(X, y, sample_weight=weights)
        repeated = LogisticProbe().fit(X.repeat(weights, axis=0), y.repeat(weights))
    np.testing.assert_array_equal(weighted.medians_, np.nanmedian(X.repeat(weights, axis=0), 0))
    np.testing.assert_allclose(weighted.mean_, repeated.mean_, rtol=1e-12)
    np.testing.assert_allclose(weighted.scale_, repeated.scale_, rtol=1e-12)
    np.testing.assert_allclose(
        weighted.predict_proba(with_first(X_test, np.nan)),
        repeated.predict_proba(with_first(X_test, np.nan)),
        rtol=1e-6,
    )


def _state_files(probe, directory: Path) -> list[Path]:
    return [directory / name for name in probe.save_state(directory)]


@pytest.mark.parametrize("name", ALL)
def test_no_state_file_is_a_pickle(name, fitted, tmp_path):
    """Arrays in safetensors, everything else JSON (LightGBM: its own text model)."""
    for path in _state_files(fitted[name], tmp_path):
        assert path.suffix in {".safetensors", ".json", ".txt"}, path
        assert not path.read_bytes().startswith(b"\x80"), f"{path} is a pickle"
    if name in TORCH:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ccps.json", "ccps.safetensors"]


def test_logistic_state_round_trip_restores_every_array_bitwise(fitted, tmp_path):
    probe = fitted["logistic"]
    assert sorted(probe.save_state(tmp_path)) == ["logistic.json", "logistic.safetensors"]
    loaded = LogisticProbe.load_state(tmp_path, probe.get_params())
    for attribute in ("medians_", "mean_", "scale_", "coef_", "intercept_", "n_iter_"):
        np.testing.assert_array_equal(getattr(loaded, attribute), getattr(probe, attribute))
    X_test = with_first(TABLE_TEST[0], np.nan, n_rows=10)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), probe.predict_proba(X_test))


class _TouchOnUnpickle:
    """A pickle payload: unpickling it creates ``path`` (stands in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_old_joblib_state_is_refused_without_being_unpickled(fitted, tmp_path):
    old, marker = tmp_path / "old", tmp_path / "unpickled"
    old.mkdir()
    joblib.dump(_TouchOnUnpickle(marker), old / "logistic.joblib")
    with pytest.raises(ProbeError, match=r"logistic.joblib, a pickle .* fit the probe again"):
        LogisticProbe.load_state(old, fitted["logistic"].get_params())
    assert not marker.exists()
    joblib.load(old / "logistic.joblib")  # the payload is live: loading it would have run it
    assert marker.exists()


def test_no_probe_module_unpickles():
    """No ``pickle``/``joblib`` load anywhere in perturbprobe.probes; ``torch.load`` only with
    ``weights_only=True``."""
    for path in Path(perturbprobe.probes.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "joblib"}:
                assert not {a.name for a in node.names} & {"load", "loads"}, path
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if node.func.attr in {"load", "loads"} and isinstance(owner, ast.Name):
                assert owner.id not in {"pickle", "joblib"}, f"{path}:{node.lineno}"
                if owner.id == "torch":
                    safe = [k for k in node.keywords if k.arg == "weights_only"]
                    assert safe and getattr(safe[0].value, "value", None) is True, path


# -- LightGBM -----------------------------------------------------------------------------------


def test_lightgbm_matches_lightgbm_classifier_with_early_stopping(fitted):
    """LightGBM's own sklearn estimator on the same split and settings gives the same model."""
    probe, (X, y), (X_test, _) = fitted["lightgbm"], TABLE_TRAIN, TABLE_TEST
    train, validation = validation_split(y, GROUPS, 0.2, derive_seed(probe.random_state))
    X = X.to_numpy()
    reference = lgb.LGBMClassifier(
        n_estimators=1000,
        learning_rate=0.03,
        num_leaves=15,
        min_child_samples=10,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.5,
        reg_lambda=1.0,
        random_state=0,
        n_jobs=1,
        deterministic=True,
        force_row_wise=True,
        verbosity=-1,
    ).fit(
        X[train],
        y[train],
        eval_X=(X[validation],),
        eval_y=(y[validation],),
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    assert probe.best_iteration_ == reference.best_iteration_ < 1000
    assert probe.booster_.num_trees() == probe.best_iteration_  # trimmed
    np.testing.assert_allclose(
        probe.predict_proba(X_test)[:, 1],
        reference.predict_proba(X_test.to_numpy())[:, 1],
        rtol=0,
        atol=1e-12,
    )
    importances = probe.feature_importances_
    assert list(importances.index) == list(TABLE_TRAIN[0].columns)
    np.testing.assert_allclose(importances, reference.booster_.feature_importance("gain"))
    assert importances.iloc[:3].min() > importances.iloc[3:].max()  # the 3 signal features


# -- CCPS: loss, encoder, standardiser, training ----------------------------------------------


def test_contrastive_loss_equals_a_double_loop_over_pairs():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(9, 4)) * 0.4
    labels = rng.integers(0, 2, size=9)
    expected = []
    for i in range(9):
        for j in range(i + 1, 9):
            d = np.sqrt(((embeddings[i] - embeddings[j]) ** 2).sum())
            expected.append(d**2 if labels[i] == labels[j] else max(0.0, 0.9 - d) ** 2)
    e, t = torch.tensor(embeddings), torch.tensor(labels)
    np.testing.assert_allclose(contrastive_pair_losses(e, t, 0.9).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(float(contrastive_loss(e, t, 0.9)), np.mean(expected), rtol=1e-12)
    assert contrastive_pair_losses(e[:1], t[:1], 0.9).numel() == 0


def test_contrastive_loss_gradient_is_finite_for_coinciding_embeddings():
    embeddings = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    contrastive_loss(embeddings, torch.tensor([0, 1, 1]), 1.0).backward()
    assert torch.isfinite(embeddings.grad).all()


def test_masked_cnn_equals_each_record_alone_and_ignores_padding():
    """Padded positions (any values, any pad length) never change a record's embedding: it
    equals the encoder run on that record alone, unpadded."""
    torch.manual_seed(0)
    encoder = MaskedCNNEncoder(5, (6, 4), 3, 3, "relu").double().eval()
    lengths = [1, 4, 7]
    tokens = torch.randn(3, 10, 5, dtype=torch.float64)
    mask = torch.arange(10)[None, :] < torch.tensor(lengths)[:, None]
    batched = encoder(tokens, mask)
    junk = torch.where(mask[..., None], tokens, torch.full_like(tokens, 1e3))
    np.testing.assert_array_equal(encoder(junk, mask).detach(), batched.detach())
    for i, length in enumerate(lengths):
        alone = encoder(tokens[i : i + 1, :length], torch.ones(1, length, dtype=torch.bool))
        np.testing.assert_allclose(alone.detach(), batched[i : i + 1].detach(), rtol=1e-12)


def test_sequence_probe_reads_only_the_first_max_length_tokens(fitted):
    probe, X_test = fitted["ccps-cnn"], SEQ_TEST[0]
    rng = np.random.default_rng(5)
    L = probe.max_length
    long_enough = [x for x in X_test if len(x) >= L]
    assert len(long_enough) > 50
    junk = [np.vstack([x[:L], rng.normal(size=(9, 6)) * 50]) for x in long_enough]
    truncated = [x[:L] for x in long_enough]
    expected = probe.predict_proba(truncated)
    np.testing.assert_array_equal(probe.predict_proba(long_enough), expected)
    np.testing.assert_array_equal(probe.predict_proba(junk), expected)


def test_standardisers_use_nan_aware_training_statistics(fitted):
    rows = np.array([[1.0, 5.0], [np.nan, 5.0], [3.0, 5.0], [8.0, 5.0]])
    s = Standardiser.fit(rows)
    np.testing.assert_array_equal(s.median, [3.0, 5.0])
    np.testing.assert_allclose(s.mean, [4.0, 5.0])
    np.testing.assert_allclose(s.scale, [np.std([1.0, 3.0, 8.0]), 5.0])  # constant: magnitude
    expected = (np.array([3.0, 5.0]) - s.mean) / s.scale
    np.testing.assert_allclose(s.transform(rows)[1], expected.astype(np.float32))
    # The sequence probe's statistics cover exactly the tokens it reads (mask-aware).
    probe = fitted["ccps-cnn"]
    used = np.concatenate([x[: probe.max_length] for x in SEQ_TRAIN[0]])
    np.testing.assert_allclose(probe.standardiser_.mean, used.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(probe.standardiser_.scale, used.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("name", ["logistic", "logistic-cv", "lightgbm", "ccps"])
def test_float32_rounding_noise_carries_no_weight(name):
    """A column constant up to float32 rounding (like ccps/l2_dist_hidden_max, the radius by
    construction) whose last-place noise happens to separate the training labels: the fitted
    probe must not read it, so an answer's confidence does not depend on the batch it was
    scored in. Before, the logistic probe standardised that noise into its strongest feature."""
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    signal = y + rng.normal(0, 1.5, n)  # a weak real feature
    ulp = np.spacing(np.float32(20.0))
    noisy = np.float32(20.0) + ulp * np.where(y == 1, 2, -2)  # 2 ulps, labels in the noise
    X = pd.DataFrame({"signal": signal, "radius": noisy.astype(np.float64)})
    groups = np.arange(n) // 2
    probe = make_probe(name, **FAST[name]).fit(X, y, groups=groups)
    other_batch = X.assign(radius=np.float64(np.float32(20.0)))  # the same answers, noise gone
    np.testing.assert_allclose(
        probe.predict_proba(other_batch)[:, 1], probe.predict_proba(X)[:, 1], atol=1e-6
    )


@pytest.mark.parametrize("name", TORCH)
def test_early_stopping_keeps_the_best_validation_weights(name, fitted):
    """The kept weights reproduce the lowest validation BCE of the history."""
    probe, (X, y) = fitted[name], data(name)
    _, validation = validation_split(y, GROUPS, 0.2, derive_seed(probe.random_state))
    p = probe.predict_proba(
        [X[i] for i in validation] if isinstance(X, list) else X.iloc[validation]
    )
    bce = -np.mean(np.log(np.where(y[validation] == 1, p[:, 1], p[:, 0])))
    curve = probe.history_["classifier"]["validation"]
    # float32 network vs float64 recomputation from probabilities: agree to ~1e-6 relative.
    np.testing.assert_allclose(bce, min(curve), rtol=1e-5)
    assert curve[probe.classifier_best_epoch_] == min(curve)
    assert len(probe.history_["contrastive"]["train"]) <= FAST[name]["contrastive_epochs"]


def test_torch_fit_leaves_global_rng_and_threads_alone():
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    X, y = TABLE_TRAIN
    CCPSProbe(**TINY["ccps"]).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


def test_activations_are_one_mapping_used_by_both_encoders():
    X, y = TABLE_TRAIN
    for activation in ACTIVATIONS:
        probe = CCPSProbe(activation=activation, contrastive_epochs=0, epochs=1).fit(X, y)
        kinds = {type(m) for m in probe.network_.modules()}
        assert ACTIVATIONS[activation] in kinds
