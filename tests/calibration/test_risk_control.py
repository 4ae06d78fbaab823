"""Risk-controlled abstention: the Clopper–Pearson bound against scipy and a brute-force root
find, fixed-sequence testing against a naive loop and hand-made cases, and a simulation of the
guarantee P(selective risk ≤ r) ≥ 1 − δ on a population whose true risk is known exactly."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from perturbprobe.calibration.risk_control import (
    RiskControlledThreshold,
    clopper_pearson_upper,
    risk_controlled_threshold,
    threshold_candidates,
)
from perturbprobe.errors import CalibrationError, PerturbprobeWarning

CASES = [(0, 1), (0, 22), (1, 10), (3, 50), (7, 40), (40, 200), (99, 100)]


# --------------------------------------------------------------------------- Clopper–Pearson
@pytest.mark.parametrize("delta", [0.05, 0.1, 0.3])
def test_clopper_pearson_matches_scipy_binomtest(delta):
    # the two-sided exact interval at level 1 − 2δ has the one-sided 1 − δ upper bound as its top
    for errors, n in CASES:
        expected = binomtest(errors, n).proportion_ci(1 - 2 * delta, method="exact").high
        assert clopper_pearson_upper(errors, n, delta) == pytest.approx(expected, rel=1e-9)


def binomial_cdf(k: int, n: int, q: float) -> float:
    return sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k + 1))


def brute_force_upper(errors: int, n: int, delta: float) -> float:
    """The q solving P(Binomial(n, q) ≤ errors) = δ, by bisection (the cdf falls in q)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if binomial_cdf(errors, n, mid) > delta else (low, mid)
    return (low + high) / 2


def test_clopper_pearson_matches_brute_force_root():
    for errors, n in CASES[:-1]:
        # bisection to 2^-60, cdf summed in float64: agreement to 1e-9
        expected = brute_force_upper(errors, n, 0.1)
        assert clopper_pearson_upper(errors, n, 0.1) == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_special_cases_and_vectorisation():
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0
    assert clopper_pearson_upper(0, 0, 0.1) == 1.0
    # zero errors: U = 1 − δ^(1/n)
    assert clopper_pearson_upper(0, 22, 0.1) == pytest.approx(1 - 0.1 ** (1 / 22), rel=1e-12)
    assert isinstance(clopper_pearson_upper(1, 10, 0.1), float)
    errors = np.array([[0, 1, 3], [2, 5, 0]])
    n = np.array([5, 5, 9])
    bound = clopper_pearson_upper(errors, n, 0.2)
    assert bound.shape == (2, 3)
    expected = [
        [clopper_pearson_upper(int(e), int(m), 0.2) for e, m in zip(row, n, strict=True)]
        for row in errors
    ]
    np.testing.assert_array_equal(bound, expected)


@pytest.mark.parametrize(
    ("errors", "n", "delta", "message"),
    [
        (-1, 5, 0.1, "errors must be non-negative integers"),
        (1.5, 5, 0.1, "errors must be non-negative integers"),
        (1, [4, -1], 0.1, "n must be non-negative integers"),
        (6, 5, 0.1, "errors must not exceed n"),
        (1, 5, 0.0, "delta must be a number strictly between 0 and 1; got 0.0"),
        (1, 5, 1, "delta must be a number strictly between 0 and 1"),
    ],
)
def test_clopper_pearson_errors(errors, n, delta, message):
    with pytest.raises(CalibrationError, match=message):
        clopper_pearson_upper(errors, n, delta)


# --------------------------------------------------------------------------- fixed sequence
def naive_threshold(confidence, correct, target_risk, delta, candidates):
    """Fixed-sequence testing written as a plain loop over candidates."""
    last = None
    for lam in candidates:
        kept = [y for c, y in zip(confidence, correct, strict=True) if c >= lam]
        errors = sum(1 for y in kept if y == 0)
        upper = 1.0 if errors == len(kept) else beta.ppf(1 - delta, errors + 1, len(kept) - errors)
        if upper > target_risk:
            break
        last = (float(lam), len(kept), errors, float(upper))
    return last


