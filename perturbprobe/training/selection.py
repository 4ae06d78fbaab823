"""Model selection for ``fit --probe auto``: cross-validation over probes × families.

With a few hundred labelled answers a single validation split picks noise, so every candidate
(a probe on a set of feature families) is cross-validated on the *training* questions only:

1. the training rows are split into folds: ``n_folds`` grouped by question (stratified by
   label), or — ``fold_by="domain"`` — one per domain (leave one domain out), so a candidate
   is judged on kinds of questions it did not see, as it will be in production;
2. each candidate is fitted on all folds but one and predicts the held-out fold's evaluation
   rows (the LLM's own, ``generated``, answers when there are any);
3. the pooled out-of-fold scores are Platt-calibrated *across* folds (each fold's scores by a
   map fitted on the other folds' scores), since the bundle calibrates too and a raw score's
   miscalibration is not what should decide;
4. the candidate with the lowest log-loss wins; ties within 1e-4 go to the earlier (simpler)
   candidate.

The table (log-loss with its spread over folds, AUROC, within-domain AUROC, Brier, fit time)
goes into the bundle's report, so a reader sees how close the runners-up were. The out-of-fold
scores of every candidate are kept: the bundle's calibrator is fitted on the chosen one's.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..calibration.calibrators import PlattCalibrator
from ..calibration.domains import has_groups, within_domain_auroc
from ..calibration.metrics import brier_score_loss, log_loss, roc_auc_score
from ..data.splits import domain_folds
from ..errors import PerturbprobeWarning, ProbeError
from ..features import FeatureSet
from ..probes.logistic_cv import cv_folds

__all__ = ["FOLD_BY", "Candidate", "Selection", "default_candidates", "select_probe"]

FOLD_BY = ("question", "domain")

logger = logging.getLogger(__name__)

_TIE = 1e-4


@dataclass(frozen=True)
class Candidate:
    """A probe (registry name) on the columns of some feature families."""

    probe: str
    families: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.probe} on {' + '.join(self.families)}"


@dataclass
class Selection:
    """Result of :func:`select_probe`.

    Attributes
    ----------
    best : Candidate
    table : DataFrame
        One row per candidate (index: its label), best first: ``log_loss`` (pooled),
        ``log_loss_sd`` (over folds), ``auroc``, ``within_domain_auroc``, ``brier``,
        ``features``, ``seconds``.
    n_folds : int
    rows : int
        Evaluation rows the scores were computed on.
    fold_by : {"question", "domain"}
    scores : dict of str to ndarray (n_records,)
        Every candidate's raw out-of-fold scores by label (NaN outside the evaluation rows).
    fold_of : int ndarray (n_records,)
        The fold that held each record out (-1: none).
    """

    best: Candidate
    table: pd.DataFrame
    n_folds: int
    rows: int
    fold_by: str = "question"
    scores: dict[str, np.ndarray] | None = None
    fold_of: np.ndarray | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary for a bundle manifest."""
        return {
            "best": {"probe": self.best.probe, "families": list(self.best.families)},
            "fold_by": self.fold_by,
            "n_folds": self.n_folds,
            "rows": self.rows,
            "table": self.table.reset_index().to_dict("records"),
        }


def default_candidates(featureset: FeatureSet) -> list[Candidate]:
    """The candidates ``--probe auto`` compares, simplest first.

    - ``lightgbm`` on every scalar family (the previous default);
    - with a wide block (``hidden_states``): ``logistic-cv`` on the block alone (the
      activation probe) and ``stacking`` over every family (per-family probes combined by a
      logistic meta-model, so the scalar families add to the block instead of drowning in it).

    ``logistic-cv`` on the scalar families is not a default candidate: on the default LLM it
    lost to LightGBM on the same columns in every fold (cross-validated log-loss 0.607 vs
    0.538) at three times the cost. Pass ``candidates`` to compare it anyway.
    """
    blocks = tuple(featureset.block_layouts)
    scalar = tuple(
        family
        for family in featureset.families
        if family not in blocks and any(c.split("/", 1)[0] == family for c in featureset.schema)
    )
    candidates = []
    if scalar:
        candidates.append(Candidate("lightgbm", scalar))
    for block in blocks:
        candidates.append(Candidate("logistic-cv", (block,)))
    if blocks and (scalar or len(blocks) > 1):
        candidates.append(Candidate("stacking", scalar + blocks))
    if not candidates:
        raise ProbeError("the features have no response-level columns to select a probe on")
    return candidates


