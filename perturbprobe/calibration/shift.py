"""Is a batch of traffic unlike the data the probe was calibrated on? A compact reference of
the training distribution and a per-batch Kolmogorov–Smirnov shift check.

A probe's confidences are calibrated for inputs like its held-out data.
:meth:`ShiftReference.fit` summarises that data — for each named 1-D quantity (the probe's raw
score, a baseline feature) its size ``m`` and its quantiles at the fixed grid ``u_k = k/G``,
``k = 0 … G``, ``G = GRID_SIZE = 200`` (201 numbers: ``np.quantile(..., method="inverted_cdf")``
in exact integer arithmetic, so every stored quantile is an observed value, the first and last
are the minimum and maximum, and 0.5 % steps resolve the CDF well beyond what a KS test on a
few thousand rows can detect) — and persists as plain JSON numbers.
:meth:`ShiftReference.check` compares a batch with it and returns a :class:`ShiftCheck`.

Reference CDF. From the quantiles ``q_0 ≤ … ≤ q_G`` the CDF ``F_R`` is rebuilt as follows.
A value ``v`` equal to the knots ``q_lo … q_hi`` gets ``F_R(v) = u_hi``. A value held by a
single knot is a point of continuity: ``F_R`` is linear from the previous distinct knot up to
it. A value held by two or more knots is an atom (it carries at least ``1/G`` of the mass,
e.g. a feature that is exactly 0 for 30 % of the answers): ``F_R`` stays flat from the previous
distinct knot and jumps at the atom. ``F_R = 0`` below ``q_0`` and 1 from ``q_G`` on. It is
within ``1/G = 0.005`` of the reference sample's empirical CDF everywhere (``inverted_cdf``
brackets it between consecutive levels), and equal to it when ``G/m`` is a whole number ≥ 2
(every sample value is then an atom of ``G/m`` knots); for continuous scores and ``m ≫ G``
the linear pieces are much closer than ``1/G``.

Statistic. For each name held by both, ``D = sup_x |F_B(x) − F_R(x)|`` with ``F_B`` the
empirical CDF of the batch's non-NaN values. Both CDFs are monotone, ``F_B`` is constant and
``F_R`` linear between consecutive points of (batch values ∪ reference knots), so the
supremum is attained at those points or at their left limits: ``D`` is computed exactly.

p-value. ``P(D_{m,n} ≥ D)`` under the null that batch and reference are two samples of one
continuous distribution, with ``m`` the reference's size and ``n`` the batch's non-NaN count:

- exact when ``m·n ≤ EXACT_MAX_CELLS`` (10⁶, e.g. ``m = 2000`` and ``n ≤ 500``): Hodges'
  (1958) count of the lattice paths that stay within ``D`` of the diagonal, the same law as
  ``scipy.stats.ks_2samp(..., method="exact")``, in ``min(m, n)`` vector steps (≈ 0.3–6 ms);
- otherwise Smirnov's limit with the effective size ``n_e = m·n / (m + n)``: the exact
  one-sample Kolmogorov law of ``round(n_e)`` draws (``scipy.stats.kstwo``; Simard &
  L'Ecuyer 2011), i.e. ``ks_2samp(..., method="asymp")``. Measured against the exact law for
  ``1e-4 < p < 0.05`` it is 0–10 % (relative) smaller for ``m = 2000, n = 20 … 1000`` and up
  to 25 % smaller for ``m = n = 100``: at these sizes the exact law is the better one. The same
  formula is used where the exact tail is below 1e-8, beyond the count's precision.

``D`` is measured against the summary, not the reference sample, so the law is exact only up
to the ``1/G`` resolution; because of it, batches so large that the critical ``D`` approaches
0.005 (``n_e`` above about 10⁵, i.e. a reference and a batch both that large) would flag
differences at that resolution. For features with atoms the KS test is conservative (the
false-alarm rate is below the nominal one).

Several names are combined by Bonferroni: with ``k`` tested names,
``p_value = min(1, k · min_j p_j)`` and ``shifted = p_value < alpha``, which bounds the chance
of a false alarm by ``alpha`` whatever the dependence between the features (the univariate-KS
+ Bonferroni detector of Rabanser, Günnemann & Lipton 2019). Batches with fewer than
``MIN_BATCH`` (20) rows are not tested (``shifted`` False, ``p_value`` NaN); NaN values are
dropped per feature and a feature with fewer than ``MIN_BATCH`` non-NaN values is skipped.

References
----------
Kolmogorov (1933); Smirnov (1939, 1948). Two-sample goodness-of-fit statistics.
Hodges (1958). The significance probability of the Smirnov two-sample test. Ark. Mat. 3.
Simard, L'Ecuyer (2011). Computing the two-sided Kolmogorov–Smirnov distribution. J. Stat. Softw.
Rabanser, Günnemann, Lipton (2019). Failing Loudly: An Empirical Study of Methods for Detecting
Dataset Shift. NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perturbprobe.calibration.calibrators import _check_keys
from perturbprobe.errors import CalibrationError

__all__ = ["EXACT_MAX_CELLS", "GRID_SIZE", "MIN_BATCH", "ShiftCheck", "ShiftReference"]

GRID_SIZE = 200
MIN_BATCH = 20
EXACT_MAX_CELLS = 1_000_000
_LEVELS = np.arange(GRID_SIZE + 1) / GRID_SIZE  # (G + 1,)
_RECALIBRATE = (
    "recalibrate the bundle on labelled answers of this traffic (perturbprobe recalibrate)"
)


# --------------------------------------------------------------------------- helpers
def _values(value: Any, name: str, what: str) -> tuple[np.ndarray, int]:
    """1-D float64 values with NaNs dropped, and the length before dropping; ±inf,
    non-numbers or other shapes raise CalibrationError."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} '{name}' must be numeric; {exc}") from None
    if array.ndim != 1:
        raise CalibrationError(f"{what} '{name}' must be a 1-D array; got shape {array.shape}")
    if np.isinf(array).any():
        raise CalibrationError(f"{what} '{name}' must not hold inf values")
    return array[~np.isnan(array)], len(array)


