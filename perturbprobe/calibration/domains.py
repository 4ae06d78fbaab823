"""Metrics within groups of answers (domains, answer formats), which a score cannot game.

Domains differ in how often the LLM is right (a few percent on one benchmark, most answers on
another), so a score that only recognises the kind of question already ranks a pooled mix of
domains well: its pooled AUROC is high while it says nothing about which answers *within* a
domain are right. :func:`within_domain_auroc` is the unweighted mean over domains of the AUROC
inside each domain, which such a score cannot raise; :func:`per_domain_metrics` is the table
behind it (size, the LLM's accuracy, and the score's mean confidence, AUROC, ECE and Brier per
domain). Both work for any grouping of the answers, e.g. by answer format.

Intervals come from a stratified bootstrap: the correct and the incorrect answers of each
domain are resampled with replacement separately, so every resample keeps each domain's size
and class counts (and so has an AUROC in every domain that has one). The resamples depend only
on the groups, the labels, ``n_bootstrap`` and ``random_state``: scores of the same answers
evaluated with the same seed are compared on the same resamples (a paired bootstrap), as in
:func:`~perturbprobe.calibration.metrics.evaluate_confidence`.

>>> y = [1, 0, 1, 0, 1, 0]
>>> p = [0.9, 0.8, 0.3, 0.2, 0.6, 0.7]
>>> domains = ["math", "math", "math", "math", "trivia", "trivia"]
>>> result = within_domain_auroc(y, p, domains, n_bootstrap=0)
>>> result.value, result.n_domains  # (AUROC 0.75 in math + 0 in trivia) / 2
(0.375, 2)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CalibrationError, PerturbprobeWarning
from .metric_cores import (
    Batch,
    batch_auroc,
    batch_brier,
    batch_calibration_error,
    percentile_interval,
    resample_chunks,
)
from .metrics import MetricInfo, MetricValue
from .validation import check_bootstrap, check_labels_and_scores, check_n_bins

__all__ = [
    "DOMAIN_METRICS",
    "DomainEvaluation",
    "WithinDomainAUROC",
    "evaluate_domains",
    "per_domain_metrics",
    "within_domain_auroc",
]

#: Columns of :func:`per_domain_metrics`, in order.
DOMAIN_COLUMNS = (
    "n",
    "accuracy",
    "mean_confidence",
    "auroc",
    "auroc_low",
    "auroc_high",
    "ece",
    "brier",
)


@dataclass(frozen=True)
class WithinDomainAUROC(MetricValue):
    """:class:`MetricValue` of :func:`within_domain_auroc`, with how many domains it averages.

    Attributes
    ----------
    n_domains : int
        Domains averaged: those holding both correct and incorrect answers.
    n_skipped : int
        Domains left out because all their answers are correct, or all incorrect.
    """

    n_domains: int = 0
    n_skipped: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, float | None]) -> WithinDomainAUROC:
        """Inverse of :meth:`to_dict` (which also holds ``n_domains`` and ``n_skipped``)."""
        base = MetricValue.from_dict(data)
        return cls(
            base.value,
            base.low,
            base.high,
            int(data.get("n_domains") or 0),
            int(data.get("n_skipped") or 0),
        )

    def metric_value(self) -> MetricValue:
        """The plain :class:`MetricValue` (value and interval only)."""
        return MetricValue(self.value, self.low, self.high)


DOMAIN_METRICS: Mapping[str, MetricInfo] = MappingProxyType(
    {
        "within_domain_auroc": MetricInfo(
            lambda y, p, domains: within_domain_auroc(y, p, domains, n_bootstrap=0).value,
            True,
            "mean over domains of the AUROC within each domain (not raised by recognising "
            "the domain)",
        )
    }
)
"""Metrics that need each answer's domain: name → MetricInfo (function of y, p, domains)."""


