"""Risk-controlled abstention: a confidence threshold with a finite-sample guarantee.

The LLM's answer is given when its confidence is at least a threshold λ and withheld
(abstention) otherwise. The *selective risk* of λ is the error rate among the answers given,
``risk(λ) = P(incorrect | confidence ≥ λ)``. Given held-out ``(confidence, correct)`` pairs
drawn like future data, a target risk ``r`` and a level ``δ``, :func:`risk_controlled_threshold`
picks λ̂ such that

    P( risk(λ̂) ≤ r ) ≥ 1 − δ

over the draw of the held-out rows (Learn then Test; Angelopoulos, Bates, Candès, Jordan, Lei
2021; Bates, Angelopoulos, Lei, Malik, Jordan 2021, "Distribution-free, risk-controlling
prediction sets"; selective classification as in Geifman & El-Yaniv 2017, "Selective
classification for deep neural networks").

How. For a candidate λ, the ``n_λ`` rows with confidence ≥ λ hold ``e_λ`` errors; given
``n_λ``, ``e_λ ~ Binomial(n_λ, risk(λ))``, so the one-sided Clopper–Pearson upper bound
``U(e_λ, n_λ, δ)`` (:func:`clopper_pearson_upper`) exceeds ``risk(λ)`` with probability at
most δ. The null hypothesis ``H0(λ): risk(λ) > r`` is rejected when ``U ≤ r``. Candidates are
tested in a fixed order from high to low confidence (fixed-sequence testing): continue while
rejected, stop at the first non-rejection, return the last rejected λ, i.e. the lowest
certified threshold. Fixed-sequence testing controls the family-wise error rate at δ without
any multiplicity correction, *provided the order does not depend on the tested rows*: build
candidates with :func:`threshold_candidates` from other (reference) rows, or use the fixed
default grid. When nothing is rejected there is no certified threshold: the result's
``threshold`` is None (abstain on everything) and a :class:`PerturbprobeWarning` says why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import CalibrationError, PerturbprobeWarning
from .validation import (
    check_fraction,
    check_keys,
    check_labels_and_scores,
    check_positive_int,
    check_scores,
)

__all__ = [
    "RiskControlledThreshold",
    "clopper_pearson_upper",
    "risk_controlled_threshold",
    "threshold_candidates",
]


_LEVEL_MESSAGE = "{name} must be a number strictly between 0 and 1; got {value!r}"


def _check_level(value: Any, name: str) -> float:
    """A target risk or a level δ strictly between 0 and 1, as a float."""
    return check_fraction(value, name, _LEVEL_MESSAGE)


def _min_rows(target_risk: float, delta: float) -> int:
    """Smallest n whose Clopper–Pearson bound with zero errors is ≤ r: (1 − r)^n ≤ δ."""
    return math.ceil(math.log(delta) / math.log1p(-target_risk))


def clopper_pearson_upper(errors: Any, n: Any, delta: float) -> np.ndarray | float:
    """One-sided Clopper–Pearson upper confidence bound on a binomial error rate.

    ``U = Beta.ppf(1 − δ, e + 1, n − e)``, the largest rate ``q`` with
    ``P(Binomial(n, q) ≤ e) ≥ δ``; ``U = 1`` when ``e == n`` (which includes ``n == 0``).
    If ``e ~ Binomial(n, q)`` then ``P(q ≤ U) ≥ 1 − δ``. Clopper & Pearson (1934).

    Parameters
    ----------
    errors : int or array-like of int
        Error counts ``e``, with ``0 ≤ e ≤ n``.
    n : int or array-like of int
        Trial counts, broadcast against ``errors``.
    delta : float
        Miscoverage level in (0, 1).

    Returns
    -------
    float or ndarray of float64
        The bound, with the broadcast shape of ``errors`` and ``n`` (a float for scalars).

    Raises
    ------
    CalibrationError
        Non-integer or negative counts, ``errors > n``, or ``delta`` outside (0, 1).

    Examples
    --------
    >>> round(clopper_pearson_upper(0, 22, 0.1), 4)  # 1 − 0.1 ** (1 / 22)
    0.0994
    """
    from scipy.stats import beta

    delta = _check_level(delta, "delta")
    errors_arr, n_arr = np.asarray(errors), np.asarray(n)
    for name, arr in (("errors", errors_arr), ("n", n_arr)):
        if arr.dtype.kind not in "iu" or (arr < 0).any():
            raise CalibrationError(f"{name} must be non-negative integers; got {arr!r}")
    errors_arr, n_arr = np.broadcast_arrays(errors_arr, n_arr)
    if (errors_arr > n_arr).any():
        raise CalibrationError("errors must not exceed n")
    all_wrong = errors_arr == n_arr
    bound = np.where(
        all_wrong, 1.0, beta.ppf(1 - delta, errors_arr + 1, np.maximum(n_arr - errors_arr, 1))
    )
    return float(bound) if bound.ndim == 0 else bound


def threshold_candidates(
    reference_confidence: Any,
    *,
    n_test: int,
    target_risk: float,
    delta: float,
    step: float = 0.01,
    start_factor: float = 5.0,
) -> np.ndarray:
    """Descending candidate thresholds for :func:`risk_controlled_threshold`, built from
    reference rows that are independent of the rows the thresholds will be tested on.

    The candidates are the quantiles of ``reference_confidence`` that keep a fraction
    ``c0, c0 + step, …, 1`` of the rows (the ``1 − c`` quantiles), deduplicated, highest
    first, with ``c0 = min(1, max(step, start_factor·n_min / n_test))`` and
    ``n_min = ceil(log δ / log(1 − r))``. Why ``c0``: fixed-sequence testing stops at the
    first candidate it cannot certify, and a threshold that keeps fewer than ``n_min`` rows
    cannot be certified even with zero errors (the Clopper–Pearson bound with no errors is
    ``1 − δ^(1/n)``). Starting the sequence at thresholds that keep about
    ``start_factor·n_min`` of the ``n_test`` tested rows leaves room for errors, so the
    sequence does not end at once: on the demo's 182 test answers a start at 2·n_min failed
    at the first candidate for every probe and every r in 0.15–0.3, while 5·n_min certified
    thresholds keeping 35–46% of the answers at r = 0.25 and 0.3. Any factor keeps the
    guarantee; it trades the highest thresholds (small, rarely useful sets) for power.

    Parameters
    ----------
    reference_confidence : array-like of float, shape (m,)
        Confidences in [0, 1] of rows NOT used for testing (e.g. the validation split);
        using the tested rows themselves voids the guarantee.
    n_test : int
        Number of rows the candidates will be tested on.
    target_risk : float
        Target selective risk ``r`` in (0, 1).
    delta : float
        Level ``δ`` in (0, 1).
    step : float, default 0.01
        Coverage increment in (0, 1].
    start_factor : float, default 5.0
        The first candidate keeps about ``start_factor·n_min`` of the tested rows.

    Returns
    -------
    ndarray of float64, shape (k,)
        Strictly decreasing thresholds in [0, 1].

    Raises
    ------
    CalibrationError
        Bad confidences, ``n_test < 1``, or a level outside its range.

    Examples
    --------
    >>> threshold_candidates([0.1, 0.5, 0.9, 0.7], n_test=100, target_risk=0.2, delta=0.1,
    ...                      step=0.25)
    array([0.57, 0.34, 0.1 ])
    """
    reference = check_scores(reference_confidence, name="reference_confidence")
    target_risk = _check_level(target_risk, "target_risk")
    delta = _check_level(delta, "delta")
    n_test = check_positive_int(n_test, "n_test")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise CalibrationError(f"step must be a number in (0, 1]; got {step!r}")
    if isinstance(start_factor, bool) or not isinstance(start_factor, (int, float)):
        raise CalibrationError(f"start_factor must be a positive number; got {start_factor!r}")
    if not start_factor > 0:
        raise CalibrationError(f"start_factor must be a positive number; got {start_factor!r}")
    start = min(1.0, max(step, start_factor * _min_rows(target_risk, delta) / n_test))
    n_steps = math.ceil((1.0 - start) / step - 1e-9)  # the tolerance absorbs rounding
    coverages = np.minimum(start + step * np.arange(n_steps + 1), 1.0)  # (k,), ends at 1
    thresholds = np.quantile(reference, 1.0 - coverages)
    return np.unique(thresholds)[::-1].copy()


@dataclass(frozen=True)
class RiskControlledThreshold:
    """A certified abstention threshold and what it keeps on the rows it was chosen on.

    Attributes
    ----------
    threshold : float or None
        Answer when confidence ≥ threshold; None: no threshold was certified, abstain always.
    target_risk : float
        The target selective risk ``r``.
    delta : float
        The level ``δ``: ``P(risk(threshold) ≤ r) ≥ 1 − δ``.
    n : int
        Number of rows the threshold was tested on.
    coverage : float
        Fraction of those rows kept (confidence ≥ threshold); 0 when ``threshold`` is None.
    selective_risk : float
        Empirical error rate among the kept rows; NaN when ``threshold`` is None.
    risk_upper_bound : float
        Clopper–Pearson upper bound on the selective risk at ``threshold``; 1 when None.
    n_candidates_tested : int
        Candidates tested before the sequence stopped (the failing one included).
    """

    threshold: float | None
    target_risk: float
    delta: float
    n: int
    coverage: float
    selective_risk: float
    risk_upper_bound: float
    n_candidates_tested: int

    def __post_init__(self) -> None:
        _check_level(self.target_risk, "target_risk")
        _check_level(self.delta, "delta")
        for name in ("n", "n_candidates_tested"):
            check_positive_int(getattr(self, name), name)
        certified = self.threshold is not None
        for name in ("threshold", "coverage", "selective_risk", "risk_upper_bound"):
            value = getattr(self, name)
            if name == "threshold" and not certified:
                continue
            number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
            if name == "selective_risk" and not certified:
                if not (number and math.isnan(value)):
                    raise CalibrationError(
                        f"selective_risk must be NaN (null) without a threshold; got {value!r}"
                    )
            elif not (number and 0 <= value <= 1):
                raise CalibrationError(f"{name} must be a number in [0, 1]; got {value!r}")
        if not certified and self.coverage != 0:
            raise CalibrationError(f"coverage must be 0 without a threshold; got {self.coverage}")
        if certified and self.risk_upper_bound > self.target_risk:
            raise CalibrationError(
                f"risk_upper_bound {self.risk_upper_bound:g} exceeds target_risk "
                f"{self.target_risk:g}, so the threshold is not certified"
            )

    def abstain(self, confidence: Any) -> np.ndarray:
        """Where to abstain.

        Parameters
        ----------
        confidence : array-like of float, shape (n,)
            Calibrated confidences in [0, 1].

        Returns
        -------
        ndarray of bool, shape (n,)
            True where ``confidence < threshold``; all True when ``threshold`` is None.
        """
        confidence = check_scores(confidence, name="confidence", allow_empty=True)
        if self.threshold is None:
            return np.ones(len(confidence), dtype=bool)
        return confidence < self.threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe fields (NaN ``selective_risk`` becomes None)."""
        data = asdict(self)
        if math.isnan(self.selective_risk):
            data["selective_risk"] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskControlledThreshold:
        """Inverse of :meth:`to_dict`; missing, extra or out-of-range fields raise
        :class:`CalibrationError`."""
        check_keys(data, tuple(cls.__dataclass_fields__), "a risk-controlled threshold dict")
        fields = dict(data)
        if fields["selective_risk"] is None:
            fields["selective_risk"] = math.nan
        return cls(**fields)


