"""Input checks shared by the calibration modules: labels and scores, dict keys, options.

Every check raises :class:`~perturbprobe.errors.CalibrationError` (``ValueError`` for
:func:`check_parallel_arrays`) with a one-line message that names the argument.

Labels and scores are checked in one of two wordings, each kept as its callers have always
reported faults (``style`` of :func:`check_labels_and_scores`):

- ``"metric"`` (metrics, plots, domains): both arrays must have a numeric dtype, ``y`` is
  checked before ``p``, and a bad value is reported with how many rows hold one;
- ``"calibrator"`` (calibrators, risk control): ``p`` is converted to float and checked first,
  by :func:`check_scores` (finite, in [0, 1], its range reported), then ``y`` against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from ..errors import CalibrationError

__all__ = [
    "as_float_vector",
    "check_bootstrap",
    "check_choice",
    "check_fraction",
    "check_keys",
    "check_labels_and_scores",
    "check_n_bins",
    "check_parallel_arrays",
    "check_positive_int",
    "check_scores",
]


# ---- arrays -----------------------------------------------------------------------------------
def as_float_vector(
    value: Any, name: str, *, kind: str = "numeric", shape: str = "a 1-D array"
) -> np.ndarray:
    """``value`` as float64 (n,); else "``name`` must be ``kind``/``shape``; …"."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{name} must be {kind}; {exc}") from None
    if array.ndim != 1:
        raise CalibrationError(f"{name} must be {shape}; got shape {array.shape}")
    return array


def check_scores(p: Any, *, name: str = "p", allow_empty: bool = False) -> np.ndarray:
    """Probabilities ``p`` (n,) as float64: finite, in [0, 1], n ≥ 1 unless ``allow_empty``
    (for element-wise maps such as ``transform`` and ``abstain``)."""
    p = as_float_vector(p, name, kind="numeric probabilities", shape="a 1-D array (n,)")
    if p.size == 0 and not allow_empty:
        raise CalibrationError(f"{name} is empty; need at least one row")
    bad = ~np.isfinite(p)
    if bad.any():
        raise CalibrationError(f"{name} must be finite; found {int(bad.sum())} NaN/inf values")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise CalibrationError(
            f"{name} must lie in [0, 1]; found values from {p.min():g} to {p.max():g}"
        )
    return p


def check_labels_and_scores(
    y: Any,
    p: Any,
    *,
    y_name: str = "y",
    p_name: str = "p",
    style: Literal["metric", "calibrator"] = "metric",
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``y`` (n,) in {0, 1} and probabilities ``p`` (n,) in [0, 1], with n ≥ 1.

    Returns ``(y, p)``: ``p`` as float64, ``y`` as float64 (``style="metric"``, ready for
    arithmetic) or int64 (``style="calibrator"``, ready for counting). See the module docstring
    for the two styles.
    """
    if style == "calibrator":
        p_arr = check_scores(p, name=p_name)
        y_arr = np.asarray(y)
        if y_arr.ndim != 1:
            raise CalibrationError(f"{y_name} must be a 1-D array (n,); got shape {y_arr.shape}")
        if len(y_arr) != len(p_arr):
            raise CalibrationError(
                f"{p_name} and {y_name} must have the same length; got {len(p_arr)} and "
                f"{len(y_arr)}"
            )
        bad_y = _not_binary(y_arr)
        if bad_y.any():
            raise CalibrationError(
                f"{y_name} must hold only 0 (incorrect) and 1 (correct); "
                f"found {y_arr[bad_y][0].item()!r}"
            )
        return y_arr.astype(np.int64), p_arr

    y_arr, p_arr = np.asarray(y), np.asarray(p)
    for name, arr in ((y_name, y_arr), (p_name, p_arr)):
        if arr.ndim != 1:
            raise CalibrationError(f"{name} must be a 1-D array, got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise CalibrationError(f"{name} must be numeric, got dtype {arr.dtype}")
    if len(y_arr) != len(p_arr):
        raise CalibrationError(
            f"{y_name} and {p_name} must have the same length, got {len(y_arr)} and {len(p_arr)}"
        )
    if len(y_arr) == 0:
        raise CalibrationError(f"{y_name} and {p_name} are empty; need at least one row")
    bad_y = _not_binary(y_arr)
    if bad_y.any():
        raise CalibrationError(
            f"{y_name} must hold only 1 (correct) and 0 (incorrect); got "
            f"{y_arr[bad_y][0].item()!r} in {int(bad_y.sum())} of {len(y_arr)} rows"
        )
    p_float = p_arr.astype(np.float64)
    bad_p = ~((p_float >= 0.0) & (p_float <= 1.0))  # also catches nan
    if bad_p.any():
        raise CalibrationError(
            f"{p_name} must be probabilities in [0, 1]; got {p_float[bad_p][0].item()!r} "
            f"in {int(bad_p.sum())} of {len(p_float)} rows"
        )
    return y_arr.astype(np.float64), p_float


def _not_binary(y: np.ndarray) -> np.ndarray:
    """(n,) True where a label is not 0 or 1 (everywhere for a non-numeric dtype)."""
    if y.dtype.kind not in "biuf":
        return np.ones(len(y), dtype=bool)
    return (y != 0) & (y != 1)


def check_parallel_arrays(owner: str, **arrays: np.ndarray) -> None:
    """Raise ValueError unless every array is 1-D and all have one length."""
    shapes = {name: np.shape(arr) for name, arr in arrays.items()}
    if len(set(shapes.values())) != 1 or any(len(shape) != 1 for shape in shapes.values()):
        raise ValueError(f"{owner} arrays must be 1-D of one length; got shapes {shapes}")


# ---- mappings ---------------------------------------------------------------------------------
def check_keys(data: Any, expected: tuple[str, ...], what: str) -> None:
    """Raise unless ``data`` is a mapping with exactly the keys ``expected``."""
    if not isinstance(data, Mapping):
        raise CalibrationError(f"{what} must be a mapping; got {type(data).__name__}")
    if set(data) != set(expected):
        raise CalibrationError(
            f"{what} must have exactly the keys {', '.join(expected) or '(none)'}; "
            f"got {', '.join(sorted(map(str, data))) or '(none)'}"
        )


# ---- options ----------------------------------------------------------------------------------
def check_positive_int(
    value: Any, name: str, message: str = "{name} must be a positive integer; got {value!r}"
) -> int:
    """``value`` as an int ≥ 1 (bools refused); else ``message``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CalibrationError(message.format(name=name, value=value))
    return int(value)


def check_n_bins(n_bins: Any) -> int:
    """A number of bins ≥ 1, as an int."""
    return check_positive_int(n_bins, "n_bins", "{name} must be a positive integer, got {value!r}")


def check_fraction(
    value: Any, name: str, message: str = "{name} must be in (0, 1), got {value!r}"
) -> float:
    """``value`` as a float strictly between 0 and 1 (bools and non-numbers refused)."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0 < value < 1:
        raise CalibrationError(message.format(name=name, value=value))
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise CalibrationError(f"{name} must be one of {choices}; got {value!r}")


def check_bootstrap(n_bootstrap: Any, confidence_level: Any, random_state: Any) -> int:
    """Check bootstrap settings (resamples ≥ 0, level in (0, 1), int or None seed); return
    ``n_bootstrap``."""
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, (int, np.integer))
        or (n_bootstrap < 0)
    ):
        raise CalibrationError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0.0 < confidence_level < 1.0:
        raise CalibrationError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer))
    ):
        raise CalibrationError(f"random_state must be an int or None, got {random_state!r}")
    return int(n_bootstrap)
