"""Post-hoc calibrators: each against an independent oracle (scikit-learn, a brute-force grid,
a naive loop), persistence round trips, edge values, and every documented error."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
from scipy.special import expit, xlogy
from sklearn.base import clone
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from perturbprobe.calibration.calibrators import (
    CALIBRATORS,
    LOGIT_EPS,
    Calibrator,
    HistogramCalibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    calibrator_from_dict,
    make_calibrator,
)
from perturbprobe.errors import CalibrationError, PerturbprobeWarning

LEARNED = ("temperature", "platt", "isotonic", "histogram")
MONOTONE = ("temperature", "platt", "isotonic")


def overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(q) with q ~ U(0.05, 0.95); the score p = σ(3·logit(q)) is over-confident.

    The population-optimal temperature is exactly 3.
    """
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < q).astype(int)
    return expit(3 * np.log(q / (1 - q))), y


def naive_logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


def nll(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood in float64, straight from the definition."""
    return float(-np.mean(xlogy(y, prob) + xlogy(1 - y, 1 - prob)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return overconfident(600)


# --------------------------------------------------------------------------- oracles
def test_temperature_matches_brute_force_grid(data):
    p, y = data
    fitted = TemperatureCalibrator().fit(p, y)
    z = naive_logit(p)
    grid = np.logspace(-1, 1.5, 20001)  # step ≈ 0.03 % in T
    grid_nll = [nll(expit(z / t), y) for t in grid]
    found = nll(fitted.transform(p), y)
    # the found T is at least as good as the best grid point, up to float rounding
    assert found <= min(grid_nll) + 1e-10
    assert abs(fitted.temperature_ - grid[int(np.argmin(grid_nll))]) < 0.01
    # with enough rows the fitted T recovers the population value 3 (sampling sd ≈ 0.1)
    big_p, big_y = overconfident(20000, seed=1)
    assert TemperatureCalibrator().fit(big_p, big_y).temperature_ == pytest.approx(3, abs=0.3)


def test_platt_matches_unregularised_sklearn_logistic_regression(data):
    p, y = data
    fitted = PlattCalibrator().fit(p, y)
    z = naive_logit(p)[:, None]
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z, y)
    # lbfgs stopped at tol 1e-12 agrees with Newton's optimum to ~1e-6
    assert fitted.coef_ == pytest.approx(reference.coef_[0, 0], abs=1e-5)
    assert fitted.intercept_ == pytest.approx(reference.intercept_[0], abs=1e-5)
    new = np.linspace(0, 1, 57)
    expected = reference.predict_proba(naive_logit(new)[:, None])[:, 1]
    np.testing.assert_allclose(fitted.transform(new), expected, atol=1e-6)


def test_isotonic_matches_sklearn_predictions(data):
    p, y = data
    fitted = IsotonicCalibrator().fit(p, y)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    new = np.r_[np.linspace(0, 1, 101), p[:50]]  # includes scores outside the fit range
    np.testing.assert_allclose(fitted.transform(new), reference.predict(new), atol=1e-12)


def naive_histogram(p_fit, y_fit, p_new, n_bins):
    """The documented rule, with loops: inverted-CDF quantile edges, bins (e[k-1], e[k]]."""
    ordered = sorted(p_fit)
    edges = []
    for j in range(1, n_bins):
        value = ordered[math.ceil(j / n_bins * len(ordered)) - 1]
        if value not in edges and value < max(ordered):
            edges.append(value)
    edges.sort()

    def bin_of(x):
        return sum(1 for e in edges if e < x)

    out = []
    for x in p_new:
        members = [y for p, y in zip(p_fit, y_fit, strict=True) if bin_of(p) == bin_of(x)]
        out.append(sum(members) / len(members))
    return np.array(out), edges


@pytest.mark.parametrize("n_bins", [1, 3, 10])
def test_histogram_matches_naive_loop(n_bins):
    rng = np.random.default_rng(n_bins)
    p = np.round(rng.beta(2, 1, 150), 2)  # rounded: many ties
    y = (rng.random(150) < p).astype(int)
    fitted = HistogramCalibrator(n_bins=n_bins).fit(p, y)
    new = np.r_[0.0, 1.0, np.linspace(0, 1, 41), p[:20]]
    expected, edges = naive_histogram(p, y, new, n_bins)
    np.testing.assert_array_equal(fitted.bin_edges_, edges)
    np.testing.assert_allclose(fitted.transform(new), expected, atol=1e-12)


def test_histogram_bins_are_equal_mass_and_ties_share_a_bin():
    rng = np.random.default_rng(3)
    p = rng.permutation(np.linspace(0.01, 0.99, 100))
    y = (rng.random(100) < p).astype(int)
    fitted = HistogramCalibrator(n_bins=10).fit(p, y)
    order = np.argsort(p)
    np.testing.assert_allclose(fitted.bin_values_, y[order].reshape(10, 10).mean(axis=1))
    # half the rows share one score: they land in a single bin, so fewer bins remain
    tied = np.r_[np.full(50, 0.7), np.linspace(0.1, 0.9, 50)]
    labels = np.arange(100) % 2
    binned = HistogramCalibrator(n_bins=10).fit(tied, labels)
    assert len(binned.bin_values_) < 10
    assert len(set(binned.transform(np.full(3, 0.7)))) == 1


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", LEARNED)
def test_calibration_improves_nll_and_brier_on_fit_data(name, data):
    p, y = data
    calibrated = make_calibrator(name).fit(p, y).transform(p)
    assert log_loss(y, calibrated) < log_loss(y, p)
    assert brier_score_loss(y, calibrated) < brier_score_loss(y, p)


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_outputs_in_unit_interval_at_edges(name, data):
    p, y = data
    fitted = make_calibrator(name).fit(p, y)
    out = fitted.transform(np.array([0.0, 1.0, LOGIT_EPS / 2, 1 - LOGIT_EPS / 2, 0.5]))
    assert out.shape == (5,)
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    np.testing.assert_array_equal(fitted.predict(p), fitted.transform(p))
    assert fitted.transform(np.array([])).shape == (0,)  # zero rows in, zero rows out


@pytest.mark.parametrize("name", MONOTONE)
def test_monotone_non_decreasing(name, data):
    p, y = data
    out = make_calibrator(name).fit(p, y).transform(np.linspace(0, 1, 1001))
    assert (np.diff(out) >= 0).all()


def test_identity_returns_input_and_accepts_one_class():
    p = np.array([0.0, 0.3, 1.0])
    np.testing.assert_array_equal(IdentityCalibrator().fit(p, [1, 1, 1]).transform(p), p)
    np.testing.assert_array_equal(IdentityCalibrator().transform(p), p)  # nothing to fit


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_inputs_not_mutated_and_clone(name, data):
    p, y = data[0].copy(), data[1].copy()
    calibrator = make_calibrator(name).fit(p, y)
    calibrator.transform(p)
    np.testing.assert_array_equal(p, data[0])
    np.testing.assert_array_equal(y, data[1])
    copy = clone(calibrator)
    assert type(copy) is type(calibrator) and copy.get_params() == calibrator.get_params()


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_dict_round_trip_through_json(name, data):
    p, y = data
    fitted = make_calibrator(name).fit(p, y)
    text = json.dumps(fitted.to_dict(), allow_nan=False)
    new = np.linspace(0, 1, 333)
    for loader in (calibrator_from_dict, Calibrator.from_dict, type(fitted).from_dict):
        loaded = loader(json.loads(text))
        assert type(loaded) is type(fitted)
        np.testing.assert_array_equal(loaded.transform(new), fitted.transform(new))
        assert loaded.to_dict() == fitted.to_dict()


def test_to_dict_layout():
    with pytest.warns(PerturbprobeWarning, match="fewer than 20"):
        fitted = HistogramCalibrator(n_bins=4).fit(np.arange(8) / 8, [0, 0, 1, 0, 1, 1, 0, 1])
    assert fitted.to_dict() == {
        "name": "histogram",
        "params": {"n_bins": 4},
        "state": {"bin_edges_": [1 / 8, 3 / 8, 5 / 8], "bin_values_": [0.0, 0.5, 1.0, 0.5]},
    }
    assert IdentityCalibrator().to_dict() == {"name": "none", "params": {}, "state": {}}
    numpy_params = HistogramCalibrator(n_bins=np.int64(3)).fit(*overconfident(40)).to_dict()
    assert json.loads(json.dumps(numpy_params))["params"] == {"n_bins": 3}


# --------------------------------------------------------------------------- registry
def test_registry_and_make_calibrator():
    assert sorted(CALIBRATORS) == ["histogram", "isotonic", "none", "platt", "temperature"]
    assert all(cls.name == name for name, cls in CALIBRATORS.items())
    assert make_calibrator("histogram", n_bins=5).n_bins == 5
    assert repr(make_calibrator("histogram", n_bins=5)) == "HistogramCalibrator(n_bins=5)"
    expected = (
        "unknown calibrator 'foo'; choose one of: histogram, isotonic, none, platt, temperature"
    )
    with pytest.raises(CalibrationError, match=f"^{re.escape(expected)}$"):
        make_calibrator("foo")
    with pytest.raises(CalibrationError, match=r"'temperature' got unknown parameter\(s\) n_bins"):
        make_calibrator("temperature", n_bins=3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_n_bins(bad):
    with pytest.raises(CalibrationError, match="'n_bins' parameter of HistogramCalibrator"):
        make_calibrator("histogram", n_bins=bad)
    with pytest.raises(CalibrationError, match="'n_bins' parameter"):
        HistogramCalibrator(n_bins=bad).fit([0.1, 0.9], [0, 1])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("p", "y", "message"),
    [
        ([[0.1, 0.2]], [0, 1], r"p must be a 1-D array \(n,\); got shape \(1, 2\)"),
        ([], [], "p is empty"),
        (["a", "b"], [0, 1], "p must be numeric"),
        ([0.1, np.nan], [0, 1], "p must be finite; found 1 NaN/inf"),
        ([0.1, 1.5], [0, 1], r"p must lie in \[0, 1\]; found values from 0.1 to 1.5"),
        ([0.1, 0.2], [0, 1, 1], "p and y must have the same length; got 2 and 3"),
        ([0.1, 0.2], [[0, 1]], r"y must be a 1-D array"),
        ([0.1, 0.2], [0, 2], r"y must hold only 0 \(incorrect\) and 1 \(correct\); found 2"),
        ([0.1, 0.2], [0, 0.5], "y must hold only 0.*; found 0.5"),
        ([0.1, 0.2], ["yes", "no"], "y must hold only 0.*; found 'yes'"),
    ],
)
def test_bad_inputs(p, y, message):
    with pytest.raises(CalibrationError, match=message):
        PlattCalibrator().fit(p, y)


def test_bad_transform_input_and_not_fitted(data):
    with pytest.raises(CalibrationError, match="TemperatureCalibrator is not fitted"):
        TemperatureCalibrator().transform([0.5])
    with pytest.raises(CalibrationError, match="IsotonicCalibrator is not fitted"):
        IsotonicCalibrator().to_dict()
    fitted = PlattCalibrator().fit(*data)
    with pytest.raises(CalibrationError, match=r"p must lie in \[0, 1\]"):
        fitted.transform([-0.1])


@pytest.mark.parametrize("name", LEARNED)
def test_one_class_raises(name):
    both = "needs both correct and incorrect answers; all 30 rows are correct"
    with pytest.raises(CalibrationError, match=both):
        make_calibrator(name).fit(np.linspace(0, 1, 30), np.ones(30))
    with pytest.raises(CalibrationError, match="all 30 rows are incorrect"):
        make_calibrator(name).fit(np.linspace(0, 1, 30), np.zeros(30))


@pytest.mark.parametrize("name", LEARNED)
def test_few_rows_warn(name):
    p, y = np.linspace(0.1, 0.9, 12), np.arange(12) % 3 != 0
    with pytest.warns(PerturbprobeWarning, match="on 12 rows \\(fewer than 20\\)"):
        make_calibrator(name).fit(p, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IdentityCalibrator().fit(p, y)  # learns nothing: no warning


def test_separable_scores_warn():
    p = np.linspace(0.05, 0.95, 40)
    y = (p > 0.5).astype(int)
    with pytest.warns(PerturbprobeWarning, match="separate correct from incorrect"):
        steep = PlattCalibrator().fit(p, y)
    assert steep.coef_ > 50
    with pytest.warns(PerturbprobeWarning, match="temperature 0.01 is at the search bound"):
        TemperatureCalibrator().fit(p, y)
    with pytest.warns(PerturbprobeWarning, match="temperature 100 is at the search bound"):
        TemperatureCalibrator().fit(p, 1 - y)


def _with_state(**state):
    """An edit that replaces a calibrator dict's fitted state."""
    return lambda d: {**d, "state": state}


def _fitted_dict(name, data):
    return json.loads(json.dumps(make_calibrator(name).fit(*data).to_dict()))


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("platt", lambda d: [d], "a calibrator dict must be a mapping; got list"),
        ("platt", lambda d: {**d, "extra": 1}, "must have exactly the keys name, params, state"),
        ("platt", lambda d: {"name": "platt", "state": {}}, "got name, state"),
        ("platt", lambda d: {**d, "name": "sigmoid"}, "unknown calibrator 'sigmoid'"),
        ("platt", lambda d: {**d, "name": 3}, "unknown calibrator 3"),
        ("platt", lambda d: {**d, "params": []}, "'params' must be a mapping"),
        ("platt", lambda d: {**d, "params": {"C": 1}}, "'platt' got unknown parameter"),
        ("histogram", lambda d: {**d, "params": {"n_bins": 0}}, "'n_bins' parameter"),
        ("platt", lambda d: {**d, "state": None}, "state must be a mapping"),
        ("platt", lambda d: {**d, "state": {"coef_": 1.0}}, "keys coef_, intercept_; got coef_"),
        ("temperature", _with_state(temperature_=-1), "finite positive"),
        ("temperature", _with_state(temperature_="2"), "finite positive"),
        ("temperature", _with_state(temperature_=True), "finite positive"),
        ("platt", _with_state(coef_=math.inf, intercept_=0), "'coef_' must be a finite number"),
        ("isotonic", _with_state(X_thresholds_=[0.5, 0.2], y_thresholds_=[0.2, 0.4]), "strictly"),
        ("isotonic", _with_state(X_thresholds_=[0.2, 0.4], y_thresholds_=[0.9, 0.2]), "non-dec"),
        ("isotonic", _with_state(X_thresholds_=[0.1, 2], y_thresholds_=[0.2, 0.4]), r"in \[0, 1\]"),
        ("isotonic", _with_state(X_thresholds_=[], y_thresholds_=[]), "non-empty list"),
        ("isotonic", _with_state(X_thresholds_="0.1", y_thresholds_=[0.2]), "non-empty list"),
        ("isotonic", _with_state(X_thresholds_=[0.1, 0.2], y_thresholds_=[0.3]), "same length"),
        ("histogram", _with_state(bin_edges_=[0.5], bin_values_=[0.5]), "one more entry"),
    ],
)
def test_corrupt_dicts_raise(name, edit, message, data):
    with pytest.raises(CalibrationError, match=message):
        calibrator_from_dict(edit(_fitted_dict(name, data)))


def test_subclass_from_dict_checks_the_name(data):
    with pytest.raises(CalibrationError, match="expected a 'temperature' calibrator; got 'platt'"):
        TemperatureCalibrator.from_dict(_fitted_dict("platt", data))
