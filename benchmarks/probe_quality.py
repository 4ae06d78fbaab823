"""Probe quality on the default LLM: grouped 5-fold cross-validation, probes vs baselines.

Each fold holds out a fifth of the questions as test; the rest is split again (by question)
into training and calibration parts, and :func:`perturbprobe.probes.fit_bundle` fits the
probe and a Platt calibrator (and the same calibrator on each baseline). The calibrated
out-of-fold confidences of the LLM's own (generated) answers are pooled over the folds and
evaluated once, with bootstrap 95% intervals.

Then an ablation: the ``--ablation`` probe (LightGBM by default) on each feature family alone,
on the same folds.

Needs the FeatureSet the demo writes (run ``make demo`` first) or any labelled FeatureSet:

    python benchmarks/probe_quality.py [--features runs/demo/features] [--probes lightgbm,...]
                                       [--ablation lightgbm] [--join OTHER_FEATURES_DIR]

``--join`` adds families extracted separately for the same records (e.g.
``perturbprobe extract -r runs/demo/records.jsonl -f semantic_gradient -o sg``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from perturbprobe.calibration.metrics import evaluate_confidence
from perturbprobe.features import FeatureSet
from perturbprobe.probes import QuestionSplit, fit_bundle
from perturbprobe.probes.baselines import baseline_scores
from perturbprobe.probes.evaluation import probe_label

METRICS = ("auroc", "ece", "brier")


def cross_validated_confidences(featureset, probes, calibrator, folds, seed, families=None):
    """Out-of-fold calibrated confidences of generated answers: {score name: (n,)}, y (n,);
    probes read the columns of ``families`` only when given."""
    y, questions = featureset.y, np.asarray(featureset.question_ids)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    pooled: dict[str, list[np.ndarray]] = {}
    labels, seconds = [], dict.fromkeys(probes, 0.0)
    for fold, (rest, test) in enumerate(splitter.split(questions, y, questions)):
        # A quarter of the remaining questions calibrates; the rest trains.
        inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed + fold)
        train, validation = next(inner.split(rest, y[rest], questions[rest]))
        split = QuestionSplit(np.sort(rest[train]), np.sort(rest[validation]), test)
        generated = test[featureset.sources[test] == "generated"]
        part = featureset.subset(generated)
        labels.append(part.y)
        for probe in probes:
            start = time.perf_counter()
            bundle = fit_bundle(
                featureset, probe=probe, calibrator=calibrator, split=split, n_bootstrap=0,
                random_state=seed, families=families,
            )  # fmt: skip
            seconds[probe] += time.perf_counter() - start
            pooled.setdefault(probe_label(bundle), []).append(bundle.predict_confidence(part))
            if probe == probes[0]:
                for name, raw in baseline_scores(part.features).items():
                    calibrated = bundle.baseline_calibrators[name].transform(raw)
                    pooled.setdefault(f"baseline: {name}", []).append(calibrated)
        print(f"fold {fold + 1}/{folds} done", end="\r", flush=True)
    return {k: np.concatenate(v) for k, v in pooled.items()}, np.concatenate(labels), seconds


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
    parser.add_argument("--probes", default="lightgbm,logistic,ccps,ccps-cnn")
    parser.add_argument("--calibrator", default="platt")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ablation", default="lightgbm", help="probe refitted on each family alone ('' to skip)"
    )
    args = parser.parse_args()

    featureset = FeatureSet.load(args.features)
    for path in args.join:
        featureset = featureset.join(FeatureSet.load(path))
    probes = args.probes.split(",")
    scores, y, seconds = cross_validated_confidences(
        featureset, probes, args.calibrator, args.folds, args.seed
    )
    print(
        f"\n{featureset.manifest['llm']['name']}: {len(featureset)} records, "
        f"{len(y)} generated answers evaluated out of fold ({y.mean():.1%} correct), "
        f"{args.folds} folds grouped by question, calibrator {args.calibrator}\n"
    )
    ordered = sorted(scores.items(), key=lambda item: item[0].startswith("base"))
    print_table("score", dict(ordered), y, args.seed)
    print("\nfit time per probe over all folds: "
          + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items()))  # fmt: skip
    if args.ablation:
        families = list(dict.fromkeys(c.split("/", 1)[0] for c in featureset.schema))
        alone = {}
        for family in families:
            found, _, _ = cross_validated_confidences(
                featureset, [args.ablation], args.calibrator, args.folds, args.seed, [family]
            )
            alone[f"{family} alone"] = next(v for k, v in found.items() if k.startswith("probe"))
        alone["all families"] = next(
            v for k, v in scores.items() if k.startswith(f"probe: {args.ablation} ")
        )
        print(f"\nablation: {args.ablation} on each family alone (same folds)")
        print_table("features", alone, y, args.seed)


def print_table(title: str, scores: dict, y, seed: int) -> None:
    """One row per score: each metric of METRICS with its bootstrap 95% interval."""
    width = max(map(len, scores)) + 2
    print(f"{title:<{width}}" + "".join(f"{m:>24}" for m in METRICS))
    for name, confidence in scores.items():
        values = evaluate_confidence(y, confidence, n_bootstrap=1000, random_state=seed)
        cells = [values[m].to_string() for m in METRICS]
        print(f"{name:<{width}}" + "".join(f"{cell:>24}" for cell in cells))


if __name__ == "__main__":
    main()
