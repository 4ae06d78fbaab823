"""Known-prior correction: against Bayes' rule with explicit class-conditional densities, the
identity and composition laws, monotonicity, edge values, bad inputs, and a simulation where
the base rate changes from 0.5 to 0.15 by resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from perturbprobe.calibration import adjust_to_prior
from perturbprobe.calibration.metrics import expected_calibration_error
from perturbprobe.errors import CalibrationError

# score | correct ~ N(1, 1), score | incorrect ~ N(-0.5, 1.5): unequal variances, so the
# posterior is not a logistic function of the score and nothing below is circular
CORRECT, INCORRECT = norm(1.0, 1.0), norm(-0.5, 1.5)


def posterior(score: np.ndarray, rate: float) -> np.ndarray:
    """P(correct | score) by Bayes' rule at base rate ``rate``, from the two densities."""
    joint_correct = rate * CORRECT.pdf(score)
    return joint_correct / (joint_correct + (1 - rate) * INCORRECT.pdf(score))


SCORES = np.linspace(-4, 4, 81)


@pytest.mark.parametrize(("source", "target"), [(0.5, 0.15), (0.15, 0.5), (0.7, 0.9), (0.3, 0.3)])
def test_matches_bayes_rule_with_explicit_densities(source, target):
    adjusted = adjust_to_prior(posterior(SCORES, source), source_rate=source, target_rate=target)
    np.testing.assert_allclose(adjusted, posterior(SCORES, target), rtol=1e-12, atol=1e-15)


def test_matches_the_ratio_formula():
    p = np.array([0.01, 0.2, 0.5, 0.77, 0.999])
    source, target = 0.62, 0.21
    a, b = target / source, (1 - target) / (1 - source)
    expected = a * p / (a * p + b * (1 - p))
    adjusted = adjust_to_prior(p, source_rate=source, target_rate=target)
    np.testing.assert_allclose(adjusted, expected, rtol=1e-13)


def test_equal_rates_are_the_identity_and_return_a_copy():
    p = np.array([0.0, 1e-300, 0.3, 0.123456789, 1 - 1e-16, 1.0])
    adjusted = adjust_to_prior(p, source_rate=0.4, target_rate=0.4)
    assert np.array_equal(adjusted, p) and adjusted is not p
    adjusted[0] = 0.5
    assert p[0] == 0.0


def test_composition_and_inverse():
    p = np.linspace(0.001, 0.999, 50)
    via = adjust_to_prior(
        adjust_to_prior(p, source_rate=0.5, target_rate=0.8), source_rate=0.8, target_rate=0.1
    )
    np.testing.assert_allclose(via, adjust_to_prior(p, source_rate=0.5, target_rate=0.1), 1e-12)
    back = adjust_to_prior(
        adjust_to_prior(p, source_rate=0.3, target_rate=0.05), source_rate=0.05, target_rate=0.3
    )
    np.testing.assert_allclose(back, p, rtol=1e-12)


def test_monotone_in_confidence_and_in_target_rate():
    p = np.linspace(0.0, 1.0, 1001)
    adjusted = adjust_to_prior(p, source_rate=0.5, target_rate=0.15)
    assert (np.diff(adjusted) > 0).all()
    inner = p[1:-1]
    rates = np.linspace(0.01, 0.99, 50)
    by_rate = np.stack([adjust_to_prior(inner, source_rate=0.5, target_rate=r) for r in rates])
    assert (np.diff(by_rate, axis=0) > 0).all()
    # a lower base rate lowers every confidence strictly inside (0, 1), a higher one raises it
    assert (adjust_to_prior(inner, source_rate=0.5, target_rate=0.15) < inner).all()
    assert (adjust_to_prior(inner, source_rate=0.5, target_rate=0.85) > inner).all()


def test_certain_values_stay_and_extremes_are_finite():
    p = np.array([0.0, 1e-300, 1e-12, 1 - 1e-12, 1.0])
    adjusted = adjust_to_prior(p, source_rate=0.99, target_rate=0.01)
    assert adjusted[0] == 0.0 and adjusted[-1] == 1.0
    assert np.isfinite(adjusted).all() and (adjusted >= 0).all() and (adjusted <= 1).all()
    # log-odds shift by logit(0.01) − logit(0.99) = −2·log(99), kept in full precision
    shift = -2 * math.log(99)
    assert adjusted[1] == pytest.approx(1e-300 * math.exp(shift), rel=1e-9)
    assert adjusted[2] == pytest.approx(1e-12 * math.exp(shift), rel=1e-6)
    assert adjusted[3] == pytest.approx(1 / (1 + 1e-12 * math.exp(-shift)), rel=1e-12)
    assert adjust_to_prior([], source_rate=0.5, target_rate=0.2).shape == (0,)


def test_integer_and_numpy_rates_accepted():
    p = [0.25, 0.75]
    expected = adjust_to_prior(p, source_rate=0.5, target_rate=0.25)
    np.testing.assert_array_equal(
        adjust_to_prior(p, source_rate=np.float32(0.5), target_rate=np.float64(0.25)), expected
    )


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, 0.0, 1.0, math.nan, math.inf, True, "0.5", None])
@pytest.mark.parametrize("which", ["source_rate", "target_rate"])
def test_bad_rates_raise_one_line_errors_naming_the_argument(bad, which):
    rates = {"source_rate": 0.5, "target_rate": 0.3, which: bad}
    with pytest.raises(CalibrationError, match=rf"^{which} must be in \(0, 1\), got ") as info:
        adjust_to_prior([0.5], **rates)
    assert "\n" not in str(info.value)


def test_message_shows_the_value():
    with pytest.raises(CalibrationError, match=r"^target_rate must be in \(0, 1\), got 1\.5$"):
        adjust_to_prior([0.5], source_rate=0.5, target_rate=1.5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([[0.5, 0.5]], "1-D"),
        ([0.5, math.nan], "finite"),
        ([0.5, math.inf], "finite"),
        ([1.2], r"\[0, 1\]"),
        ([-0.01], r"\[0, 1\]"),
        (["a"], "numeric"),
    ],
)
def test_bad_confidences_raise(bad, match):
    with pytest.raises(CalibrationError, match=match):
        adjust_to_prior(bad, source_rate=0.5, target_rate=0.2)


def test_simulation_resampled_to_a_lower_base_rate_is_calibrated_after_adjusting():
    rng = np.random.default_rng(0)
    n = 400_000
    correct = rng.random(n) < 0.5
    score = np.where(correct, CORRECT.rvs(n, random_state=rng), INCORRECT.rvs(n, random_state=rng))
    confidence = posterior(score, 0.5)  # exactly calibrated at base rate 0.5
    assert expected_calibration_error(correct.astype(int), confidence) < 0.01
    # resample to base rate 0.15: keep every incorrect answer, thin the correct ones; the
    # class-conditional score distributions are untouched, only the mix changes
    n_incorrect = int((~correct).sum())
    n_keep = round(n_incorrect * 0.15 / 0.85)
    keep = np.concatenate(
        [np.flatnonzero(~correct), rng.choice(np.flatnonzero(correct), n_keep, replace=False)]
    )
    y, p = correct[keep].astype(int), confidence[keep]
    assert y.mean() == pytest.approx(0.15, abs=1e-3)
    unadjusted = expected_calibration_error(y, p)
    adjusted = expected_calibration_error(y, adjust_to_prior(p, source_rate=0.5, target_rate=0.15))
    assert unadjusted > 0.15
    assert adjusted < 0.03
    assert adjusted < unadjusted / 10
