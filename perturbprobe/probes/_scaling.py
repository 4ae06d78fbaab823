"""Standardisation scales that cannot turn float32 rounding noise into signal.

Features are computed in float32, and the same answer scored in a different batch (other
padding, another BLAS kernel) moves each value by a few units in the last place. A column
that is constant up to such noise — e.g. ``ccps/l2_dist_hidden_max``, which equals the
perturbation radius by construction — would, standardised by its std, map that noise to
values of order 1, and a fitted probe would then give one answer different confidences in
different batches. Such columns are scaled by their magnitude instead, so what is left of
them after centring stays below :data:`MIN_RELATIVE_SPREAD` and carries no weight. (The
feature families report spreads float32 cannot resolve as 0, for the same reason.)
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["MIN_RELATIVE_SPREAD", "noise_constant", "standardisation_scale"]

MIN_RELATIVE_SPREAD = 2.0**-16
"""A column must spread over more than this fraction of its magnitude (128 float32 units in
the last place, some 30x the batch-to-batch noise) for a probe to use it."""


def noise_constant(values: np.ndarray) -> np.ndarray:
    """bool (F,): the columns of ``values`` (n, F) whose non-missing values span no more than
    ``MIN_RELATIVE_SPREAD`` of their largest magnitude (exactly constant columns included; NaN
    ignored, an all-NaN column is not constant)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, not constant
        spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
        return spread <= MIN_RELATIVE_SPREAD * np.nanmax(np.abs(values), axis=0)


def standardisation_scale(filled: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float64 (F,): ``std`` (F,), except that noise-constant columns of ``filled`` (n, F)
    get their largest magnitude (1 when all zero)."""
    constant = noise_constant(filled)
    magnitude = np.abs(filled).max(axis=0)
    fallback = np.where(magnitude > 0, magnitude, 1.0)
    return np.where(constant, fallback, std).astype(np.float64)
