"""The fit workflow (``perturbprobe fit``): split, fit, calibrate, set abstention, evaluate.

1. Split the records train / validation / test by question (:func:`split_by_question`).
2. With ``probe="auto"`` (the default), choose the probe and its families by grouped
   cross-validation on the training part (:mod:`.selection`); fit it on the training part
   (gold and wrong answers weighted by ``teacher_forced_weight``).
3. Fit the calibrator on the validation part, and the same kind of calibrator on each
   baseline score (so the report compares calibrated with calibrated).
4. Optionally choose a risk-controlled abstention threshold on the test part (it was used for
   neither the probe nor the calibrator, which the guarantee needs); the candidate
   thresholds come from the validation part.
5. Evaluate the probe and the baselines on the test part; the report goes into the bundle,
   with a shift reference built from the validation and test answers.

The validation and test parts are restricted to the LLM's own answers (source
``generated``) when there are any: gold and wrong answers help training, but production
scores generated answers, so calibration and metrics are measured on those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from ..calibration.calibrators import make_calibrator
from ..calibration.risk_control import risk_controlled_threshold, threshold_candidates
from ..calibration.shift import MIN_BATCH, ShiftReference
from ..errors import ProbeError
from ..features import FeatureSet
from .base import Probe, make_probe, probe_class
from .baselines import baseline_scores
from .bundle import ProbeBundle
from .evaluation import count_values, evaluate_bundles
from .selection import Candidate, default_candidates, select_probe
from .splits import QuestionSplit, split_by_question

__all__ = ["MIN_PER_CLASS", "TEACHER_FORCED_WEIGHT", "fit_bundle"]

logger = logging.getLogger(__name__)

# Below this many correct (or incorrect) answers a train/validation/test split leaves too few
# of that class in each part for a calibrator or a metric to mean anything.
MIN_PER_CLASS = 20

# Training weight of gold and wrong (teacher-forced) answers relative to the LLM's own; see
# benchmarks/probe_quality.py --composition for the measurement behind the default.
TEACHER_FORCED_WEIGHT = 1.0


def fit_bundle(
    featureset: FeatureSet,
    *,
    probe: str | Probe = "auto",
    calibrator: str = "platt",
    probe_params: dict[str, Any] | None = None,
    families: Sequence[str] | None = None,
    teacher_forced_weight: float = TEACHER_FORCED_WEIGHT,
    candidates: Sequence[Candidate] | None = None,
    selection_folds: int = 5,
    target_risk: float | None = None,
    delta: float = 0.1,
    heldout_sources: Sequence[str] | None = None,
    split: QuestionSplit | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    random_state: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = False,
) -> ProbeBundle:
    """Fit a probe and a calibrator on ``featureset`` and evaluate them on held-out questions.

    Parameters
    ----------
    featureset : FeatureSet
        Labelled features (e.g. from :func:`perturbprobe.extract`).
    probe : str or Probe
        ``auto`` (default: grouped cross-validation on the training part over
        ``candidates``, see :mod:`.selection`), ``lightgbm``, ``logistic``, ``logistic-cv``,
        ``stacking``, ``ccps`` or ``ccps-cnn``, or an unfitted probe instance.
    calibrator : str
        ``platt`` (default), ``isotonic``, ``temperature``, ``histogram`` or ``none``.
        Platt is the default because calibration sets are small (a fifth of the LLM's own
        answers): on the default LLM's 182 validation answers isotonic regression tied
        scores into steps, cost ~0.03 AUROC and raised the NLL (0.70 vs 0.51).
    probe_params : dict, optional
        Hyper-parameters for a probe given by name.
    families : sequence of str, optional
        Fit on the columns (and blocks) of these feature families only (default: all); the
        bundle's Scorer then extracts only these families. With ``auto``, the candidates
        are restricted to them.
    teacher_forced_weight : float
        Training weight of the gold and wrong (teacher-forced) answers relative to the
        LLM's own: 0 drops them, 1 weighs them equally (see :data:`TEACHER_FORCED_WEIGHT`).
    candidates : sequence of Candidate, optional
        What ``auto`` compares (default :func:`default_candidates`).
    selection_folds : int
        Folds of ``auto``'s cross-validation.
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
    progress : bool
        Progress bar over ``auto``'s fits.

    Returns
    -------
    ProbeBundle
        Not yet saved: call :meth:`ProbeBundle.save`.
    """
    y = featureset.y
    _check_classes(y)
    calibrator_obj = make_calibrator(calibrator)  # fail on a bad name before any work
    if not teacher_forced_weight >= 0:
        raise ProbeError(f"teacher_forced_weight must be >= 0, got {teacher_forced_weight}")
    if probe_params and not isinstance(probe, str):
        raise ProbeError("probe_params only apply to a probe given by name")
    if split is None:
        split = split_by_question(
            featureset.question_ids,
            y,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            random_state=random_state,
        )
    validation, test = (_heldout(featureset, rows, heldout_sources) for rows in split.parts[1:])
    train, weights = _training_rows(featureset, split.train, teacher_forced_weight)
    questions = np.asarray(featureset.question_ids, dtype=object)

    selection = None
    if isinstance(probe, str) and probe == "auto":
        if probe_params:
            raise ProbeError("probe_params do not apply to --probe auto; name the probe")
        candidates = list(candidates or default_candidates(featureset))
        if families is not None:
            candidates = [
                Candidate(c.probe, tuple(f for f in c.families if f in families))
                for c in candidates
                if set(c.families) & set(families)
            ]
        evaluated = _heldout(featureset, train, heldout_sources)
        selection = select_probe(
            featureset,
            train,
            lambda c: _build(featureset, c.probe, c.families, None, random_state)[:2],
            candidates,
            evaluation_rows=evaluated,
            sample_weight=weights,
            n_folds=selection_folds,
            random_state=random_state,
            progress=progress,
        )
        probe, families = selection.best.probe, selection.best.families
    estimator, inputs, schema, token_schema, blocks = _build(
        featureset, probe, families, probe_params, random_state
    )
    _check_weights(estimator, weights)
    logger.info(
        "fitting %s on %d records (%d validation, %d test)",
        estimator.name,
        len(train),
        len(validation),
        len(test),
    )
    estimator.fit(
        inputs(train),
        y[train],
        groups=questions[train],
        sample_weight=None if weights is None else weights[train],
    )
    raw_validation = estimator.predict_proba(inputs(validation))[:, 1]
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
            "blocks": {name: featureset.block_layouts[name] for name in blocks},
            "probe": {"name": estimator.name, "params": _json_params(estimator)},
            "calibrator": {
                "name": calibrator_obj.name,
                "rows": len(validation),
                "positive_rate": round(float(y[validation].mean()), 6),
            },
            "training": {
                "records": len(train),
                "positive_rate": round(float(y[train].mean()), 4),
                "sources": count_values(featureset.sources[train]),
                "teacher_forced_weight": teacher_forced_weight,
                "split": {"validation": len(validation), "test": len(test), "seed": random_state},
                "heldout_sources": sorted(set(featureset.sources[test].tolist())),
            },
            "selection": None if selection is None else selection.to_dict(),
        },
    )
    bundle.shift_reference = _shift_reference(
        bundle, featureset, np.concatenate([validation, test])
    )
    if target_risk is not None:
        reference = calibrator_obj.transform(raw_validation)  # validation confidences (m,)
        bundle.abstention = _abstention(bundle, featureset, reference, test, target_risk, delta)
    bundle.report = evaluate_bundles(
        bundle,
        featureset,
        rows=test,
        n_bootstrap=n_bootstrap,
        selection=None if selection is None else selection.table,
    )
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


def _columns(
    columns: list[str], families: Sequence[str] | None, blocks: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(``columns``, ``blocks``) of the given families (all when None); raises if a family
    has neither or nothing is left."""
    if families is None:
        chosen, kept = list(columns), list(blocks)
    else:
        families = [families] if isinstance(families, str) else list(families)
        chosen = [name for name in columns if name.split("/", 1)[0] in families]
        kept = [name for name in blocks if name in families]
        available = sorted({name.split("/", 1)[0] for name in columns} | set(blocks))
        unknown = [family for family in families if family not in available]
        if unknown:
            raise ProbeError(
                f"the features have no {', '.join(unknown)} columns; "
                f"available families: {', '.join(available)}"
            )
    if not chosen and not kept:
        raise ProbeError(f"no feature columns to fit on (families: {', '.join(families or [])})")
    return chosen, kept


