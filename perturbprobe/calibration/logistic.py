"""Logistic-link numerics shared by the calibrators and the prior correction.

``logit``/``sigmoid`` maps, the mean logistic NLL, and the Platt fits
``y ~ σ(a·z + b)`` on logits ``z`` (n,): maximum likelihood (:func:`platt_mle`) and MAP with
a log-normal prior on the slope (:func:`platt_map`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LOGIT_EPS",
    "LOG_SLOPE_RANGE",
    "intercept_given_offset",
    "logistic_nll",
    "logit",
    "platt_map",
    "platt_mle",
    "rate_logit",
    "sigmoid",
]

LOGIT_EPS = 1e-7
# log(slope / prior slope) searched by the MAP fit (the slope stays strictly positive).
LOG_SLOPE_RANGE = (-12.0, 6.0)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)) of ``p`` clipped to [LOGIT_EPS, 1 − LOGIT_EPS]; shape of ``p``."""
    p = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def rate_logit(rate: float) -> float:
    """log(rate / (1 − rate)) of a rate strictly between 0 and 1."""
    return math.log(rate) - math.log1p(-rate)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−z), computed as exp(−softplus(−z)) so it neither overflows nor underflows."""
    return np.exp(-np.logaddexp(0.0, -z))


def logistic_nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean −[y log σ(z) + (1 − y) log(1 − σ(z))] = mean(softplus(z) − y·z) for logits z (n,)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def intercept_given_offset(offset: np.ndarray, y: np.ndarray) -> float:
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
        brentq(lambda b: float(sigmoid(offset + b).sum()) - total, -reach, reach, xtol=1e-12)
    )


def platt_mle(z: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """Unconstrained maximum-likelihood ``(a, b)`` of ``y ~ σ(a·z + b)``; ``y`` (n,) may hold
    soft labels in [0, 1]. Newton's method with backtracking from the identity map."""
    design = np.column_stack([z, np.ones_like(z)])  # (n, 2)
    weights = np.array([1.0, 0.0])  # start from the identity map
    loss = logistic_nll(design @ weights, y)
    for _ in range(max_iter):
        prob = sigmoid(design @ weights)  # (n,)
        grad = design.T @ (prob - y) / len(y)  # (2,)
        if np.abs(grad).max() < 1e-12:
            break
        hessian = (design.T * (prob * (1 - prob))) @ design / len(y)  # (2, 2)
        step = np.linalg.lstsq(hessian, grad, rcond=None)[0]
        scale = 1.0
        while scale > 1e-10:
            trial = weights - scale * step
            trial_loss = logistic_nll(design @ trial, y)
            if trial_loss <= loss - 1e-4 * scale * float(grad @ step):
                break
            scale /= 2
        else:
            break  # no descent left: at the optimum up to rounding
        weights, loss = trial, trial_loss
    return float(weights[0]), float(weights[1])


def platt_map(z: np.ndarray, y: np.ndarray, center: float, sd: float) -> tuple[float, float]:
    """MAP ``(a, b)`` of ``y ~ σ(a·z + b)`` with ``log a ~ N(log center, sd²)`` and a flat
    prior on ``b``.

    The objective n·NLL(a, b) + ½ (log(a/center) / sd)² is profiled over ``b`` (exactly, see
    :func:`intercept_given_offset`) and minimised over ``u = log(a/center)`` in
    :data:`LOG_SLOPE_RANGE`: a grid of step 0.25 brackets the smallest value, then bounded
    Brent search refines it. Deterministic; ``a`` is strictly positive.
    """
    from scipy.optimize import minimize_scalar

    n = len(y)

    def profile(u: float) -> float:
        a = center * math.exp(u)
        b = intercept_given_offset(a * z, y)
        return n * logistic_nll(a * z + b, y) + 0.5 * (u / sd) ** 2

    grid = np.arange(LOG_SLOPE_RANGE[0], LOG_SLOPE_RANGE[1] + 1e-9, 0.25)
    values = np.array([profile(u) for u in grid])
    k = int(np.argmin(values))
    low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    result = minimize_scalar(
        profile, bounds=(low, high), method="bounded", options={"xatol": 1e-10}
    )
    u = float(result.x) if result.fun <= values[k] else float(grid[k])
    a = center * math.exp(u)
    return a, intercept_given_offset(a * z, y)