def select_probe(
    featureset: FeatureSet,
    rows: np.ndarray,
    build: Callable[[Candidate], tuple[object, Callable]],
    candidates: Sequence[Candidate],
    *,
    evaluation_rows: np.ndarray,
    sample_weight: np.ndarray | None = None,
    n_folds: int = 5,
    fold_by: str = "question",
    random_state: int = 0,
    progress: bool = False,
) -> Selection:
    """Cross-validate ``candidates`` on ``rows`` and return the one with the lowest log-loss.

    Parameters
    ----------
    featureset : FeatureSet
        Labelled features.
    rows : int array
        Positions of the rows to cross-validate on (the training part).
    build : callable
        ``build(candidate) -> (unfitted probe, inputs)`` where ``inputs(positions)`` gives the
        probe's input for those rows (see :func:`perturbprobe.probes.fit_bundle`).
    candidates : sequence of Candidate
    evaluation_rows : int array
        The subset of ``rows`` whose out-of-fold scores are compared (the generated answers).
    sample_weight : float array (n_records,), optional
        Training weight of every record of ``featureset``.
    n_folds : int
        Folds grouped by question (``fold_by="question"``).
    fold_by : {"question", "domain"}
        ``domain``: leave one domain out (:func:`~perturbprobe.data.splits.domain_folds`;
        needs the FeatureSet's domains).
    random_state : int
        Seeds the folds and the probes.
    progress : bool
        Show a progress bar over candidate × fold fits.

    Raises
    ------
    ProbeError
        Too few questions (domains) for the folds, or evaluation rows of one class.
    """
    if not candidates:
        raise ProbeError("no candidate probes to select from")
    if fold_by not in FOLD_BY:
        raise ProbeError(f"fold_by must be one of {', '.join(FOLD_BY)}, got {fold_by!r}")
    y = featureset.y
    questions = np.asarray(featureset.question_ids, dtype=object)
    domains = featureset.domains
    if fold_by == "domain":
        mask = np.zeros(len(y), dtype=bool)
        mask[evaluation_rows] = True
        folds = domain_folds(rows, domains, y, mask)
    else:
        folds = _folds(rows, y, questions, n_folds, random_state)
    evaluated = np.isin(rows, evaluation_rows) & np.isin(
        rows, np.concatenate([h for _, h in folds])
    )
    fold_of = np.full(len(y), -1)
    for k, (_, held) in enumerate(folds):
        fold_of[held] = k
    scored = rows[evaluated]
    if set(y[scored].tolist()) != {0, 1}:
        raise ProbeError(
            "the model selection's evaluation answers are all of one class; collect more "
            "questions or pass a single probe instead of auto"
        )
    results, oof = [], {}
    bar = tqdm(
        total=len(candidates) * len(folds), desc="selecting", unit="fit", disable=not progress
    )
    with bar:
        for candidate in candidates:
            start = time.perf_counter()
            scores = np.full(len(y), np.nan)
            for train, held in folds:
                probe, inputs = build(candidate)
                weights = None if sample_weight is None else sample_weight[train]
                probe.fit(inputs(train), y[train], groups=questions[train], sample_weight=weights)
                target = held[np.isin(held, scored)]
                scores[target] = probe.predict_proba(inputs(target))[:, 1]
                bar.update()
            oof[candidate.label] = scores
            row = _summarise(candidate, scores[scored], y[scored], fold_of[scored], domains[scored])
            row["features"] = int(probe.n_features_in_)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results.append(row)
            logger.info("selection: %s log-loss %.4f", candidate.label, results[-1]["log_loss"])
    table = pd.DataFrame(results).set_index("candidate")
    order = sorted(range(len(results)), key=lambda i: results[i]["log_loss"])
    best = order[0]
    for i in order[1:]:  # ties go to the earlier candidate
        if results[i]["log_loss"] <= results[best]["log_loss"] + _TIE and i < best:
            best = i
    table = table.iloc[[best] + [i for i in order if i != best]]
    return Selection(candidates[best], table, len(folds), len(scored), fold_by, oof, fold_of)


def _folds(rows, y, questions, n_folds, random_state):
    """``cv_folds`` over ``rows``, as positions of the whole FeatureSet."""
    folds = cv_folds(y[rows], questions[rows], n_folds, random_state)
    return [(rows[train], rows[held]) for train, held in folds]


def cross_fitted_platt(scores: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each fold's scores (n,) Platt-calibrated by a map fitted on the other folds' scores."""
    calibrated = np.empty_like(scores)
    for k in np.unique(fold):
        inside, outside = fold == k, fold != k
        if len(set(y[outside].tolist())) < 2:
            raise ProbeError(
                "too few answers for the model selection's cross-fitted calibration (the "
                "other folds hold one class only); pass a single probe instead of auto"
            )
        calibrated[inside] = (
            PlattCalibrator().fit(scores[outside], y[outside]).transform(scores[inside])
        )
    return calibrated


def _within_domain_auroc(y: np.ndarray, scores: np.ndarray, domains: np.ndarray) -> float:
    """The within-domain AUROC's value (NaN without domains), warnings left to the report."""
    if not has_groups(domains):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerturbprobeWarning)
        return float(within_domain_auroc(y, scores, domains, n_bootstrap=0).value)


def _summarise(candidate, scores, y, fold, domains) -> dict:
    """Cross-fitted Platt calibration of the pooled out-of-fold scores, then the metrics."""
    calibrated = cross_fitted_platt(scores, y, fold)
    per_fold = [log_loss(y[fold == k], calibrated[fold == k]) for k in np.unique(fold)]
    return {
        "candidate": candidate.label,
        "probe": candidate.probe,
        "families": "+".join(candidate.families),
        "log_loss": round(float(log_loss(y, calibrated)), 4),
        "log_loss_sd": round(float(np.std(per_fold)), 4),
        "auroc": round(float(roc_auc_score(y, scores)), 4),
        "within_domain_auroc": round(_within_domain_auroc(y, scores, domains), 4),
        "brier": round(float(brier_score_loss(y, calibrated)), 4),
    }