# ---- grouping ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Groups:
    """The answers of each group, correct ones first; groups sorted by name."""

    names: tuple[str, ...]
    rows: tuple[np.ndarray, ...]  # positions (n_g,) of each group's answers, correct first
    n_pos: np.ndarray  # (G,) correct answers per group
    n_unknown: int  # answers without a group, left out

    @classmethod
    def of(cls, y: np.ndarray, groups: Any, what: str = "domain") -> _Groups:
        labels = group_labels(groups, len(y), f"{what}s")
        known = np.array([label is not None for label in labels], dtype=bool)
        names = sorted({label for label in labels[known]})
        rows, n_pos = [], []
        for name in names:
            members = np.flatnonzero(labels == name)
            correct = y[members] == 1
            rows.append(np.concatenate([members[correct], members[~correct]]))
            n_pos.append(int(correct.sum()))
        return cls(tuple(names), tuple(rows), np.array(n_pos, dtype=np.int64), int((~known).sum()))

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(rows) for rows in self.rows], dtype=np.int64)

    @property
    def two_class(self) -> np.ndarray:
        """(G,) True where a group holds both correct and incorrect answers."""
        return (self.n_pos > 0) & (self.n_pos < self.sizes)


def group_labels(groups: Any, n: int, what: str = "domains") -> np.ndarray:
    """``groups`` as an object array (n,) of str, None where unknown (None, nan, pandas NA).

    Raises
    ------
    CalibrationError
        If ``groups`` is not 1-D of length ``n``.
    """
    arr = np.asarray(groups, dtype=object)
    if arr.ndim != 1 or len(arr) != n:
        raise CalibrationError(
            f"{what} must be a 1-D array with one entry per answer ({n}), got shape {arr.shape}"
        )
    return np.array([None if _unknown(v) else str(v) for v in arr], dtype=object)


def has_groups(groups: Any) -> bool:
    """Whether ``groups`` (None, or array-like of str/None) names at least one group."""
    if groups is None:
        return False
    return any(not _unknown(v) for v in np.asarray(groups, dtype=object).ravel())