def _build(featureset: FeatureSet, probe, families, probe_params, random_state):
    """(unfitted probe, inputs(rows), schema, token_schema, blocks) for a probe given by name
    or as an instance, on the columns of ``families``."""
    cls = probe_class(probe) if isinstance(probe, str) else type(probe)
    if cls.input_kind == "sequence":
        token_schema, _ = _columns(featureset.token_schema, families)
        sequences = featureset.token_sequences(token_schema)
        schema, blocks = [], []

        def inputs(rows):
            return [sequences[i] for i in rows]
    else:
        schema, blocks = _columns(featureset.schema, families, list(featureset.block_layouts))
        token_schema = []
        table = featureset.probe_table(schema, blocks)

        def inputs(rows):
            return table.iloc[rows] if isinstance(table, pd.DataFrame) else table[rows]

    if not isinstance(probe, str):
        return clone(probe), inputs, schema, token_schema, blocks
    params = {"random_state": random_state, **(probe_params or {})}
    if probe == "stacking":  # its groups are the chosen families' columns, whatever was given
        params["column_groups"] = _column_groups(featureset, schema, blocks)
    return make_probe(probe, **params), inputs, schema, token_schema, blocks


def _column_groups(featureset: FeatureSet, schema, blocks) -> tuple[tuple[str, int], ...]:
    """(family, width) of consecutive columns of the probe table, in its order."""
    groups: dict[str, int] = {}
    for name in schema:
        family = name.split("/", 1)[0]
        groups[family] = groups.get(family, 0) + 1
    groups.update({name: int(featureset.block_layouts[name]["columns"]) for name in blocks})
    return tuple(groups.items())