def _grid_quantiles(array: np.ndarray) -> np.ndarray:
    """Quantiles (G + 1,) of ``array`` (m,) at ``k/G``: the order statistic of rank
    ``max(1, ceil(k·m/G))``, numpy's ``inverted_cdf`` in exact integer arithmetic (in floating
    point ``k/G·m`` can land just above a whole number and pick the next value)."""
    m = len(array)
    ranks = np.maximum((np.arange(GRID_SIZE + 1) * m + GRID_SIZE - 1) // GRID_SIZE, 1)
    return np.sort(array)[ranks - 1]


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


@dataclass(frozen=True, eq=False)
class _Summary:
    """One feature's reference: size ``m`` and non-decreasing quantiles (G + 1,) at _LEVELS.

    ``knots`` (d,) are the distinct quantiles; ``top`` (d,) is F_R at each knot and
    ``bottom`` (d,) its left limit there (equal to ``top`` of the previous knot for an atom,
    one level below ``top`` for a single knot; 0 for the first).
    """

    m: int
    quantiles: np.ndarray
    knots: np.ndarray = field(init=False, repr=False, compare=False)
    top: np.ndarray = field(init=False, repr=False, compare=False)
    bottom: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        knots, first, counts = np.unique(self.quantiles, return_index=True, return_counts=True)
        top = _LEVELS[first + counts - 1]
        previous_top = np.concatenate([[0.0], top[:-1]])
        bottom = np.where(counts >= 2, previous_top, _LEVELS[first])
        bottom[0] = 0.0
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "top", top)
        object.__setattr__(self, "bottom", bottom)

    def cdf(self, x: np.ndarray, *, left: bool = False) -> np.ndarray:
        """``F_R(x)`` (right-continuous) or, with ``left``, ``F_R(x−)``; shape of ``x``."""
        knots, top, bottom = self.knots, self.top, self.bottom
        if len(knots) == 1:  # a constant feature: a single atom
            return (x > knots[0] if left else x >= knots[0]).astype(np.float64)
        # segment j: knots[j] ≤ x < knots[j + 1] (right) or knots[j] < x ≤ knots[j + 1] (left)
        index = np.searchsorted(knots, x, side="left" if left else "right") - 1
        j = np.clip(index, 0, len(knots) - 2)
        width = knots[j + 1] - knots[j]
        frac = np.clip((x - knots[j]) / width, 0.0, 1.0)
        inside = top[j] + frac * (bottom[j + 1] - top[j])
        return np.where(index < 0, 0.0, np.where(index >= len(knots) - 1, 1.0, inside))