def _unknown(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are not "missing"
        return False


# ---- the stratified bootstrap ------------------------------------------------------------------
def _group_aurocs(
    y: np.ndarray, p: np.ndarray, groups: _Groups, n_bootstrap: int, random_state: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC within each group (G,) and on each class-stratified resample (G, n_bootstrap).

    Both are nan for groups with a single class (no random numbers are drawn for them, which
    depends only on the labels, so the resamples stay paired across scores).
    """
    rng = np.random.default_rng(random_state)
    values = np.full(len(groups.names), np.nan)
    draws = np.full((len(groups.names), n_bootstrap), np.nan)
    for g, (rows, n_pos) in enumerate(zip(groups.rows, groups.n_pos, strict=True)):
        size = len(rows)
        if not 0 < n_pos < size:
            continue
        y_g, p_g = y[rows], p[rows]  # correct answers first
        values[g] = batch_auroc(Batch(y_g[None, :], p_g[None, :]))[0]
        for first, m in resample_chunks(n_bootstrap, size):
            picks = np.concatenate(
                [
                    rng.integers(0, n_pos, size=(m, n_pos)),
                    rng.integers(n_pos, size, (m, size - n_pos)),
                ],
                axis=1,
            )  # (m, size): correct answers drawn among the correct, incorrect among the incorrect
            draws[g, first : first + m] = batch_auroc(Batch(y_g[picks], p_g[picks]))
    return values, draws


def _evaluate_one(
    y: np.ndarray,
    p: np.ndarray,
    groups: _Groups,
    n_bins: int,
    n_bootstrap: int,
    confidence_level: float,
    random_state: int | None,
    index_name: str,
) -> tuple[WithinDomainAUROC, pd.DataFrame]:
    """The within-group AUROC and the per-group table of one score, from one bootstrap."""
    values, draws = _group_aurocs(y, p, groups, n_bootstrap, random_state)
    used = groups.two_class
    n_used, n_skipped = int(used.sum()), int((~used).sum())
    if n_used:
        low, high = percentile_interval(draws[used].mean(axis=0), confidence_level)
        within = WithinDomainAUROC(float(values[used].mean()), low, high, n_used, n_skipped)
    else:
        within = WithinDomainAUROC(math.nan, n_domains=0, n_skipped=n_skipped)
    records = []
    for g, rows in enumerate(groups.rows):
        batch = Batch(y[rows][None, :], p[rows][None, :])
        low, high = percentile_interval(draws[g], confidence_level)
        records.append(
            (
                len(rows),
                float(batch.y.mean()),
                float(batch.p.mean()),
                float(values[g]),
                low,
                high,
                float(batch_calibration_error(batch, n_bins, "uniform")[0]),
                float(batch_brier(batch)[0]),
            )
        )
    table = pd.DataFrame.from_records(
        records, columns=list(DOMAIN_COLUMNS), index=pd.Index(list(groups.names), name=index_name)
    )
    table["n"] = table["n"].astype(np.int64)
    return within, table


def _warn_groups(groups: _Groups, what: str, metric: str | None, stacklevel: int) -> None:
    """One warning each for answers without a group and (given ``metric``) one-class groups."""
    total = int(groups.sizes.sum()) + groups.n_unknown
    if groups.n_unknown:
        warnings.warn(
            f"{groups.n_unknown} of {total} answers have no {what} and are left out of the "
            f"per-{what} metrics",
            PerturbprobeWarning,
            stacklevel=stacklevel + 1,
        )
    if metric is None:
        return
    used = groups.two_class
    if not used.any():
        warnings.warn(
            f"{metric} undefined: none of the {len(groups.names)} {what}s holds both correct and "
            "incorrect answers; returning nan",
            PerturbprobeWarning,
            stacklevel=stacklevel + 1,
        )
    elif not used.all():
        skipped = [name for name, ok in zip(groups.names, used, strict=True) if not ok]
        shown = ", ".join(map(repr, skipped[:5])) + (", …" if len(skipped) > 5 else "")
        warnings.warn(
            f"{metric}: {len(skipped)} of {len(groups.names)} {what}s hold a single class (all "
            f"answers correct, or all incorrect) and are skipped ({shown}); averaging over the "
            f"other {int(used.sum())}",
            PerturbprobeWarning,
            stacklevel=stacklevel + 1,
        )


def _settings(n_bins: Any, n_bootstrap: Any, confidence_level: Any, random_state: Any) -> tuple:
    return (
        check_n_bins(n_bins),
        check_bootstrap(n_bootstrap, confidence_level, random_state),
        float(confidence_level),
        random_state,
    )


def _evaluate_score(
    y: Any, p: Any, domains: Any, settings: tuple, index_name: str, metric: str | None
) -> tuple[WithinDomainAUROC, pd.DataFrame]:
    """Check one score's inputs and ``settings`` (n_bins, n_bootstrap, confidence_level,
    random_state), warn about its groups (at the public function's caller) and evaluate it."""
    y_arr, p_arr = check_labels_and_scores(y, p)
    n_bins, n_bootstrap, level, seed = _settings(*settings)
    groups = _Groups.of(y_arr, domains, index_name)
    _warn_groups(groups, index_name, metric, stacklevel=3)
    return _evaluate_one(y_arr, p_arr, groups, n_bins, n_bootstrap, level, seed, index_name)


# ---- public functions -------------------------------------------------------------------------
def within_domain_auroc(
    y: Any,
    p: Any,
    domains: Any,
    *,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
) -> WithinDomainAUROC:
    """Unweighted mean over domains of the AUROC within each domain — higher is better.

    A score that only tells domains apart gets 0.5 here, however high its pooled AUROC.
    Domains whose answers are all correct (or all incorrect) have no AUROC and are skipped,
    with a :class:`PerturbprobeWarning` that counts them; answers without a domain are left
    out, with a warning too.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if the LLM's answer is correct, 0 if not.
    p : array-like of float (n,)
        Predicted probability of correct, in [0, 1].
    domains : array-like (n,)
        Each answer's domain (any grouping works, e.g. answer format): str, or None / nan
        where unknown.
    n_bootstrap : int, default=1000
        Resamples of the stratified bootstrap; 0: no interval (``low`` and ``high`` nan).
        The correct and the incorrect answers of each domain are resampled separately, so
        every resample keeps each domain's size and class counts; the interval is the
        ``(1 ± confidence_level) / 2`` quantiles of the resampled means.
    confidence_level : float in (0, 1), default=0.95
    random_state : int or None, default=0
        Seed; scores of the same answers with the same seed see the same resamples (paired).

    Returns
    -------
    WithinDomainAUROC
        A :class:`MetricValue` with ``n_domains`` (domains averaged) and ``n_skipped``
        (single-class domains left out). nan, with a warning, when no domain holds both
        classes.

    >>> r = within_domain_auroc([1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1], ["a", "a", "b", "b"],
    ...                         n_bootstrap=0)
    >>> r.value, r.n_domains, r.n_skipped
    (1.0, 2, 0)
    """
    settings = (15, n_bootstrap, confidence_level, random_state)
    within, _ = _evaluate_score(y, p, domains, settings, "domain", "within_domain_auroc")
    return within


def per_domain_metrics(
    y: Any,
    p: Any,
    domains: Any,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
    index_name: str = "domain",
) -> pd.DataFrame:
    """Size, the LLM's accuracy and the score's metrics within each domain.

    Parameters
    ----------
    y, p, domains, n_bootstrap, confidence_level, random_state
        As :func:`within_domain_auroc` (same resamples: with the same seed, the per-domain
        intervals and the within-domain interval come from the same bootstrap).
    n_bins : int, default=15
        Equal-width bins of the per-domain ECE.
    index_name : str, default="domain"
        Name of the index (e.g. ``"format"`` when ``domains`` holds answer formats).

    Returns
    -------
    pandas.DataFrame (n_domains, 8)
        Index: the domains, sorted (answers without one are left out, with a warning).
        Columns :data:`DOMAIN_COLUMNS`: ``n`` (answers, int), ``accuracy`` (fraction of the
        LLM's answers that are correct), ``mean_confidence`` (mean ``p``; a calibrated score
        has it close to ``accuracy``), ``auroc`` with its stratified-bootstrap interval
        ``auroc_low``/``auroc_high`` (nan for single-class domains), ``ece`` and ``brier``
        (point estimates: binned errors on small domains are biased upward).

    >>> t = per_domain_metrics([1, 0, 1, 1], [0.9, 0.2, 0.7, 0.6], ["a", "a", "b", "b"],
    ...                        n_bootstrap=0)
    >>> t["n"].tolist(), t["accuracy"].tolist(), t["auroc"].tolist()[0]
    ([2, 2], [0.5, 1.0], 1.0)
    """
    settings = (n_bins, n_bootstrap, confidence_level, random_state)
    _, table = _evaluate_score(y, p, domains, settings, index_name, None)
    return table


@dataclass(frozen=True)
class DomainEvaluation:
    """:func:`evaluate_domains` of several scores on the same answers and resamples.

    Attributes
    ----------
    within : dict of str to WithinDomainAUROC
        Score name → within-domain AUROC.
    table : pandas.DataFrame
        Every score's :func:`per_domain_metrics`, stacked: index (score, domain), columns
        :data:`DOMAIN_COLUMNS`.
    skipped : tuple of str
        Domains holding a single class (no AUROC; left out of ``within``).
    n_unknown : int
        Answers without a domain, left out.
    """

    within: dict[str, WithinDomainAUROC]
    table: pd.DataFrame
    skipped: tuple[str, ...]
    n_unknown: int


def evaluate_domains(
    y: Any,
    scores: Mapping[str, Any],
    domains: Any,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
    index_name: str = "domain",
) -> DomainEvaluation:
    """:func:`within_domain_auroc` and :func:`per_domain_metrics` of every score at once.

    Every score sees the same stratified resamples (paired intervals); the warnings about
    answers without a domain and single-class domains are given once, not once per score.

    Parameters
    ----------
    y : array-like of int (n,)
    scores : mapping of str to array-like of float (n,)
        Score name → predicted probability of correct.
    domains : array-like (n,)
    n_bins, n_bootstrap, confidence_level, random_state, index_name
        As :func:`per_domain_metrics`.

    Returns
    -------
    DomainEvaluation
    """
    if not scores:
        raise CalibrationError("scores is empty; give at least one score")
    n_bins, n_bootstrap, level, seed = _settings(
        n_bins, n_bootstrap, confidence_level, random_state
    )
    y_arr, _ = check_labels_and_scores(y, next(iter(scores.values())))
    groups = _Groups.of(y_arr, domains, index_name)
    _warn_groups(groups, index_name, f"within_{index_name}_auroc", stacklevel=2)
    within, tables = {}, {}
    for name, p in scores.items():
        y_arr, p_arr = check_labels_and_scores(y, p)
        within[name], tables[name] = _evaluate_one(
            y_arr, p_arr, groups, n_bins, n_bootstrap, level, seed, index_name
        )
    table = pd.concat(tables, names=["score", index_name])
    skipped = tuple(n for n, ok in zip(groups.names, groups.two_class, strict=True) if not ok)
    return DomainEvaluation(within, table, skipped, groups.n_unknown)
