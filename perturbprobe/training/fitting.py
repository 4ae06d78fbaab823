"""The fit workflow (``perturbprobe fit``): split, select, fit, calibrate, set abstention, evaluate.

1. Hold out a test part of the records, by question (:func:`holdout_split`; ``holdout=0``:
   none, the cross-validation table is then the estimate).
2. Cross-validate on the other (training) records: with ``probe="auto"`` every candidate probe
   × families (:mod:`.selection`), else the named probe alone. When the training answers come
   from at least three domains, the folds leave one *domain* out (``select_by="auto"``), so
   the choice is the one that does best on kinds of questions it did not see; otherwise they
   are grouped by question.
3. Refit the chosen probe on every training record (gold and wrong answers weighted by
   ``teacher_forced_weight``), and fit the calibrator on the cross-fitted out-of-fold scores
   of every training answer — the scores of models that did not see those answers, so the
   calibration data is all the training data instead of a fifth of it. With leave-one-domain-
   out folds the map is calibrated on domains the probe had not seen, as in production.
   Each baseline score gets the same kind of calibrator on the same answers.
4. Optionally choose a risk-controlled abstention threshold on the test part (the guarantee
   needs answers that neither probe nor calibrator saw); candidates come from the training
   answers' calibrated out-of-fold confidences.
5. Evaluate the shipped probe and the baselines on the test part (or, with no test part,
   report the cross-validated scores); the report goes into the bundle, with a shift
   reference built from out-of-fold and test scores.

Calibration, selection and metrics use the LLM's own answers (source ``generated``) when
there are any: gold and wrong answers help training, but production scores generated answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from .._io import count_values
from ..bundles.bundle import ProbeBundle
from ..calibration.calibrators import make_calibrator
from ..calibration.domains import has_groups
from ..calibration.report import build_report
from ..calibration.risk_control import risk_controlled_threshold, threshold_candidates
from ..calibration.shift import MIN_BATCH, ShiftReference
from ..data.splits import MIN_DOMAINS, QuestionSplit, holdout_split
from ..errors import ProbeError
from ..features import FeatureSet
from ..probes.base import Probe, make_probe, probe_class
from ..probes.baselines import baseline_scores
from .evaluation import evaluate_bundles, evaluated_on, probe_label
from .selection import Candidate, Selection, cross_fitted_platt, default_candidates, select_probe

__all__ = ["MIN_PER_CLASS", "SELECT_BY", "TEACHER_FORCED_WEIGHT", "fit_bundle"]

logger = logging.getLogger(__name__)

# Below this many correct (or incorrect) answers the folds and the test part hold too few of
# that class for a calibrator or a metric to mean anything.
MIN_PER_CLASS = 20

# Training weight of gold and wrong (teacher-forced) answers relative to the LLM's own; see
# benchmarks/probe_quality.py --composition for the measurement behind the default.
TEACHER_FORCED_WEIGHT = 1.0

SELECT_BY = ("auto", "question", "domain")


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
    select_by: str = "auto",
    target_risk: float | None = None,
    delta: float = 0.1,
    heldout_sources: Sequence[str] | None = None,
    split: QuestionSplit | None = None,
    holdout: float = 0.2,
    test_features: FeatureSet | None = None,
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
        ``auto`` (default: cross-validation on the training part over ``candidates``, see
        :mod:`.selection`), ``lightgbm``, ``logistic``, ``logistic-cv``, ``stacking``,
        ``ccps`` or ``ccps-cnn``, or an unfitted probe instance.
    calibrator : str
        ``platt`` (default), ``isotonic``, ``temperature``, ``histogram`` or ``none``.
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
        Folds of the question-grouped cross-validation.
    select_by : {"auto", "question", "domain"}
        Folds of the cross-validation: ``domain`` leaves one domain out (needs at least
        :data:`~perturbprobe.data.splits.MIN_DOMAINS` domains with both classes),
        ``question`` groups by question, ``auto`` takes ``domain`` when the training
        answers have enough domains. With ``domain`` and ``auto``, the report also shows the
        question-grouped table.
    target_risk, delta : float
        With ``target_risk`` r, store an abstention threshold keeping the selective risk
        ≤ r with probability ≥ 1 − ``delta`` (certified on the test part).
    heldout_sources : sequence of str, optional
        Sources of the rows used for selection, calibration and metrics; default
        ``("generated",)`` when there are generated answers, else all.
    split : QuestionSplit, optional
        Row positions of the parts (default :func:`holdout_split` with ``holdout``); a
        validation part, if any, is used for training like the training part.
    holdout : float in [0, 1)
        Share of the questions held out for the test part (0: none).
    test_features : FeatureSet, optional
        The user's own labelled test answers (same LLM and features, no question of
        ``featureset``): then every record of ``featureset`` trains (``holdout`` and
        ``split`` do not apply), and the threshold and the report use these answers.
    random_state : int
        Seeds the split, the folds, the probe (unless given as an instance) and the bootstrap.
    n_bootstrap : int
        Resamples of the metrics' confidence intervals.
    progress : bool
        Progress bar over the cross-validation fits.

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
    if select_by not in SELECT_BY:
        raise ProbeError(f"select_by must be one of {', '.join(SELECT_BY)}, got {select_by!r}")
    if test_features is not None:
        _check_disjoint(featureset, test_features)
        holdout, split = 0.0, None
    if split is None:
        split = holdout_split(
            featureset.question_ids, y, holdout=holdout, random_state=random_state
        )
    rest = np.sort(np.concatenate([split.train, split.validation]))
    tested = featureset if test_features is None else test_features  # where the test rows are
    test_rows = split.test if test_features is None else np.arange(len(test_features))
    test = _heldout(tested, test_rows, heldout_sources) if len(test_rows) else test_rows
    if target_risk is not None and len(test) == 0:
        raise ProbeError(
            "an abstention threshold (target_risk) is certified on held-out answers; "
            "pass a holdout > 0 or test features"
        )
    train, weights = _training_rows(featureset, rest, teacher_forced_weight)
    evaluated = _heldout(featureset, rest, heldout_sources)
    questions = np.asarray(featureset.question_ids, dtype=object)
    fold_by = _fold_by(select_by, featureset, evaluated)

    auto = isinstance(probe, str) and probe == "auto"
    if auto:
        if probe_params:
            raise ProbeError("probe_params do not apply to --probe auto; name the probe")
        candidates = _restrict(list(candidates or default_candidates(featureset)), families)
    else:
        name = probe if isinstance(probe, str) else probe.name
        candidates = [Candidate(name, tuple(families or ()))]

    for candidate in candidates:  # before any fit: a clear error, not the probe's own
        _check_weights(candidate.probe, weights)

    def build(candidate: Candidate):
        chosen = candidate.probe if auto else probe
        wanted = candidate.families if auto else families
        params = None if auto else probe_params
        return _build(featureset, chosen, wanted, params, random_state)[:2]

    def cross_validate(by: str) -> Selection:
        return select_probe(
            featureset,
            train,
            build,
            candidates,
            evaluation_rows=evaluated,
            sample_weight=weights,
            n_folds=selection_folds,
            fold_by=by,
            random_state=random_state,
            progress=progress,
        )

    selection = cross_validate(fold_by)
    tables = {fold_by: selection.table}
    if auto and fold_by == "domain" and select_by == "auto":
        tables["question"] = cross_validate("question").table
    best = selection.best
    estimator, inputs, schema, token_schema, blocks = _build(
        featureset,
        best.probe if auto else probe,
        best.families if auto else families,
        probe_params,
        random_state,
    )
    logger.info("fitting %s on %d records (%d test answers)", estimator.name, len(train), len(test))
    estimator.fit(
        inputs(train),
        y[train],
        groups=questions[train],
        sample_weight=None if weights is None else weights[train],
    )
    oof = selection.scores[best.label]
    scored = evaluated[np.isfinite(oof[evaluated])]  # rows of the folds that were scored
    calibrator_obj.fit(oof[scored], y[scored])
    baseline_raw = baseline_scores(featureset.features)
    baselines = {
        name: make_calibrator(calibrator).fit(score[scored], y[scored])
        for name, score in baseline_raw.items()
    }

    ids = np.asarray(featureset.record_ids, dtype=object)
    selection_table = _selection_table(tables)
    bundle = ProbeBundle(
        probe=estimator,
        calibrator=calibrator_obj,
        baseline_calibrators=baselines,
        split={"train": ids[rest].tolist(), "validation": [], "test": ids[split.test].tolist()},
        manifest={
            "llm": featureset.manifest["llm"],
            "extractor": featureset.manifest["config"],
            "schema": schema,
            "token_schema": token_schema,
            "blocks": {name: featureset.block_layouts[name] for name in blocks},
            "probe": {"name": estimator.name, "params": _json_params(estimator)},
            "calibrator": {
                "name": calibrator_obj.name,
                "rows": len(scored),
                "positive_rate": round(float(y[scored].mean()), 6),
                "fitted_on": f"out-of-fold scores, folds by {fold_by}",
            },
            "training": {
                "records": len(train),
                "positive_rate": round(float(y[train].mean()), 4),
                "sources": count_values(featureset.sources[train]),
                "domains": count_values(featureset.domains[train]),
                "teacher_forced_weight": teacher_forced_weight,
                "split": {
                    "test": len(test),
                    "holdout": holdout,
                    "test_features": test_features is not None,
                    "seed": random_state,
                },
                "heldout_sources": sorted(set(featureset.sources[evaluated].tolist())),
            },
            "selection": None if not auto else selection.to_dict(),
        },
    )
    reference_rows, reference_raw = scored, oof[scored]
    if test_features is None and len(test):  # held-out answers of the same FeatureSet
        reference_rows = np.concatenate([scored, test])
        test_raw = bundle.predict_raw(featureset.subset(test))
        reference_raw = np.concatenate([reference_raw, test_raw])
    bundle.shift_reference = _shift_reference(bundle, featureset, reference_rows, reference_raw)
    if target_risk is not None:
        reference = calibrator_obj.transform(oof[scored])  # training answers' confidences
        bundle.abstention = _abstention(bundle, tested, reference, test, target_risk, delta)
    if len(test):
        bundle.report = evaluate_bundles(
            bundle, tested, rows=test, n_bootstrap=n_bootstrap, selection=selection_table
        )
    else:
        bundle.report = _cross_validated_report(
            bundle, featureset, scored, oof, baseline_raw, selection, selection_table, n_bootstrap
        )
    bundle.manifest["metrics"] = bundle.report.to_json()["metrics"]
    return bundle


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
        params["column_groups"] = tuple(featureset.column_groups(schema, blocks))
        params["wide_groups"] = tuple(blocks)
    return make_probe(probe, **params), inputs, schema, token_schema, blocks


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


def _shift_reference(bundle: ProbeBundle, featureset: FeatureSet, rows: np.ndarray, raw):
    """The in-distribution reference of the shift warning, from answers ``rows`` with raw
    probe scores ``raw`` of models that did not see them (None, with a warning, when there
    are too few)."""
    if len(rows) < MIN_BATCH:
        logger.warning("only %d held-out answers: the bundle gets no shift reference", len(rows))
        return None
    return ShiftReference.fit(bundle.shift_values(featureset.subset(rows), raw))


def _check_disjoint(featureset: FeatureSet, test_features: FeatureSet) -> None:
    """Refuse test answers to questions the probe trains on."""
    shared = set(featureset.question_ids) & set(test_features.question_ids)
    if shared:
        raise ProbeError(
            f"the test features share {len(shared)} questions with the training features "
            f"(e.g. {sorted(shared)[0]!r}); test on questions the probe never saw"
        )


def _fold_by(select_by: str, featureset: FeatureSet, evaluated: np.ndarray) -> str:
    """``question`` or ``domain``: the cross-validation folds ``select_by`` asks for."""
    if select_by == "question":
        return "question"
    domains, y = featureset.domains[evaluated], featureset.y[evaluated]
    usable = [
        name
        for name in dict.fromkeys(domains.tolist())
        if name is not None and len(set(y[domains == name].tolist())) == 2
    ]
    if len(usable) >= MIN_DOMAINS:
        return "domain"
    if select_by == "domain":
        known = sorted({str(name) for name in domains.tolist() if name is not None})
        raise ProbeError(
            f"selection by domain needs answers from at least {MIN_DOMAINS} domains with both "
            f"correct and incorrect answers; the training answers have {len(usable)} "
            f"({', '.join(known[:10]) or 'no domain recorded'}); use --select-by question"
        )
    return "question"


def _restrict(candidates: list[Candidate], families: Sequence[str] | None) -> list[Candidate]:
    """The candidates on the given families only (all when None)."""
    if families is None:
        return candidates
    return [
        Candidate(c.probe, tuple(f for f in c.families if f in families))
        for c in candidates
        if set(c.families) & set(families)
    ]


def _selection_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The cross-validation tables as one, the chosen scheme first, with a ``folds`` column."""
    labels = {"domain": "leave one domain out", "question": "grouped by question"}
    frames = [table.assign(folds=labels[by]) for by, table in tables.items()]
    return pd.concat(frames)