def _training_rows(featureset: FeatureSet, rows: np.ndarray, weight: float):
    """Training rows and per-record weights (n_records,) or None: gold and wrong answers get
    ``weight`` (0: dropped) relative to the generated ones."""
    teacher_forced = np.isin(featureset.sources, ("gold", "wrong"))
    if weight == 1 or not teacher_forced[rows].any():
        return rows, None
    if weight == 0:
        kept = rows[~teacher_forced[rows]]
        if len(kept) == 0:
            raise ProbeError(
                "teacher_forced_weight=0 leaves no training rows (no generated answers)"
            )
        return kept, None
    return rows, np.where(teacher_forced, float(weight), 1.0)


def _shift_reference(bundle: ProbeBundle, featureset: FeatureSet, rows: np.ndarray):
    """The in-distribution reference of the shift warning, from held-out rows ``rows``
    (None, with a warning, when there are too few)."""
    if len(rows) < MIN_BATCH:
        logger.warning("only %d held-out answers: the bundle gets no shift reference", len(rows))
        return None
    part = featureset.subset(rows)
    return ShiftReference.fit(bundle.shift_values(part, bundle.predict_raw(part)))


def _check_weights(estimator: Probe, weights) -> None:
    if weights is not None and estimator.name in ("ccps", "ccps-cnn"):
        raise ProbeError(
            f"the {estimator.name} probe cannot weight rows; pass teacher_forced_weight 0 "
            "(drop gold and wrong answers) or 1 (keep them at full weight)"
        )


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
