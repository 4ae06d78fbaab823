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
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging

import numpy as np

from ..calibration.calibrators import make_calibrator
from ..calibration.risk_control import risk_controlled_threshold, threshold_candidates
from ..calibration.shift import ShiftReference
from ..errors import ProbeError
from ..features import FeatureSet
from .baselines import baseline_scores
from .bundle import ProbeBundle
from .evaluation import count_values
from .splits import split_by_question

__all__ = ["MIN_RECALIBRATION_ANSWERS", "MIN_RECALIBRATION_PER_CLASS", "recalibrate"]

logger = logging.getLogger(__name__)

# Fewest labelled answers recalibration accepts: with 50 answers of a held-out domain a Platt
# map already brings the ECE from ~0.3 to ~0.05-0.08 on the default LLM, below that the map is
# noise (benchmarks/domain_transfer.py).
MIN_RECALIBRATION_ANSWERS = 50
# ... and of each class: a two-parameter map fitted on fewer is mostly noise.
MIN_RECALIBRATION_PER_CLASS = 5
_THRESHOLD_SHARE = 0.4


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
    new_calibrator = make_calibrator(kind).fit(raw[calibrate_rows], y[calibrate_rows])
    baselines = {
        name: make_calibrator(kind).fit(score[calibrate_rows], y[calibrate_rows])
        for name, score in baseline_scores(featureset.features).items()
        if name in bundle.baseline_calibrators
    }
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
    }
    logger.info(
        "recalibrated %s on %d answers (%.1f%% correct)", kind, len(y), 100 * float(y.mean())
    )
    return ProbeBundle(
        probe=bundle.probe,
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