def _cross_validated_report(
    bundle, featureset, rows, oof, baseline_raw, selection, table, n_bootstrap
):
    """With no test part: the report of the cross-fitted, calibrated out-of-fold scores."""
    y = featureset.y[rows]
    fold = selection.fold_of[rows]
    scores = {probe_label(bundle): cross_fitted_platt(oof[rows], y, fold)}
    for name, raw in baseline_raw.items():
        scores[f"baseline: {name}"] = cross_fitted_platt(raw[rows], y, fold)
    part = featureset.subset(rows)
    what = f"cross-validated out-of-fold scores (folds by {selection.fold_by}); no test part"
    summary = {
        "evaluated on": evaluated_on(y, part.sources, what=what),
        "LLM": bundle.manifest["llm"],
        "probe": bundle.manifest["probe"],
        "training": bundle.manifest["training"],
    }
    return build_report(
        y, scores, primary=probe_label(bundle), summary=summary, selection=table,
        n_bootstrap=n_bootstrap,
        domains=part.domains if has_groups(part.domains) else None,
        formats=part.formats if has_groups(part.formats) else None,
    )  # fmt: skip


def _check_weights(probe_name: str, weights) -> None:
    if weights is not None and probe_name in ("ccps", "ccps-cnn"):
        raise ProbeError(
            f"the {probe_name} probe cannot weight rows; pass teacher_forced_weight 0 "
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
