"""Calibration metrics against hand computations, naive loops and scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from sklearn.calibration import calibration_curve

from perturbprobe.calibration import metrics as M
from perturbprobe.errors import CalibrationError, PerturbprobeWarning

# Float tolerance: our sums run in a different order than the references', so values agree to
# rounding (~1e-15 relative), not bit for bit.
TOL = 1e-12

# A hand example with a tie across classes at 0.8:
#   row   0    1    2    3    4
#   y     1    0    1    1    0
#   p    0.8  0.8  0.6  0.3  0.1
Y_TIE = np.array([1, 0, 1, 1, 0])
P_TIE = np.array([0.8, 0.8, 0.6, 0.3, 0.1])

# A hand example for the binned metrics (3 equal-width bins: [0,1/3), [1/3,2/3), [2/3,1]):
Y_BIN = np.array([1, 0, 1, 1, 0, 1])
P_BIN = np.array([0.1, 0.2, 0.5, 0.6, 0.9, 1.0])


def random_case(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a slightly miscalibrated p; with ties, p takes 21 values off the
    bin edges of 10 bins (sklearn's calibration_curve closes bins on the other side)."""
    rng = np.random.default_rng(seed)
    p = (rng.integers(0, 20, n) + 0.5) / 20 if ties else rng.random(n)
    y = (rng.random(n) < p**1.3).astype(int)
    return y, p


def naive_ece(y, p, n_bins, reduce=sum):
    """ECE / MCE with explicit bins and a Python loop over them."""
    gaps = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i in range(len(p)) if lo <= p[i] < hi or (b == n_bins - 1 and p[i] == 1)]
        if inside:
            acc = sum(y[i] for i in inside) / len(inside)
            conf = sum(p[i] for i in inside) / len(inside)
            gaps.append((len(inside) / len(p), abs(acc - conf)))
    if reduce is sum:
        return sum(weight * gap for weight, gap in gaps)
    return max(gap for _, gap in gaps)


def naive_aurc(y, p):
    """Mean over k of the error rate of the k most confident rows (valid without ties)."""
    order = np.argsort(-p)
    return np.mean([1 - y[order[:k]].mean() for k in range(1, len(y) + 1)])


# ---- hand-computed examples ---------------------------------------------------------------------
def test_accuracy_by_hand():
    y, p = [1, 0, 1, 0, 1], [0.9, 0.6, 0.5, 0.2, 0.4]
    # p >= 0.5 -> predictions 1 1 1 0 0 vs y 1 0 1 0 1: right, wrong, right, right, wrong -> 3/5
    assert M.accuracy_score(y, p) == pytest.approx(0.6)
    # p >= 0.3 -> 1 1 1 0 1: only row 1 is wrong -> 4/5
    assert M.accuracy_score(y, p, threshold=0.3) == pytest.approx(0.8)


