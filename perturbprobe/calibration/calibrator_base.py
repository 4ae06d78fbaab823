"""The calibrator contract: the :class:`Calibrator` base class, its registry and persistence.

A calibrator maps probabilities ``p`` (n,) to calibrated probabilities (n,); see
:mod:`perturbprobe.calibration.calibrators` for the methods. Concrete classes are added to
:data:`CALIBRATORS` with :func:`register`; ``from_dict`` dispatches on that registry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..errors import CalibrationError, PerturbprobeWarning
from .validation import check_keys, check_labels_and_scores, check_scores

__all__ = [
    "CALIBRATORS",
    "MIN_ROWS_WARN",
    "Calibrator",
    "IdentityCalibrator",
    "calibrator_class",
    "construct_calibrator",
    "register",
    "state_curve",
    "state_number",
]

MIN_ROWS_WARN = 20


# --------------------------------------------------------------------------- persisted state
def state_number(state: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    """``state[key]`` as a finite (``positive``: > 0) float."""
    value = state[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a finite positive number" if positive else "a finite number"
        raise CalibrationError(f"calibrator state '{key}' must be {kind}; got {value!r}")
    return float(value)


def state_curve(
    state: Mapping[str, Any], key: str, *, order: str | None, allow_empty: bool = False
) -> np.ndarray:
    """A list of numbers in [0, 1] as float64 (k,); ``order`` "strict" (strictly increasing),
    "weak" (non-decreasing) or None."""
    value = state[key]
    numbers = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not numbers or (not value and not allow_empty):
        raise CalibrationError(f"calibrator state '{key}' must be a non-empty list of numbers")
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all() or (array.size and (array.min() < 0 or array.max() > 1)):
        raise CalibrationError(f"calibrator state '{key}' must hold finite numbers in [0, 1]")
    steps = np.diff(array)
    if (order == "strict" and (steps <= 0).any()) or (order == "weak" and (steps < 0).any()):
        wanted = "strictly increasing" if order == "strict" else "non-decreasing"
        raise CalibrationError(f"calibrator state '{key}' must be {wanted}")
    return array


def _to_json(value: Any) -> Any:
    """Plain Python numbers and lists from NumPy arrays and scalars (other values unchanged)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


# --------------------------------------------------------------------------- base class
class Calibrator:
    """Base class: validation, the fitted check, ``transform`` and dict persistence.

    Subclasses set ``name``, ``_params`` (constructor keywords) and ``_state`` (fitted
    attribute names), and implement ``_fit(p, y)``, ``_transform(p)`` and
    ``_load_state(state)`` (validate a persisted state, return attribute values).
    """

    name: ClassVar[str]
    _params: ClassVar[tuple[str, ...]] = ()
    _state: ClassVar[tuple[str, ...]] = ()
    _needs_both_classes: ClassVar[bool] = True

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as given to the constructor (scikit-learn convention)."""
        return {key: getattr(self, key) for key in self._params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def _check_params(self) -> None:
        """Raise CalibrationError for an unusable hyper-parameter (none by default)."""

    def fit(self, p: Any, y: Any) -> Calibrator:
        """Fit the map on held-out scores ``p`` (n,) in [0, 1] and labels ``y`` (n,) in {0, 1}.

        Returns ``self``. Raises :class:`CalibrationError` for bad shapes or values, or (for
        learned calibrators) only one class in ``y``.
        """
        p, y = self._fit_input(p, y)
        self._fit(p, y)
        return self

    def _fit_input(self, p: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Checked ``p`` and ``y`` of :meth:`fit` (warnings point at fit's caller)."""
        self._check_params()
        y, p = check_labels_and_scores(y, p, style="calibrator")
        if self._needs_both_classes:
            n_correct = int(y.sum())
            if n_correct in (0, len(y)):
                only = "correct" if n_correct else "incorrect"
                raise CalibrationError(
                    f"{type(self).__name__} needs both correct and incorrect answers; "
                    f"all {len(y)} rows are {only}"
                )
            if len(y) < MIN_ROWS_WARN:
                warnings.warn(
                    f"fitting {type(self).__name__} on {len(y)} rows (fewer than "
                    f"{MIN_ROWS_WARN}); the calibration map will be noisy",
                    PerturbprobeWarning,
                    stacklevel=3,
                )
        return p, y

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not all(hasattr(self, key) for key in self._state):
            raise CalibrationError(f"{type(self).__name__} is not fitted; call fit(p, y) first")

    def transform(self, p: Any) -> np.ndarray:
        """Calibrated P(correct) (n,) in [0, 1] of uncalibrated ``p`` (n,) in [0, 1]."""
        self._check_fitted()
        p = check_scores(p, allow_empty=True)
        return np.clip(self._transform(p), 0.0, 1.0)

    def predict(self, p: Any) -> np.ndarray:
        """Alias of :meth:`transform`."""
        return self.transform(p)

    def _transform(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "params", "state"}`` of plain numbers and lists, ready for ``json.dumps``."""
        self._check_fitted()
        return {
            "name": self.name,
            "params": {k: _to_json(v) for k, v in self.get_params().items()},
            "state": {key: _to_json(getattr(self, key)) for key in self._state},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output, checking every field.

        Called on :class:`Calibrator` itself, dispatches on ``data["name"]``; called on a
        subclass, the name must be that subclass's. Raises :class:`CalibrationError` for a
        non-mapping, missing or extra keys, an unknown name, bad parameters or state.
        """
        check_keys(data, ("name", "params", "state"), "a calibrator dict")
        target = calibrator_class(data["name"])
        if cls is not Calibrator and target is not cls:
            raise CalibrationError(f"expected a '{cls.name}' calibrator; got '{data['name']}'")
        params, state = data["params"], data["state"]
        if not isinstance(params, Mapping):
            raise CalibrationError(f"calibrator 'params' must be a mapping; got {params!r}")
        calibrator = construct_calibrator(target, params)
        calibrator._check_params()
        check_keys(state, target._state, f"calibrator '{target.name}' state")
        for key, value in calibrator._load_state(state).items():
            setattr(calibrator, key, value)
        return calibrator

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- registry
CALIBRATORS: dict[str, type[Calibrator]] = {}
"""Every calibrator class by its ``name``, in registration order."""

_C = TypeVar("_C", bound=type[Calibrator])


def register(cls: _C) -> _C:
    """Class decorator: add ``cls`` to :data:`CALIBRATORS` under ``cls.name``."""
    CALIBRATORS[cls.name] = cls
    return cls


def calibrator_class(name: Any) -> type[Calibrator]:
    """The registered class called ``name``."""
    if not isinstance(name, str) or name not in CALIBRATORS:
        raise CalibrationError(
            f"unknown calibrator {name!r}; choose one of: {', '.join(sorted(CALIBRATORS))}"
        )
    return CALIBRATORS[name]


def construct_calibrator(cls: type[Calibrator], params: Mapping[str, Any]) -> Calibrator:
    """``cls(**params)``, refusing keywords that are not among its hyper-parameters."""
    unknown = sorted(set(map(str, params)) - set(cls._params))
    if unknown:
        raise CalibrationError(
            f"calibrator '{cls.name}' got unknown parameter(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(cls._params) or '(none)'}"
        )
    return cls(**params)


@register
class IdentityCalibrator(Calibrator):
    """No calibration: ``p' = p``. Needs no fitting; ``fit`` only validates its input."""

    name = "none"
    _needs_both_classes = False

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        pass

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return p
