"""The probe contract: what every correctness probe accepts, returns and saves.

A probe maps the features of an (LLM answer) record to P(correct). Every probe is a binary
scikit-learn classifier: ``clone``, pipelines and cross-validation work, and it passes
scikit-learn's own ``check_estimator``. Labels follow scikit-learn's rules:

- y holds two labels of any kind (ints, bools, strings, floats); ``classes_`` are the sorted
  unique labels and column j of ``predict_proba`` is P(``classes_[j]``);
- the label meaning "the LLM's answer is correct" is the ``pos_label`` parameter; None (the
  default) takes ``classes_[1]``, so with the package's usual labels (1 = correct, 0 =
  incorrect) ``predict_proba(X)[:, 1]`` is P(correct). :meth:`Probe.predict_positive` returns
  P(correct) whatever the labels; the training code of every probe sees y as 0/1, 1 marking
  ``pos_label``.

Two input kinds exist (the class attribute ``input_kind``):

- ``"table"``: X is a DataFrame or a 2-D array (n, F), one row of response-level features per
  record;
- ``"sequence"``: X is a list of 2-D arrays (T_i, F), the per-token feature matrix of each
  response (T_i ≥ 1, the same F for all).

This module holds what the probes share, so each probe only trains and predicts:

- input validation with one set of messages, worded like scikit-learn's where its checks
  look for words (labels, infinite or missing values, feature count and column names at
  predict time) — missing values are allowed and imputed by each probe, with one
  :class:`~perturbprobe.errors.PerturbprobeWarning` at fit;
- :func:`validation_split`, the internal early-stopping split that keeps a question's answers
  on one side;
- persistence (:meth:`Probe.save_state` / :meth:`Probe.load_state`) in formats that are never
  unpickled (safetensors, JSON, LightGBM's text), with :func:`write_arrays` /
  :func:`read_arrays` for float64 arrays;
- the registry :data:`PROBES` and :func:`make_probe`, resolved lazily so that importing this
  module imports neither torch nor LightGBM.
"""

from __future__ import annotations

import importlib
import json
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from ..errors import PerturbprobeError, PerturbprobeWarning, ProbeError

__all__ = [
    "MIN_ROWS_PER_CLASS",
    "PROBES",
    "Probe",
    "ProbeTypeError",
    "check_parameter",
    "check_shapes",
    "derive_seed",
    "is_int",
    "make_probe",
    "probe_class",
    "read_arrays",
    "read_json",
    "validation_split",
    "write_arrays",
]

# Below this many rows of a class a probe still fits, but its AUROC/ECE estimates and early
# stopping are noisy: warn, do not refuse.
MIN_ROWS_PER_CLASS = 20
_MAX_LISTED = 5
_SPLIT_TRIES = 10

_PROBE_PATHS = {
    "ccps": "perturbprobe.probes.ccps:CCPSProbe",
    "ccps-cnn": "perturbprobe.probes.ccps:CCPSSequenceProbe",
    "lightgbm": "perturbprobe.probes.lightgbm:LightGBMProbe",
    "logistic": "perturbprobe.probes.logistic:LogisticProbe",
    "logistic-cv": "perturbprobe.probes.logistic_cv:LogisticCVProbe",
    "stacking": "perturbprobe.probes.stacking:StackingProbe",
}


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


