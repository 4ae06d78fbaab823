"""Is a batch of traffic unlike the data the probe was calibrated on? A compact reference of
the training distribution and a per-batch Kolmogorov–Smirnov shift check.

A probe's confidences are calibrated for inputs like its held-out data.
:meth:`ShiftReference.fit` summarises that data — for each named 1-D quantity (the probe's raw
score, a baseline feature) its size ``m`` and its quantiles at the fixed grid ``k/G``,
``G = GRID_SIZE = 200`` — and persists as plain JSON numbers. :meth:`ShiftReference.check`
compares a batch with it, feature by feature, by the two-sample KS test of
:mod:`~perturbprobe.calibration.kolmogorov_smirnov` (the reference CDF rebuilt from the
quantiles, the exact statistic ``D`` and its p-value), on the batch's non-NaN values, and
returns a :class:`ShiftCheck`.

Several names are combined by Bonferroni: with ``k`` tested names,
``p_value = min(1, k · min_j p_j)`` and ``shifted = p_value < alpha``, which bounds the chance
of a false alarm by ``alpha`` whatever the dependence between the features (the univariate-KS
+ Bonferroni detector of Rabanser, Günnemann & Lipton 2019). Batches with fewer than
``MIN_BATCH`` (20) rows are not tested (``shifted`` False, ``p_value`` NaN); NaN values are
dropped per feature and a feature with fewer than ``MIN_BATCH`` non-NaN values is skipped.

References
----------
Rabanser, Günnemann, Lipton (2019). Failing Loudly: An Empirical Study of Methods for Detecting
Dataset Shift. NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CalibrationError
from .kolmogorov_smirnov import (
    EXACT_MAX_CELLS,
    GRID_SIZE,
    QuantileCDF,
    grid_quantiles,
    ks_distance,
    ks_p_value,
)
from .validation import as_float_vector, check_fraction, check_keys

__all__ = ["EXACT_MAX_CELLS", "GRID_SIZE", "MIN_BATCH", "ShiftCheck", "ShiftReference"]

MIN_BATCH = 20
_RECALIBRATE = (
    "recalibrate the bundle on labelled answers of this traffic (perturbprobe recalibrate)"
)


# --------------------------------------------------------------------------- helpers
def _values(value: Any, name: str, what: str) -> tuple[np.ndarray, int]:
    """1-D float64 values with NaNs dropped, and the length before dropping; ±inf,
    non-numbers or other shapes raise CalibrationError."""
    array = as_float_vector(value, f"{what} '{name}'")
    if np.isinf(array).any():
        raise CalibrationError(f"{what} '{name}' must not hold inf values")
    return array[~np.isnan(array)], len(array)


def _check_names(values: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise CalibrationError(f"{what} must be a mapping of name -> values; got {values!r}")
    if not values:
        raise CalibrationError(f"{what} is empty; give at least one named feature")
    for name in values:
        if not isinstance(name, str) or not name:
            raise CalibrationError(f"{what} names must be non-empty strings; got {name!r}")
    return values


def _format_p(p: float) -> str:
    """``2e-9`` rather than ``2e-09``; two significant digits above 0.001."""
    if p >= 1e-3:
        return f"{p:.2g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class ShiftCheck:
    """The outcome of :meth:`ShiftReference.check` on one batch.

    Attributes
    ----------
    statistic : float
        Largest KS distance ``D`` over the tested features; NaN when nothing was tested.
    p_value : float
        Bonferroni-adjusted smallest p-value, ``min(1, k · min p)``; NaN when untested.
    shifted : bool
        ``p_value < alpha``: the batch looks unlike the reference.
    per_feature : dict of str to (float, float)
        ``(D, p)`` (unadjusted p) per tested feature, in the reference's order.
    n : int
        Number of rows in the batch.
    alpha : float
        The level the check was run at.
    """

    statistic: float
    p_value: float
    shifted: bool
    per_feature: dict[str, tuple[float, float]]
    n: int
    alpha: float

    @property
    def tested(self) -> bool:
        """Whether any feature had enough values to be tested."""
        return bool(self.per_feature)

    def message(self) -> str:
        """One line for a log or the command line: shifted or not, on which feature, why."""
        if not self.tested:
            if self.n < MIN_BATCH:
                return (
                    f"too few pairs to test for a shift from the probe's training data "
                    f"({self.n} < {MIN_BATCH})"
                )
            return (
                f"too few non-missing values to test for a shift from the probe's training "
                f"data ({self.n} pairs, every feature has fewer than {MIN_BATCH} values)"
            )
        name, (d, _) = min(self.per_feature.items(), key=lambda item: item[1][1])
        evidence = f"KS D={d:.2g} on {name}, p={_format_p(self.p_value)}, {self.n} pairs"
        if self.shifted:
            return (
                f"input looks unlike the probe's training data ({evidence}): its confidences "
                f"may be miscalibrated; {_RECALIBRATE}"
            )
        return f"no shift from the probe's training data detected ({evidence})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe fields; NaN becomes None and ``(D, p)`` pairs become lists."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "statistic": number(self.statistic),
            "p_value": number(self.p_value),
            "shifted": bool(self.shifted),
            "per_feature": {k: [float(d), float(p)] for k, (d, p) in self.per_feature.items()},
            "n": int(self.n),
            "alpha": float(self.alpha),
        }


# --------------------------------------------------------------------------- reference
class ShiftReference:
    """Quantile summaries of in-distribution features, for :meth:`check` on new batches.

    Build with :meth:`fit` (or :meth:`from_dict`); the constructor takes already-summarised
    features ``{name: (m, quantiles)}`` with ``quantiles`` of length ``GRID_SIZE + 1`` and
    checks them. See the module docstring for the CDF and the test.

    Parameters
    ----------
    features : mapping of str to (int, array-like of float, shape (GRID_SIZE + 1,))
        Per name: the number ``m ≥ MIN_BATCH`` of values summarised and their quantiles at
        ``k / GRID_SIZE``, finite and non-decreasing.

    Raises
    ------
    CalibrationError
        No features, a bad name, ``m``, or quantile list.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = ShiftReference.fit({"probe_score": rng.normal(size=2000)})
    >>> reference.check({"probe_score": rng.normal(size=300)}).shifted
    False
    >>> check = reference.check({"probe_score": rng.normal(1.0, size=300)})
    >>> check.shifted, round(check.statistic, 2)
    (True, 0.41)
    """

    def __init__(self, features: Mapping[str, Any]) -> None:
        features = _check_names(features, "a shift reference")
        self._features: dict[str, QuantileCDF] = {}
        for name, entry in features.items():
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise CalibrationError(
                    f"shift reference feature '{name}' must be (m, quantiles); got {entry!r}"
                )
            self._features[name] = QuantileCDF(
                _check_m(entry[0], name), _check_quantiles(entry[1], name)
            )

    @classmethod
    def fit(cls, values: Mapping[str, Any]) -> ShiftReference:
        """Summarise in-distribution (held-out) values.

        Parameters
        ----------
        values : mapping of str to array-like of float, shape (m_j,)
            Per name, the feature's values on held-out in-distribution data (e.g.
            ``{"probe_score": raw_scores, "baseline/prob:mean": ...}``); lengths may differ.
            NaN values are dropped; each name needs at least ``MIN_BATCH`` others.

        Returns
        -------
        ShiftReference

        Raises
        ------
        CalibrationError
            Not a mapping, no names, non-numeric, non-1-D or inf values, too few values.
        """
        values = _check_names(values, "shift reference values")
        summaries = {}
        for name, raw in values.items():
            array, _ = _values(raw, name, "shift reference feature")
            if len(array) < MIN_BATCH:
                raise CalibrationError(
                    f"shift reference feature '{name}' has {len(array)} non-NaN values; "
                    f"need at least {MIN_BATCH}"
                )
            summaries[name] = (len(array), grid_quantiles(array))
        return cls(summaries)

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, in the order given to :meth:`fit`."""
        return tuple(self._features)

    def sizes(self) -> dict[str, int]:
        """Number of reference values ``m`` per feature."""
        return {name: s.m for name, s in self._features.items()}

    def cdf(self, name: str, x: Any) -> np.ndarray:
        """The reference CDF ``F_R`` of feature ``name`` at ``x`` (any shape), in [0, 1]."""
        if name not in self._features:
            raise CalibrationError(
                f"no feature '{name}' in the shift reference; it has: {', '.join(self.names)}"
            )
        return self._features[name].cdf(np.asarray(x, dtype=np.float64))

    def __repr__(self) -> str:
        return f"ShiftReference({', '.join(f'{k} (m={v})' for k, v in self.sizes().items())})"

    def check(self, values: Mapping[str, Any], *, alpha: float = 0.001) -> ShiftCheck:
        """Test whether a batch looks unlike the reference (KS per feature, Bonferroni).

        Parameters
        ----------
        values : mapping of str to array-like of float, shape (n,)
            The batch's features, one row per (prompt, response) pair; all arrays of the
            names shared with the reference must have the same length ``n``. NaN values are
            dropped per feature; names the reference lacks are ignored.
        alpha : float, default 0.001
            Level in (0, 1): the chance of a false alarm on an in-distribution batch is at
            most about ``alpha``.

        Returns
        -------
        ShiftCheck
            Untested (``shifted`` False, NaN ``statistic`` and ``p_value``) when ``n`` or
            every shared feature's non-NaN count is below ``MIN_BATCH``.

        Raises
        ------
        CalibrationError
            No name shared with the reference, bad values, unequal lengths, bad ``alpha``.
        """
        values = _check_names(values, "shift check values")
        check_fraction(alpha, "alpha")
        shared = [name for name in self._features if name in values]
        if not shared:
            raise CalibrationError(
                f"the batch shares no feature with the shift reference; it has "
                f"{', '.join(map(str, values))}, the reference has {', '.join(self.names)}"
            )
        checked = {name: _values(values[name], name, "batch feature") for name in shared}
        lengths = {name: length for name, (_, length) in checked.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in lengths.items())
            raise CalibrationError(f"batch features must have the same length; got {listed}")
        batch = {name: array for name, (array, _) in checked.items()}
        n = lengths[shared[0]]
        per_feature: dict[str, tuple[float, float]] = {}
        if n >= MIN_BATCH:
            for name, array in batch.items():
                if len(array) >= MIN_BATCH:
                    summary = self._features[name]
                    d = ks_distance(summary, array)
                    per_feature[name] = (d, ks_p_value(d, summary.m, len(array)))
        if not per_feature:
            return ShiftCheck(math.nan, math.nan, False, {}, n, float(alpha))
        p_min = min(p for _, p in per_feature.values())
        p_value = min(1.0, len(per_feature) * p_min)
        statistic = max(d for d, _ in per_feature.values())
        return ShiftCheck(statistic, p_value, p_value < alpha, per_feature, n, float(alpha))

    def to_dict(self) -> dict[str, Any]:
        """``{"grid_size", "features": {name: {"m", "quantiles"}}}`` of plain numbers."""
        return {
            "grid_size": GRID_SIZE,
            "features": {
                name: {"m": s.m, "quantiles": s.quantiles.tolist()}
                for name, s in self._features.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShiftReference:
        """Inverse of :meth:`to_dict`, checking every field.

        Raises
        ------
        CalibrationError
            Not a mapping, missing or extra keys, another grid size, a bad name, ``m`` or
            quantile list (wrong length, not finite, decreasing).
        """
        check_keys(data, ("grid_size", "features"), "a shift reference dict")
        grid = data["grid_size"]
        if isinstance(grid, bool) or grid != GRID_SIZE:
            raise CalibrationError(f"shift reference 'grid_size' must be {GRID_SIZE}; got {grid!r}")
        features = data["features"]
        if not isinstance(features, Mapping):
            raise CalibrationError(
                f"shift reference 'features' must be a mapping; got {features!r}"
            )
        summaries = {}
        for name, entry in features.items():
            check_keys(entry, ("m", "quantiles"), f"shift reference feature '{name}'")
            quantiles = entry["quantiles"]
            numbers = isinstance(quantiles, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in quantiles
            )
            if not numbers:
                raise CalibrationError(
                    f"shift reference feature '{name}' quantiles must be a list of numbers"
                )
            summaries[name] = (entry["m"], quantiles)
        return cls(summaries)


def _check_m(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_BATCH:
        raise CalibrationError(
            f"shift reference feature '{name}' m must be an integer >= {MIN_BATCH}; got {value!r}"
        )
    return int(value)


def _check_quantiles(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(
            f"shift reference feature '{name}' quantiles must be numbers"
        ) from None
    if array.shape != (GRID_SIZE + 1,):
        raise CalibrationError(
            f"shift reference feature '{name}' needs {GRID_SIZE + 1} quantiles; "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise CalibrationError(f"shift reference feature '{name}' quantiles must be finite")
    if (np.diff(array) < 0).any():
        raise CalibrationError(f"shift reference feature '{name}' quantiles must be non-decreasing")
    return array
