"""Recalibration for a new domain (``perturbprobe recalibrate``): keep the probe, refit the map.

A probe fitted on one domain usually still *ranks* answers of another domain well, but its
confidences are calibrated to the first domain's accuracy: on the default LLM, a bundle
fitted on easy-qa (49 % correct) scored answers from a domain where the LLM is 15 % right
with ECE 0.32 — worse than predicting the base rate. Refitting only the calibrator on a
hundred labelled answers of the new domain fixes most of it (``benchmarks/domain_transfer.py``).

:func:`recalibrate` refits the bundle's calibrator (and the baselines' calibrators, so reports
still compare like with like) on the raw probe scores of labelled answers from the new
domain, rebuilds the shift reference from those answers, and — when the bundle has an
abstention threshold — certifies a new one. The threshold's finite-sample guarantee needs
answers the calibrator did not see, so then the answers are split by question: 60 % calibrate,
40 % certify. The probe itself is not touched. The new bundle's manifest records the parent
bundle's hash and a summary of the recalibration answers.

**A refit never reverses the probe's ranking, and few labels do not throw the parent away.**
Fitted from scratch on 100 answers of a domain where the LLM was 15 % right, a Platt map once
took a negative slope from noise and turned the probe's AUROC from 0.646 into 0.354. So the
refit is shrunk toward the parent's map (:func:`refit_calibrator`; the same rule refits the
baselines' calibrators):

- ``platt`` (the default): a MAP fit of ``σ(a·logit(raw) + b)`` with a Gaussian prior on
  ``log a`` centred on the parent's slope (sd :data:`SLOPE_PRIOR_SD` = 0.5: a priori the new
  slope is within a factor [0.37, 2.7] of the parent's) and a flat prior on ``b``. The slope
  is strictly positive, so the recalibrated confidences rank the answers exactly as the raw
  scores (and the parent's confidences) do; the prior is worth a fixed number of nats, so
  it dominates with few labels and fades as they grow; ``b`` is not shrunk because the base
  rate is what changes most between domains (the reason to recalibrate), and so the mean
  confidence on the calibration answers equals their accuracy. The parent's slope is its
  Platt ``coef_``, ``1/T`` for temperature, 1 for none, and for isotonic / histogram the
  slope of the Platt map closest to the parent's (:func:`logit_slope`). A parent whose map
  is flat or decreasing there (a bundle from before the slope was constrained, say) gives
  no prior: plain Platt, whose slope is constrained to ``a ≥ 0``.
- ``temperature``: the same prior, on ``log T`` centred on ``1 / (parent's slope)``.
  Temperature scaling cannot move the base rate; recalibrate with ``calibrator="platt"``.
- ``isotonic`` / ``histogram``, the parent's kind: the parent's map is kept and an increasing
  Platt map with the prior at the identity (slope 1) is fitted on the parent's *calibrated*
  outputs, then folded into the parent's knots / bin values (exact for histogram, at the
  knots for isotonic), so the child is a calibrator of the same kind and format.
- any other kind than the parent's: a plain fit from scratch (isotonic is increasing,
  histogram need not be).

The manifest's ``recalibration`` entry also records the probe's AUROC on the recalibration
answers with a 95 % bootstrap interval over questions (``auroc``, ``auroc_low``,
``auroc_high``). When that interval reaches 0.5 the probe has no measurable signal in this
domain — recalibration can fix its base rate, not its ranking — and a one-line warning on
the ``perturbprobe.bundles.recalibration`` logger (stderr in the CLI) says so.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._io import count_values
from ..calibration.calibrators import (
    SLOPE_PRIOR_SD,
    Calibrator,
    HistogramCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    logit_slope,
    make_calibrator,
)
from ..calibration.metrics import roc_auc_score
from ..calibration.risk_control import risk_controlled_threshold, threshold_candidates
from ..calibration.shift import ShiftReference
from ..data.splits import split_by_question
from ..errors import ProbeError
from ..features import FeatureSet
from ..probes.baselines import baseline_scores

if TYPE_CHECKING:
    from .bundle import ProbeBundle

__all__ = [
    "AUROC_BOOTSTRAP",
    "MIN_RECALIBRATION_ANSWERS",
    "MIN_RECALIBRATION_PER_CLASS",
    "auroc_by_question",
    "recalibrate",
    "refit_calibrator",
]

logger = logging.getLogger(__name__)

# Fewest labelled answers recalibration accepts: with 50 answers of a held-out domain a Platt
# map already brings the ECE from ~0.3 to ~0.05-0.08 on the default LLM, below that the map is
# noise (benchmarks/domain_transfer.py).
MIN_RECALIBRATION_ANSWERS = 50
# ... and of each class: a two-parameter map fitted on fewer is mostly noise.
MIN_RECALIBRATION_PER_CLASS = 5
_THRESHOLD_SHARE = 0.4
# Resamples (of questions) of the AUROC interval recorded in the manifest.
AUROC_BOOTSTRAP = 1000
_CHUNK_CELLS = 1 << 21  # (resample, row) cells per bootstrap chunk: ~16 MiB of float64


def recalibrate(
    bundle: ProbeBundle,
    featureset: FeatureSet,
    *,
    calibrator: str | None = None,
    target_risk: float | str | None = "bundle",
    delta: float | None = None,
    allow_llm_mismatch: bool = False,
    random_state: int = 0,
    source: str | None = None,
) -> ProbeBundle:
    """A copy of ``bundle`` with its calibrator refitted on labelled answers of a new domain.

    Parameters
    ----------
    bundle : ProbeBundle
        The fitted bundle (its probe is reused as is).
    featureset : FeatureSet
        Labelled features of the new domain's answers, extracted with the bundle's LLM and
        options (checked).
    calibrator : str, optional
        Calibrator kind (default: the bundle's).
    target_risk : float, "bundle" or None
        Abstention target: ``"bundle"`` (default) keeps the bundle's target when it has a
        threshold; None stores no threshold (all answers calibrate).
    delta : float, optional
        The threshold's confidence level (default: the bundle's, else 0.1).
    allow_llm_mismatch : bool
        Accept features from another LLM (normally refused).
    random_state : int
        Seeds the calibration / certification split.
    source : str, optional
        Where the answers came from (e.g. the records file), recorded in the manifest.

    Raises
    ------
    ProbeError
        Fewer than :data:`MIN_RECALIBRATION_ANSWERS` answers, fewer than
        :data:`MIN_RECALIBRATION_PER_CLASS` of a class, or unlabelled records.
    BundleError
        Features from another LLM or extracted with other options.
    """
    if bundle.manifest.get("manifest_sha256") is None:
        raise ProbeError(
            "recalibrate a saved bundle (ProbeBundle.load, or after .save): the new manifest "
            "records the parent's hash"
        )
    raw = bundle.predict_raw(featureset, allow_llm_mismatch=allow_llm_mismatch)  # checks first
    y = featureset.y
    _check_answers(y)
    kind = calibrator or bundle.manifest["calibrator"]["name"]
    old = bundle.abstention
    if isinstance(target_risk, str):
        if target_risk != "bundle":
            raise ProbeError(f"target_risk must be a float, 'bundle' or None; got {target_risk!r}")
        target_risk = None if old is None else old.target_risk
    if delta is None:
        delta = old.delta if old is not None else 0.1
    rows = np.arange(len(y))
    calibrate_rows, certify_rows = rows, None
    if target_risk is not None:
        split = split_by_question(
            featureset.question_ids,
            y,
            validation_fraction=_THRESHOLD_SHARE / 2,
            test_fraction=_THRESHOLD_SHARE / 2,
            random_state=random_state,
        )
        calibrate_rows = split.train
        certify_rows = np.sort(np.concatenate([split.validation, split.test]))
    new_calibrator, method = refit_calibrator(
        kind, bundle.calibrator, raw[calibrate_rows], y[calibrate_rows]
    )
    baselines = {
        name: refit_calibrator(
            kind, bundle.baseline_calibrators[name], score[calibrate_rows], y[calibrate_rows]
        )[0]
        for name, score in baseline_scores(featureset.features).items()
        if name in bundle.baseline_calibrators
    }
    auroc, auroc_low, auroc_high = auroc_by_question(
        y, raw, featureset.question_ids, random_state=random_state
    )
    warning = _signal_warning(auroc, auroc_low, auroc_high, len(y))
    if warning is not None:
        logger.warning("%s", warning)
    abstention = None
    if target_risk is not None:
        reference = new_calibrator.transform(raw[calibrate_rows])
        candidates = threshold_candidates(
            reference, n_test=len(certify_rows), target_risk=target_risk, delta=delta
        )
        abstention = risk_controlled_threshold(
            new_calibrator.transform(raw[certify_rows]),
            y[certify_rows],
            target_risk=target_risk,
            delta=delta,
            candidates=candidates,
        )
    shift = ShiftReference.fit(bundle.shift_values(featureset, raw))
    manifest = copy.deepcopy(bundle.manifest)
    for key in ("files", "manifest_sha256", "created", "metrics"):
        manifest.pop(key, None)
    manifest["calibrator"] = {
        "name": new_calibrator.name,
        "rows": len(calibrate_rows),
        "positive_rate": round(float(y[calibrate_rows].mean()), 6),
    }
    manifest["parent"] = {
        "manifest_sha256": bundle.manifest.get("manifest_sha256"),
        "calibrator": bundle.manifest["calibrator"],
        "metrics": bundle.manifest.get("metrics"),
    }
    manifest["recalibration"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "records": len(y),
        "positive_rate": round(float(y.mean()), 4),
        "sources": count_values(featureset.sources),
        "calibration_rows": len(calibrate_rows),
        "threshold_rows": 0 if certify_rows is None else len(certify_rows),
        "input": source,
        "method": method,
        "auroc": round(auroc, 4),
        "auroc_low": round(auroc_low, 4),
        "auroc_high": round(auroc_high, 4),
        "warning": warning,
    }
    logger.info(
        "recalibrated %s on %d answers (%.1f%% correct; probe AUROC %.3f [%.3f, %.3f]): %s",
        kind,
        len(y),
        100 * float(y.mean()),
        auroc,
        auroc_low,
        auroc_high,
        method,
    )
    return dataclasses.replace(
        bundle,
        calibrator=new_calibrator,
        manifest=manifest,
        baseline_calibrators=baselines,
        abstention=abstention,
        report=None,
        split={**bundle.split, "recalibration": list(featureset.record_ids)},
        shift_reference=shift,
    )


def _check_answers(y: np.ndarray) -> None:
    counts = np.bincount(y, minlength=2)
    if len(y) < MIN_RECALIBRATION_ANSWERS:
        raise ProbeError(
            f"recalibration needs at least {MIN_RECALIBRATION_ANSWERS} labelled answers of the "
            f"new domain, got {len(y)}; with fewer the refitted map is mostly noise"
        )
    if counts.min() < MIN_RECALIBRATION_PER_CLASS:
        kind = "correct" if counts[1] < counts[0] else "incorrect"
        raise ProbeError(
            f"recalibration needs at least {MIN_RECALIBRATION_PER_CLASS} correct and "
            f"{MIN_RECALIBRATION_PER_CLASS} incorrect answers; got {counts.min()} {kind} "
            f"among {len(y)}"
        )


def refit_calibrator(
    kind: str, parent: Calibrator, score: np.ndarray, y: np.ndarray
) -> tuple[Calibrator, str]:
    """A calibrator of ``kind`` fitted on ``(score, y)`` (each (n,)), shrunk toward ``parent``.

    The rule for each kind is in the module docstring. Returns the fitted calibrator and a
    one-line description of what was done (recorded in the manifest as ``method``).
    """
    if kind in ("isotonic", "histogram") and parent.name == kind:
        top = PlattCalibrator().fit(parent.transform(score), y, prior_slope=1.0)
        child = copy.deepcopy(parent)
        if isinstance(child, IsotonicCalibrator):
            child.y_thresholds_ = top.transform(child.y_thresholds_)
        elif isinstance(child, HistogramCalibrator):
            child.bin_values_ = top.transform(child.bin_values_)
        return child, (
            f"the parent's {kind} map under Platt (slope {top.coef_:.3g}, intercept "
            f"{top.intercept_:.3g}; log-slope prior at 1, sd {SLOPE_PRIOR_SD})"
        )
    if kind not in ("platt", "temperature"):
        return make_calibrator(kind).fit(score, y), f"{kind} fitted from scratch"
    slope = logit_slope(parent, score)
    if not (math.isfinite(slope) and slope > 0):
        logger.info(
            "the parent's %s map is flat or decreasing (slope %.3g): %s fitted without a prior",
            parent.name,
            slope,
            kind,
        )
        return make_calibrator(kind).fit(score, y), (
            f"{kind} fitted from scratch (the parent's {parent.name} map has slope {slope:.3g})"
        )
    if kind == "platt":
        fitted = PlattCalibrator().fit(score, y, prior_slope=slope)
        result = f"slope {fitted.coef_:.3g}"
    else:
        fitted = TemperatureCalibrator().fit(score, y, prior_temperature=1.0 / slope)
        result = f"T {fitted.temperature_:.3g}"
    return fitted, (
        f"{kind} shrunk toward the parent's {parent.name} map ({result}; log-slope prior at "
        f"{slope:.3g}, sd {SLOPE_PRIOR_SD})"
    )


def auroc_by_question(
    y: np.ndarray,
    score: np.ndarray,
    questions: Sequence[str],
    *,
    n_bootstrap: int = AUROC_BOOTSTRAP,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
) -> tuple[float, float, float]:
    """AUROC of ``score`` (n,) for labels ``y`` (n,) with a percentile bootstrap interval
    whose resamples draw *questions* with replacement (the answers of a question share its
    difficulty, so resampling answers would make the interval too narrow).

    A resample drawing question ``q`` ``k`` times weighs its answers by ``k``; the AUROC of
    a resample is the weighted Mann–Whitney statistic (ties count ½), which for weights 1 is
    :func:`~perturbprobe.calibration.metrics.roc_auc_score`. Resamples holding one class are
    skipped. The resamples depend only on the questions' order and ``random_state``.

    Returns
    -------
    (auroc, low, high) : tuple of float
        ``low``/``high`` are nan with ``n_bootstrap=0``.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    auroc = float(roc_auc_score(y, score))
    _, question_of = np.unique(np.asarray(questions, dtype=str), return_inverse=True)
    order = np.argsort(score, kind="stable")
    y, question_of = y[order], question_of.reshape(-1)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(score[order])) + 1]  # tie groups, ascending
    n_questions = int(question_of.max()) + 1
    rng = np.random.default_rng(random_state)
    chunk = max(1, _CHUNK_CELLS // len(y))
    draws = []
    for first in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - first)
        counts = rng.multinomial(n_questions, np.full(n_questions, 1 / n_questions), size=size)
        weights = counts[:, question_of].astype(np.float64)  # (size, n)
        positive = np.add.reduceat(weights * y, starts, axis=1)  # (size, groups)
        negative = np.add.reduceat(weights * (1 - y), starts, axis=1)
        below = np.cumsum(negative, axis=1) - negative  # negatives scored strictly lower
        pairs = positive.sum(axis=1) * negative.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = (positive * (below + 0.5 * negative)).sum(axis=1) / pairs
        draws.append(value[pairs > 0])
    draws = np.concatenate(draws) if draws else np.empty(0)
    if not draws.size:
        return auroc, math.nan, math.nan
    tail = (1 - confidence_level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return auroc, float(low), float(high)


def _signal_warning(auroc: float, low: float, high: float, n: int) -> str | None:
    """The one-line warning when the AUROC interval reaches 0.5 (None otherwise)."""
    if not low <= 0.5:  # also None for a nan interval
        return None
    numbers = f"AUROC {auroc:.2f} [{low:.2f}, {high:.2f}] on {n} answers"
    if high < 0.5:
        return (
            f"the probe ranks this domain's answers worse than chance ({numbers}); "
            "recalibration keeps the parent's ranking and fixes only the base rate: fit a probe "
            "on this domain's answers (perturbprobe fit)"
        )
    return (
        f"the probe carries no measurable signal in this domain ({numbers}); recalibration "
        "fixes the base rate, not the ranking: label more answers of this domain, or fit a "
        "probe on them (perturbprobe fit)"
    )