def test_hand_made_example():
    confidence = np.repeat([0.95, 0.85, 0.75], 40)
    correct = np.r_[np.ones(80, int), np.arange(40) % 2]  # 20 errors, all at 0.75
    result = risk_controlled_threshold(
        confidence, correct, target_risk=0.1, delta=0.1, candidates=[0.9, 0.8, 0.7, 0.6]
    )
    assert result.threshold == 0.8
    assert result.coverage == pytest.approx(80 / 120)
    assert result.selective_risk == 0.0
    assert result.risk_upper_bound == pytest.approx(1 - 0.1 ** (1 / 80))
    assert result.n == 120
    assert result.n_candidates_tested == 3  # 0.9 and 0.8 pass, 0.7 fails, 0.6 is never tested
    np.testing.assert_array_equal(result.abstain([0.79, 0.8, 0.81]), [True, False, False])
    assert result.abstain(np.array([])).dtype == bool


def test_sequence_stops_at_first_failure_even_if_later_candidates_pass():
    confidence = np.r_[np.full(5, 0.95), np.full(200, 0.85)]
    correct = np.r_[[0, 0, 1, 1, 1], np.ones(200, int)]  # 2 errors in the top 5, none below
    with pytest.warns(PerturbprobeWarning, match="no threshold certifies.*keeps 5 rows with 2"):
        stopped = risk_controlled_threshold(
            confidence, correct, target_risk=0.1, candidates=[0.9, 0.8]
        )
    assert stopped.threshold is None and stopped.n_candidates_tested == 1
    assert stopped.coverage == 0 and math.isnan(stopped.selective_risk)
    assert stopped.risk_upper_bound == 1.0
    assert stopped.abstain([0.99, 0.5]).all()
    assert stopped.abstain([]).shape == (0,)
    # 0.8 alone is certified (205 rows, 2 errors): only the order stopped it above
    assert risk_controlled_threshold(
        confidence, correct, target_risk=0.1, candidates=[0.8]
    ).threshold == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    confidence = np.round(rng.beta(5, 1, n), 2)  # ties included
    correct = (rng.random(n) < confidence).astype(int)
    target_risk, delta = float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.05, 0.2))
    candidates = np.sort(rng.choice(np.linspace(0, 1, 201), 60, replace=False))[::-1]
    expected = naive_threshold(confidence, correct, target_risk, delta, candidates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerturbprobeWarning)
        result = risk_controlled_threshold(
            confidence, correct, target_risk=target_risk, delta=delta, candidates=candidates
        )
    if expected is None:
        assert result.threshold is None
        return
    lam, kept, errors, upper = expected
    assert result.threshold == lam
    assert result.coverage == pytest.approx(kept / n)
    assert result.selective_risk == pytest.approx(errors / kept)
    assert result.risk_upper_bound == pytest.approx(upper, rel=1e-12)


def test_default_candidates_are_the_fixed_grid():
    rng = np.random.default_rng(7)
    exact = rng.beta(5, 1, 2000)
    correct = (rng.random(2000) < exact).astype(int)
    confidence = np.round(exact, 2)  # about 50 rows at exactly 1.0, nearly all correct
    default = risk_controlled_threshold(confidence, correct, target_risk=0.1)
    explicit = risk_controlled_threshold(
        confidence, correct, target_risk=0.1, candidates=np.linspace(1, 0, 101)
    )
    assert default == explicit
    assert default.delta == 0.1 and default.threshold is not None and default.coverage > 0.5
    # the grid's first threshold is 1.0: if no confidence reaches it, the sequence stops at once
    with pytest.warns(PerturbprobeWarning, match="first candidate 1 keeps 0 rows"):
        none = risk_controlled_threshold(exact, correct, target_risk=0.1)
    assert none.threshold is None and none.n_candidates_tested == 1


# --------------------------------------------------------------------------- candidates
def test_threshold_candidates_from_reference_quantiles():
    rng = np.random.default_rng(0)
    reference = rng.beta(5, 1, 300)
    # r = δ = 0.1: 0.9^21 = 0.109 > 0.1 ≥ 0.9^22 = 0.098, so n_min = 22; c0 = 2·22 / 400 = 0.11
    candidates = threshold_candidates(
        reference, n_test=400, target_risk=0.1, delta=0.1, start_factor=2
    )
    coverages = [0.11 + 0.01 * k for k in range(89)] + [1.0]
    expected = sorted({float(np.quantile(reference, 1 - c)) for c in coverages}, reverse=True)
    np.testing.assert_allclose(candidates, expected, atol=1e-12)
    assert (np.diff(candidates) < 0).all()
    kept_at_first = np.mean(reference >= candidates[0])
    assert kept_at_first == pytest.approx(0.11, abs=0.01)
    # the default start_factor 5: c0 = 5·22 / 400 = 0.275
    default = threshold_candidates(reference, n_test=400, target_risk=0.1, delta=0.1)
    assert np.mean(reference >= default[0]) == pytest.approx(0.275, abs=0.01)


