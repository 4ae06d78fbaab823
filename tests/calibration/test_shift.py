"""Shift reference and KS shift check: the distance against scipy's ks_2samp (exactly for a
small reference, to the grid resolution for a large one), false-alarm rate on in-distribution
batches, power against a mean shift and a base-rate change, persistence, corrupt dicts, small
batches and NaN handling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from perturbprobe.calibration import ShiftCheck, ShiftReference
from perturbprobe.calibration.kolmogorov_smirnov import ks_p_value as _ks_p_value
from perturbprobe.calibration.kolmogorov_smirnov import (
    ks_p_value_asymptotic as _ks_p_value_asymptotic,
)
from perturbprobe.calibration.kolmogorov_smirnov import ks_p_value_exact as _ks_p_value_exact
from perturbprobe.calibration.shift import EXACT_MAX_CELLS, GRID_SIZE, MIN_BATCH
from perturbprobe.errors import CalibrationError

SCORE, PROB = "probe_score", "baseline/prob:mean"
SCORE_SD = math.sqrt(2.0)  # sd of the equal mixture of N(−1, 1) and N(1, 1)


def draw(rng: np.random.Generator, n: int, *, rate: float = 0.5, shift: float = 0.0) -> dict:
    """A batch of ``n`` answers, a fraction ``rate`` correct: a continuous probe score (a
    mixture of N(±1, 1), plus ``shift``) and a feature with point masses at 0 and 1 (correct
    answers are exactly 1 for 40 %, incorrect exactly 0 for 30 %, uniform otherwise)."""
    correct = rng.random(n) < rate
    score = np.where(correct, 1.0, -1.0) + rng.normal(size=n) + shift
    u = rng.random(n)
    prob = np.where(
        correct,
        np.where(u < 0.4, 1.0, rng.uniform(0.5, 1.0, n)),
        np.where(u < 0.3, 0.0, rng.uniform(0.0, 1.0, n)),
    )
    return {SCORE: score, PROB: prob}


@pytest.fixture(scope="module")
def reference_sample() -> dict:
    return draw(np.random.default_rng(12345), 2000)


@pytest.fixture(scope="module")
def reference(reference_sample) -> ShiftReference:
    return ShiftReference.fit(reference_sample)


# --------------------------------------------------------------------------- the statistic
@pytest.mark.parametrize("m", [20, 25, 40, 50, 100])
def test_small_reference_reproduces_ks_2samp_exactly(m):
    # G/m whole and ≥ 2: every sample value is an atom of the summary, F_R is the sample's ECDF
    rng = np.random.default_rng(m)
    for trial in range(40):
        sample = rng.normal(size=m)
        if trial % 2:  # ties in the reference and between reference and batch
            sample = np.round(sample, 1)
        batch = np.round(rng.normal(0.3 * (trial % 3), 1.0, size=rng.integers(20, 90)), 1)
        check = ShiftReference.fit({"x": sample}).check({"x": batch})
        expected = ks_2samp(sample, batch, method="exact")
        d, p = check.per_feature["x"]
        assert d == pytest.approx(expected.statistic, abs=1e-12)
        assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    ("m", "n"), [(1, 1), (3, 3), (20, 20), (20, 21), (37, 53), (2000, 20), (2000, 200), (100, 100)]
)
def test_exact_p_value_matches_scipy_exact(m, n):
    rng = np.random.default_rng(m * 1000 + n)
    for shift in (0.0, 0.2, 0.5, 1.0):
        for _ in range(3):
            result = ks_2samp(rng.normal(size=m), rng.normal(shift, size=n), method="exact")
            for a, b in ((m, n), (n, m)):  # symmetric in the sizes
                p = _ks_p_value_exact(float(result.statistic), a, b)
                assert p == pytest.approx(result.pvalue, rel=1e-6, abs=1e-11)
    assert _ks_p_value_exact(0.0, m, n) == 1.0


def test_large_sizes_use_smirnovs_limit():
    m, n = 2000, 1000
    assert m * n > EXACT_MAX_CELLS
    rng = np.random.default_rng(11)
    for shift in (0.0, 0.1, 0.2):
        result = ks_2samp(rng.normal(size=m), rng.normal(shift, size=n), method="asymp")
        p = _ks_p_value(float(result.statistic), m, n)
        assert p == pytest.approx(result.pvalue, rel=1e-9, abs=1e-300)
    # far tails (exact p below 1e-8) come from the limit, other small-size p-values are exact
    assert 0 < _ks_p_value(0.9, 100, 100) == _ks_p_value_asymptotic(0.9, 100, 100) < 1e-8
    assert _ks_p_value(0.2, 100, 100) == _ks_p_value_exact(0.2, 100, 100)


def test_large_reference_within_grid_resolution_of_ks_2samp(reference, reference_sample):
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(30):
        for n, shift in ((50, 0.0), (300, 0.3), (2000, 0.0)):
            batch = draw(rng, n, shift=shift)
            check = reference.check(batch)
            for name in (SCORE, PROB):
                raw = ks_2samp(reference_sample[name], batch[name]).statistic
                worst = max(worst, abs(check.per_feature[name][0] - raw))
    assert worst <= 1 / GRID_SIZE + 1e-12


def test_reference_cdf_is_close_to_the_sample_ecdf_and_keeps_the_atoms(reference, reference_sample):
    for name in (SCORE, PROB):
        sample = np.sort(reference_sample[name])
        x = np.concatenate([sample, np.linspace(sample[0] - 1, sample[-1] + 1, 500)])
        ecdf = np.searchsorted(sample, x, side="right") / len(sample)
        assert np.abs(reference.cdf(name, x) - ecdf).max() <= 1 / GRID_SIZE
    prob = reference_sample[PROB]
    cdf = reference.cdf(PROB, [-0.5, 0.0, 1.0 - 1e-9, 1.0, 2.0])
    assert cdf[0] == 0.0 and cdf[-2] == 1.0 and cdf[-1] == 1.0
    assert cdf[1] == pytest.approx(np.mean(prob == 0.0), abs=1 / GRID_SIZE)  # the atom at 0
    assert 1 - cdf[2] == pytest.approx(np.mean(prob == 1.0), abs=1 / GRID_SIZE)  # the atom at 1


def test_constant_feature():
    reference = ShiftReference.fit({"flag": np.zeros(100)})
    same = reference.check({"flag": np.zeros(40)})
    assert same.per_feature["flag"] == (0.0, 1.0) and not same.shifted
    half = reference.check({"flag": np.r_[np.zeros(20), np.ones(20)]})
    assert half.per_feature["flag"][0] == pytest.approx(0.5) and half.shifted


# --------------------------------------------------------------------------- false alarms, power
def test_no_false_alarms_on_in_distribution_batches(reference):
    rng = np.random.default_rng(2024)
    alpha = 0.01
    small_p = []
    for n in (20, 100, 1000):
        checks = [reference.check(draw(rng, n), alpha=alpha) for _ in range(200)]
        alarm_rate = np.mean([c.shifted for c in checks])
        assert alarm_rate <= 0.03, (n, alarm_rate)
        assert all(c.tested and c.n == n and set(c.per_feature) == {SCORE, PROB} for c in checks)
        small_p += [c.per_feature[SCORE][1] < 0.1 for c in checks]
    # the continuous feature's p-values are calibrated, not just conservative: ~10 % below 0.1
    assert 0.06 <= np.mean(small_p) <= 0.14


def test_detects_a_mean_shift_of_half_a_standard_deviation(reference):
    rng = np.random.default_rng(1)
    checks = [reference.check(draw(rng, 200, shift=0.5 * SCORE_SD)) for _ in range(100)]
    assert np.mean([c.shifted for c in checks]) >= 0.9  # at the default alpha = 0.001
    flagged = next(c for c in checks if c.shifted)
    assert min(flagged.per_feature, key=lambda k: flagged.per_feature[k][1]) == SCORE


def test_detects_a_base_rate_change_from_half_to_fifteen_percent(reference):
    rng = np.random.default_rng(2)
    checks = [reference.check(draw(rng, 200, rate=0.15)) for _ in range(100)]
    assert np.mean([c.shifted for c in checks]) >= 0.9


def test_bonferroni_combination(reference):
    check = reference.check(draw(np.random.default_rng(3), 300, shift=0.4), alpha=0.05)
    ps = [p for _, p in check.per_feature.values()]
    assert check.p_value == pytest.approx(min(1.0, 2 * min(ps)))
    assert check.statistic == max(d for d, _ in check.per_feature.values())
    assert check.shifted == (check.p_value < 0.05)
    one = reference.check({SCORE: draw(np.random.default_rng(3), 300, shift=0.4)[SCORE]})
    assert set(one.per_feature) == {SCORE}
    assert one.p_value == one.per_feature[SCORE][1]  # one feature: no adjustment


# --------------------------------------------------------------------------- messages
def test_messages(reference):
    rng = np.random.default_rng(4)
    shifted = reference.check(draw(rng, 120, rate=0.05, shift=1.0))
    assert shifted.shifted
    text = shifted.message()
    assert text.startswith("input looks unlike the probe's training data (KS D=")
    assert "120 pairs" in text and "perturbprobe recalibrate" in text and "\n" not in text
    quiet = reference.check(draw(rng, 120))
    assert not quiet.shifted
    assert quiet.message().startswith("no shift from the probe's training data detected (KS D=")


# --------------------------------------------------------------------------- small batches, NaN
def test_small_batches_are_not_tested(reference):
    rng = np.random.default_rng(5)
    small = reference.check(draw(rng, MIN_BATCH - 1, shift=5.0))
    assert not small.shifted and not small.tested and small.per_feature == {}
    assert math.isnan(small.p_value) and math.isnan(small.statistic)
    assert small.n == MIN_BATCH - 1
    assert "too few pairs" in small.message()
    assert reference.check(draw(rng, MIN_BATCH, shift=5.0)).shifted
    empty = reference.check({SCORE: []})
    assert not empty.tested and empty.n == 0


def test_nan_values_are_dropped_per_feature(reference):
    rng = np.random.default_rng(6)
    batch = draw(rng, 150, shift=0.3)
    with_nan = {name: values.copy() for name, values in batch.items()}
    holes = rng.choice(150, 40, replace=False)
    with_nan[PROB][holes] = np.nan
    got = reference.check(with_nan)
    assert got.n == 150
    assert got.per_feature[SCORE] == reference.check({SCORE: batch[SCORE]}).per_feature[SCORE]
    without = reference.check({PROB: np.delete(batch[PROB], holes)})
    assert without.n == 110 and got.per_feature[PROB] == without.per_feature[PROB]
    # a feature with too few non-NaN values is skipped; if every feature is, nothing is tested
    with_nan[PROB][10:] = np.nan
    assert set(reference.check(with_nan).per_feature) == {SCORE}
    all_missing = reference.check({PROB: np.full(50, np.nan)})
    assert not all_missing.tested and "too few non-missing values" in all_missing.message()


def test_reference_drops_nan_when_fitting():
    values = np.r_[np.arange(40.0), [np.nan] * 5]
    assert ShiftReference.fit({"x": values}).sizes() == {"x": 40}


# --------------------------------------------------------------------------- persistence
def test_round_trip_gives_identical_checks(reference):
    data = reference.to_dict()
    text = json.dumps(data, allow_nan=False)
    loaded = ShiftReference.from_dict(json.loads(text))
    assert loaded.to_dict() == data and loaded.names == reference.names == (SCORE, PROB)
    assert len(data["features"][SCORE]["quantiles"]) == GRID_SIZE + 1
    assert all(type(v) is float for v in data["features"][PROB]["quantiles"])
    rng = np.random.default_rng(8)
    for n, shift in ((25, 0.0), (200, 0.5), (1000, 0.1)):
        batch = draw(rng, n, shift=shift)
        assert loaded.check(batch) == reference.check(batch)
    check = reference.check(draw(rng, 60))
    assert json.loads(json.dumps(check.to_dict(), allow_nan=False))["n"] == 60
    assert ShiftReference.from_dict(data).check(draw(rng, 5)).to_dict()["p_value"] is None


def _corrupt(data: dict, edit) -> dict:
    copy = json.loads(json.dumps(data))
    edit(copy)
    return copy


def _set_quantile(index: int, value):
    def edit(d):
        d["features"][SCORE]["quantiles"][index] = value

    return edit


CORRUPTIONS = {
    "not a mapping": lambda d: d.clear() or d.update({"x": 1}),
    "extra key": lambda d: d.update(version=2),
    "missing key": lambda d: d.pop("grid_size"),
    "other grid": lambda d: d.update(grid_size=100),
    "bool grid": lambda d: d.update(grid_size=True),
    "features not a mapping": lambda d: d.update(features=[1, 2]),
    "no features": lambda d: d.update(features={}),
    "empty name": lambda d: d["features"].update({"": d["features"][SCORE]}),
    "feature extra key": lambda d: d["features"][SCORE].update(n=3),
    "feature missing key": lambda d: d["features"][SCORE].pop("m"),
    "feature not a mapping": lambda d: d["features"].update({SCORE: [1, 2]}),
    "m too small": lambda d: d["features"][SCORE].update(m=MIN_BATCH - 1),
    "m bool": lambda d: d["features"][SCORE].update(m=True),
    "m float": lambda d: d["features"][SCORE].update(m=2000.0),
    "m string": lambda d: d["features"][SCORE].update(m="2000"),
    "too few quantiles": lambda d: d["features"][SCORE]["quantiles"].pop(),
    "quantiles not a list": lambda d: d["features"][SCORE].update(quantiles="0 1 2"),
    "quantile string": _set_quantile(3, "1.0"),
    "quantile null": _set_quantile(3, None),
    "quantile bool": _set_quantile(0, False),
    "quantile nan": _set_quantile(5, math.nan),
    "quantile inf": _set_quantile(-1, math.inf),
    "decreasing": _set_quantile(100, -100.0),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_dicts_are_rejected(reference, name):
    data = _corrupt(reference.to_dict(), CORRUPTIONS[name])
    with pytest.raises(CalibrationError) as info:
        ShiftReference.from_dict(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [None, [1, 2], "reference"])
def test_from_dict_rejects_non_mappings(bad):
    with pytest.raises(CalibrationError):
        ShiftReference.from_dict(bad)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1.0, 2.0], "mapping"),
        ({}, "empty"),
        ({1: np.arange(30.0)}, "non-empty strings"),
        ({"x": np.zeros((30, 2))}, "1-D"),
        ({"x": np.r_[np.arange(30.0), np.inf]}, "inf"),
        ({"x": ["a"] * 30}, "numeric"),
        ({"x": np.r_[np.arange(10.0), [np.nan] * 30]}, "10 non-NaN values"),
    ],
)
def test_fit_rejects_bad_values(values, match):
    with pytest.raises(CalibrationError, match=match):
        ShiftReference.fit(values)


def test_check_rejects_bad_input(reference):
    batch = draw(np.random.default_rng(9), 50)
    for alpha in (0, 1, 1.5, -0.1, True, "0.01", math.nan):
        with pytest.raises(CalibrationError, match=r"alpha must be in \(0, 1\)"):
            reference.check(batch, alpha=alpha)
    with pytest.raises(CalibrationError, match="shares no feature"):
        reference.check({"other": np.zeros(50)})
    with pytest.raises(CalibrationError, match="same length"):
        reference.check({SCORE: np.zeros(50), PROB: np.zeros(49)})
    with pytest.raises(CalibrationError, match="1-D"):
        reference.check({SCORE: np.zeros((50, 2))})
    with pytest.raises(CalibrationError, match="no feature 'other'"):
        reference.cdf("other", [0.0])
    # names the reference lacks are ignored
    extra = reference.check({**batch, "other": np.zeros(3)})
    assert extra == reference.check(batch)


def test_constructor_checks_summaries():
    quantiles = np.linspace(0, 1, GRID_SIZE + 1)
    assert ShiftReference({"x": (100, quantiles)}).names == ("x",)
    with pytest.raises(CalibrationError, match="must be \\(m, quantiles\\)"):
        ShiftReference({"x": quantiles})
    with pytest.raises(CalibrationError, match="201 quantiles"):
        ShiftReference({"x": (100, quantiles[:-1])})
    assert isinstance(ShiftReference({"x": (100, quantiles)}).check({"x": quantiles}), ShiftCheck)