def _ks_distance(summary: _Summary, batch: np.ndarray) -> float:
    """Exact ``sup_x |F_B(x) − F_R(x)|`` for batch values (n,) against a reference summary."""
    batch = np.sort(batch)
    points = np.union1d(batch, summary.knots)  # (t,)
    n = len(batch)
    right = np.abs(np.searchsorted(batch, points, side="right") / n - summary.cdf(points))
    left = np.abs(np.searchsorted(batch, points, side="left") / n - summary.cdf(points, left=True))
    return float(max(right.max(), left.max()))


def _ks_p_value_asymptotic(d: float, m: int, n: int) -> float:
    """Two-sample KS p-value with Smirnov's effective size (``ks_2samp`` method "asymp")."""
    from scipy.stats import kstwo

    effective = max(1, round(m * n / (m + n)))
    return float(np.clip(kstwo.sf(d, effective), 0.0, 1.0))


def _ks_p_value_exact(d: float, m: int, n: int) -> float:
    """``P(D_{m,n} ≥ d)`` under the null for two samples of sizes m and n (no ties).

    Counts the monotone lattice paths from (0, 0) to (a, b), ``a = min(m, n)``,
    ``b = max(m, n)``, that stay strictly inside ``|i·b − j·a| < d·a·b`` (Hodges 1958); all
    ``C(a + b, a)`` paths are equally likely under the null, so ``p = 1 − inside / total``.
    Row ``i`` of allowed ``j`` is an interval, and there the count is the cumulative sum of
    the previous row's; a row is rescaled to its maximum when that passes 1e250 (log scale
    kept), so nothing overflows. Cost: ``a`` vector operations on at most ``2·d·b + 1``
    numbers. Rounding leaves an absolute error of about 1e-12 on ``p``.
    """
    from scipy.special import gammaln

    a, b = min(m, n), max(m, n)
    t = d * a * b  # paths inside have |i·b − j·a| ≤ limit, an integer
    nearest = round(t)
    limit = (nearest if abs(t - nearest) <= 1e-9 * max(t, 1.0) else math.ceil(t)) - 1
    if limit < 0:
        return 1.0
    row = np.zeros(b + 1)
    row[: min(b, limit // a) + 1] = 1.0  # i = 0: j·a ≤ limit
    log_scale, previous_low = 0.0, 0
    for i in range(1, a + 1):  # the allowed intervals only move right as i grows
        low = max(0, -((limit - i * b) // a))  # ceil((i·b − limit) / a)
        high = min(b, (i * b + limit) // a)
        if low > high:
            return 1.0
        row[previous_low:low] = 0.0
        cells = row[low : high + 1]
        np.cumsum(cells, out=cells)
        peak = cells[-1]  # non-negative cumulative sums: the last is the largest
        if peak == 0:
            return 1.0
        if peak > 1e250:  # a row grows by at most a factor b + 1, far below 1e50: rescale
            cells /= peak
            log_scale += math.log(peak)
        previous_low = low
    log_inside = (
        log_scale + math.log(row[b]) - (gammaln(a + b + 1) - gammaln(a + 1) - gammaln(b + 1))
    )
    return float(np.clip(-math.expm1(min(log_inside, 0.0)), 0.0, 1.0))


def _ks_p_value(d: float, m: int, n: int) -> float:
    """Two-sample KS p-value: exact for ``m·n ≤ EXACT_MAX_CELLS``, Smirnov's otherwise and
    where the exact tail is below 1e-8 (there the count's ~1e-12 absolute error is no longer
    negligible relative to ``p``, and any such ``p`` is far below every sensible level)."""
    if m * n <= EXACT_MAX_CELLS:
        p = _ks_p_value_exact(d, m, n)
        if p >= 1e-8:
            return p
    return _ks_p_value_asymptotic(d, m, n)


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
        self._features: dict[str, _Summary] = {}
        for name, entry in features.items():
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise CalibrationError(
                    f"shift reference feature '{name}' must be (m, quantiles); got {entry!r}"
                )
            self._features[name] = _Summary(
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
            summaries[name] = (len(array), _grid_quantiles(array))
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
        ok = isinstance(alpha, (int, float, np.floating)) and not isinstance(alpha, bool)
        if not ok or not 0 < alpha < 1:
            raise CalibrationError(f"alpha must be in (0, 1), got {alpha!r}")
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
                    d = _ks_distance(summary, array)
                    per_feature[name] = (d, _ks_p_value(d, summary.m, len(array)))
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
        _check_keys(data, ("grid_size", "features"), "a shift reference dict")
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
            _check_keys(entry, ("m", "quantiles"), f"shift reference feature '{name}'")
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
