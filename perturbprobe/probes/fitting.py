"""The fit workflow (``perturbprobe fit``): split, fit, calibrate, set abstention, evaluate.

1. Split the records train / validation / test by question (:func:`split_by_question`).
2. Fit the probe on the training part.
3. Fit the calibrator on the validation part, and the same kind of calibrator on each
   baseline score (so the report compares calibrated with calibrated).
4. Optionally choose a risk-controlled abstention threshold on the test part (it was used for
   neither the probe nor the calibrator, which the guarantee needs); the candidate
   thresholds come from the validation part.
5. Evaluate the probe and the baselines on the test part; the report goes into the bundle.

The validation and test parts are restricted to the LLM's own answers (source
``generated``) when there are any: gold and wrong answers help training, but production
scores generated answers, so calibration and metrics are measured on those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone

from ..calibration.calibrators import make_calibrator
from ..calibration.risk_control import risk_controlled_threshold, threshold_candidates
from ..errors import ProbeError
from ..features import FeatureSet
from .base import Probe, make_probe
from .baselines import baseline_scores
from .bundle import ProbeBundle
from .evaluation import count_values, evaluate_bundles
from .splits import QuestionSplit, split_by_question

__all__ = ["MIN_PER_CLASS", "fit_bundle"]

logger = logging.getLogger(__name__)

# Below this many correct (or incorrect) answers a train/validation/test split leaves too few
# of that class in each part for a calibrator or a metric to mean anything.
MIN_PER_CLASS = 20


def fit_bundle(
    featureset: FeatureSet,
    *,
    probe: str | Probe = "lightgbm",
    calibrator: str = "platt",
    probe_params: dict[str, Any] | None = None,
    families: Sequence[str] | None = None,
    target_risk: float | None = None,
    delta: float = 0.1,
    heldout_sources: Sequence[str] | None = None,
    split: QuestionSplit | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    random_state: int = 0,
    n_bootstrap: int = 1000,
) -> ProbeBundle:
    """Fit a probe and a calibrator on ``featureset`` and evaluate them on held-out questions.

    Parameters
    ----------
    featureset : FeatureSet
        Labelled features (e.g. from :func:`perturbprobe.extract`).
    probe : str or Probe
        ``lightgbm``, ``logistic``, ``ccps`` or ``ccps-cnn``, or an unfitted probe instance.
    calibrator : str
        ``platt`` (default), ``isotonic``, ``temperature``, ``histogram`` or ``none``.
        Platt is the default because calibration sets are small (a fifth of the LLM's own
        answers): on the default LLM's 182 validation answers isotonic regression tied
        scores into steps, cost ~0.03 AUROC and raised the NLL (0.70 vs 0.51).
    probe_params : dict, optional
        Hyper-parameters for a probe given by name.
    families : sequence of str, optional
        Fit on the columns of these feature families only (default: every column); the
        bundle's Scorer then extracts only these families.
    target_risk, delta : float
        With ``target_risk`` r, store an abstention threshold keeping the selective risk
        ≤ r with probability ≥ 1 − ``delta``.
    heldout_sources : sequence of str, optional
        Sources of the validation and test rows used for calibration and metrics; default
        ``("generated",)`` when there are generated answers, else all.
    split : QuestionSplit, optional
        Row positions of each part (default: :func:`split_by_question` with the fractions).
    random_state : int
        Seeds the split, the probe (unless given as an instance) and the bootstrap.
    n_bootstrap : int
        Resamples of the metrics' confidence intervals.

    Returns
    -------
    ProbeBundle
        Not yet saved: call :meth:`ProbeBundle.save`.
    """
    y = featureset.y
    _check_classes(y)
    calibrator_obj = make_calibrator(calibrator)  # fail on a bad name before any work
    if isinstance(probe, str):
        params = {"random_state": random_state, **(probe_params or {})}
        estimator = make_probe(probe, **params)
    else:
        if probe_params:
            raise ProbeError("probe_params only apply to a probe given by name")
        estimator = clone(probe)
    if split is None:
        split = split_by_question(
            featureset.question_ids,
            y,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            random_state=random_state,
        )
    validation, test = (_heldout(featureset, rows, heldout_sources) for rows in split.parts[1:])

    if estimator.input_kind == "sequence":
        schema, token_schema = [], _columns(featureset.token_schema, families)
        inputs = featureset.token_sequences(token_schema)
    else:
        schema, token_schema = _columns(featureset.schema, families), []
        inputs = featureset.features[schema]
    questions = np.asarray(featureset.question_ids, dtype=object)
    logger.info(
        "fitting %s on %d records (%d validation, %d test)",
        estimator.name,
        len(split.train),
        len(validation),
        len(test),
    )
    estimator.fit(_take(inputs, split.train), y[split.train], groups=questions[split.train])
    raw_validation = estimator.predict_proba(_take(inputs, validation))[:, 1]
    calibrator_obj.fit(raw_validation, y[validation])
    baselines = {
        name: make_calibrator(calibrator).fit(score[validation], y[validation])
        for name, score in baseline_scores(featureset.features).items()
    }

    ids = np.asarray(featureset.record_ids, dtype=object)
    bundle = ProbeBundle(
        probe=estimator,
        calibrator=calibrator_obj,
        baseline_calibrators=baselines,
        split={part: ids[rows].tolist() for part, rows in zip(_PARTS, split.parts, strict=True)},
        manifest={
            "llm": featureset.manifest["llm"],
            "extractor": featureset.manifest["config"],
            "schema": schema,
            "token_schema": token_schema,
            "probe": {"name": estimator.name, "params": _json_params(estimator)},
            "calibrator": {"name": calibrator_obj.name},
            "training": {
                "records": len(split.train),
                "positive_rate": round(float(y[split.train].mean()), 4),
                "sources": count_values(featureset.sources[split.train]),
                "split": {"validation": len(validation), "test": len(test), "seed": random_state},
                "heldout_sources": sorted(set(featureset.sources[test].tolist())),
            },
        },
    )
    if target_risk is not None:
        reference = calibrator_obj.transform(raw_validation)  # validation confidences (m,)
        bundle.abstention = _abstention(bundle, featureset, reference, test, target_risk, delta)
    bundle.report = evaluate_bundles(bundle, featureset, rows=test, n_bootstrap=n_bootstrap)
    bundle.manifest["metrics"] = bundle.report.to_json()["metrics"]
    return bundle


_PARTS = ("train", "validation", "test")


def _check_classes(y: np.ndarray) -> None:
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        kind = "incorrect" if counts[0] < counts[1] else "correct"
        raise ProbeError(
            f"only {counts.min()} {kind} answers among {len(y)} records; fitting needs at least "
            f"{MIN_PER_CLASS} of each to train, calibrate and test. Collect more questions "
            "(or add gold/wrong answers with `collect --source gold`)"
        )


def _columns(columns: list[str], families: Sequence[str] | None) -> list[str]:
    """``columns`` of the given families (all when None); raises if that leaves none."""
    if families is None:
        return columns
    families = [families] if isinstance(families, str) else list(families)
    chosen = [name for name in columns if name.split("/", 1)[0] in families]
    available = sorted({name.split("/", 1)[0] for name in columns})
    unknown = [family for family in families if family not in available]
    if unknown or not chosen:
        raise ProbeError(
            f"the features have no {', '.join(unknown or families)} columns; "
            f"available families: {', '.join(available)}"
        )
    return chosen


def _heldout(featureset: FeatureSet, rows: np.ndarray, sources: Sequence[str] | None):
    if sources is None:
        present = set(featureset.sources.tolist())
        sources = ("generated",) if "generated" in present else tuple(present)
    kept = rows[np.isin(featureset.sources[rows], list(sources))]
    labels = set(featureset.y[kept].tolist())
    if labels != {0, 1}:
        raise ProbeError(
            f"the held-out {', '.join(sources)} answers of one part are all "
            f"{'correct' if labels == {1} else 'incorrect'}; collect more questions"
        )
    return kept


def _take(inputs, rows: np.ndarray):
    if isinstance(inputs, list):
        return [inputs[i] for i in rows]
    return inputs.iloc[rows]


def _json_params(estimator: Probe) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in estimator.get_params(deep=False).items()
    }


def _abstention(bundle, featureset, reference, test, target_risk, delta):
    """Threshold tested on the test part; candidates from the validation confidences."""
    candidates = threshold_candidates(
        reference, n_test=len(test), target_risk=target_risk, delta=delta
    )
    return risk_controlled_threshold(
        bundle.predict_confidence(featureset.subset(test)),
        featureset.y[test],
        target_risk=target_risk,
        delta=delta,
        candidates=candidates,
    )
