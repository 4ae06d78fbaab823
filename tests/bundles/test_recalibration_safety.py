"""Recalibration never makes the probe worse: Platt's slope is constrained to a ≥ 0, a refit on
few labels is shrunk toward the parent bundle's map (MAP, log-normal prior on the slope), and
the probe's AUROC on the recalibration answers is reported with an interval over questions
and a warning when it reaches 0.5 — on synthetic FeatureSets (no LLM needed)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from synthetic_features import synthetic_featureset

from perturbprobe.bundles import ProbeBundle
from perturbprobe.bundles.recalibration import auroc_by_question, refit_calibrator
from perturbprobe.calibration.calibrators import (
    LOGIT_EPS,
    SLOPE_PRIOR_SD,
    PlattCalibrator,
    TemperatureCalibrator,
    calibrator_from_dict,
    logit_slope,
)
from perturbprobe.calibration.metrics import expected_calibration_error, roc_auc_score
from perturbprobe.errors import CalibrationError, PerturbprobeWarning
from perturbprobe.training import fit_bundle

LOGGER = "perturbprobe.bundles.recalibration"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A saved logistic + Platt bundle (recalibration records the parent's hash)."""
    fitted = fit_bundle(synthetic_featureset(160), probe="logistic", n_bootstrap=0)
    fitted.save(tmp_path_factory.mktemp("bundle") / "b")
    return fitted


def generated(n, *, seed, shift=-1.2, prefix="n"):
    """``n`` generated answers of a domain where the LLM is right less often (shift < 0)."""
    fs = synthetic_featureset(n, seed=seed, shift=shift, prefix=prefix)
    return fs.subset(fs.sources == "generated")


