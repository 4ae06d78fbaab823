"""Post-hoc calibrators: maps from a score's P(correct) to a calibrated P(correct).

A probe's output ``p`` (n,) in [0, 1] ranks answers well but is often over- or under-confident.
A calibrator is fitted on held-out ``(p, y)`` pairs (``y`` = 1 where the LLM's answer is
correct) and maps ``p`` to ``p'`` whose value matches the observed accuracy: among answers with
``p' ≈ 0.8``, about 80 % are correct.

Every calibrator takes *probabilities* (not logits) and returns probabilities, follows the
scikit-learn contract (hyper-parameters keyword-only in the constructor, ``fit(p, y)`` returns
``self``, fitted attributes end in ``_``) and persists as plain numbers:
``to_dict()`` gives ``{"name", "params", "state"}`` ready for ``json.dumps`` and
:meth:`Calibrator.from_dict` (or :func:`calibrator_from_dict`) rebuilds it after checking every
field, so a corrupt or hand-edited file raises :class:`~perturbprobe.errors.CalibrationError`
instead of producing wrong probabilities. No pickle is involved.

Methods whose map is parametric in ``logit(p)`` clip ``p`` to ``[LOGIT_EPS, 1 − LOGIT_EPS]``
first (``LOGIT_EPS = 1e-7``), so scores of exactly 0 or 1 get finite logits (±16.1).
Fitting any learned calibrator needs both correct and incorrect answers; fewer than
``MIN_ROWS_WARN`` (20) rows gives a :class:`~perturbprobe.errors.PerturbprobeWarning`
because the fitted map is then mostly noise.

Temperature, Platt and isotonic maps are non-decreasing: a calibrator never reverses the
ranking of the score it calibrates (Platt's slope is constrained to ``a ≥ 0``, ``T`` to
[0.01, 100]). Platt and temperature scaling also accept a prior on their scale parameter
(``fit(p, y, prior_slope=...)``, ``fit(p, y, prior_temperature=...)``), which
:func:`perturbprobe.probes.recalibrate` uses to shrink a refit toward the parent bundle's map.

References
----------
Guo, Pleiss, Sun, Weinberger (2017). On Calibration of Modern Neural Networks. ICML.
Platt (1999). Probabilistic Outputs for Support Vector Machines.
Zadrozny, Elkan (2001, 2002). Histogram binning; isotonic regression for calibration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from perturbprobe.errors import CalibrationError, PerturbprobeWarning

__all__ = [
    "CALIBRATORS",
    "LOGIT_EPS",
    "MIN_ROWS_WARN",
    "SLOPE_PRIOR_SD",
    "Calibrator",
    "HistogramCalibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "calibrator_from_dict",
    "logit_slope",
    "make_calibrator",
]

LOGIT_EPS = 1e-7
MIN_ROWS_WARN = 20
_TEMPERATURE_BOUNDS = (1e-2, 1e2)
# Default standard deviation of the Gaussian prior on log(slope) (Platt) or log(T)
# (temperature): a priori the slope is within a factor e^(±2·0.5) ≈ [0.37, 2.7] of the prior's
# centre 95 % of the time. It is worth a fixed number of nats, so it fades as rows grow.
SLOPE_PRIOR_SD = 0.5
# log(slope / prior slope) searched by the MAP fit (the slope stays strictly positive).
_LOG_SLOPE_RANGE = (-12.0, 6.0)


# --------------------------------------------------------------------------- shared helpers
def _check_scores(
    p: Any, y: Any = None, *, p_name: str = "p", y_name: str = "y", allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate probabilities ``p`` (n,) and optional 0/1 labels ``y`` (n,).

    Returns float64 ``p`` and int64 ``y`` (None when ``y`` is None); raises
    :class:`CalibrationError` with a one-line message otherwise. ``allow_empty`` lets
    element-wise maps (``transform``, ``abstain``) take zero rows.
    """
    try:
        p = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{p_name} must be numeric probabilities; {exc}") from None
    if p.ndim != 1:
        raise CalibrationError(f"{p_name} must be a 1-D array (n,); got shape {p.shape}")
    if p.size == 0 and not allow_empty:
        raise CalibrationError(f"{p_name} is empty; need at least one row")
    bad = ~np.isfinite(p)
    if bad.any():
        raise CalibrationError(f"{p_name} must be finite; found {int(bad.sum())} NaN/inf values")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise CalibrationError(
            f"{p_name} must lie in [0, 1]; found values from {p.min():g} to {p.max():g}"
        )
    if y is None:
        return p, None
    y = np.asarray(y)
    if y.ndim != 1:
        raise CalibrationError(f"{y_name} must be a 1-D array (n,); got shape {y.shape}")
    if len(y) != len(p):
        raise CalibrationError(
            f"{p_name} and {y_name} must have the same length; got {len(p)} and {len(y)}"
        )
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        odd = y[~np.isin(y, (0, 1))] if y.dtype.kind in "biuf" else y
        raise CalibrationError(
            f"{y_name} must hold only 0 (incorrect) and 1 (correct); found {odd[0].item()!r}"
        )
    return p, y.astype(np.int64)


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)) of ``p`` clipped to [LOGIT_EPS, 1 − LOGIT_EPS]; shape of ``p``."""
    p = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−z), computed as exp(−softplus(−z)) so it neither overflows nor underflows."""
    return np.exp(-np.logaddexp(0.0, -z))


