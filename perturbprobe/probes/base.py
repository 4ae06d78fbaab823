"""The probe contract: what every correctness probe accepts, returns and saves.

A probe maps the features of an (LLM answer) record to P(correct). Every probe is a
scikit-learn classifier (``clone``, pipelines and cross-validation work) with ``classes_ =
[0, 1]``, where 1 means the LLM's answer is correct, so ``predict_proba(X)[:, 1]`` is
P(correct). Two input kinds exist (the class attribute ``input_kind``):

- ``"table"``: X is a DataFrame or a 2-D array (n, F), one row of response-level features per
  record;
- ``"sequence"``: X is a list of 2-D arrays (T_i, F), the per-token feature matrix of each
  response (T_i ≥ 1, the same F for all).

This module holds what the probes share, so each probe only trains and predicts:

- input validation with one set of messages (labels, infinite or missing values, feature count
  and column names at predict time) — missing values are allowed and imputed with the training
  medians by each probe, with one :class:`~perturbprobe.errors.PerturbprobeWarning` at fit;
- :func:`validation_split`, the internal early-stopping split that keeps a question's answers
  on one side;
- persistence (:meth:`Probe.save_state` / :meth:`Probe.load_state`), with non-pickle formats for
  torch and LightGBM;
- the registry :data:`PROBES` and :func:`make_probe`, resolved lazily so that importing this
  module imports neither torch nor LightGBM.
"""

from __future__ import annotations

import importlib
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ..errors import PerturbprobeWarning, ProbeError

