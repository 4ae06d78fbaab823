"""Probe quality on the default LLM: grouped 5-fold cross-validation, probes vs baselines.

Each fold holds out a fifth of the questions as test; the rest is split again (by question)
into training and calibration parts, and :func:`perturbprobe.probes.fit_bundle` fits the
probe and a Platt calibrator (and the same calibrator on each baseline). Only the LLM's own
(generated) answers are evaluated: the calibrated out-of-fold confidences are pooled over the
folds and evaluated once, with paired bootstrap 95% intervals.

A probe is given as ``NAME`` (every family) or ``NAME:FAMILY+FAMILY`` (those families only),
e.g. ``logistic-cv:hidden_states``; ``auto`` runs the whole ``fit --probe auto`` selection
inside every fold (nested cross-validation).

``--selection-seeds 0,1,2`` runs ``fit --probe auto``'s selection on the demo's split with each
seed (other folds, other probe seeds) and prints each table: how stable the choice is.

``--composition W1,W2,...`` refits the first probe with gold and wrong (teacher-forced)
answers weighted W relative to the generated ones (0 drops them) — the measurement behind
``TEACHER_FORCED_WEIGHT``. ``--ablation P`` refits probe P on each family alone.

Needs the FeatureSet the demo writes (run ``make demo`` first) or any labelled FeatureSet:

    python benchmarks/probe_quality.py [--features runs/demo/features] [--probes P,...]
        [--composition 0,0.5,1] [--ablation lightgbm] [--join OTHER_FEATURES_DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from perturbprobe.calibration.metrics import evaluate_confidence
from perturbprobe.data import QuestionSplit, split_by_question
from perturbprobe.features import FeatureSet
from perturbprobe.probes.baselines import baseline_scores
from perturbprobe.training import fit_bundle
from perturbprobe.training.fitting import TEACHER_FORCED_WEIGHT

METRICS = ("auroc", "ece", "brier")
DEFAULT_PROBES = (
    "lightgbm:baseline+ccps+entropy_dynamics+sua",
    "logistic-cv:hidden_states",
    "stacking",
    "ccps-cnn",
    "auto",
)


def parse_spec(spec: str) -> tuple[str, list[str] | None]:
    """``NAME[:FAMILY+FAMILY]`` → (probe name, families or None)."""
    name, _, families = spec.partition(":")
    return name, families.split("+") if families else None


def folds_of(featureset: FeatureSet, n_folds: int, seed: int) -> list[QuestionSplit]:
    """Outer test folds by question; a quarter of the remaining questions calibrates."""
    y, questions = featureset.y, np.asarray(featureset.question_ids)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(splitter.split(questions, y, questions)):
        inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed + fold)
        train, validation = next(inner.split(rest, y[rest], questions[rest]))
        splits.append(QuestionSplit(np.sort(rest[train]), np.sort(rest[validation]), test))
    return splits


def cross_validated(featureset, specs, splits, *, calibrator, seed, weight, with_baselines):
    """Out-of-fold calibrated confidences of the generated test answers: {label: (n,)}, the
    labels y (n,), fit seconds per label and the probes ``auto`` chose per fold."""
    pooled: dict[str, list[np.ndarray]] = {}
    labels, seconds, chosen = [], dict.fromkeys(specs, 0.0), []
    for k, split in enumerate(splits):
        generated = split.test[featureset.sources[split.test] == "generated"]
        part = featureset.subset(generated)
        labels.append(part.y)
        for spec in specs:
            name, families = parse_spec(spec)
            start = time.perf_counter()
            bundle = fit_bundle(
                featureset,
                probe=name,
                families=families,
                calibrator=calibrator,
                split=split,
                teacher_forced_weight=weight,
                n_bootstrap=0,
                random_state=seed,
            )
            seconds[spec] += time.perf_counter() - start
            if name == "auto":
                best = bundle.manifest["selection"]["best"]
                chosen.append(f"{best['probe']}:{'+'.join(best['families'])}")
            pooled.setdefault(spec, []).append(bundle.predict_confidence(part))
            if with_baselines and spec == specs[0]:
                for baseline, raw in baseline_scores(part.features).items():
                    calibrated = bundle.baseline_calibrators[baseline].transform(raw)
                    pooled.setdefault(f"baseline: {baseline}", []).append(calibrated)
        print(f"fold {k + 1}/{len(splits)} done", end="\r", flush=True)
    return (
        {k: np.concatenate(v) for k, v in pooled.items()},
        np.concatenate(labels),
        seconds,
        chosen,
    )


def print_table(title: str, scores: dict, y, seed: int) -> None:
    """One row per score: each metric of METRICS with its bootstrap 95% interval."""
    width = max(map(len, scores)) + 2
    print(f"{title:<{width}}" + "".join(f"{m:>24}" for m in METRICS))
    for name, confidence in scores.items():
        values = evaluate_confidence(y, confidence, n_bootstrap=1000, random_state=seed)
        cells = [values[m].to_string() for m in METRICS]
        print(f"{name:<{width}}" + "".join(f"{cell:>24}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="runs/demo/features")
    parser.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="DIR",
        help="another FeatureSet of the same records (other families) to add; repeatable",
    )
    parser.add_argument("--probes", default=",".join(DEFAULT_PROBES))
    parser.add_argument("--calibrator", default="platt")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-forced-weight", type=float, default=TEACHER_FORCED_WEIGHT)
    parser.add_argument("--composition", default="", help="weights to compare, e.g. 0,0.5,1")
    parser.add_argument("--ablation", default="", help="probe refitted on each family alone")
    parser.add_argument("--selection-seeds", default="", help="e.g. 0,1,2")
    args = parser.parse_args()

    start = time.perf_counter()
    featureset = FeatureSet.load(args.features)
    for path in args.join:
        featureset = featureset.join(FeatureSet.load(path))
    specs = args.probes.split(",") if args.probes else []
    splits = folds_of(featureset, args.folds, args.seed)
    common = {"calibrator": args.calibrator, "seed": args.seed}
    if specs:
        scores, y, seconds, chosen = cross_validated(
            featureset, specs, splits, weight=args.teacher_forced_weight, with_baselines=True,
            **common,
        )  # fmt: skip
        print(
            f"\n{featureset.manifest['llm']['name']}: {len(featureset)} records, {len(y)} "
            f"generated answers evaluated out of fold ({y.mean():.1%} correct), {args.folds} "
            f"folds grouped by question, calibrator {args.calibrator}, teacher-forced weight "
            f"{args.teacher_forced_weight}\n"
        )
        print_table("score", scores, y, args.seed)
        print("\nfit time over all folds: "
              + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items()))  # fmt: skip
        if chosen:
            print("auto chose, per fold: " + ", ".join(chosen))
    if args.composition:
        weighted = {}
        for weight in (float(w) for w in args.composition.split(",")):
            found, y, _, chosen = cross_validated(
                featureset, specs[:1], splits, weight=weight, with_baselines=False, **common
            )
            label = f"{specs[0]}, teacher-forced weight {weight:g}"
            weighted[label] = found[specs[0]]
            if chosen:
                print(f"{label}: auto chose " + ", ".join(chosen))
        print(f"\ntraining data composition: {specs[0]}, generated answers evaluated")
        print_table("weight of gold/wrong answers", weighted, y, args.seed)
    if args.ablation:
        alone = {}
        for family in featureset.families:
            found, y, _, _ = cross_validated(
                featureset, [f"{args.ablation}:{family}"], splits,
                weight=args.teacher_forced_weight, with_baselines=False, **common,
            )  # fmt: skip
            alone[f"{family} alone"] = found[f"{args.ablation}:{family}"]
        print(f"\nablation: {args.ablation} on each family alone (same folds)")
        print_table("features", alone, y, args.seed)
    if args.selection_seeds:
        split = split_by_question(featureset.question_ids, featureset.y, random_state=0)
        for seed in (int(s) for s in args.selection_seeds.split(",")):
            began = time.perf_counter()
            bundle = fit_bundle(featureset, split=split, random_state=seed, n_bootstrap=0)
            table = bundle.report.selection
            print(f"\nselection with seed {seed} ({time.perf_counter() - began:.0f} s): "
                  f"{table.index[0]}")  # fmt: skip
            print(table[["log_loss", "log_loss_sd", "auroc", "brier", "seconds"]].to_string())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
