"""Parametric calibrators in ``logit(p)``: temperature scaling and Platt scaling.

Both maps are increasing in ``p`` (they never reverse a score's ranking) and accept a
log-normal prior on their scale parameter (``T`` or the slope ``a``), a MAP fit that
:func:`perturbprobe.probes.recalibrate` uses to shrink a refit toward the parent bundle's map.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import CalibrationError, PerturbprobeWarning
from .calibrator_base import Calibrator, register, state_number
from .logistic import logistic_nll, logit, platt_map, platt_mle, rate_logit, sigmoid

__all__ = ["SLOPE_PRIOR_SD", "PlattCalibrator", "TemperatureCalibrator"]

_TEMPERATURE_BOUNDS = (1e-2, 1e2)
# Default standard deviation of the Gaussian prior on log(slope) (Platt) or log(T)
# (temperature): a priori the slope is within a factor e^(±2·0.5) ≈ [0.37, 2.7] of the prior's
# centre 95 % of the time. It is worth a fixed number of nats, so it fades as rows grow.
SLOPE_PRIOR_SD = 0.5

_Prior = tuple[float, float]  # (centre of the scale parameter, sd of its log)


def _check_prior(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise CalibrationError(f"{name} must be a finite positive number; got {value!r}")
    return float(value)


def _prior(center: float | None, center_name: str, sd: float) -> _Prior | None:
    """The checked ``(center, sd)`` of a log-normal prior; None without a centre."""
    if center is None:
        return None
    return _check_prior(center, center_name), _check_prior(sd, "prior_sd")


@register
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
        """Fit ``T`` on ``p``, ``y`` (n,) (see :meth:`Calibrator.fit`); ``prior_temperature``
        > 0: MAP fit with ``log T ~ N(log prior_temperature, prior_sd²)``."""
        p, y = self._fit_input(p, y)
        self._fit(p, y, _prior(prior_temperature, "prior_temperature", prior_sd))
        return self

    def _fit(self, p: np.ndarray, y: np.ndarray, prior: _Prior | None = None) -> None:
        from scipy.optimize import minimize_scalar

        z = logit(p)
        low, high = np.log(_TEMPERATURE_BOUNDS)
        center, sd = (math.log(prior[0]), prior[1]) if prior is not None else (0.0, math.inf)
        n = len(y)

        def objective(log_t: float) -> float:  # (summed NLL + the prior's −log density) / n
            return logistic_nll(z * np.exp(-log_t), y) + 0.5 * ((log_t - center) / sd) ** 2 / n

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
        return sigmoid(logit(p) / self.temperature_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {"temperature_": state_number(state, "temperature_", positive=True)}


@register
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
    the fitted map on the fit data equals the fit data's accuracy. See
    :func:`~perturbprobe.calibration.logistic.platt_map`.

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
        """Fit ``(a, b)`` on ``p``, ``y`` (n,) (see :meth:`Calibrator.fit`); ``prior_slope``
        > 0: MAP fit with ``log a ~ N(log prior_slope, prior_sd²)``, None: constrained
        maximum likelihood."""
        p, y = self._fit_input(p, y)
        self._fit(p, y, _prior(prior_slope, "prior_slope", prior_sd))
        return self

    def _fit(self, p: np.ndarray, y: np.ndarray, prior: _Prior | None = None) -> None:
        z = logit(p)
        if prior is not None:
            self.coef_, self.intercept_ = platt_map(z, y, *prior)
            return
        correct, incorrect = z[y == 1], z[y == 0]
        if correct.min() > incorrect.max():
            warnings.warn(
                "the scores separate correct from incorrect answers perfectly, so Platt "
                "scaling has no finite maximum-likelihood fit; the fitted map is a steep step",
                PerturbprobeWarning,
                stacklevel=3,
            )
        coef, intercept = platt_mle(z, y, self._max_iter)
        if coef <= 0:
            rate = float(y.mean())
            warnings.warn(
                f"the scores rank correct answers below incorrect ones on these {len(y)} rows "
                f"(unconstrained Platt slope {coef:.3g}); the slope is held at 0, so the map "
                f"is constant at their accuracy {rate:.3f}",
                PerturbprobeWarning,
                stacklevel=3,
            )
            coef, intercept = 0.0, rate_logit(rate)
        self.coef_, self.intercept_ = coef, intercept

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(self.coef_ * logit(p) + self.intercept_)

    def _load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {key: state_number(state, key) for key in self._state}