def risk_controlled_threshold(
    confidence: Any,
    correct: Any,
    *,
    target_risk: float,
    delta: float = 0.1,
    candidates: Any = None,
) -> RiskControlledThreshold:
    """The lowest confidence threshold whose selective risk is certified ≤ ``target_risk``
    with probability ≥ 1 − ``delta`` (Clopper–Pearson bounds, fixed-sequence testing; see the
    module docstring).

    Parameters
    ----------
    confidence : array-like of float, shape (n,)
        Held-out confidences in [0, 1], not used to fit the probe or its calibrator.
    correct : array-like of {0, 1}, shape (n,)
        1 where the answer is correct.
    target_risk : float
        Target selective risk ``r`` in (0, 1).
    delta : float, default 0.1
        Level ``δ`` in (0, 1).
    candidates : array-like of float, shape (k,), optional
        Strictly decreasing thresholds in [0, 1], chosen without looking at these rows
        (:func:`threshold_candidates` on reference rows). Default: the fixed grid
        ``np.linspace(1, 0, 101)``, which is data-independent but weak: its first threshold,
        1.0, keeps only rows whose confidence is exactly 1, so unless enough rows reach 1
        (isotonic and histogram calibrators often map their top bin there) the sequence
        stops at once and nothing is certified. Pass reference-based candidates for power.

    Returns
    -------
    RiskControlledThreshold
        ``threshold`` None, with a :class:`PerturbprobeWarning`, when no candidate is
        certified (too few rows, or a target too strict for this score).

    Raises
    ------
    CalibrationError
        Bad confidences or labels, levels outside (0, 1), or bad candidates.

    Examples
    --------
    >>> import numpy as np
    >>> confidence = np.repeat([0.95, 0.85, 0.75], 40)
    >>> correct = np.r_[np.ones(80, int), np.arange(40) % 2]  # half wrong at 0.75
    >>> risk_controlled_threshold(confidence, correct, target_risk=0.1,
    ...                           candidates=[0.9, 0.8, 0.7]).threshold
    0.8
    """
    correct, confidence = check_labels_and_scores(
        correct, confidence, y_name="correct", p_name="confidence", style="calibrator"
    )
    target_risk = _check_level(target_risk, "target_risk")
    delta = _check_level(delta, "delta")
    if candidates is None:
        candidates = np.linspace(1.0, 0.0, 101)
    candidates = check_scores(candidates, name="candidates")
    if (np.diff(candidates) >= 0).any():
        raise CalibrationError("candidates must be strictly decreasing (highest threshold first)")

    order = np.argsort(-confidence, kind="stable")
    errors_in_top = np.concatenate([[0], np.cumsum(1 - correct[order])])  # (n + 1,)
    kept = len(confidence) - np.searchsorted(np.sort(confidence), candidates, side="left")  # (k,)
    errors = errors_in_top[kept]  # (k,)
    bounds = clopper_pearson_upper(errors, kept, delta)  # (k,)
    rejected = bounds <= target_risk
    n_passed = len(candidates) if rejected.all() else int(np.argmin(rejected))
    n_tested = min(n_passed + 1, len(candidates))

    if n_passed == 0:
        warnings.warn(
            f"no threshold certifies selective risk <= {target_risk:g} with probability "
            f">= {1 - delta:g} on {len(confidence)} rows: the first candidate "
            f"{candidates[0]:g} keeps {kept[0]} rows with {errors[0]} errors (bound "
            f"{bounds[0]:.3g}), and zero errors need at least "
            f"{_min_rows(target_risk, delta)} kept rows; use more held-out rows, a looser "
            "target or delta, or candidates from reference data; abstaining on everything",
            PerturbprobeWarning,
            stacklevel=2,
        )
        return RiskControlledThreshold(
            threshold=None,
            target_risk=target_risk,
            delta=delta,
            n=len(confidence),
            coverage=0.0,
            selective_risk=math.nan,
            risk_upper_bound=1.0,
            n_candidates_tested=n_tested,
        )
    last = n_passed - 1
    return RiskControlledThreshold(
        threshold=float(candidates[last]),
        target_risk=target_risk,
        delta=delta,
        n=len(confidence),
        coverage=float(kept[last] / len(confidence)),
        selective_risk=float(errors[last] / kept[last]),
        risk_upper_bound=float(bounds[last]),
        n_candidates_tested=n_tested,
    )