__all__ = [
    "MIN_ROWS_PER_CLASS",
    "PROBES",
    "Probe",
    "check_parameter",
    "derive_seed",
    "is_int",
    "make_probe",
    "probe_class",
    "validation_split",
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


def _check_labels(y: Any, n_rows: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ProbeError(f"y must be 1-D (one label per record); got shape {labels.shape}")
    if labels.shape[0] != n_rows:
        raise ProbeError(f"X has {n_rows} records but y has {labels.shape[0]} labels")
    if labels.dtype.kind not in "biuf":
        raise ProbeError(f"y must hold 1 (answer correct) or 0 (incorrect); got {labels.dtype}")
    valid = np.isin(labels, (0, 1))
    if not valid.all():
        found = _listed(pd.unique(labels[~valid]).tolist())
        raise ProbeError(f"y must hold 1 (answer correct) or 0 (incorrect); found {found}")
    labels = labels.astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        only = "correct (1)" if counts[0] == 0 else "incorrect (0)"
        raise ProbeError(
            f"a probe needs both correct and incorrect answers; got only {only} answers "
            f"({n_rows} records)"
        )
    if counts.min() < 2:
        raise ProbeError(
            f"a probe needs at least 2 answers of each class; got {counts[1]} correct and "
            f"{counts[0]} incorrect"
        )
    if counts.min() < MIN_ROWS_PER_CLASS:
        warnings.warn(
            f"only {counts[1]} correct and {counts[0]} incorrect answers: fitting continues, "
            f"but with fewer than {MIN_ROWS_PER_CLASS} of a class the probe and its metrics "
            "are noisy",
            PerturbprobeWarning,
            stacklevel=3,
        )
    return labels


def _check_groups(groups: Any, n_rows: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n_rows:
        raise ProbeError(f"groups must hold one value per record ({n_rows}); got {groups.shape}")
    return groups


def _check_sample_weight(sample_weight: Any, n_rows: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProbeError(f"sample_weight must be numeric: {exc}") from exc
    if weights.shape != (n_rows,):
        raise ProbeError(
            f"sample_weight must hold one weight per record ({n_rows}); got {weights.shape}"
        )
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ProbeError("sample_weight must be finite, non-negative and not all zero")
    return weights


def _table_to_array(X: Any) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        numeric = [
            pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in X.dtypes
        ]
        if not all(numeric):
            bad = [c for c, ok in zip(X.columns, numeric, strict=True) if not ok]
            raise ProbeError(f"X must be numeric; non-numeric columns: {_listed(bad)}")
        return X.to_numpy(dtype=np.float64, na_value=np.nan)
    if sparse.issparse(X):
        raise ProbeError("sparse X is not supported; pass a dense array or DataFrame")
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProbeError(f"X must be a numeric DataFrame or 2-D array: {exc}") from exc
    if array.ndim != 2:
        raise ProbeError(f"X must be 2-D (records × features); got shape {array.shape}")
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
        try:
            matrix = np.asarray(record, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ProbeError(f"record {i} is not a numeric array: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[0] < 1:
            raise ProbeError(f"record {i} must be a 2-D array (T_i ≥ 1, F); got {matrix.shape}")
        if sequences and matrix.shape[1] != sequences[0].shape[1]:
            raise ProbeError(
                f"record {i} has {matrix.shape[1]} features but record 0 has "
                f"{sequences[0].shape[1]}"
            )
        sequences.append(matrix)
    return sequences


class Probe(ClassifierMixin, BaseEstimator):
    """Base class of correctness probes: validation, prediction plumbing and persistence.

    Subclasses set ``name`` and ``input_kind`` and implement ``_fit``, ``_predict_positive``,
    ``_write_state`` and ``_read_state``; they receive validated inputs only: a float64 array
    (n, F) for ``"table"`` probes, a list of float64 arrays (T_i, F) for ``"sequence"`` ones,
    NaN marking missing values in both.

    Attributes
    ----------
    classes_ : ndarray of int, shape (2,)
        ``[0, 1]``; column 1 of :meth:`predict_proba` is P(correct).
    n_features_in_ : int
        F, the number of features seen at fit.
    feature_names_in_ : ndarray of str, shape (F,)
        Column names, only when fitted on a DataFrame with string column names.
    """

    name: ClassVar[str]
    input_kind: ClassVar[str] = "table"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.classifier_tags.multi_class = False  # labels are 1 (correct) / 0 (incorrect)
        return tags

    # -- fit / predict ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> Probe:
        """Fit the probe.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, F), or list of n arrays (T_i, F)
            Features (see ``input_kind``); NaN marks a missing value.
        y : array-like of int, shape (n,)
            1 if the LLM's answer is correct, 0 if not.
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
            One-class labels, fewer than 2 rows of a class, infinite values, an all-missing
            feature, or malformed inputs.
        """
        data, n_features, names = self._check_features(X, fitting=True)
        labels = _check_labels(y, len(data))
        weights = _check_sample_weight(sample_weight, len(data))
        self._fit(data, labels, _check_groups(groups, len(data)), weights)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = n_features
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):  # refitted on an array
            del self.feature_names_in_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(incorrect) and P(correct) for every record.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n, F), or list of n arrays (T_i, F)
            Features with the columns (names and order) seen at fit; NaN allowed.

        Returns
        -------
        proba : ndarray of float64, shape (n, 2)
            Column 1 is P(correct); rows sum to 1.
        """
        check_is_fitted(self)
        positive = self._predict_positive(self._check_features(X, fitting=False)[0])
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any) -> np.ndarray:
        """1 where P(correct) ≥ 0.5, else 0; shape (n,)."""
        positive = self.predict_proba(X)[:, 1]
        return self.classes_[(positive >= 0.5).astype(np.int64)]

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
            n_features = data[0].shape[1] if data else 0
        else:
            data, names = _table_to_array(X), _column_names(X)
            n_features = data.shape[1]
        if len(data) == 0 or n_features == 0:
            raise ProbeError(f"X is empty: {len(data)} records with {n_features} features")
        if not fitting:
            if n_features != self.n_features_in_:
                raise ProbeError(f"expected {self.n_features_in_} features, got {n_features}")
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
        probe.classes_ = np.array([0, 1])
        return probe

    def _fitted_metadata(self) -> dict[str, Any]:
        """``n_features_in`` and ``feature_names`` (or None), for the state files."""
        names = getattr(self, "feature_names_in_", None)
        return {
            "n_features_in": int(self.n_features_in_),
            "feature_names": None if names is None else [str(n) for n in names],
        }

    def _restore_metadata(self, metadata: dict[str, Any]) -> None:
        self.n_features_in_ = int(metadata["n_features_in"])
        if metadata["feature_names"] is not None:
            names = np.asarray(metadata["feature_names"], dtype=object)
            if names.shape != (self.n_features_in_,):
                raise ValueError("feature_names do not match n_features_in")
            self.feature_names_in_ = names

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