def test_threshold_candidates_start_and_cap():
    reference = np.linspace(0, 1, 101)
    # 2·n_min / n_test below step: start at step
    wide = threshold_candidates(reference, n_test=10_000, target_risk=0.1, delta=0.1, step=0.25)
    np.testing.assert_allclose(wide, [0.75, 0.5, 0.25, 0.0])
    # too few test rows for anything but full coverage: one candidate, the reference minimum
    tiny = threshold_candidates(reference, n_test=30, target_risk=0.1, delta=0.1)
    np.testing.assert_array_equal(tiny, [0.0])


def test_reference_candidates_keep_more_than_the_default_grid():
    rng = np.random.default_rng(11)
    reference, confidence = rng.beta(5, 1, 500), rng.beta(5, 1, 500)
    correct = (rng.random(500) < confidence).astype(int)
    candidates = threshold_candidates(reference, n_test=500, target_risk=0.1, delta=0.1)
    tuned = risk_controlled_threshold(
        confidence, correct, target_risk=0.1, delta=0.1, candidates=candidates
    )
    assert tuned.threshold is not None and tuned.coverage > 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_test": 0}, "n_test must be a positive integer; got 0"),
        ({"n_test": 10.0}, "n_test must be a positive integer"),
        ({"step": 0}, r"step must be a number in \(0, 1\]; got 0"),
        ({"step": 1.5}, r"step must be a number in \(0, 1\]"),
        ({"start_factor": 0}, "start_factor must be a positive number; got 0"),
        ({"start_factor": "5"}, "start_factor must be a positive number; got '5'"),
        ({"target_risk": 1.0}, "target_risk must be a number strictly between 0 and 1"),
        ({"delta": -0.1}, "delta must be a number strictly between 0 and 1"),
        ({"reference_confidence": [0.5, 1.2]}, r"reference_confidence must lie in \[0, 1\]"),
        ({"reference_confidence": []}, "reference_confidence is empty"),
    ],
)
def test_threshold_candidates_errors(kwargs, message):
    args = {"n_test": 100, "target_risk": 0.1, "delta": 0.1} | kwargs
    reference = args.pop("reference_confidence", [0.2, 0.9])
    with pytest.raises(CalibrationError, match=message):
        threshold_candidates(reference, **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_risk": 0}, "target_risk must be a number strictly between 0 and 1; got 0"),
        ({"target_risk": True}, "target_risk must be a number strictly between 0 and 1"),
        ({"delta": 1.5}, "delta must be a number strictly between 0 and 1; got 1.5"),
        ({"candidates": [0.5, 0.7]}, "candidates must be strictly decreasing"),
        ({"candidates": [0.5, 0.5]}, "candidates must be strictly decreasing"),
        ({"candidates": [1.5, 0.5]}, r"candidates must lie in \[0, 1\]"),
        ({"candidates": []}, "candidates is empty"),
        ({"confidence": [0.5, np.nan, 0.2]}, "confidence must be finite"),
        ({"correct": [1, 0]}, "confidence and correct must have the same length; got 3 and 2"),
        ({"correct": [1, 0, 3]}, r"correct must hold only 0 \(incorrect\) and 1 \(correct\)"),
    ],
)
def test_risk_controlled_threshold_errors(kwargs, message):
    args = {"confidence": [0.9, 0.8, 0.2], "correct": [1, 1, 0], "target_risk": 0.1} | kwargs
    with pytest.raises(CalibrationError, match=message):
        risk_controlled_threshold(args.pop("confidence"), args.pop("correct"), **args)


