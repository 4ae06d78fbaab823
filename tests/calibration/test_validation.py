"""The shared input checks of perturbprobe.calibration: each fault raises CalibrationError (or
ValueError for result arrays) with a message naming the argument, in both wordings of the
label/score checker."""

from __future__ import annotations

import numpy as np
import pytest

from perturbprobe.calibration.validation import (
    as_float_vector,
    check_bootstrap,
    check_choice,
    check_fraction,
    check_keys,
    check_labels_and_scores,
    check_n_bins,
    check_parallel_arrays,
    check_positive_int,
    check_scores,
)
from perturbprobe.errors import CalibrationError


# --------------------------------------------------------------------------- labels and scores
@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([1, 0], [0.5, np.nan], r"^p must be probabilities in \[0, 1\]; got nan in 1 of 2 rows$"),
        ([1, 0], [0.5, np.inf], r"p must be probabilities in \[0, 1\]; got inf"),
        ([1, 2, 0], [0.5] * 3, r"^y must hold only 1 \(correct\) and 0 \(incorrect\); got 2 in 1 "),
        ([1, np.nan], [0.5, 0.5], "y must hold only 1"),
        ([1, 0], [0.5], "^y and p must have the same length, got 2 and 1$"),
        ([], [], "^y and p are empty; need at least one row$"),
        (["a", "b"], [0.5, 0.5], "^y must be numeric, got dtype <U1$"),
        ([1, 0], ["0.5", "0.2"], "^p must be numeric"),
        ([[1, 0]], [[0.5, 0.5]], r"^y must be a 1-D array, got shape \(1, 2\)$"),
    ],
)
def test_metric_style_faults(y, p, message):
    with pytest.raises(CalibrationError, match=message):
        check_labels_and_scores(y, p)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([1, 0], [0.5, np.nan], "^p must be finite; found 1 NaN/inf values$"),
        ([1, 0], [0.5, 1.5], r"^p must lie in \[0, 1\]; found values from 0.5 to 1.5$"),
        ([0, 2], [0.1, 0.2], r"^y must hold only 0 \(incorrect\) and 1 \(correct\); found 2$"),
        (["yes", "no"], [0.1, 0.2], "found 'yes'$"),
        ([0, 1, 1], [0.1, 0.2], "^p and y must have the same length; got 2 and 3$"),
        ([], [], "^p is empty; need at least one row$"),
        ([0, 1], ["a", "b"], "^p must be numeric probabilities; "),
        ([[0, 1]], [0.1, 0.2], r"^y must be a 1-D array \(n,\); got shape \(1, 2\)$"),
    ],
)
def test_calibrator_style_faults(y, p, message):
    with pytest.raises(CalibrationError, match=message):
        check_labels_and_scores(y, p, style="calibrator")


def test_names_appear_in_the_messages():
    with pytest.raises(CalibrationError, match=r"^confidence and correct must have the same"):
        check_labels_and_scores(
            [1], [0.5, 0.5], y_name="correct", p_name="confidence", style="calibrator"
        )
    with pytest.raises(CalibrationError, match=r"^labels and scores must have the same length"):
        check_labels_and_scores([1], [0.5, 0.5], y_name="labels", p_name="scores")


def test_checked_arrays_and_their_dtypes():
    y, p = check_labels_and_scores([True, False], [1, 0])
    assert y.dtype == np.float64 and p.dtype == np.float64
    np.testing.assert_array_equal(y, [1.0, 0.0])
    y, p = check_labels_and_scores([1.0, 0.0], [0.25, 0.75], style="calibrator")
    assert y.dtype == np.int64 and p.dtype == np.float64
    np.testing.assert_array_equal(p, [0.25, 0.75])


def test_check_scores_alone():
    assert check_scores([], allow_empty=True).shape == (0,)
    with pytest.raises(CalibrationError, match=r"^candidates is empty"):
        check_scores([], name="candidates")
    with pytest.raises(CalibrationError, match=r"^confidence must lie in \[0, 1\]"):
        check_scores([-0.1], name="confidence", allow_empty=True)


def test_float_vector():
    np.testing.assert_array_equal(as_float_vector([1, np.nan], "x"), [1.0, np.nan])
    with pytest.raises(CalibrationError, match=r"^batch feature 'x' must be numeric; "):
        as_float_vector(["a"], "batch feature 'x'")
    with pytest.raises(CalibrationError, match=r"^x must be a 1-D array; got shape \(\)$"):
        as_float_vector(1.0, "x")


def test_parallel_arrays_raise_value_error():
    check_parallel_arrays("Curve", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(ValueError, match=r"^Curve arrays must be 1-D of one length"):
        check_parallel_arrays("Curve", a=np.zeros(2), b=np.zeros(3))


# --------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "^a thing must be a mapping; got list$"),
        ({"a": 1}, "^a thing must have exactly the keys a, b; got a$"),
        ({"a": 1, "b": 2, "c": 3}, "^a thing must have exactly the keys a, b; got a, b, c$"),
        ({}, "; got \\(none\\)$"),
    ],
)
def test_check_keys(data, message):
    with pytest.raises(CalibrationError, match=message):
        check_keys(data, ("a", "b"), "a thing")


def test_check_keys_accepts_exact_keys():
    check_keys({"b": 1, "a": 2}, ("a", "b"), "a thing")


# --------------------------------------------------------------------------- options
def test_option_checks():
    assert check_positive_int(np.int64(3), "n") == 3
    assert check_n_bins(2) == 2
    assert check_fraction(0.25, "rate") == 0.25
    with pytest.raises(CalibrationError, match=r"^n must be a positive integer; got True$"):
        check_positive_int(True, "n")
    with pytest.raises(CalibrationError, match=r"^n_bins must be a positive integer, got 0$"):
        check_n_bins(0)
    with pytest.raises(CalibrationError, match=r"^rate must be in \(0, 1\), got 1$"):
        check_fraction(1, "rate")
    with pytest.raises(CalibrationError, match=r"^delta is bad: nan$"):
        check_fraction(float("nan"), "delta", "{name} is bad: {value!r}")
    with pytest.raises(CalibrationError, match=r"^strategy must be one of"):
        check_choice("strategy", "x", ("uniform", "quantile"))
    assert check_bootstrap(np.int64(5), 0.9, None) == 5
    with pytest.raises(CalibrationError, match="random_state must be an int or None"):
        check_bootstrap(5, 0.9, 1.5)
