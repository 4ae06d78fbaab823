"""The logistic-cv and stacking probes against independent computations: hand-run
cross-validation loops with scikit-learn's plain LogisticRegression, hand-run out-of-fold
stacking, grouped folds, sample weights, PCA, persistence without pickle."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

import perturbprobe.probes.logistic_cv as logistic_cv_module
import perturbprobe.probes.stacking as stacking_module
from perturbprobe.errors import PerturbprobeWarning, ProbeError
from perturbprobe.probes import LogisticCVProbe, StackingProbe
from perturbprobe.probes.base import PROBES, make_probe
from perturbprobe.probes.inputs import derive_seed
from perturbprobe.probes.logistic_cv import DEFAULT_CS, cv_folds
from perturbprobe.probes.stacking import column_groups_from_names, default_base_probe

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

EXACT = {"tol": 1e-10, "max_iter": 20000}  # converged fits: warm and cold starts agree
CS = (0.003, 0.03, 0.3, 3.0)


def wide_problem(n: int, p: int, seed: int, *, signal: int = 8, strength: float = 1.0):
    """Label from a sparse logistic model of the first ``signal`` of ``p`` columns; three
    answers per question, with a shared question effect."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    groups = np.arange(n) // 3
    question = rng.normal(size=groups.max() + 1)[groups]
    logit = strength * X[:, :signal].sum(axis=1) / np.sqrt(signal) * 2 + 0.8 * question
    y = (rng.random(n) < expit(logit)).astype(int)
    return X, y, groups


X_SMALL, Y_SMALL, G_SMALL = wide_problem(240, 30, 0)
X_SMALL[[3, 17, 40], [0, 5, 5]] = np.nan  # imputed with the fold's training medians


def transform_by_hand(X_train, X_apply):
    """Median imputation → StandardScaler, statistics of X_train, applied to X_apply."""
    medians = np.nanmedian(X_train, axis=0)
    scaler = StandardScaler().fit(np.where(np.isnan(X_train), medians, X_train))
    return scaler.transform(np.where(np.isnan(X_apply), medians, X_apply))


def hand_run_cv(X, y, groups, Cs, seed, n_folds=5, sample_weight=None):
    """Cold-started LogisticRegression per fold and C; (fold losses, mean losses, best C)."""
    table = np.empty((n_folds, len(Cs)))
    for k, (train, validation) in enumerate(cv_folds(y, groups, n_folds, seed)):
        Z_train = transform_by_hand(X[train], X[train])
        Z_validation = transform_by_hand(X[train], X[validation])
        for j, C in enumerate(Cs):
            w_train = None if sample_weight is None else sample_weight[train]
            w_validation = None if sample_weight is None else sample_weight[validation]
            model = LogisticRegression(C=C, tol=1e-10, max_iter=20000)
            model.fit(Z_train, y[train], sample_weight=w_train)
            p = model.predict_proba(Z_validation)[:, 1]
            table[k, j] = log_loss(y[validation], p, sample_weight=w_validation, labels=[0, 1])
    mean = table.mean(axis=0)
    return table, mean, Cs[int(np.argmin(mean))]


def straddling_groups(folds, groups):
    """Groups whose rows lie in more than one validation part."""
    seen = {}
    for k, (_, validation) in enumerate(folds):
        for g in np.unique(groups[validation]):
            seen.setdefault(g, set()).add(k)
    return [g for g, ks in seen.items() if len(ks) > 1]


# -- cv_folds -------------------------------------------------------------------------------------


@pytest.fixture
def spy_cv_folds(monkeypatch):
    """``spy_cv_folds(*modules)`` replaces ``cv_folds`` in those modules by a spy that calls
    the real one; it returns the list the spy appends each call's ``(groups, folds)`` to."""
    calls = []

    def spy(y, groups, n_folds, random_state):
        folds = cv_folds(y, groups, n_folds, random_state)
        calls.append((groups, folds))
        return folds

    def install(*modules):
        for module in modules:
            monkeypatch.setattr(module, "cv_folds", spy)
        return calls

    return install


