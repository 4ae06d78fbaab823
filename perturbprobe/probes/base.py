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

This module holds the contract and what enforces it, so each probe only trains and predicts:

- :class:`Probe`, whose ``fit`` / ``predict_proba`` validate inputs (:mod:`.inputs`) before a
  subclass sees them, and whose :meth:`Probe.save_state` / :meth:`Probe.load_state` persist in
  formats that are never unpickled (:mod:`.state`: safetensors, JSON, LightGBM's text);
- the registry :data:`PROBES` and :func:`make_probe`, resolved lazily so that importing this
  module imports neither torch nor LightGBM.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import ProbeError
from .inputs import check_features, check_groups, check_labels, check_sample_weight
from .state import json_labels

__all__ = ["PROBES", "Probe", "make_probe", "probe_class"]

_PROBE_PATHS = {
    "ccps": "perturbprobe.probes.ccps:CCPSProbe",
    "ccps-cnn": "perturbprobe.probes.ccps:CCPSSequenceProbe",
    "lightgbm": "perturbprobe.probes.lightgbm:LightGBMProbe",
    "logistic": "perturbprobe.probes.logistic:LogisticProbe",
    "logistic-cv": "perturbprobe.probes.logistic_cv:LogisticCVProbe",
    "stacking": "perturbprobe.probes.stacking:StackingProbe",
}


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
        data, n_features, names = check_features(self, X, fitting=True)
        self.classes_, self.pos_label_, labels = check_labels(
            y, len(data), self.pos_label, type(self).__name__
        )
        weights = check_sample_weight(sample_weight, labels)
        self._fit(data, labels, check_groups(groups, len(data)), weights)
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
        return self._predict_positive(check_features(self, X, fitting=False)[0])

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
        json_labels(self.classes_)  # refuse unsavable labels before writing anything
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
        classes = json_labels(self.classes_)
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