def test_binned_metrics_by_hand():
    # bin [0,1/3):   p .1 .2, y 1 0 -> |Σy − Σp| = |1 − 0.3| = 0.7, gap 0.35
    # bin [1/3,2/3): p .5 .6, y 1 1 -> |2 − 1.1| = 0.9, gap 0.45
    # bin [2/3,1]:   p .9 1., y 0 1 -> |1 − 1.9| = 0.9, gap 0.45 (1.0 lands in the closed last bin)
    assert M.expected_calibration_error(Y_BIN, P_BIN, n_bins=3) == pytest.approx(2.5 / 6)
    assert M.maximum_calibration_error(Y_BIN, P_BIN, n_bins=3) == pytest.approx(0.45)
    # equal mass, 2 bins of 3 sorted rows: (.1 .2 .5 | y 1 0 1) -> |2 − 0.8| = 1.2;
    # (.6 .9 1. | y 1 0 1) -> |2 − 2.5| = 0.5; ACE = 1.7 / 6
    assert M.adaptive_calibration_error(Y_BIN, P_BIN, n_bins=2) == pytest.approx(1.7 / 6)
    bins = M.reliability_bins(Y_BIN, P_BIN, n_bins=3)
    np.testing.assert_allclose(bins.lower, [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(bins.upper, [1 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(bins.count, [2, 2, 2])
    np.testing.assert_allclose(bins.mean_confidence, [0.15, 0.55, 0.95])
    np.testing.assert_allclose(bins.accuracy, [0.5, 1.0, 0.5])


def test_quantile_bins_by_hand():
    # 6 rows into 4 bins, sized like np.array_split: 2, 2, 1, 1
    bins = M.reliability_bins(Y_BIN, P_BIN, n_bins=4, strategy="quantile")
    np.testing.assert_array_equal(bins.count, [2, 2, 1, 1])
    np.testing.assert_allclose(bins.lower, [0.1, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(bins.upper, [0.2, 0.6, 0.9, 1.0])
    np.testing.assert_allclose(bins.accuracy, [0.5, 1.0, 0.0, 1.0])
    # more bins than rows: the last bins are empty (nan), as np.array_split leaves them
    few = M.reliability_bins([1, 0], [0.3, 0.7], n_bins=3, strategy="quantile")
    np.testing.assert_array_equal(few.count, [1, 1, 0])
    assert np.isnan(few.lower[2]) and np.isnan(few.accuracy[2])
    np.testing.assert_allclose(few.mean_confidence[:2], [0.3, 0.7])


def test_empty_uniform_bins_are_nan_and_skipped_by_mce():
    bins = M.reliability_bins([1, 0], [0.05, 0.95], n_bins=4)
    np.testing.assert_array_equal(bins.count, [1, 0, 0, 1])
    assert np.isnan(bins.accuracy[1:3]).all() and np.isnan(bins.mean_confidence[1:3]).all()
    # gaps: |1 − .05| = .95 and |0 − .95| = .95
    assert M.maximum_calibration_error([1, 0], [0.05, 0.95], n_bins=4) == pytest.approx(0.95)


def test_proper_scores_by_hand():
    # ((1 − .8)² + (0 − .4)²) / 2 = (.04 + .16) / 2
    assert M.brier_score_loss([1, 0], [0.8, 0.4]) == pytest.approx(0.1)
    # −(ln .5 + ln .75 + ln(1 − eps)) / 3: p = 1 is clipped to 1 − eps
    eps = np.finfo(np.float64).eps
    expected = -(math.log(0.5) + math.log(0.75) + math.log(1 - eps)) / 3
    assert M.log_loss([1, 0, 1], [0.5, 0.25, 1.0]) == pytest.approx(expected, rel=TOL)
    # a confident mistake costs −ln(eps) ≈ 36.04, not inf
    assert M.log_loss([1], [0.0]) == pytest.approx(-math.log(eps))


def test_ranking_metrics_by_hand_with_ties():
    # positives .8 .6 .3 vs negatives .8 .1: pairs (.8,.8)=½ (.8,.1)=1 (.6,.8)=0 (.6,.1)=1
    # (.3,.8)=0 (.3,.1)=1 -> 3.5 / 6
    assert M.roc_auc_score(Y_TIE, P_TIE) == pytest.approx(3.5 / 6)
    # high to low: {.8: y 1,0} precision 1/2; .6: 2/3; .3: 3/4; each positive counts its
    # group's precision -> (1/2 + 2/3 + 3/4) / 3
    assert M.average_precision_score(Y_TIE, P_TIE) == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)
    # errors by low p: .1 (error) precision 1; .3; .6; {.8: y 1,0} 2 errors of 5 -> (1 + 2/5) / 2
    ap_incorrect = M.average_precision_score(Y_TIE, P_TIE, positive="incorrect")
    assert ap_incorrect == pytest.approx(0.7)


def test_risk_coverage_and_aurc_by_hand():
    # thresholds .8 (keep 2, 1 error), .6 (3, 1), .3 (4, 1), .1 (5, 2)
    curve = M.risk_coverage_curve(Y_TIE, P_TIE)
    np.testing.assert_allclose(curve.thresholds, [0.8, 0.6, 0.3, 0.1])
    np.testing.assert_allclose(curve.coverage, [0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.risk, [1 / 2, 1 / 3, 1 / 4, 2 / 5])
    # Σ Δcoverage · risk = .4·½ + .2·⅓ + .2·¼ + .2·⅖
    expected = 0.4 * 0.5 + 0.2 / 3 + 0.2 * 0.25 + 0.2 * 0.4
    assert M.aurc(Y_TIE, P_TIE) == pytest.approx(expected)


def test_selective_accuracy_by_hand_and_ties():
    # coverage .4 -> ceil(2) = 2 rows: rows 0, 1 (stable among the tied .8) -> 1/2
    assert M.selective_accuracy(Y_TIE, P_TIE, 0.4) == pytest.approx(0.5)
    # coverage .5 -> ceil(2.5) = 3 rows: rows 0, 1, 2 -> 2/3
    assert M.selective_accuracy(Y_TIE, P_TIE, 0.5) == pytest.approx(2 / 3)
    # ties at the cut are broken by row order: swap the tied rows and the kept one changes
    assert M.selective_accuracy([1, 0], [0.8, 0.8], 0.5) == 1.0
    assert M.selective_accuracy([0, 1], [0.8, 0.8], 0.5) == 0.0
    # 0.7 · 10 is 7.000000000000001 in floating point; it still keeps 7 rows, not 8
    y = np.array([1] * 7 + [0] * 3)
    assert M.selective_accuracy(y, np.linspace(1, 0, 10), 0.7) == 1.0


# ---- against scikit-learn and naive loops on random data ------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_ranking_and_proper_scores_match_sklearn(ties):
    y, p = random_case(500, seed=1, ties=ties)
    p[:3] = [0.0, 1.0, 1.0]  # exercise log_loss clipping
    assert M.roc_auc_score(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=TOL)
    assert M.average_precision_score(y, p) == pytest.approx(
        skm.average_precision_score(y, p), abs=TOL
    )
    assert M.average_precision_score(y, p, positive="incorrect") == pytest.approx(
        skm.average_precision_score(1 - y, 1 - p), abs=TOL
    )
    assert M.brier_score_loss(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=TOL)
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=TOL)
    assert M.accuracy_score(y, p) == pytest.approx(skm.accuracy_score(y, p >= 0.5))


@pytest.mark.parametrize("ties", [False, True])
def test_bin_accuracy_matches_sklearn_calibration_curve(ties):
    y, p = random_case(400, seed=2, ties=ties)
    bins = M.reliability_bins(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    filled = bins.count > 0
    np.testing.assert_allclose(bins.accuracy[filled], prob_true, atol=TOL)
    np.testing.assert_allclose(bins.mean_confidence[filled], prob_pred, atol=TOL)


@pytest.mark.parametrize("n_bins", [1, 7, 15])
def test_ece_and_mce_match_naive_loop(n_bins):
    y, p = random_case(300, seed=3, ties=False)
    assert M.expected_calibration_error(y, p, n_bins) == pytest.approx(
        naive_ece(y, p, n_bins), abs=TOL
    )
    assert M.maximum_calibration_error(y, p, n_bins) == pytest.approx(
        naive_ece(y, p, n_bins, reduce=max), abs=TOL
    )


def test_adaptive_ece_matches_array_split():
    y, p = random_case(103, seed=4, ties=True)
    order = np.argsort(p, kind="stable")
    expected = sum(abs(y[g].sum() - p[g].sum()) for g in np.array_split(order, 10)) / len(y)
    assert M.adaptive_calibration_error(y, p, n_bins=10) == pytest.approx(expected, abs=TOL)


def test_aurc_matches_top_k_mean_and_curve_area():
    y, p = random_case(200, seed=5, ties=False)
    assert M.aurc(y, p) == pytest.approx(naive_aurc(y, p), abs=TOL)
    y, p = random_case(200, seed=5, ties=True)
    curve = M.risk_coverage_curve(y, p)
    # brute force: for each distinct threshold, the rows kept and their error rate
    for t, cov, risk in zip(curve.thresholds, curve.coverage, curve.risk, strict=True):
        kept = p >= t
        assert cov == pytest.approx(kept.mean()) and risk == pytest.approx(1 - y[kept].mean())
    np.testing.assert_array_equal(curve.thresholds, np.unique(p)[::-1])
    area = np.sum(np.diff(curve.coverage, prepend=0.0) * curve.risk)
    assert M.aurc(y, p) == pytest.approx(area, abs=TOL)


def test_selective_accuracy_matches_stable_sort():
    y, p = random_case(101, seed=6, ties=True)
    order = np.argsort(-p, kind="stable")
    for coverage in (0.01, 0.5, 0.8, 1.0):
        k = math.ceil(coverage * 101)
        assert M.selective_accuracy(y, p, coverage) == pytest.approx(y[order[:k]].mean())


def test_one_class_ranking_metrics_warn_and_return_nan():
    with pytest.warns(PerturbprobeWarning, match="roc_auc_score undefined: every row"):
        assert math.isnan(M.roc_auc_score([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(PerturbprobeWarning, match="one class"):
        assert math.isnan(M.average_precision_score([0, 0], [0.2, 0.5]))
    with pytest.warns(PerturbprobeWarning, match="positive='incorrect'"):
        assert math.isnan(M.average_precision_score([1, 1], [0.2, 0.5], positive="incorrect"))


# ---- the bootstrap ----------------------------------------------------------------------------
def test_metrics_registry_names_and_directions():
    assert list(M.METRICS) == [
        "accuracy", "ece", "adaptive_ece", "mce", "brier", "nll", "auroc", "auprc_correct",
        "auprc_incorrect", "aurc", "selective_accuracy@50", "selective_accuracy@80",
        "selective_accuracy@90",
    ]  # fmt: skip
    lower_better = {name for name, info in M.METRICS.items() if not info.higher_is_better}
    assert lower_better == {"ece", "adaptive_ece", "mce", "brier", "nll", "aurc"}
    y, p = random_case(50, seed=7, ties=True)
    result = M.evaluate_confidence(y, p, n_bootstrap=0, n_bins=7)
    # the point estimates are the registry's functions on the full data
    for name, info in M.METRICS.items():
        kwargs = {"n_bins": 7} if name in ("ece", "adaptive_ece", "mce") else {}
        assert result[name].value == pytest.approx(info.function(y, p, **kwargs), abs=TOL)
        assert math.isnan(result[name].low) and math.isnan(result[name].high)


def test_bootstrap_matches_per_resample_reference():
    # Few negatives, so some resamples hold one class: those are skipped for the ranking metrics.
    rng = np.random.default_rng(8)
    p = rng.random(25)
    y = np.ones(25, dtype=int)
    y[[3, 11]] = 0
    n_bootstrap = 60
    result = M.evaluate_confidence(y, p, n_bootstrap=n_bootstrap, random_state=4)
    rows = np.random.default_rng(4).integers(0, 25, size=(n_bootstrap, 25))
    reference = {
        "auroc": lambda yy, pp: skm.roc_auc_score(yy, pp),
        "auprc_incorrect": lambda yy, pp: skm.average_precision_score(1 - yy, 1 - pp),
        "brier": skm.brier_score_loss,
        "ece": lambda yy, pp: naive_ece(yy, pp, 15),
        "aurc": M.aurc,
    }
    for name, function in reference.items():
        ranking = name.startswith("au") and name != "aurc"
        draws = [function(y[r], p[r]) for r in rows if not ranking or 0 < y[r].sum() < 25]
        assert len(draws) < n_bootstrap if ranking else len(draws) == n_bootstrap
        low, high = np.quantile(draws, [0.025, 0.975])
        assert (result[name].low, result[name].high) == pytest.approx((low, high), abs=TOL)


def test_bootstrap_intervals_contain_point_and_are_seeded():
    y, p = random_case(400, seed=9, ties=False)
    a = M.evaluate_confidence(y, p, n_bootstrap=200, random_state=1)
    for name, mv in a.items():
        # mce, a maximum over noisy bins, is biased upward in resamples: its percentile
        # interval may sit above the point estimate (documented in evaluate_confidence)
        assert name == "mce" or mv.low <= mv.value <= mv.high, name
        assert mv.low < mv.high, name
    assert M.evaluate_confidence(y, p, n_bootstrap=200, random_state=1) == a
    assert M.evaluate_confidence(y, p, n_bootstrap=200, random_state=2) != a
    narrow = M.evaluate_confidence(y, p, n_bootstrap=200, random_state=1, confidence_level=0.5)
    assert narrow["auroc"].high - narrow["auroc"].low < a["auroc"].high - a["auroc"].low


def test_bootstrap_is_paired_across_scores():
    # p² ranks the rows exactly like p: with paired resamples every ranking metric has the same
    # bootstrap distribution, so identical intervals; unpaired (another seed) it would not.
    y, p = random_case(150, seed=10, ties=False)
    ranking = ["auroc", "auprc_correct", "auprc_incorrect", "aurc", "selective_accuracy@80"]
    first = M.evaluate_confidence(y, p, n_bootstrap=100, random_state=3)
    second = M.evaluate_confidence(y, p**2, n_bootstrap=100, random_state=3)
    other = M.evaluate_confidence(y, p**2, n_bootstrap=100, random_state=4)
    for name in ranking:
        assert second[name].low == pytest.approx(first[name].low, abs=TOL)
        assert second[name].high == pytest.approx(first[name].high, abs=TOL)
    assert any(other[name].low != first[name].low for name in ranking)


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    y, p = random_case(40, seed=11, ties=True)
    whole = M.evaluate_confidence(y, p, n_bootstrap=30)
    monkeypatch.setattr(M, "_CHUNK_CELLS", 40 * 7)  # chunks of 7 resamples
    assert M.evaluate_confidence(y, p, n_bootstrap=30) == whole


def test_one_class_evaluation_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = M.evaluate_confidence([1, 1, 1, 1], [0.2, 0.4, 0.6, 0.9], n_bootstrap=50)
    assert [str(w.message) for w in caught] == [
        "auroc, auprc_correct, auprc_incorrect undefined: every row of y is correct "
        "(one class); returning nan"
    ]
    assert math.isnan(result["auroc"].value) and math.isnan(result["auroc"].low)
    assert result["brier"].value == pytest.approx((0.64 + 0.36 + 0.16 + 0.01) / 4)


def test_one_class_resamples_do_not_warn():
    y = np.array([1] * 19 + [0])  # about a third of the resamples miss the one error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = M.evaluate_confidence(y, np.linspace(0.9, 0.1, 20), n_bootstrap=100)
    assert math.isfinite(result["auroc"].low)


# ---- results, tables, errors ------------------------------------------------------------------
def test_metric_value_dict_round_trip_and_text():
    mv = M.MetricValue(0.8124, 0.78, 0.84)
    assert mv.to_dict() == {"value": 0.8124, "low": 0.78, "high": 0.84}
    assert M.MetricValue.from_dict(mv.to_dict()) == mv
    bare = M.MetricValue(0.5)
    assert bare.to_dict() == {"value": 0.5, "low": None, "high": None}
    restored = M.MetricValue.from_dict(bare.to_dict())
    assert restored.value == 0.5 and math.isnan(restored.low)
    assert mv.to_string() == "0.812 [0.780, 0.840]"
    assert bare.to_string(2) == "0.50"
    assert M.MetricValue(math.nan).to_string() == "n/a"


def test_metrics_table_formatted_and_numeric():
    results = {
        "probe": {"auroc": M.MetricValue(0.9, 0.85, 0.95), "ece": M.MetricValue(0.03)},
        "baseline: mean token prob": {"auroc": M.MetricValue(0.7, 0.6, 0.8)},
    }
    table = M.metrics_table(results)
    assert list(table.columns) == ["ece", "auroc"]  # METRICS order
    assert table.index.name == "score"
    assert table.loc["probe", "auroc"] == "0.900 [0.850, 0.950]"
    assert table.loc["baseline: mean token prob", "ece"] == "n/a"
    numeric = M.metrics_table(results, ["auroc"], formatted=False)
    assert numeric["auroc"].tolist() == [0.9, 0.7]
    with pytest.raises(CalibrationError, match=r"unknown metric\(s\) \['nll'\]"):
        M.metrics_table(results, ["nll"])


def test_result_types_check_shapes():
    with pytest.raises(ValueError, match="RiskCoverage arrays must be 1-D of one length"):
        M.RiskCoverage(np.zeros(2), np.zeros(3), np.zeros(2))


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([[1, 0]], [[0.5, 0.5]], r"y must be a 1-D array, got shape \(1, 2\)"),
        (["a", "b"], [0.5, 0.5], "y must be numeric"),
        ([1, 0], [0.5], "same length, got 2 and 1"),
        ([], [], "y and p are empty"),
        ([1, 2, 0], [0.5, 0.5, 0.5], r"y must hold only 1 \(correct\) and 0 .* got 2 in 1 of 3"),
        ([1, 0], [0.5, 1.5], r"p must be probabilities in \[0, 1\]; got 1.5"),
        ([1, 0], [0.5, np.nan], "got nan in 1 of 2 rows"),
        ([1, np.nan], [0.5, 0.5], "y must hold only"),
    ],
)
def test_invalid_inputs_raise(y, p, message):
    with pytest.raises(CalibrationError, match=message):
        M.brier_score_loss(y, p)
    with pytest.raises(CalibrationError, match=message):
        M.evaluate_confidence(y, p, n_bootstrap=0)


def test_invalid_options_raise():
    y, p = [1, 0], [0.7, 0.2]
    with pytest.raises(CalibrationError, match="n_bins must be a positive integer, got 0"):
        M.expected_calibration_error(y, p, n_bins=0)
    with pytest.raises(CalibrationError, match=r"n_bins must be a positive integer, got 2\.5"):
        M.reliability_bins(y, p, n_bins=2.5)
    with pytest.raises(CalibrationError, match="strategy must be one of"):
        M.reliability_bins(y, p, strategy="kmeans")
    with pytest.raises(CalibrationError, match="positive must be one of"):
        M.average_precision_score(y, p, positive=1)
    with pytest.raises(CalibrationError, match=r"coverage must be in \(0, 1\], got 0"):
        M.selective_accuracy(y, p, 0)
    with pytest.raises(CalibrationError, match=r"coverage must be in \(0, 1\], got 1.5"):
        M.selective_accuracy(y, p, 1.5)
    with pytest.raises(CalibrationError, match="threshold must be a finite number"):
        M.accuracy_score(y, p, threshold=math.nan)
    with pytest.raises(CalibrationError, match="n_bootstrap must be a non-negative integer"):
        M.evaluate_confidence(y, p, n_bootstrap=-1)
    with pytest.raises(CalibrationError, match=r"confidence_level must be in \(0, 1\)"):
        M.evaluate_confidence(y, p, confidence_level=1.0)
    with pytest.raises(CalibrationError, match="random_state must be an int or None"):
        M.evaluate_confidence(y, p, random_state="seed")