def test_cv_folds_keep_questions_together_and_partition_the_rows():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 60, size=300)
    y = rng.integers(0, 2, size=300)
    folds = cv_folds(y, groups, 5, 7)
    assert len(folds) == 5 and straddling_groups(folds, groups) == []
    validation = np.concatenate([v for _, v in folds])
    np.testing.assert_array_equal(np.sort(validation), np.arange(300))
    for train, v in folds:
        assert np.intersect1d(train, v).size == 0 and len(train) + len(v) == 300
    # Seeded: the same folds again; without groups, stratified folds (class ratio kept).
    again = cv_folds(y, groups, 5, 7)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    ungrouped = cv_folds(y, None, 5, 7)
    assert all(abs(y[v].mean() - y.mean()) < 0.05 for _, v in ungrouped)


def test_cv_folds_refuse_too_few_groups_or_one_class_parts():
    y = np.array([0, 1] * 6)
    with pytest.raises(ProbeError, match="cannot make 5 cross-validation folds"):
        cv_folds(y, np.arange(12) // 4, 5, 0)  # 3 questions for 5 folds
    one_class = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    with pytest.raises(ProbeError, match=r"fold .* holds a single class"):
        cv_folds(one_class, np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]), 2, 0)


# -- logistic-cv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_c_selection_equals_a_hand_run_grouped_loop(weighted):
    """Same folds, plain cold-started LogisticRegression per fold and C: same log-loss table,
    same C, and the final refit equals a LogisticRegression with that C on all rows."""
    X, y, groups = X_SMALL, Y_SMALL, G_SMALL
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=len(y)) if weighted else None
    with pytest.warns(PerturbprobeWarning, match="imputed"):
        probe = LogisticCVProbe(Cs=CS, random_state=4, **EXACT).fit(
            X, y, groups=groups, sample_weight=w
        )
    table, mean, best = hand_run_cv(X, y, groups, np.array(CS), 4, sample_weight=w)
    np.testing.assert_allclose(probe.cv_fold_log_loss_, table, rtol=1e-6)
    np.testing.assert_allclose(probe.cv_log_loss_, mean, rtol=1e-6)
    assert best == probe.C_ and 0 < list(CS).index(best) < len(CS) - 1  # an interior choice
    np.testing.assert_array_equal(probe.Cs_, CS)
    reference = LogisticRegression(C=best, tol=1e-10, max_iter=20000)
    reference.fit(transform_by_hand(X, X), y, sample_weight=w)
    np.testing.assert_allclose(probe.coef_, reference.coef_[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(probe.intercept_, reference.intercept_[0], rtol=1e-6)
    X_test = wide_problem(100, 30, 9)[0]
    np.testing.assert_allclose(
        probe.predict_proba(X_test)[:, 1],
        reference.predict_proba(transform_by_hand(X, X_test))[:, 1],
        rtol=0,
        atol=1e-9,
    )
    assert probe.cv_n_iter_.shape == (5, len(CS)) and probe.n_iter_ > 0


def test_the_probe_selects_on_grouped_folds(spy_cv_folds):
    """The folds the probe cross-validates on are cv_folds' of its groups: no question
    straddles two folds (spied), and without groups the folds are stratified ones."""
    calls = spy_cv_folds(logistic_cv_module)
    LogisticCVProbe(Cs=CS, n_folds=4).fit(np.nan_to_num(X_SMALL), Y_SMALL, groups=G_SMALL)
    ((groups, folds),) = calls
    np.testing.assert_array_equal(groups, G_SMALL)
    assert len(folds) == 4 and straddling_groups(folds, G_SMALL) == []
    LogisticCVProbe(Cs=CS, n_folds=4).fit(np.nan_to_num(X_SMALL), Y_SMALL)
    assert calls[1][0] is None


def test_zero_weight_rows_equal_dropping_them_and_weights_pull_the_fit():
    X, y, groups = np.nan_to_num(X_SMALL), Y_SMALL, G_SMALL
    w = np.ones(len(y))
    dropped = np.isin(groups, np.arange(0, 80, 4))  # every 4th question
    w[dropped] = 0.0
    settings = {"Cs": (0.1,), "random_state": 0, **EXACT}  # one C: the folds do not matter
    weighted = LogisticCVProbe(**settings).fit(X, y, groups=groups, sample_weight=w)
    without = LogisticCVProbe(**settings).fit(X[~dropped], y[~dropped], groups=groups[~dropped])
    for key, array in without.transform_arrays_.items():
        np.testing.assert_allclose(weighted.transform_arrays_[key], array, rtol=1e-12)
    np.testing.assert_allclose(weighted.coef_, without.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        weighted.predict_proba(X), without.predict_proba(X), rtol=0, atol=1e-9
    )
    # Up-weighting the correct answers raises P(correct) on average.
    plain = LogisticCVProbe(**settings).fit(X, y, groups=groups)
    heavier = LogisticCVProbe(**settings).fit(X, y, groups=groups, sample_weight=1 + 4.0 * y)
    assert heavier.predict_proba(X)[:, 1].mean() > plain.predict_proba(X)[:, 1].mean() + 0.05


@pytest.mark.parametrize(("n_components", "whiten"), [(6, False), (6, True), (0.8, False)])
def test_pca_option_equals_scikit_learn_pca(n_components, whiten):
    X, y, groups = np.nan_to_num(X_SMALL), Y_SMALL, G_SMALL
    probe = LogisticCVProbe(
        Cs=CS, n_components=n_components, whiten=whiten, random_state=1, **EXACT
    ).fit(X, y, groups=groups)
    Z = transform_by_hand(X, X)
    pca = PCA(n_components, whiten=whiten, svd_solver="full").fit(Z)
    assert probe.n_components_ == pca.n_components_ == probe.coef_.shape[0]
    assert probe.transform_arrays_["pca_components"].shape == (pca.n_components_, 30)
    reference = LogisticRegression(C=probe.C_, tol=1e-10, max_iter=20000)
    reference.fit(pca.transform(Z), y)
    # Component signs are fixed by scikit-learn's svd_flip, so coefficients match too.
    np.testing.assert_allclose(probe.coef_, reference.coef_[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(
        probe.predict_proba(X)[:, 1], reference.predict_proba(pca.transform(Z))[:, 1], atol=1e-8
    )
    assert probe.cv_log_loss_.shape == (len(CS),)


def test_logistic_cv_beats_chance_and_a_fixed_c_on_a_wide_problem():
    X, y, groups = wide_problem(360, 500, 3, signal=10, strength=2.0)
    X_test, y_test, _ = wide_problem(400, 500, 4, signal=10, strength=2.0)
    probe = LogisticCVProbe(n_folds=3).fit(X, y, groups=groups)
    p = probe.predict_proba(X_test)[:, 1]
    assert roc_auc_score(y_test, p) > 0.7
    assert log_loss(y_test, p) < log_loss(y_test, np.full(len(y_test), y.mean())) - 0.08
    assert probe.C_ in DEFAULT_CS and probe.cv_log_loss_.shape == (13,)
    # 500 columns, 360 rows: the selection shrinks far more than the fixed C=1 probe does.
    fixed = make_probe("logistic").fit(X, y).predict_proba(X_test)[:, 1]
    assert probe.C_ < 0.1 and log_loss(y_test, p) < log_loss(y_test, fixed) - 0.1


def test_logistic_cv_save_load_is_bitwise_and_never_pickles(tmp_path):
    X, y, groups = np.nan_to_num(X_SMALL), Y_SMALL, G_SMALL
    X_test = wide_problem(50, 30, 5)[0]
    X_test[0, 3] = np.nan
    for i, params in enumerate([{"Cs": CS}, {"Cs": CS, "n_components": 5, "whiten": True}]):
        probe = LogisticCVProbe(**params).fit(X, y, groups=groups)
        directory = tmp_path / str(i)
        directory.mkdir()
        names = probe.save_state(directory)
        assert names == ["logistic-cv.safetensors", "logistic-cv.json"]
        arrays = load_file(str(directory / names[0]))
        assert all(a.dtype == np.float64 for a in arrays.values())
        assert ("pca_components" in arrays) == ("n_components" in params)
        # Params as a bundle manifest gives them back (tuples become lists).
        loaded = LogisticCVProbe.load_state(directory, json.loads(json.dumps(probe.get_params())))
        np.testing.assert_array_equal(loaded.predict_proba(X_test), probe.predict_proba(X_test))
        assert loaded.C_ == probe.C_ and loaded.n_iter_ == probe.n_iter_
        np.testing.assert_array_equal(loaded.cv_log_loss_, probe.cv_log_loss_)
        np.testing.assert_array_equal(loaded.coef_, probe.coef_)
        metadata = json.loads((directory / names[1]).read_text())
        assert metadata["C"] == probe.C_ and metadata["n_features_in"] == 30


def test_logistic_cv_refuses_corrupt_missing_or_mismatched_state(tmp_path):
    probe = LogisticCVProbe(Cs=CS).fit(np.nan_to_num(X_SMALL), Y_SMALL)
    params = probe.get_params()
    names = probe.save_state(tmp_path)
    message = "cannot load the logistic-cv probe's state"
    for name in names:
        good = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(b"\x00garbage{" + good[: len(good) // 3])
        with pytest.raises(ProbeError, match=message):
            LogisticCVProbe.load_state(tmp_path, params)
        (tmp_path / name).unlink()
        with pytest.raises(ProbeError, match=message):
            LogisticCVProbe.load_state(tmp_path, params)
        (tmp_path / name).write_bytes(good)
    with pytest.raises(ProbeError, match=r"saved with \{'n_components': None"):
        LogisticCVProbe.load_state(tmp_path, {**params, "n_components": 4})
    arrays = load_file(str(tmp_path / names[0]))
    save_file({**arrays, "coef": arrays["coef"][:-1]}, str(tmp_path / names[0]))
    with pytest.raises(ProbeError, match=r"does not match 30 features: coef \(29,\)"):
        LogisticCVProbe.load_state(tmp_path, params)
    save_file({**arrays, "scale": arrays["scale"].astype(np.float32)}, str(tmp_path / names[0]))
    with pytest.raises(ProbeError, match="must hold float64 arrays"):
        LogisticCVProbe.load_state(tmp_path, params)
    save_file({k: v for k, v in arrays.items() if k != "medians"}, str(tmp_path / names[0]))
    with pytest.raises(ProbeError, match="expected"):
        LogisticCVProbe.load_state(tmp_path, params)


def test_logistic_cv_clone_registry_and_parameter_errors():
    probe = make_probe("logistic-cv", Cs=[0.1, 1.0], n_components=0.9, random_state=3)
    assert isinstance(probe, LogisticCVProbe) and PROBES["logistic-cv"] is LogisticCVProbe
    twin = clone(probe)
    assert twin is not probe and twin.get_params() == probe.get_params()
    fitted = LogisticCVProbe(Cs=CS).fit(np.nan_to_num(X_SMALL), Y_SMALL)
    with pytest.raises(NotFittedError):
        clone(fitted).predict_proba(X_SMALL)
    X, y = np.nan_to_num(X_SMALL), Y_SMALL
    for params, message in [
        ({"Cs": ()}, "'Cs' parameter of LogisticCVProbe must be a non-empty sequence"),
        ({"Cs": (0.0, 1.0)}, "'Cs' parameter"),
        ({"Cs": "1.0"}, "'Cs' parameter"),
        ({"n_folds": 1}, "'n_folds' parameter of LogisticCVProbe must be an int >= 2"),
        ({"n_components": 1.5}, "'n_components' parameter"),
        ({"n_components": 0}, "'n_components' parameter"),
        ({"whiten": 1}, "'whiten' parameter"),
        ({"tol": -1}, "'tol' parameter"),
        ({"n_jobs": 0}, "'n_jobs' parameter"),
    ]:
        with pytest.raises(ProbeError, match=re.escape(message)):
            LogisticCVProbe(**params).fit(X, y)
    with pytest.raises(ProbeError, match="cannot fit the PCA"):
        LogisticCVProbe(Cs=CS, n_components=500).fit(X, y)


def test_logistic_cv_warns_once_when_fits_stop_at_max_iter():
    with pytest.warns(PerturbprobeWarning, match=r"of the 21 logistic fits .* max_iter=1 ") as w:
        LogisticCVProbe(Cs=CS, max_iter=1).fit(np.nan_to_num(X_SMALL), Y_SMALL)
    assert sum("max_iter" in str(m.message) for m in w) == 1


def test_logistic_cv_does_not_depend_on_n_jobs():
    X, y, groups = np.nan_to_num(X_SMALL), Y_SMALL, G_SMALL
    one = LogisticCVProbe(Cs=CS).fit(X, y, groups=groups)
    two = LogisticCVProbe(Cs=CS, n_jobs=2).fit(X, y, groups=groups)
    np.testing.assert_array_equal(one.cv_fold_log_loss_, two.cv_fold_log_loss_)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


# -- stacking -------------------------------------------------------------------------------------

FAST_LGBM = {"n_estimators": 60, "learning_rate": 0.1, "early_stopping_rounds": 10}
SMALL_CS = {"Cs": [0.01, 0.1, 1.0], "n_folds": 3}


def family_problem(n: int, seed: int):
    """Group A (40 columns): a strong linear signal; B (6): an independent, weaker, non-linear
    one; C (3): noise. Three answers per question."""
    rng = np.random.default_rng(seed)
    A, B, C = rng.normal(size=(n, 40)), rng.normal(size=(n, 6)), rng.normal(size=(n, 3))
    logit = 1.2 * A[:, :5].sum(axis=1) / np.sqrt(5) + 1.3 * np.abs(B[:, 0]) - 1.0 + B[:, 1]
    y = (rng.random(n) < expit(logit)).astype(int)
    return np.hstack([A, B, C]), y, np.arange(n) // 3


GROUPS3 = (("hidden_states", 40), ("baseline", 6), ("noise", 3))
BASE_PARAMS = (("hidden_states", SMALL_CS), ("baseline", FAST_LGBM), ("noise", FAST_LGBM))


def stacking(**params) -> StackingProbe:
    settings = {
        "column_groups": GROUPS3,
        "base_params": BASE_PARAMS,
        "wide_groups": ("hidden_states",),
        "n_folds": 3,
    }
    return StackingProbe(**{**settings, **params})


@pytest.fixture(scope="module")
def stacked():
    X, y, groups = family_problem(450, 0)
    return stacking().fit(X, y, groups=groups)


def test_default_base_probe_rule_and_groups_from_names():
    assert default_base_probe("hidden_states", 8, wide_groups=("hidden_states",)) == "logistic-cv"
    assert default_base_probe("hidden_states", 8) == "lightgbm"  # no name is special
    assert default_base_probe("ccps", 65) == "logistic-cv"
    assert default_base_probe("baseline", 64) == "lightgbm"
    names = ["hidden_states/h0", "hidden_states/h1", "baseline/a", "ccps/x", "ccps/y"]
    assert column_groups_from_names(names) == (("hidden_states", 2), ("baseline", 1), ("ccps", 2))


def test_stacking_equals_a_hand_run_out_of_fold_loop():
    """Same folds, base probes fitted by hand on each fold's training part: the same
    out-of-fold predictions, and the meta-model is scikit-learn's LogisticRegression on their
    clipped logits; predictions combine the refitted base probes."""
    X, y, groups = family_problem(300, 1)
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=len(y))
    probe = stacking(
        column_groups=(("hidden_states", 40), ("rest", 9)),
        base_params=(("hidden_states", SMALL_CS), ("rest", FAST_LGBM)),
        meta_C=0.5,
        random_state=11,
    ).fit(X, y, groups=groups, sample_weight=w)
    seed = derive_seed(11)
    plan = [("logistic-cv", slice(0, 40), SMALL_CS), ("lightgbm", slice(40, 49), FAST_LGBM)]
    oof = np.empty((len(y), 2))
    refits = []
    for g, (name, columns, params) in enumerate(plan):
        for train, validation in cv_folds(y, groups, 3, seed):
            base = make_probe(name, random_state=seed, **params)
            base.fit(X[train][:, columns], y[train], groups=groups[train], sample_weight=w[train])
            oof[validation, g] = base.predict_proba(X[validation][:, columns])[:, 1]
        refits.append(
            make_probe(name, random_state=seed, **params).fit(
                X[:, columns], y, groups=groups, sample_weight=w
            )
        )
    np.testing.assert_array_equal(probe.oof_predictions_, oof)
    clipped = np.clip(oof, 1e-6, 1 - 1e-6)
    logits = np.log(clipped / (1 - clipped))
    meta = LogisticRegression(C=0.5).fit(logits, y, sample_weight=w)
    np.testing.assert_allclose(probe.meta_coef_, meta.coef_[0], rtol=1e-9)
    np.testing.assert_allclose(probe.meta_intercept_, meta.intercept_[0], rtol=1e-9, atol=1e-12)
    assert probe.group_names_ == ["hidden_states", "rest"]
    assert [type(b).name for b in probe.base_probes_] == ["logistic-cv", "lightgbm"]
    for g, group in enumerate(probe.group_names_):
        expected = log_loss(y, oof[:, g], sample_weight=w)
        assert probe.group_log_loss_[group] == pytest.approx(expected, rel=1e-12)
    X_test = family_problem(60, 2)[0]
    parts = np.column_stack(
        [b.predict_proba(X_test[:, c])[:, 1] for b, (_, c, _) in zip(refits, plan, strict=True)]
    )
    parts = np.clip(parts, 1e-6, 1 - 1e-6)
    expected = meta.predict_proba(np.log(parts / (1 - parts)))[:, 1]
    np.testing.assert_allclose(probe.predict_proba(X_test)[:, 1], expected, rtol=1e-9)


def test_stacking_keeps_questions_together_in_every_fit(spy_cv_folds):
    """The stacking folds and the inner folds of every logistic-cv base fit are grouped."""
    calls = spy_cv_folds(stacking_module, logistic_cv_module)
    X, y, groups = family_problem(240, 3)
    stacking(n_folds=3).fit(X, y, groups=groups)
    # the stacking folds, then the logistic-cv base's inner folds of its all-rows fit (its 3
    # fold fits reuse the C chosen there: a single C needs no inner folds)
    assert len(calls) == 1 + 1
    for fold_groups, folds in calls:
        assert fold_groups is not None and straddling_groups(folds, fold_groups) == []
    np.testing.assert_array_equal(calls[0][0], groups)


def test_stacking_beats_each_family_alone(stacked):
    X_test, y_test, _ = family_problem(1500, 4)
    X, y, groups = family_problem(450, 0)
    stacked_loss = log_loss(y_test, stacked.predict_proba(X_test)[:, 1])
    alone = {
        "hidden_states": make_probe("logistic-cv", **SMALL_CS).fit(X[:, :40], y, groups=groups),
        "baseline": make_probe("lightgbm", **FAST_LGBM).fit(X[:, 40:46], y, groups=groups),
    }
    losses = {
        "hidden_states": log_loss(y_test, alone["hidden_states"].predict_proba(X_test[:, :40])),
        "baseline": log_loss(y_test, alone["baseline"].predict_proba(X_test[:, 40:46])),
    }
    assert stacked_loss < min(losses.values()) - 0.02, (stacked_loss, losses)
    # The meta-model trusts the two signal families far more than the noise one.
    a, b, noise = stacked.meta_coef_
    assert a > 0.5 and b > 0.5 and abs(noise) < 0.5 * min(a, b)
    assert stacked.group_log_loss_["noise"] > stacked.group_log_loss_["baseline"]


def test_stacking_refuses_bad_column_groups_and_base_probes():
    X, y, _ = family_problem(120, 5)
    cases = [
        ({"column_groups": (("a", 40), ("b", 6))}, "column_groups cover 46 columns (a: 40, b: 6) "),
        ({"column_groups": (("a", 40), ("b", 10))}, "but X has 49"),
        ({"column_groups": (("a", 49), ("a", 0))}, "'column_groups' parameter of StackingProbe"),
        ({"column_groups": "a"}, "'column_groups' parameter"),
        ({"base_probes": (("other", "lightgbm"),)}, "base_probes names column group(s) 'other'"),
        ({"base_params": (("x", {}),)}, "base_params names column group(s) 'x'"),
        ({"base_probes": (("noise", "ccps-cnn"),)}, "must be a table probe other than stacking"),
        ({"base_probes": (("noise", "stacking"),)}, "must be a table probe other than stacking"),
        ({"base_probes": (("noise", "forest"),)}, "unknown probe 'forest'"),
        ({"base_params": (("noise", {"alpha": 1}),)}, "unknown parameters for probe 'lightgbm'"),
        ({"n_folds": 1}, "'n_folds' parameter of StackingProbe must be an int >= 2"),
        ({"meta_C": 0}, "'meta_C' parameter"),
        ({"wide_groups": ("nope",)}, "wide_groups names column group(s) 'nope'"),
        ({"wide_groups": "hidden_states"}, "'wide_groups' parameter"),
    ]
    for params, message in cases:
        with pytest.raises(ProbeError, match=re.escape(message)):
            stacking(**params).fit(X, y)


def test_stacking_names_the_failing_base_probe():
    X, y, _ = family_problem(120, 5)
    probe = stacking(base_params=(("noise", {"validation_fraction": 2.0}),))
    message = r"the lightgbm base probe of column group 'noise' failed \(all rows\): The 'valid"
    with pytest.raises(ProbeError, match=message):
        probe.fit(X, y)


def test_stacking_save_load_is_bitwise_with_subdirectories(stacked, tmp_path):
    X_test = family_problem(80, 6)[0]
    saved, fresh = tmp_path / "saved", tmp_path / "fresh"
    saved.mkdir(), fresh.mkdir()
    names = stacked.save_state(saved)
    assert names == [
        "stacking.json",
        "stacking-0/logistic-cv.safetensors",
        "stacking-0/logistic-cv.json",
        "stacking-1/lightgbm.txt",
        "stacking-1/lightgbm.json",
        "stacking-2/lightgbm.txt",
        "stacking-2/lightgbm.json",
    ]
    on_disk = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert on_disk == sorted(names)
    for name in names:  # the listed files are all a load needs
        (fresh / name).parent.mkdir(exist_ok=True)
        shutil.copy(saved / name, fresh / name)
    params = json.loads(json.dumps(stacked.get_params()))  # as a bundle manifest has them
    loaded = StackingProbe.load_state(fresh, params)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), stacked.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.meta_coef_, stacked.meta_coef_)
    assert loaded.group_log_loss_ == stacked.group_log_loss_
    assert loaded.group_names_ == stacked.group_names_
    assert [type(b) for b in loaded.base_probes_] == [type(b) for b in stacked.base_probes_]
    metadata = json.loads((saved / "stacking.json").read_text())
    assert [e["probe"] for e in metadata["base_probes"]] == ["logistic-cv", "lightgbm", "lightgbm"]
    assert metadata["base_probes"][0]["params"]["Cs"] == [0.01, 0.1, 1.0]


def test_stacking_refuses_corrupt_sub_state_and_mismatched_params(stacked, tmp_path):
    params = stacked.get_params()
    names = stacked.save_state(tmp_path)
    for name in names:
        good = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(b"\x00garbage{" + good[: len(good) // 3])
        with pytest.raises(ProbeError, match="cannot load the stacking probe's state"):
            StackingProbe.load_state(tmp_path, params)
        (tmp_path / name).unlink()
        with pytest.raises(ProbeError, match="cannot load the stacking probe's state"):
            StackingProbe.load_state(tmp_path, params)
        (tmp_path / name).write_bytes(good)
    StackingProbe.load_state(tmp_path, params)  # intact again
    other = {**params, "base_probes": (("noise", "logistic"),), "base_params": BASE_PARAMS[:2]}
    with pytest.raises(ProbeError, match=r"holds base probes .* the parameters say"):
        StackingProbe.load_state(tmp_path, other)
    with pytest.raises(ProbeError, match="column_groups cover 50 columns"):
        StackingProbe.load_state(tmp_path, {**params, "column_groups": (("a", 50),)})


def test_stacking_clone_default_groups_and_registry():
    probe = make_probe(
        "stacking",
        column_groups=GROUPS3,
        base_params=BASE_PARAMS,
        wide_groups=("hidden_states",),
        meta_C=2.0,
    )
    assert isinstance(probe, StackingProbe) and PROBES["stacking"] is StackingProbe
    twin = clone(probe)
    assert twin is not probe and twin.get_params() == probe.get_params()
    # Without column_groups: one group of all columns, here a lightgbm one.
    X, y, _ = family_problem(150, 7)
    X = X[:, 40:49]
    single = StackingProbe(base_params=(("features", FAST_LGBM),), n_folds=3).fit(X, y)
    assert single.group_names_ == ["features"] and single.meta_coef_.shape == (1,)
    assert type(single.base_probes_[0]).name == "lightgbm"
    with pytest.raises(NotFittedError):
        clone(single).predict_proba(X)


def test_stacking_with_named_labels_gives_its_base_probes_zero_one(stacked, tmp_path):
    """The base probes and the meta-model see 1 for pos_label: P(correct) is the 0/1 fit's."""
    X, y, groups = family_problem(450, 0)
    named = stacking(pos_label="right").fit(X, np.where(y == 1, "right", "wrong"), groups=groups)
    X_test = family_problem(80, 6)[0]
    np.testing.assert_array_equal(named.predict_positive(X_test), stacked.predict_positive(X_test))
    np.testing.assert_array_equal(named.classes_, ["right", "wrong"])
    np.testing.assert_array_equal(
        named.predict_proba(X_test)[:, 0], stacked.predict_positive(X_test)
    )
    assert all(list(base.classes_) == [0, 1] for base in named.base_probes_)
    named.save_state(tmp_path)
    loaded = StackingProbe.load_state(tmp_path, named.get_params())
    np.testing.assert_array_equal(loaded.predict_proba(X_test), named.predict_proba(X_test))
    assert loaded.pos_label_ == "right"