def anti_correlated(bundle, *, from_low, n=100, n_right=15, seed=0):
    """``n`` answers relabelled by chance against the probe: ``n_right`` right ones, of which
    ``from_low`` among the half with the lowest raw scores."""
    domain = generated(n, seed=9, prefix="a")
    order = np.argsort(bundle.predict_raw(domain))
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=int)
    labels[rng.choice(order[: n // 2], from_low, replace=False)] = 1
    labels[rng.choice(order[n // 2 :], n_right - from_low, replace=False)] = 1
    domain.features["label"] = pd.array(labels, dtype="Int64")
    return domain


def logit(p):
    p = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


def recalibration_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


# ----------------------------------------------------------------------------- Platt: a ≥ 0
def backwards(n=100, seed=0):
    """Scores that rank correct answers below incorrect ones."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < 1 - p).astype(int)
    return p, y


def test_platt_slope_is_never_negative():
    p, y = backwards()
    with pytest.warns(PerturbprobeWarning, match="rank correct answers below incorrect ones"):
        fitted = PlattCalibrator().fit(p, y)
    # the constrained optimum of a convex NLL whose free optimum has a < 0 lies on a = 0:
    # the constant map at the accuracy of the fit data
    assert fitted.coef_ == 0.0
    np.testing.assert_allclose(fitted.transform(np.linspace(0, 1, 11)), y.mean(), rtol=1e-12)
    # perfectly backwards scores too (no "steep step" warning: that is for forward separation)
    q = np.linspace(0.05, 0.95, 40)
    with pytest.warns(PerturbprobeWarning, match="below incorrect ones") as caught:
        assert PlattCalibrator().fit(q, (q < 0.5).astype(int)).coef_ == 0.0
    assert not any("steep step" in str(w.message) for w in caught)
    for seed in range(20):  # whatever the data, the map is non-decreasing
        rng = np.random.default_rng(seed)
        p, y = rng.uniform(size=30), np.r_[0, 1, rng.integers(0, 2, 28)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerturbprobeWarning)
            assert PlattCalibrator().fit(p, y).coef_ >= 0


def test_old_bundles_calibrators_load():
    """Bundles written before the constraint may hold a decreasing Platt map: it loads and
    applies as before; a new fit keeps the old layout, so older readers read it too."""
    old = {"name": "platt", "params": {}, "state": {"coef_": -0.7, "intercept_": 0.2}}
    loaded = calibrator_from_dict(json.loads(json.dumps(old)))
    p = np.array([0.2, 0.5, 0.8])
    np.testing.assert_allclose(loaded.transform(p), expit(-0.7 * logit(p) + 0.2))
    assert loaded.to_dict() == old
    new = PlattCalibrator().fit(*backwards(), prior_slope=1.0).to_dict()
    assert set(new) == {"name", "params", "state"} and new["params"] == {}
    assert set(new["state"]) == {"coef_", "intercept_"}
    temperature = {"name": "temperature", "params": {}, "state": {"temperature_": 2.0}}
    assert calibrator_from_dict(temperature).to_dict() == temperature


# ----------------------------------------------------------------------------- the MAP fit
def map_objective(params, z, y, center, sd):
    """n·NLL(a, b) + ½ (log(a/center) / sd)², straight from the definition."""
    log_a, b = params
    prob = expit(np.exp(log_a) * z + b)
    nll = -np.sum(y * np.log(prob) + (1 - y) * np.log1p(-prob))
    return nll + 0.5 * ((log_a - math.log(center)) / sd) ** 2


@pytest.mark.parametrize("center", [0.3, 1.0, 2.5])
def test_platt_prior_matches_a_direct_minimisation(center):
    p, y = backwards(60, seed=3)
    fitted = PlattCalibrator().fit(p, y, prior_slope=center)
    oracle = minimize(
        map_objective,
        x0=[math.log(center), 0.0],
        args=(logit(p), y, center, SLOPE_PRIOR_SD),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
    )
    assert fitted.coef_ > 0
    assert math.log(fitted.coef_) == pytest.approx(oracle.x[0], abs=1e-5)
    assert fitted.intercept_ == pytest.approx(oracle.x[1], abs=1e-5)
    # the intercept is not shrunk: calibration-in-the-large holds on the fit data
    assert fitted.transform(p).mean() == pytest.approx(y.mean(), abs=1e-10)


def test_prior_fades_as_rows_grow():
    """True slope 2; a prior at 0.5 holds a few rows near it and lets many rows decide."""
    rng = np.random.default_rng(4)

    def sample(n):
        z = rng.normal(size=n)
        return expit(z), (rng.random(n) < expit(2 * z - 1)).astype(int)

    few, many = sample(40), sample(20_000)
    small = PlattCalibrator().fit(*few, prior_slope=0.5).coef_
    free = PlattCalibrator().fit(*few).coef_
    assert 0.5 < small < free
    assert PlattCalibrator().fit(*many, prior_slope=0.5).coef_ == pytest.approx(2, abs=0.1)
    t_few = TemperatureCalibrator().fit(*few, prior_temperature=2.0).temperature_
    t_free = TemperatureCalibrator().fit(*few).temperature_
    assert min(2.0, t_free) < t_few < max(2.0, t_free)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "1"])
def test_bad_priors_raise(bad):
    p, y = backwards()
    with pytest.raises(CalibrationError, match="prior_slope must be a finite positive number"):
        PlattCalibrator().fit(p, y, prior_slope=bad)
    with pytest.raises(CalibrationError, match="prior_sd must be a finite positive number"):
        PlattCalibrator().fit(p, y, prior_slope=1.0, prior_sd=bad)
    with pytest.raises(CalibrationError, match="prior_temperature must be a finite positive"):
        TemperatureCalibrator().fit(p, y, prior_temperature=bad)


def test_logit_slope_of_each_map():
    p, _ = backwards()
    platt = calibrator_from_dict(
        {"name": "platt", "params": {}, "state": {"coef_": 1.7, "intercept_": -0.3}}
    )
    assert logit_slope(platt, p) == 1.7
    t = calibrator_from_dict({"name": "temperature", "params": {}, "state": {"temperature_": 4}})
    assert logit_slope(t, p) == 0.25
    # an isotonic map of a Platt map's values: its Platt projection recovers the slope
    grid = np.linspace(0.01, 0.99, 500)
    state = {"X_thresholds_": grid.tolist(), "y_thresholds_": platt.transform(grid).tolist()}
    iso = calibrator_from_dict({"name": "isotonic", "params": {}, "state": state})
    assert logit_slope(iso, grid) == pytest.approx(1.7, rel=1e-6)
    state = {"X_thresholds_": [0.1, 0.9], "y_thresholds_": [0.3, 0.3]}
    flat = calibrator_from_dict({"name": "isotonic", "params": {}, "state": state})
    assert abs(logit_slope(flat, p)) < 1e-9  # a flat map: no usable slope


# ----------------------------------------------------------------------------- the interval
def test_auroc_by_question_matches_a_naive_resampling_loop():
    rng = np.random.default_rng(5)
    n, n_questions = 90, 30
    questions = [f"q{i % n_questions:02d}" for i in range(n)]
    score = np.round(rng.uniform(size=n), 2)  # ties
    y = (rng.random(n) < score).astype(int)
    auroc, low, high = auroc_by_question(y, score, questions, n_bootstrap=300, random_state=1)
    assert auroc == roc_auc_score(y, score)
    # the same draws, by hand: question q drawn k times puts its answers in k times
    counts = np.random.default_rng(1).multinomial(
        n_questions, np.full(n_questions, 1 / n_questions), size=300
    )
    index = np.array([int(q[1:]) for q in questions])  # "q00" < "q01" < ... as np.unique sorts
    values = []
    for row in counts:
        rows = np.repeat(np.arange(n), row[index])
        if 0 < y[rows].sum() < len(rows):
            values.append(roc_auc_score(y[rows], score[rows]))
    np.testing.assert_allclose([low, high], np.quantile(values, [0.025, 0.975]), rtol=1e-12)
    # answers of one question move together: copies of each answer change nothing
    copies = auroc_by_question(
        np.repeat(y, 3), np.repeat(score, 3), np.repeat(questions, 3), n_bootstrap=300,
        random_state=1,
    )  # fmt: skip
    np.testing.assert_allclose(copies, (auroc, low, high), rtol=1e-12)


# ----------------------------------------------------------------------------- recalibrate
def test_anti_correlated_labels_keep_the_parents_ranking(bundle, caplog):
    """100 answers, 15 right, mostly among the low scores: the old unconstrained refit had a
    negative slope here and inverted the ranking; now the map stays increasing."""
    domain = anti_correlated(bundle, from_low=10)
    y, raw = domain.y, bundle.predict_raw(domain)
    before = roc_auc_score(y, bundle.predict_confidence(domain))
    # what the unconstrained refit of old did: a negative slope, the ranking inverted
    old = LogisticRegression(C=np.inf).fit(logit(raw)[:, None], y).coef_[0, 0]
    assert old < 0
    with caplog.at_level(logging.INFO, logger=LOGGER):
        child = bundle.recalibrate(domain, target_risk=None)
    confidence = child.predict_confidence(domain)
    after = roc_auc_score(y, confidence)
    print(
        f"AUROC before {before:.3f}, after {after:.3f} (unconstrained refit "
        f"{roc_auc_score(y, 1 - raw):.3f}), mean confidence {confidence.mean():.4f}"
    )
    assert before == after == roc_auc_score(y, raw) < 0.5
    grid = child.calibrator.transform(np.linspace(0, 1, 1001))
    assert (np.diff(grid) >= 0).all() and child.calibrator.coef_ > 0
    assert 0 < child.calibrator.coef_ < bundle.calibrator.coef_  # shrunk, not flipped
    parent = bundle.predict_confidence(domain)
    assert spearmanr(confidence, parent).statistic == pytest.approx(1.0, abs=1e-12)
    other = np.random.default_rng(0).integers(0, 2, len(y))  # any labels: same ranking
    assert roc_auc_score(other, confidence) == roc_auc_score(other, parent)
    assert confidence.mean() == pytest.approx(0.15, abs=1e-9)  # the new base rate
    summary = child.manifest["recalibration"]
    assert summary["auroc"] == pytest.approx(before, abs=1e-4)
    assert summary["auroc_low"] < 0.5 < summary["auroc_high"]
    (message,) = recalibration_warnings(caplog)
    expected = (
        f"the probe carries no measurable signal in this domain (AUROC {before:.2f} "
        f"[{summary['auroc_low']:.2f}, {summary['auroc_high']:.2f}] on 100 answers); "
        "recalibration fixes the base rate, not the ranking: label more answers of this "
        "domain, or fit a probe on them (perturbprobe fit)"
    )
    assert message == expected == summary["warning"]
    assert "\n" not in message


def test_held_out_answers_keep_their_auroc(bundle):
    """The measured failure: noise in the recalibration answers must not invert the ranking of
    the domain's other answers."""
    domain = anti_correlated(bundle, from_low=12)
    held_out = generated(200, seed=13, prefix="h")
    y, raw = held_out.y, bundle.predict_raw(held_out)
    child = bundle.recalibrate(domain, target_risk=None)
    assert roc_auc_score(y, child.predict_confidence(held_out)) == roc_auc_score(y, raw) > 0.8
    assert "worse than chance" in child.manifest["recalibration"]["warning"]


def test_real_signal_and_a_shifted_base_rate_adapt_the_map(bundle, caplog, tmp_path):
    """Labels that follow the probe's score but at a much lower base rate: the map moves."""
    domain = generated(300, seed=5, shift=0.0, prefix="s")
    raw = bundle.predict_raw(domain)
    rng = np.random.default_rng(6)
    labels = (rng.random(len(raw)) < expit(0.8 * logit(raw) - 3.0)).astype(int)
    domain.features["label"] = pd.array(labels, dtype="Int64")
    calibrate, held_out = domain.subset(np.arange(150)), domain.subset(np.arange(150, 300))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        child = bundle.recalibrate(calibrate, target_risk=None)
    assert recalibration_warnings(caplog) == []
    summary = child.manifest["recalibration"]
    assert 0.5 < summary["auroc_low"] < summary["auroc"] < summary["auroc_high"]
    assert summary["warning"] is None
    rate = calibrate.y.mean()
    assert bundle.predict_confidence(calibrate).mean() > rate + 0.2  # as fitted: far off
    assert child.predict_confidence(calibrate).mean() == pytest.approx(rate, abs=1e-9)
    y = held_out.y
    ece_child = expected_calibration_error(y, child.predict_confidence(held_out))
    ece_parent = expected_calibration_error(y, bundle.predict_confidence(held_out))
    assert ece_child < ece_parent / 2
    child.save(tmp_path / "child")
    loaded = ProbeBundle.load(tmp_path / "child")
    assert loaded.manifest["recalibration"]["auroc"] == summary["auroc"]


def test_a_parent_with_a_decreasing_map_falls_back_to_a_monotone_fit(bundle):
    """A bundle saved before the constraint may hold a negative Platt slope: no prior."""
    old = calibrator_from_dict(
        {"name": "platt", "params": {}, "state": {"coef_": -0.5, "intercept_": 0.0}}
    )
    parent = dataclasses.replace(bundle, calibrator=old)
    domain = anti_correlated(bundle, from_low=10)
    with pytest.warns(PerturbprobeWarning, match="slope is held at 0"):
        child = parent.recalibrate(domain, target_risk=None)
    assert child.calibrator.coef_ == 0.0
    assert "from scratch" in child.manifest["recalibration"]["method"]


@pytest.fixture(scope="module")
def isotonic_bundle(tmp_path_factory):
    fitted = fit_bundle(
        synthetic_featureset(160), probe="logistic", calibrator="isotonic", n_bootstrap=0
    )
    fitted.save(tmp_path_factory.mktemp("isotonic") / "b")
    return fitted


def test_isotonic_parent_keeps_its_shape_under_an_increasing_map(isotonic_bundle, tmp_path):
    domain = anti_correlated(isotonic_bundle, from_low=10)
    child = isotonic_bundle.recalibrate(domain, target_risk=None)
    assert child.calibrator.name == "isotonic"
    np.testing.assert_array_equal(
        child.calibrator.X_thresholds_, isotonic_bundle.calibrator.X_thresholds_
    )
    assert (np.diff(child.calibrator.y_thresholds_) >= 0).all()
    parent = isotonic_bundle.predict_confidence(domain)
    confidence = child.predict_confidence(domain)
    order = np.lexsort((confidence, parent))
    assert (np.diff(confidence[order]) >= 0).all()  # never ranks against the parent
    assert confidence.mean() == pytest.approx(0.15, abs=0.03)
    assert "the parent's isotonic map under Platt" in child.manifest["recalibration"]["method"]
    child.save(tmp_path / "child")  # same calibrator format: it loads
    np.testing.assert_array_equal(
        ProbeBundle.load(tmp_path / "child").predict_confidence(domain), confidence
    )
    # asked for Platt instead: shrunk toward the isotonic map's Platt projection
    platt = isotonic_bundle.recalibrate(domain, calibrator="platt", target_risk=None)
    assert platt.calibrator.coef_ > 0
    assert roc_auc_score(domain.y, platt.predict_confidence(domain)) == roc_auc_score(
        domain.y, isotonic_bundle.predict_raw(domain)
    )


def test_refit_rules_for_the_other_kinds():
    p, y = backwards()
    hot = calibrator_from_dict(
        {"name": "temperature", "params": {}, "state": {"temperature_": 0.5}}
    )
    with pytest.warns(PerturbprobeWarning, match="temperature 100 is at the search bound"):
        free = TemperatureCalibrator().fit(p, y).temperature_
    fitted, method = refit_calibrator("temperature", hot, p, y)
    assert 0.5 < fitted.temperature_ < free
    assert method.startswith("temperature shrunk toward the parent's temperature map")
    platt, _ = refit_calibrator("platt", hot, p, y)  # prior at slope 1/T = 2
    assert platt.coef_ > 0 and platt.transform(p).mean() == pytest.approx(y.mean(), abs=1e-9)
    identity = calibrator_from_dict({"name": "none", "params": {}, "state": {}})
    assert refit_calibrator("platt", identity, p, y)[0].coef_ > 0  # prior at slope 1
    histogram, method = refit_calibrator("histogram", platt, p, y)
    assert histogram.name == "histogram" and method == "histogram fitted from scratch"
    assert refit_calibrator("none", platt, p, y)[0].name == "none"
    with pytest.raises(CalibrationError, match="unknown calibrator 'sigmoid'"):
        refit_calibrator("sigmoid", platt, p, y)