# --------------------------------------------------------------------------- result object
def _results() -> list[RiskControlledThreshold]:
    confidence = np.repeat([0.95, 0.85, 0.75], 40)
    correct = np.r_[np.ones(80, int), np.arange(40) % 2]
    candidates = [0.9, 0.8, 0.7]
    certified = risk_controlled_threshold(
        confidence, correct, target_risk=0.1, candidates=candidates
    )
    with pytest.warns(PerturbprobeWarning, match="keeps 10 rows with 0 errors"):
        empty = risk_controlled_threshold(
            confidence[:10], correct[:10], target_risk=0.1, candidates=candidates
        )
    assert certified.threshold == 0.8 and empty.threshold is None
    return [certified, empty]


def test_result_dict_round_trip_through_json():
    for result in _results():
        text = json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no NaN
        loaded = RiskControlledThreshold.from_dict(json.loads(text))
        assert loaded.to_dict() == result.to_dict()
        np.testing.assert_array_equal(
            loaded.abstain(np.linspace(0, 1, 21)), result.abstain(np.linspace(0, 1, 21))
        )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: [d], "a risk-controlled threshold dict must be a mapping"),
        (lambda d: {k: v for k, v in d.items() if k != "delta"}, "must have exactly the keys"),
        (lambda d: {**d, "extra": 1}, "got coverage, delta, extra"),
        (lambda d: {**d, "coverage": 1.5}, r"coverage must be a number in \[0, 1\]; got 1.5"),
        (lambda d: {**d, "threshold": "0.8"}, r"threshold must be a number in \[0, 1\]"),
        (lambda d: {**d, "selective_risk": None}, r"selective_risk must be a number in \[0, 1\]"),
        (lambda d: {**d, "threshold": None}, "selective_risk must be NaN \\(null\\) without"),
        (lambda d: {**d, "n": 0}, "n must be a positive integer; got 0"),
        (lambda d: {**d, "n_candidates_tested": True}, "n_candidates_tested must be a positive"),
        (lambda d: {**d, "delta": 1}, "delta must be a number strictly between 0 and 1"),
        (lambda d: {**d, "risk_upper_bound": 0.5}, "exceeds target_risk 0.1, so the threshold"),
        (
            lambda d: {**d, "threshold": None, "selective_risk": None},
            "coverage must be 0 without a threshold",
        ),
    ],
)
def test_corrupt_result_dicts_raise(edit, message):
    with pytest.raises(CalibrationError, match=message):
        RiskControlledThreshold.from_dict(edit(_results()[0].to_dict()))


def test_abstain_validates_input():
    with pytest.raises(CalibrationError, match=r"confidence must lie in \[0, 1\]"):
        _results()[0].abstain([2.0])


# --------------------------------------------------------------------------- the guarantee
def test_simulated_risk_is_controlled_and_not_vacuous():
    """P(correct | c) = c with c ~ Beta(5, 1), so the true selective risk at λ is exact:
    E[(1 − c) 1{c ≥ λ}] / P(c ≥ λ) = b/(a+b) · sf_Beta(a, b+1)(λ) / sf_Beta(a, b)(λ).
    Over independent draws of reference + test rows, the violation rate must stay ≤ δ
    (plus 3 binomial standard errors of the estimate), and most draws must keep > 30 %."""
    a, b, n, draws, target_risk, delta = 5.0, 1.0, 500, 400, 0.1, 0.1
    rng = np.random.default_rng(2024)
    reference = rng.beta(a, b, (draws, n))
    confidence = rng.beta(a, b, (draws, n))
    correct = (rng.random((draws, n)) < confidence).astype(int)
    thresholds, coverages = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerturbprobeWarning)  # a few draws certify nothing
        for i in range(draws):
            candidates = threshold_candidates(
                reference[i], n_test=n, target_risk=target_risk, delta=delta
            )
            result = risk_controlled_threshold(
                confidence[i],
                correct[i],
                target_risk=target_risk,
                delta=delta,
                candidates=candidates,
            )
            thresholds.append(np.nan if result.threshold is None else result.threshold)
            coverages.append(result.coverage)
    lam = np.array(thresholds)
    chosen = ~np.isnan(lam)
    true_risk = b / (a + b) * beta.sf(lam[chosen], a, b + 1) / beta.sf(lam[chosen], a, b)
    violation_rate = np.sum(true_risk > target_risk) / draws
    assert violation_rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    assert np.mean(np.array(coverages) > 0.3) > 0.7