def derive_seed(random_state: int | np.random.RandomState | None) -> int:
    """The integer seed a probe trains with: ``random_state`` itself when it is an int in
    [0, 2**31), else one drawn from it (``None``: fresh randomness, not reproducible)."""
    if is_int(random_state, minimum=-(2**63)):
        if not 0 <= random_state < 2**31:
            raise ProbeError(f"random_state must be in [0, 2**31); got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


def validation_split(
    y: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    random_state: int | np.random.RandomState | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into a training and an early-stopping validation part.

    With ``groups`` (e.g. question ids) the split is a :class:`GroupShuffleSplit`, so all
    answers to one question land on the same side and validation measures generalisation to
    new questions; otherwise a :class:`StratifiedShuffleSplit`. Up to 10 seeded draws are tried
    until both sides hold both classes.

    Parameters
    ----------
    y : ndarray of int, shape (n,)
        Labels in {0, 1}.
    groups : ndarray, shape (n,), or None
        Group of each row.
    fraction : float in (0, 1)
        Share of rows (of groups, when grouped) put into validation.
    random_state : int, RandomState or None
        Seed of the draws.

    Returns
    -------
    train, validation : ndarray of int
        Row indices, disjoint, covering all rows.

    Raises
    ------
    ProbeError
        When no draw puts both classes on both sides (too few rows or groups).
    """
    if groups is None:
        splitter = StratifiedShuffleSplit(
            _SPLIT_TRIES, test_size=fraction, random_state=random_state
        )
    else:
        splitter = GroupShuffleSplit(_SPLIT_TRIES, test_size=fraction, random_state=random_state)
    try:
        for train, validation in splitter.split(np.zeros((len(y), 1)), y, groups):
            if np.unique(y[train]).size == 2 and np.unique(y[validation]).size == 2:
                return train, validation
    except ValueError as exc:  # too few rows or groups for the requested fraction
        raise ProbeError(f"cannot make an early-stopping validation split: {exc}") from exc
    unit = "question groups" if groups is not None else "rows"
    raise ProbeError(
        f"cannot split {len(y)} rows into training and validation parts that both hold correct "
        f"and incorrect answers (validation_fraction={fraction}); give more {unit} of each class"
    )


def _check_labels(
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


def _check_groups(groups: Any, n_rows: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n_rows:
        raise ProbeError(f"groups must hold one value per record ({n_rows}); got {groups.shape}")
    return groups


def _check_sample_weight(sample_weight: Any, y: np.ndarray) -> np.ndarray | None:
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


def _json_labels(classes: np.ndarray) -> list[Any]:
    """The classes as JSON values (bool, int, float or str); ProbeError for other labels."""
    labels = classes.tolist()
    if not all(isinstance(label, (bool, int, float, str)) for label in labels):
        kinds = sorted({type(label).__name__ for label in labels})
        raise ProbeError(
            "a probe's class labels must be ints, floats, strings or bools to be saved; got "
            + ", ".join(kinds)
        )
    return labels


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save named arrays as float64 tensors of a safetensors file."""
    save_file(
        {name: np.ascontiguousarray(a, dtype=np.float64) for name, a in arrays.items()},
        str(path),
    )


def read_arrays(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The float64 arrays of a safetensors file written by :func:`write_arrays`.

    Raises
    ------
    FileNotFoundError, ValueError
        The file is missing or does not hold exactly ``names``, as float64.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    arrays = load_file(str(path))
    if set(arrays) != names:
        raise ValueError(f"{path.name} holds {sorted(arrays)}, expected {sorted(names)}")
    if any(a.dtype != np.float64 for a in arrays.values()):
        raise ValueError(f"{path.name} must hold float64 arrays")
    return arrays


def check_shapes(
    arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], file: str, F: int
) -> None:
    """ValueError unless every array of ``shapes`` has its shape (F: the fitted width)."""
    wrong = [
        f"{k} {arrays[k].shape} (expected {s})" for k, s in shapes.items() if arrays[k].shape != s
    ]
    if wrong:
        raise ValueError(f"{file} does not match {F} features: {'; '.join(wrong)}")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a state file (ValueError if it is not an object)."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} does not hold an object")
    return value


class Probe(ClassifierMixin, BaseEstimator):
    """Base class of correctness probes: validation, prediction plumbing and persistence.

    Subclasses set ``name`` and ``input_kind``, take ``pos_label=None`` in their constructor
    and implement ``_fit``, ``_predict_positive``, ``_write_state`` and ``_read_state``; they
    receive validated inputs only: a float64 array (n, F) for ``"table"`` probes, a list of
    float64 arrays (T_i, F) for ``"sequence"`` ones, NaN marking missing values in both, and
    y as int64 0/1 (1: ``pos_label_``, the answer is correct). ``classes_`` and ``pos_label_``
    are set before ``_fit`` is called.

    Labels: y holds two labels of any kind (scikit-learn's rule for binary classifiers);
    ``pos_label`` names the one meaning "answer correct", None meaning ``classes_[1]`` (1 for
    0/1 labels). More than two classes, one class, continuous values or fewer than 2 answers
    of a class are refused.

    Attributes
    ----------
    classes_ : ndarray, shape (2,)
        The two labels of y, sorted; column j of :meth:`predict_proba` is P(``classes_[j]``).
    pos_label_ : scalar
        The label meaning "answer correct" (``pos_label``, or ``classes_[1]``).
    n_features_in_ : int
        F, the number of features seen at fit.
    feature_names_in_ : ndarray of str, shape (F,)
        Column names, only when fitted on a DataFrame with string column names.
    """

    name: ClassVar[str]
    input_kind: ClassVar[str] = "table"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # imputed with the training medians
        tags.input_tags.two_d_array = self.input_kind == "table"
        tags.classifier_tags.multi_class = False  # answer correct or not
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "n_features_in_")  # set last, when a fit succeeded

    # -- fit / predict ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> Probe:
        """Fit the probe.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, F), or list of n arrays (T_i, F)
            Features (see ``input_kind``); NaN marks a missing value.
        y : array-like, shape (n,)
            Two labels, e.g. 1 if the LLM's answer is correct, 0 if not (see ``pos_label``);
            a column (n, 1) is flattened with a ``DataConversionWarning``.
        groups : array-like, shape (n,), optional
            Question of each record; early-stopping splits keep a question's answers together.
        sample_weight : array-like of float, shape (n,), optional
            Weight of each record in the training loss (e.g. down-weighted gold and wrong
            teacher-forced answers); non-negative, not all zero. Probes that cannot weight
            rows (the CCPS probes) refuse it.

        Returns
        -------
        self : Probe

        Raises
        ------
        ProbeError
            Not two classes, fewer than 2 answers of a class, infinite values, an all-missing
            feature, or malformed inputs.
        ProbeTypeError
            X holds values that are not numbers (e.g. dicts).
        """
        for attribute in ("n_features_in_", "feature_names_in_"):  # unfitted until it succeeds
            self.__dict__.pop(attribute, None)
        data, n_features, names = self._check_features(X, fitting=True)
        self.classes_, self.pos_label_, labels = _check_labels(
            y, len(data), self.pos_label, type(self).__name__
        )
        weights = _check_sample_weight(sample_weight, labels)
        self._fit(data, labels, _check_groups(groups, len(data)), weights)
        self.n_features_in_ = n_features
        if names is not None:
            self.feature_names_in_ = names
        return self

    def predict_positive(self, X: Any) -> np.ndarray:
        """P(``pos_label_``), i.e. P(correct), for every record: float64 (n,).

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, F), or list of n arrays (T_i, F)
            Features with the columns (names and order) seen at fit; NaN allowed.
        """
        check_is_fitted(self)
        return self._predict_positive(self._check_features(X, fitting=False)[0])

    def predict_proba(self, X: Any) -> np.ndarray:
        """The probability of each class for every record.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, F), or list of n arrays (T_i, F)
            Features with the columns (names and order) seen at fit; NaN allowed.

        Returns
        -------
        proba : ndarray of float64, shape (n, 2)
            Column j is P(``classes_[j]``) (for 0/1 labels, column 1 is P(correct)); rows sum
            to 1.
        """
        positive = self.predict_positive(X)
        columns = [1.0 - positive, positive]
        return np.column_stack(columns if self._positive_index() == 1 else columns[::-1])

    def predict(self, X: Any) -> np.ndarray:
        """The more probable class of every record (ties: ``classes_[0]``); shape (n,)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _positive_index(self) -> int:
        """The position of ``pos_label_`` in ``classes_``."""
        return 1 if self.pos_label_ == self.classes_[1] else 0

    def _fit(
        self, X: Any, y: np.ndarray, groups: np.ndarray | None, sample_weight: np.ndarray | None
    ) -> None:
        raise NotImplementedError

    def _predict_positive(self, X: Any) -> np.ndarray:
        """P(correct), float64 (n,)."""
        raise NotImplementedError

    # -- validation -------------------------------------------------------------------------

    def _check_features(self, X: Any, *, fitting: bool) -> tuple[Any, int, np.ndarray | None]:
        """Validated features — float64 (n, F), or a list of float64 (T_i, F) for sequences —
        with F and the column names (None unless X is a DataFrame with string columns)."""
        if self.input_kind == "sequence":
            data, names = _to_sequences(X), None
            shape = data[0].shape if data else (0,)
        else:
            data, names = _table_to_array(X), _column_names(X)
            shape = data.shape
        if len(data) == 0:
            raise ProbeError(
                "X is empty: found 0 sample(s) (records) while a minimum of 1 is required"
            )
        n_features = shape[1]
        if n_features == 0:
            raise ProbeError(
                f"X is empty: 0 feature(s) (shape={shape}) while a minimum of 1 is required."
            )
        if not fitting:
            if n_features != self.n_features_in_:
                raise ProbeError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            self._check_names(names)
        self._check_values(data, X, fitting=fitting)
        return data, n_features, names

    def _check_names(self, names: np.ndarray | None) -> None:
        """Refuse DataFrame columns that differ (names or order) from those seen at fit."""
        expected = getattr(self, "feature_names_in_", None)
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

    def _check_values(self, data: np.ndarray | list[np.ndarray], X: Any, *, fitting: bool) -> None:
        """Refuse infinities; at fit, refuse all-missing features and warn about missing ones."""
        rows = np.concatenate(data) if isinstance(data, list) else data
        infinite = np.isinf(rows).any(axis=0)
        if infinite.any():
            if isinstance(data, list):
                where = [i for i, m in enumerate(data) if np.isinf(m).any()]
                place = f"records {_listed(where)}"
            else:
                place = f"columns {_listed(self._column_labels(X, infinite))}"
            raise ProbeError(f"X holds infinite values in {place}; replace or clip them")
        if not fitting:
            return
        missing = np.isnan(rows)
        empty = missing.all(axis=0)
        if empty.any():
            raise ProbeError(
                f"features {_listed(self._column_labels(X, empty))} are missing in every "
                "training record; drop them"
            )
        if missing.any():
            warnings.warn(
                f"{int(missing.sum())} missing feature values ({missing.mean():.2%} of X) are "
                "imputed with the training medians",
                PerturbprobeWarning,
                stacklevel=4,
            )

    @staticmethod
    def _column_labels(X: Any, selected: np.ndarray) -> list[Any]:
        """Names (DataFrame) or indices of the selected columns."""
        indices = np.flatnonzero(selected)
        if isinstance(X, pd.DataFrame):
            return [X.columns[i] for i in indices]
        return [int(i) for i in indices]

    # -- persistence ------------------------------------------------------------------------

    def save_state(self, directory: Path) -> list[str]:
        """Write the fitted state into an existing directory.

        Parameters
        ----------
        directory : Path
            Existing directory; files of the same names are overwritten.

        Returns
        -------
        names : list of str
            The file names written, relative to ``directory``.
        """
        check_is_fitted(self)
        directory = Path(directory)
        if not directory.is_dir():
            raise ProbeError(f"cannot save the {self.name} probe: {directory} is not a directory")
        _json_labels(self.classes_)  # refuse unsavable labels before writing anything
        return self._write_state(directory)

    @classmethod
    def load_state(cls, directory: Path, params: dict[str, Any]) -> Probe:
        """A probe built from ``params`` with the state saved by :meth:`save_state`.

        The result predicts identically (bitwise, on CPU) to the probe that was saved.

        Parameters
        ----------
        directory : Path
            Directory holding the state files.
        params : dict
            Constructor parameters (``get_params()`` of the saved probe).

        Raises
        ------
        ProbeError
            A state file is missing, corrupt or does not match ``params``.
        """
        probe = cls(**params)
        try:
            probe._read_state(Path(directory))
        except cls._state_errors() as exc:
            raise ProbeError(
                f"cannot load the {cls.name} probe's state from {directory}: {exc}"
            ) from exc
        return probe

    def _fitted_metadata(self) -> dict[str, Any]:
        """``n_features_in``, ``feature_names`` (or None), ``classes`` and ``pos_label``, for
        the state files."""
        names = getattr(self, "feature_names_in_", None)
        classes = _json_labels(self.classes_)
        return {
            "n_features_in": int(self.n_features_in_),
            "feature_names": None if names is None else [str(n) for n in names],
            "classes": classes,
            "pos_label": classes[self._positive_index()],
        }

    def _restore_metadata(self, metadata: dict[str, Any]) -> None:
        self.n_features_in_ = int(metadata["n_features_in"])
        if metadata["feature_names"] is not None:
            names = np.asarray(metadata["feature_names"], dtype=object)
            if names.shape != (self.n_features_in_,):
                raise ValueError("feature_names do not match n_features_in")
            self.feature_names_in_ = names
        # States written before labels were saved all had the labels 0 and 1.
        classes, positive = metadata.get("classes", [0, 1]), metadata.get("pos_label", 1)
        if len(classes) != 2 or positive not in classes:
            raise ValueError(f"classes {classes} and pos_label {positive!r} do not match")
        if self.pos_label is not None and self.pos_label != positive:
            raise ValueError(
                f"the state was fitted with pos_label={positive!r}, the parameters say "
                f"{self.pos_label!r}"
            )
        self.classes_ = np.asarray(classes)
        self.pos_label_ = self.classes_[classes.index(positive)]

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        """Exceptions meaning "the state files are unreadable" (probes add their formats')."""
        return (OSError, ValueError, KeyError, TypeError, EOFError)

    def _write_state(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def _read_state(self, directory: Path) -> None:
        raise NotImplementedError


class _Registry(Mapping):
    """Probe name → class, importing a probe's module on first access."""

    def __getitem__(self, name: str) -> type[Probe]:
        module, _, attribute = _PROBE_PATHS[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_PROBE_PATHS))

    def __len__(self) -> int:
        return len(_PROBE_PATHS)


PROBES: Mapping[str, type[Probe]] = _Registry()
"""Every probe by name (``ccps``, ``ccps-cnn``, ``lightgbm``, ``logistic``, ``logistic-cv``,
``stacking``)."""


def probe_class(name: str) -> type[Probe]:
    """The probe class registered as ``name``.

    Raises
    ------
    ProbeError
        ``unknown probe 'foo'; choose one of: ccps, ccps-cnn, lightgbm, logistic``
    """
    if name not in _PROBE_PATHS:
        raise ProbeError(f"unknown probe {name!r}; choose one of: {', '.join(PROBES)}")
    return PROBES[name]


def make_probe(name: str, **params: Any) -> Probe:
    """An unfitted probe by registry name.

    Examples
    --------
    >>> make_probe("logistic", C=0.5)
    LogisticProbe(C=0.5)

    Raises
    ------
    ProbeError
        Unknown name or parameter.
    """
    cls = probe_class(name)
    valid = cls().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ProbeError(
            f"unknown parameters for probe {name!r}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    return cls(**params)