def _logistic_nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean −[y log σ(z) + (1 − y) log(1 − σ(z))] = mean(softplus(z) − y·z) for logits z (n,)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _check_prior(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise CalibrationError(f"{name} must be a finite positive number; got {value!r}")
    return float(value)


def _intercept_given_offset(offset: np.ndarray, y: np.ndarray) -> float:
    """The ``b`` minimising the logistic NLL of ``y`` (n,) at logits ``offset + b``.

    The NLL is convex in ``b`` and its derivative Σσ(offset + b) − Σy is increasing, so the
    optimum is the root of that score equation (it exists when 0 < Σy < n); found by Brent's
    method on a bracket wide enough that every σ is below 1e-17 at one end and above 1 − 1e-17
    at the other. At the optimum the mean of σ(offset + b) equals the mean of ``y``.
    """
    from scipy.optimize import brentq

    total = float(np.sum(y))
    reach = float(np.abs(offset).max()) + 40.0
    return float(
        brentq(lambda b: float(_sigmoid(offset + b).sum()) - total, -reach, reach, xtol=1e-12)
    )


def _platt_mle(z: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """Unconstrained maximum-likelihood ``(a, b)`` of ``y ~ σ(a·z + b)``; ``y`` (n,) may hold
    soft labels in [0, 1]. Newton's method with backtracking from the identity map."""
    design = np.column_stack([z, np.ones_like(z)])  # (n, 2)
    weights = np.array([1.0, 0.0])  # start from the identity map
    loss = _logistic_nll(design @ weights, y)
    for _ in range(max_iter):
        prob = _sigmoid(design @ weights)  # (n,)
        grad = design.T @ (prob - y) / len(y)  # (2,)
        if np.abs(grad).max() < 1e-12:
            break
        hessian = (design.T * (prob * (1 - prob))) @ design / len(y)  # (2, 2)
        step = np.linalg.lstsq(hessian, grad, rcond=None)[0]
        scale = 1.0
        while scale > 1e-10:
            trial = weights - scale * step
            trial_loss = _logistic_nll(design @ trial, y)
            if trial_loss <= loss - 1e-4 * scale * float(grad @ step):
                break
            scale /= 2
        else:
            break  # no descent left: at the optimum up to rounding
        weights, loss = trial, trial_loss
    return float(weights[0]), float(weights[1])


def _platt_map(z: np.ndarray, y: np.ndarray, center: float, sd: float) -> tuple[float, float]:
    """MAP ``(a, b)`` of ``y ~ σ(a·z + b)`` with ``log a ~ N(log center, sd²)`` and a flat
    prior on ``b``.

    The objective n·NLL(a, b) + ½ (log(a/center) / sd)² is profiled over ``b`` (exactly, see
    :func:`_intercept_given_offset`) and minimised over ``u = log(a/center)`` in
    :data:`_LOG_SLOPE_RANGE`: a grid of step 0.25 brackets the smallest value, then bounded
    Brent search refines it. Deterministic; ``a`` is strictly positive.
    """
    from scipy.optimize import minimize_scalar

    n = len(y)

    def profile(u: float) -> float:
        a = center * math.exp(u)
        b = _intercept_given_offset(a * z, y)
        return n * _logistic_nll(a * z + b, y) + 0.5 * (u / sd) ** 2

    grid = np.arange(_LOG_SLOPE_RANGE[0], _LOG_SLOPE_RANGE[1] + 1e-9, 0.25)
    values = np.array([profile(u) for u in grid])
    k = int(np.argmin(values))
    low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    result = minimize_scalar(
        profile, bounds=(low, high), method="bounded", options={"xatol": 1e-10}
    )
    u = float(result.x) if result.fun <= values[k] else float(grid[k])
    a = center * math.exp(u)
    return a, _intercept_given_offset(a * z, y)


def _state_number(state: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = state[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a finite positive number" if positive else "a finite number"
        raise CalibrationError(f"calibrator state '{key}' must be {kind}; got {value!r}")
    return float(value)


def _state_curve(
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


def _check_keys(data: Mapping[str, Any], expected: tuple[str, ...], what: str) -> None:
    """Raise CalibrationError unless ``data`` is a mapping with exactly the keys ``expected``."""
    if not isinstance(data, Mapping):
        raise CalibrationError(f"{what} must be a mapping; got {type(data).__name__}")
    if set(data) != set(expected):
        raise CalibrationError(
            f"{what} must have exactly the keys {', '.join(expected) or '(none)'}; "
            f"got {', '.join(sorted(map(str, data))) or '(none)'}"
        )


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
        """Fit the map on held-out scores.

        Parameters
        ----------
        p : array-like of float, shape (n,)
            Uncalibrated P(correct) in [0, 1].
        y : array-like of {0, 1}, shape (n,)
            1 where the answer is correct.

        Returns
        -------
        self

        Raises
        ------
        CalibrationError
            Bad shapes or values, or (for learned calibrators) only one class in ``y``.
        """
        p, y = self._fit_input(p, y)
        self._fit(p, y)
        return self

    def _fit_input(self, p: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Checked ``p`` and ``y`` of :meth:`fit` (warnings point at fit's caller)."""
        self._check_params()
        p, y = _check_scores(p, y)
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
        """Calibrated P(correct).

        Parameters
        ----------
        p : array-like of float, shape (n,)
            Uncalibrated P(correct) in [0, 1].

        Returns
        -------
        ndarray of float64, shape (n,)
            Calibrated probabilities in [0, 1].
        """
        self._check_fitted()
        p, _ = _check_scores(p, allow_empty=True)
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
        subclass, the name must be that subclass's.

        Raises
        ------
        CalibrationError
            Not a mapping, missing or extra keys, unknown name, bad parameters or state.
        """
        _check_keys(data, ("name", "params", "state"), "a calibrator dict")
        target = _calibrator_class(data["name"])
        if cls is not Calibrator and target is not cls:
            raise CalibrationError(f"expected a '{cls.name}' calibrator; got '{data['name']}'")
        params, state = data["params"], data["state"]
        if not isinstance(params, Mapping):
            raise CalibrationError(f"calibrator 'params' must be a mapping; got {params!r}")
        calibrator = _construct(target, params)
        calibrator._check_params()
        _check_keys(state, target._state, f"calibrator '{target.name}' state")
        for key, value in calibrator._load_state(state).items():
            setattr(calibrator, key, value)
        return calibrator

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- calibrators
class IdentityCalibrator(Calibrator):
    """No calibration: ``p' = p``. Needs no fitting; ``fit`` only validates its input."""

    name = "none"
    _needs_both_classes = False

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        pass

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return p


class TemperatureCalibrator(Calibrator):
    """Temperature scaling: ``p' = σ(logit(p) / T)`` with one ``T > 0`` (Guo et al. 2017).

    ``T`` minimises the negative log-likelihood of ``y`` on the fit data. The NLL is convex in
    ``β = 1/T``, hence unimodal in ``log T``; it is minimised by bounded Brent search
    (``scipy.optimize.minimize_scalar``) over ``T`` in [0.01, 100]. ``T > 1`` softens
    over-confident scores, ``T < 1`` sharpens; the ranking of answers never changes (``T`` is
    positive by construction, so the map is increasing). An optimum on the bound (scores that
    separate the classes perfectly, or that rank them backwards) gives a
    :class:`PerturbprobeWarning`.

    ``fit(p, y, prior_temperature=T0)`` adds a Gaussian prior ``log T ~ N(log T0, sd²)``
    (``prior_sd``, default :data:`SLOPE_PRIOR_SD`) to the summed NLL (a MAP fit, still unimodal
    in ``log T``): with few rows ``T`` stays near ``T0``, with many the data decide.

    Attributes
    ----------
    temperature_ : float
        The fitted ``T``.
    """

    name = "temperature"
    _state = ("temperature_",)

    def fit(
        self,
        p: Any,
        y: Any,
        *,
        prior_temperature: float | None = None,
        prior_sd: float = SLOPE_PRIOR_SD,
    ) -> TemperatureCalibrator:
        """Fit ``T`` on held-out scores (see :meth:`Calibrator.fit`).

        Parameters
        ----------
        p, y : array-like, shape (n,)
            Uncalibrated P(correct) and 0/1 labels.
        prior_temperature : float > 0, optional
            Centre of a log-normal prior on ``T`` (MAP fit); None: maximum likelihood.
        prior_sd : float > 0
            Standard deviation of that prior on ``log T``.
        """
        p, y = self._fit_input(p, y)
        prior = None
        if prior_temperature is not None:
            prior = (
                math.log(_check_prior(prior_temperature, "prior_temperature")),
                _check_prior(prior_sd, "prior_sd"),
            )
        self._fit(p, y, prior)
        return self

    def _fit(self, p: np.ndarray, y: np.ndarray, prior: tuple[float, float] | None = None) -> None:
        from scipy.optimize import minimize_scalar

        z = _logit(p)
        low, high = np.log(_TEMPERATURE_BOUNDS)
        center, sd = prior if prior is not None else (0.0, math.inf)
        n = len(y)

        def objective(log_t: float) -> float:  # (summed NLL + the prior's −log density) / n
            return _logistic_nll(z * np.exp(-log_t), y) + 0.5 * ((log_t - center) / sd) ** 2 / n

        result = minimize_scalar(
            objective, bounds=(low, high), method="bounded", options={"xatol": 1e-10}
        )
        if min(result.x - low, high - result.x) < 1e-6:
            warnings.warn(
                f"the fitted temperature {np.exp(result.x):.3g} is at the search bound "
                f"{_TEMPERATURE_BOUNDS}; the scores separate the classes perfectly or rank "
                "them backwards",
                PerturbprobeWarning,
                stacklevel=3,
            )
        self.temperature_ = float(np.exp(result.x))

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(_logit(p) / self.temperature_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {"temperature_": _state_number(state, "temperature_", positive=True)}


class PlattCalibrator(Calibrator):
    """Platt scaling: ``p' = σ(a·logit(p) + b)`` (Platt 1999, on logits as in Guo et al. 2017),
    with the slope constrained to ``a ≥ 0`` so the map never reverses the score's ranking.

    ``(a, b)`` is the maximum-likelihood logistic regression of ``y`` on ``logit(p)`` subject to
    ``a ≥ 0``. The NLL is convex in ``(a, b)``: Newton's method with backtracking finds the
    unconstrained optimum, and when its slope is ``≤ 0`` (the scores rank correct answers
    below incorrect ones on the fit data) the constrained optimum lies on ``a = 0``: the
    constant map at the fit data's accuracy, ``b = logit(mean y)``, with a
    :class:`PerturbprobeWarning`. (Before this constraint a backwards score got a decreasing
    map; a stored map with ``a < 0`` still loads.) When the scores separate the classes
    perfectly the maximum-likelihood ``a`` is infinite: Newton stops (gradient below 1e-12,
    or 100 steps) at a very steep map, and a :class:`PerturbprobeWarning` says so.

    ``fit(p, y, prior_slope=a0)`` is a MAP fit instead: Gaussian prior
    ``log a ~ N(log a0, sd²)`` (``prior_sd``, default :data:`SLOPE_PRIOR_SD`), flat prior on
    ``b``. The prior is added to the *summed* NLL, so it weighs like a fixed number of rows
    and fades as rows grow. The slope stays strictly positive (the map is strictly
    increasing: it keeps the ranking exactly), and because ``b`` is unpenalised the mean of
    the fitted map on the fit data equals the fit data's accuracy. See :func:`_platt_map`.

    Attributes
    ----------
    coef_ : float
        The slope ``a``.
    intercept_ : float
        The offset ``b``.
    """

    name = "platt"
    _state = ("coef_", "intercept_")
    _max_iter: ClassVar[int] = 100  # Newton converges in < 20 steps unless the data separate

    def fit(
        self,
        p: Any,
        y: Any,
        *,
        prior_slope: float | None = None,
        prior_sd: float = SLOPE_PRIOR_SD,
    ) -> PlattCalibrator:
        """Fit ``(a, b)`` on held-out scores (see :meth:`Calibrator.fit`).

        Parameters
        ----------
        p, y : array-like, shape (n,)
            Uncalibrated P(correct) and 0/1 labels.
        prior_slope : float > 0, optional
            Centre of a log-normal prior on the slope ``a`` (MAP fit); None: constrained
            maximum likelihood.
        prior_sd : float > 0
            Standard deviation of that prior on ``log a``.
        """
        p, y = self._fit_input(p, y)
        prior = None
        if prior_slope is not None:
            prior = (_check_prior(prior_slope, "prior_slope"), _check_prior(prior_sd, "prior_sd"))
        self._fit(p, y, prior)
        return self

    def _fit(self, p: np.ndarray, y: np.ndarray, prior: tuple[float, float] | None = None) -> None:
        z = _logit(p)
        if prior is not None:
            self.coef_, self.intercept_ = _platt_map(z, y, *prior)
            return
        correct, incorrect = z[y == 1], z[y == 0]
        if correct.min() > incorrect.max():
            warnings.warn(
                "the scores separate correct from incorrect answers perfectly, so Platt "
                "scaling has no finite maximum-likelihood fit; the fitted map is a steep step",
                PerturbprobeWarning,
                stacklevel=3,
            )
        coef, intercept = _platt_mle(z, y, self._max_iter)
        if coef <= 0:
            rate = float(y.mean())
            warnings.warn(
                f"the scores rank correct answers below incorrect ones on these {len(y)} rows "
                f"(unconstrained Platt slope {coef:.3g}); the slope is held at 0, so the map "
                f"is constant at their accuracy {rate:.3f}",
                PerturbprobeWarning,
                stacklevel=3,
            )
            coef, intercept = 0.0, math.log(rate) - math.log1p(-rate)
        self.coef_, self.intercept_ = coef, intercept

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(self.coef_ * _logit(p) + self.intercept_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {key: _state_number(state, key) for key in self._state}


class IsotonicCalibrator(Calibrator):
    """Isotonic regression: the non-decreasing step map minimising squared error to ``y``
    (Zadrozny & Elkan 2002), linearly interpolated between its knots.

    Fitted with ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip", y_min=0,
    y_max=1)``; only its knots are kept, and ``transform`` is ``np.interp`` over them (which
    clips outside the knots, as ``out_of_bounds="clip"`` does), so loading needs no
    scikit-learn object. Flexible but data-hungry: it overfits small calibration sets.

    Attributes
    ----------
    X_thresholds_ : ndarray of float64, shape (k,)
        Strictly increasing knot positions (input scores).
    y_thresholds_ : ndarray of float64, shape (k,)
        Non-decreasing calibrated values at the knots.
    """

    name = "isotonic"
    _state = ("X_thresholds_", "y_thresholds_")

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        self.X_thresholds_ = np.asarray(fitted.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(fitted.y_thresholds_, dtype=np.float64)

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.X_thresholds_, self.y_thresholds_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        x = _state_curve(state, "X_thresholds_", order="strict")
        y = _state_curve(state, "y_thresholds_", order="weak")
        if len(x) != len(y):
            raise CalibrationError(
                f"calibrator state 'X_thresholds_' and 'y_thresholds_' must have the same "
                f"length; got {len(x)} and {len(y)}"
            )
        return {"X_thresholds_": x, "y_thresholds_": y}


class HistogramCalibrator(Calibrator):
    """Histogram binning: ``p'`` = the fraction of correct answers in ``p``'s bin
    (Zadrozny & Elkan 2001), with equal-mass bins.

    Edges: the inverted-CDF quantiles of the fit scores at 1/n_bins, …, (n_bins − 1)/n_bins
    (so every edge is a fit score), deduplicated, minus any edge equal to the largest fit
    score. Bin ``k`` holds the scores in ``(e[k−1], e[k]]`` with ``e[−1] = −∞`` and
    ``e[m] = +∞`` (``np.searchsorted(edges, p, side="left")``). Hence every bin holds at
    least one fit row, tied scores always share a bin, there are at most ``n_bins`` bins, and
    new scores below or above the fit range fall into the first or last bin. The map is
    piecewise constant and need not be monotone.

    Parameters
    ----------
    n_bins : int, default 10
        The number of equal-mass bins (fewer when scores tie).

    Attributes
    ----------
    bin_edges_ : ndarray of float64, shape (m,)
        Strictly increasing interior edges.
    bin_values_ : ndarray of float64, shape (m + 1,)
        Mean label per bin.
    """

    name = "histogram"
    _params = ("n_bins",)
    _state = ("bin_edges_", "bin_values_")

    def __init__(self, *, n_bins: int = 10) -> None:
        self.n_bins = n_bins

    def _check_params(self) -> None:
        n_bins = self.n_bins
        if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
            raise CalibrationError(
                f"The 'n_bins' parameter of HistogramCalibrator must be an int >= 1. "
                f"Got {n_bins!r} instead."
            )

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:
        levels = np.arange(1, self.n_bins) / self.n_bins
        edges = np.unique(np.quantile(p, levels, method="inverted_cdf"))
        self.bin_edges_ = edges[edges < p.max()]
        bins = np.searchsorted(self.bin_edges_, p, side="left")  # (n,) in 0..m
        counts = np.bincount(bins, minlength=len(self.bin_edges_) + 1)
        self.bin_values_ = np.bincount(bins, weights=y, minlength=len(counts)) / counts

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return self.bin_values_[np.searchsorted(self.bin_edges_, p, side="left")]

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        edges = _state_curve(state, "bin_edges_", order="strict", allow_empty=True)
        values = _state_curve(state, "bin_values_", order=None)
        if len(values) != len(edges) + 1:
            raise CalibrationError(
                f"calibrator state 'bin_values_' must have one more entry than 'bin_edges_'; "
                f"got {len(values)} and {len(edges)}"
            )
        return {"bin_edges_": edges, "bin_values_": values}


# --------------------------------------------------------------------------- registry
CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.name: cls
    for cls in (
        IdentityCalibrator,
        TemperatureCalibrator,
        PlattCalibrator,
        IsotonicCalibrator,
        HistogramCalibrator,
    )
}


def _calibrator_class(name: Any) -> type[Calibrator]:
    if not isinstance(name, str) or name not in CALIBRATORS:
        raise CalibrationError(
            f"unknown calibrator {name!r}; choose one of: {', '.join(sorted(CALIBRATORS))}"
        )
    return CALIBRATORS[name]


def _construct(cls: type[Calibrator], params: Mapping[str, Any]) -> Calibrator:
    unknown = sorted(set(map(str, params)) - set(cls._params))
    if unknown:
        raise CalibrationError(
            f"calibrator '{cls.name}' got unknown parameter(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(cls._params) or '(none)'}"
        )
    return cls(**params)


def make_calibrator(name: str, **params: Any) -> Calibrator:
    """An unfitted calibrator by registry name.

    Parameters
    ----------
    name : {"none", "temperature", "platt", "isotonic", "histogram"}
    **params
        Hyper-parameters of that calibrator (``n_bins`` for ``"histogram"``).

    Returns
    -------
    Calibrator

    Raises
    ------
    CalibrationError
        Unknown name, unknown parameter, or a bad parameter value.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.linspace(0.05, 0.95, 40)  # a score that ignores how often the LLM is right
    >>> y = (np.arange(40) % 4 != 0).astype(int)  # 75 % correct everywhere
    >>> make_calibrator("platt").fit(p, y).transform([0.2, 0.9]).round(2)
    array([0.71, 0.81])
    """
    calibrator = _construct(_calibrator_class(name), params)
    calibrator._check_params()
    return calibrator


def calibrator_from_dict(data: Mapping[str, Any]) -> Calibrator:
    """Rebuild any calibrator from its :meth:`Calibrator.to_dict`, dispatching on ``"name"``.

    Raises
    ------
    CalibrationError
        See :meth:`Calibrator.from_dict`.
    """
    return Calibrator.from_dict(data)


def logit_slope(calibrator: Calibrator, p: Any) -> float:
    """The slope in ``logit(p)`` of a fitted calibrator's map, as a Platt map ``σ(a·logit(p) + b)``.

    Exact for the maps of that form: Platt (``coef_``), temperature (``1 / T``) and none (1).
    For the others (isotonic, histogram) the slope of the Platt map closest to the
    calibrator's, in cross-entropy over the scores ``p`` (a logistic fit with the
    calibrator's outputs as soft labels), unconstrained: ≤ 0 for a flat or decreasing map.

    Parameters
    ----------
    calibrator : Calibrator
        Fitted.
    p : array-like of float, shape (n,)
        Scores on which to compare the maps (only used for isotonic and histogram).
    """
    if isinstance(calibrator, PlattCalibrator):
        calibrator._check_fitted()
        return float(calibrator.coef_)
    if isinstance(calibrator, TemperatureCalibrator):
        calibrator._check_fitted()
        return 1.0 / calibrator.temperature_
    if isinstance(calibrator, IdentityCalibrator):
        return 1.0
    target = calibrator.transform(p)
    return _platt_mle(_logit(_check_scores(p)[0]), target)[0]
