"""What a probe accepts: the checks of ``fit``'s and ``predict``'s inputs and of parameters.

One set of messages, worded like scikit-learn's where its checks look for words (labels,
infinite or missing values, feature count and column names at predict time). Missing values
are allowed (each probe imputes them) with one :class:`~perturbprobe.errors.PerturbprobeWarning`
at fit; infinities, non-numbers, one class, ragged sequences are refused.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.exceptions import DataConversionWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target

from ..errors import PerturbprobeError, PerturbprobeWarning, ProbeError

__all__ = [
    "MIN_ROWS_PER_CLASS",
    "ParameterRule",
    "ProbeTypeError",
    "check_features",
    "check_groups",
    "check_labels",
    "check_parameter",
    "check_parameters",
    "check_sample_weight",
    "derive_seed",
    "int_at_least",
    "is_int",
]

# Below this many rows of a class a probe still fits, but its AUROC/ECE estimates and early
# stopping are noisy: warn, do not refuse.
MIN_ROWS_PER_CLASS = 20
_MAX_LISTED = 5

# A parameter check: (name, predicate on the value, what is expected)
ParameterRule = tuple[str, Callable[[Any], bool], str]


class ProbeTypeError(PerturbprobeError, TypeError):
    """X holds values that are not numbers at all (e.g. a dict in an object array): a
    :class:`TypeError`, as scikit-learn raises for such input."""


def _listed(items: Sequence[Any]) -> str:
    """``'a', 'b' (and 3 more)`` — the first few items of a list, for error messages."""
    shown = ", ".join(repr(item) for item in items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return shown + (f" (and {extra} more)" if extra > 0 else "")


def check_parameter(
    estimator: BaseEstimator, name: str, valid: Callable[[Any], bool], expected: str
) -> None:
    """Raise the one parameter-error message unless ``valid(value)`` holds (a TypeError counts
    as invalid).

    Raises
    ------
    ProbeError
        ``The 'lr' parameter of CCPSProbe must be a float > 0. Got -1 instead.``
    """
    value = getattr(estimator, name)
    try:
        ok = bool(valid(value))
    except TypeError:
        ok = False
    if not ok:
        raise ProbeError(
            f"The {name!r} parameter of {type(estimator).__name__} must be {expected}. "
            f"Got {value!r} instead."
        )


def is_int(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an integer (not a bool) ≥ ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def int_at_least(minimum: int) -> Callable[[Any], bool]:
    """The predicate ``is_int(value, minimum)``, for a :data:`ParameterRule`."""
    return lambda value: is_int(value, minimum)


def check_parameters(estimator: BaseEstimator, rules: Iterable[ParameterRule]) -> None:
    """:func:`check_parameter` for every ``(name, valid, expected)`` rule, in order."""
    for name, valid, expected in rules:
        check_parameter(estimator, name, valid, expected)


def derive_seed(random_state: int | np.random.RandomState | None) -> int:
    """The integer seed a probe trains with: ``random_state`` itself when it is an int in
    [0, 2**31), else one drawn from it (``None``: fresh randomness, not reproducible)."""
    if is_int(random_state, minimum=-(2**63)):
        if not 0 <= random_state < 2**31:
            raise ProbeError(f"random_state must be in [0, 2**31); got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


def check_labels(
    y: Any, n_rows: int, pos_label: Any, estimator: str
) -> tuple[np.ndarray, Any, np.ndarray]:
    """Validate y: the sorted classes (2,), the positive class and y as 0/1 int64 (n,)."""
    if y is None:
        raise ProbeError(
            f"{estimator} requires y to be passed, but the target y is None; give one label "
            "per record (e.g. 1: answer correct, 0: incorrect)"
        )
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; y of shape "
            f"{labels.shape} is read as ({labels.shape[0]},)",
            DataConversionWarning,
            stacklevel=3,
        )
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ProbeError(f"y must be 1-D (one label per record); got shape {labels.shape}")
    if labels.shape[0] != n_rows:
        raise ProbeError(f"X has {n_rows} records but y has {labels.shape[0]} labels")
    try:
        with warnings.catch_warnings():  # NaN labels: the error below says it
            warnings.simplefilter("ignore", RuntimeWarning)
            kind = type_of_target(labels, input_name="y")
        classes = np.unique(labels)
    except (TypeError, ValueError) as exc:  # NaN or infinite labels, strings mixed with numbers
        raise ProbeError(f"y holds unusable labels: {exc}") from exc
    if kind not in ("binary", "multiclass"):
        raise ProbeError(
            f"Unknown label type: {kind}. y must hold two classes of labels (e.g. 1: answer "
            "correct, 0: incorrect), not continuous values or objects"
        )
    if classes.size > 2:
        raise ProbeError(
            f"Only binary classification is supported: y must hold two classes (answer "
            f"correct or not); found {classes.size} classes: {_listed(classes.tolist())}"
        )
    if classes.size < 2:
        raise ProbeError(
            "a probe needs samples of 2 classes (correct and incorrect answers), but y "
            f"contains only one class: {classes.tolist()[0]!r} ({n_rows} records)"
        )
    matches = [i for i, label in enumerate(classes.tolist()) if label == pos_label]
    if pos_label is not None and not matches:
        raise ProbeError(
            f"pos_label={pos_label!r} is not a class of y; the classes are "
            f"{_listed(classes.tolist())}"
        )
    positive = classes[matches[0] if matches else 1]
    encoded = (labels == positive).astype(np.int64)
    n_correct, n_incorrect = int(encoded.sum()), int(n_rows - encoded.sum())
    counts = f"{n_correct} correct and {n_incorrect} incorrect answers"
    if min(n_correct, n_incorrect) < 2:
        raise ProbeError(f"a probe needs at least 2 answers of each class; got {counts}")
    if min(n_correct, n_incorrect) < MIN_ROWS_PER_CLASS:
        warnings.warn(
            f"only {counts}: fitting continues, but with fewer than {MIN_ROWS_PER_CLASS} of a "
            "class the probe and its metrics are noisy",
            PerturbprobeWarning,
            stacklevel=3,
        )
    return classes, positive, encoded


def check_groups(groups: Any, n_rows: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n_rows:
        raise ProbeError(f"groups must hold one value per record ({n_rows}); got {groups.shape}")
    return groups


def check_sample_weight(sample_weight: Any, y: np.ndarray) -> np.ndarray | None:
    """Validate the weights of the rows of y (0/1, shape (n,)): float64 (n,) or None."""
    if sample_weight is None:
        return None
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProbeError(f"sample_weight must be numeric: {exc}") from exc
    if weights.shape != y.shape:
        raise ProbeError(
            f"sample_weight must hold one weight per record ({len(y)}); got {weights.shape}"
        )
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ProbeError("sample_weight must be finite, non-negative and not all zero")
    if weights[y == 1].sum() == 0 or weights[y == 0].sum() == 0:
        raise ProbeError(
            "sample_weight is 0 for every answer of one class: a probe needs both classes "
            "(correct and incorrect answers) with a positive weight"
        )
    return weights


def _as_float64(value: Any, what: str) -> np.ndarray:
    """``value`` as a float64 array (no copy when it is one); complex numbers and non-numbers
    are refused."""
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ProbeError(f"{what} must be a numeric array: {exc}") from exc
    if array.dtype.kind == "c":
        raise ProbeError(f"Complex data not supported: {what} must hold real numbers")
    try:
        return array.astype(np.float64, copy=False)
    except TypeError as exc:  # e.g. a dict in an object array
        raise ProbeTypeError(f"{what} must be numeric: {exc}") from exc
    except ValueError as exc:  # e.g. a string that is not a number
        raise ProbeError(f"{what} must be numeric: {exc}") from exc


def _table_to_array(X: Any) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        complex_columns = [c for c, t in X.dtypes.items() if pd.api.types.is_complex_dtype(t)]
        if complex_columns:
            raise ProbeError(
                f"Complex data not supported: complex columns {_listed(complex_columns)}"
            )
        bad = [
            c
            for c, t in X.dtypes.items()
            if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))
        ]
        if bad:
            raise ProbeError(f"X must be numeric; non-numeric columns: {_listed(bad)}")
        return X.to_numpy(dtype=np.float64, na_value=np.nan)
    if sparse.issparse(X):
        raise ProbeError("sparse X is not supported; pass a dense array or DataFrame")
    array = _as_float64(X, "X")
    if array.ndim != 2:
        hint = (
            ". Reshape your data with X.reshape(-1, 1) if it has a single feature or "
            "X.reshape(1, -1) if it is a single record"
            if array.ndim == 1
            else ""
        )
        raise ProbeError(f"X must be 2-D (records × features); got shape {array.shape}{hint}")
    return array


def _column_names(X: Any) -> np.ndarray | None:
    if isinstance(X, pd.DataFrame) and all(isinstance(c, str) for c in X.columns):
        return np.asarray(X.columns, dtype=object)
    return None


def _to_sequences(X: Any) -> list[np.ndarray]:
    if not isinstance(X, (list, tuple)):
        raise ProbeError(
            "a sequence probe takes a list of 2-D arrays (T_i, F), one per record; "
            f"got {type(X).__name__}"
        )
    sequences = []
    for i, record in enumerate(X):
        matrix = _as_float64(record, f"record {i}")
        if matrix.ndim != 2 or matrix.shape[0] < 1:
            raise ProbeError(f"record {i} must be a 2-D array (T_i ≥ 1, F); got {matrix.shape}")
        if sequences and matrix.shape[1] != sequences[0].shape[1]:
            raise ProbeError(
                f"record {i} has {matrix.shape[1]} features but record 0 has "
                f"{sequences[0].shape[1]}"
            )
        sequences.append(matrix)
    return sequences


def check_features(probe: Any, X: Any, *, fitting: bool) -> tuple[Any, int, np.ndarray | None]:
    """Validated features of ``probe`` (a Probe) — float64 (n, F), or a list of float64
    (T_i, F) for sequences — with F and the column names (None unless X is a DataFrame with
    string columns). At predict time (``fitting=False``) F and the names must match the fit."""
    if probe.input_kind == "sequence":
        data, names = _to_sequences(X), None
        shape = data[0].shape if data else (0,)
    else:
        data, names = _table_to_array(X), _column_names(X)
        shape = data.shape
    if len(data) == 0:
        raise ProbeError("X is empty: found 0 sample(s) (records) while a minimum of 1 is required")
    n_features = shape[1]
    if n_features == 0:
        raise ProbeError(
            f"X is empty: 0 feature(s) (shape={shape}) while a minimum of 1 is required."
        )
    if not fitting:
        if n_features != probe.n_features_in_:
            raise ProbeError(
                f"X has {n_features} features, but {type(probe).__name__} is expecting "
                f"{probe.n_features_in_} features as input."
            )
        _check_names(probe, names)
    _check_values(data, X, fitting=fitting)
    return data, n_features, names


def _check_names(probe: Any, names: np.ndarray | None) -> None:
    """Refuse DataFrame columns that differ (names or order) from those seen at fit."""
    expected = getattr(probe, "feature_names_in_", None)
    if expected is None or names is None or np.array_equal(names, expected):
        return
    differences = [
        f"column {i}: expected {want!r}, got {got!r}"
        for i, (want, got) in enumerate(zip(expected, names, strict=True))
        if want != got
    ]
    more = len(differences) - _MAX_LISTED
    raise ProbeError(
        "X's columns differ from those seen at fit (same names, same order needed): "
        + "; ".join(differences[:_MAX_LISTED])
        + (f" (and {more} more)" if more > 0 else "")
    )


def _check_values(data: np.ndarray | list[np.ndarray], X: Any, *, fitting: bool) -> None:
    """Refuse infinities; at fit, refuse all-missing features and warn about missing ones."""
    rows = np.concatenate(data) if isinstance(data, list) else data
    infinite = np.isinf(rows).any(axis=0)
    if infinite.any():
        if isinstance(data, list):
            where = [i for i, m in enumerate(data) if np.isinf(m).any()]
            place = f"records {_listed(where)}"
        else:
            place = f"columns {_listed(_column_labels(X, infinite))}"
        raise ProbeError(f"X holds infinite values in {place}; replace or clip them")
    if not fitting:
        return
    missing = np.isnan(rows)
    empty = missing.all(axis=0)
    if empty.any():
        raise ProbeError(
            f"features {_listed(_column_labels(X, empty))} are missing in every "
            "training record; drop them"
        )
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} missing feature values ({missing.mean():.2%} of X) are "
            "imputed with the training medians",
            PerturbprobeWarning,
            stacklevel=5,
        )


def _column_labels(X: Any, selected: np.ndarray) -> list[Any]:
    """Names (DataFrame) or indices of the selected columns."""
    indices = np.flatnonzero(selected)
    if isinstance(X, pd.DataFrame):
        return [X.columns[i] for i in indices]
    return [int(i) for i in indices]
