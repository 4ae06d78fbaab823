"""Domain transfer on the default LLM: a bundle fitted on some domains, scoring another.

Domains: each of easy-qa's categories left out in turn (the bundle is fitted on the other
categories' records, gold and wrong answers included), plus further FeatureSets given with
``--domain NAME=DIR`` (e.g. ``builtin:arithmetic`` answers, or easy-qa asked as multiple
choice), scored by a bundle fitted on all of easy-qa. Only the held-out domain's generated
answers are evaluated, under four treatments of the calibration:

- ``as fitted``: the bundle's own calibrator;
- ``recalibrated k``: :func:`perturbprobe.probes.recalibrate` on k labelled answers of the new
  domain (whole questions drawn at random, ``--draws`` times), evaluated on the rest;
- ``known accuracy``: the bundle's confidences moved to the domain's true accuracy
  (``score --target-accuracy``);
- ``constant``: the recalibration answers' accuracy predicted for every answer (the Brier
  score any useful confidence must beat).

The calibrated mean-token-probability baseline is treated the same way (its calibrator is
refitted on the same k answers). Metrics: per domain, then pooled over domains with bootstrap
95% intervals (the pooled rows concatenate every domain's held-out answers).

    python benchmarks/domain_transfer.py [--features runs/demo/features]
        [--domain arithmetic=runs/arithmetic-features --domain mc=runs/mc-features]
        [--probe logistic-cv:hidden_states] [--sizes 50,100,200] [--draws 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perturbprobe.calibration.calibrators import make_calibrator
from perturbprobe.calibration.metrics import evaluate_confidence
from perturbprobe.features import FeatureSet
from perturbprobe.probes import fit_bundle
from perturbprobe.probes.baselines import baseline_scores

BASELINE = "mean token prob"
METRICS = ("auroc", "ece", "brier")


def category_of(question_id: str) -> str:
    """easy-qa ids are ``<category>-<number>``."""
    return question_id.rsplit("-", 1)[0]


def held_out_question_draw(target: FeatureSet, k: int, rng) -> np.ndarray:
    """A boolean mask of about ``k`` answers, whole questions drawn at random."""
    questions = np.asarray(target.question_ids, dtype=object)
    order = rng.permutation(np.unique(questions))
    chosen, count = [], 0
    sizes = pd.Series(questions).value_counts()
    for question in order:
        if count >= k:
            break
        chosen.append(question)
        count += int(sizes[question])
    return np.isin(questions, chosen)


def treatments(bundle, target: FeatureSet, sizes, draws, seed):
    """{treatment: [(y, probe confidence, baseline confidence), ...]} on ``target``."""
    y = target.y
    raw = bundle.predict_raw(target)
    base_raw = baseline_scores(target.features)[BASELINE]
    base_cal = bundle.baseline_calibrators[BASELINE]
    out = {"as fitted": [(y, bundle.calibrator.transform(raw), base_cal.transform(base_raw))]}
    out["known accuracy"] = [
        (
            y,
            bundle.adjust_to_accuracy(bundle.calibrator.transform(raw), float(y.mean())),
            bundle.adjust_to_accuracy(base_cal.transform(base_raw), float(y.mean())),
        )
    ]
    rng = np.random.default_rng(seed)
    for k in sizes:
        if k > len(y) - 30:
            continue
        results, constants = [], []
        for _ in range(draws):
            mask = held_out_question_draw(target, k, rng)
            part = target.subset(mask)
            if len(set(part.y.tolist())) < 2 or len(set(y[~mask].tolist())) < 2:
                continue
            child = bundle.recalibrate(part, target_risk=None)
            rest = ~mask
            base = make_calibrator("platt").fit(base_raw[mask], y[mask])
            results.append(
                (y[rest], child.calibrator.transform(raw[rest]), base.transform(base_raw[rest]))
            )
            constant = np.full(int(rest.sum()), part.y.mean())
            constants.append((y[rest], constant, constant))
        if results:
            out[f"recalibrated {k}"] = results
            out[f"constant ({k} labels)"] = constants
    return out


def summarise(runs) -> dict[str, float]:
    """Mean over draws of each metric, for the probe and the baseline."""
    row = {}
    for who, index in (("probe", 1), ("baseline", 2)):
        values = [evaluate_confidence(r[0], r[index], n_bootstrap=0) for r in runs]
        for metric in METRICS:
            row[f"{who} {metric}"] = float(np.mean([v[metric].value for v in values]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="runs/demo/features")
    parser.add_argument("--domain", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--probe", default="logistic-cv:hidden_states")
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default="", help="only these easy-qa categories")
    args = parser.parse_args()
    start = time.perf_counter()
    name, _, families = args.probe.partition(":")
    families = families.split("+") if families else None
    sizes = [int(k) for k in args.sizes.split(",")]

    source = FeatureSet.load(args.features)
    categories = np.array([category_of(q) for q in source.question_ids])
    domains = []  # (name, training FeatureSet, target FeatureSet)
    wanted = args.categories.split(",") if args.categories else sorted(set(categories))
    for category in wanted:
        inside = categories == category
        target = source.subset(inside & (source.sources == "generated"))
        domains.append((f"easy-qa/{category}", source.subset(~inside), target))
    for spec in args.domain:
        label, _, path = spec.partition("=")
        target = FeatureSet.load(path)
        domains.append((label, source, target.subset(target.sources == "generated")))

    rows, pooled = [], {}
    for label, train, target in domains:
        bundle = fit_bundle(train, probe=name, families=families, n_bootstrap=0)
        with tempfile.TemporaryDirectory() as tmp:  # recalibration records the parent's hash
            bundle.save(Path(tmp) / "bundle")
        found = treatments(bundle, target, sizes, args.draws, args.seed)
        for treatment, runs in found.items():
            rows.append(
                {"domain": label, "n": len(target), "accuracy": round(float(target.y.mean()), 3),
                 "treatment": treatment, **summarise(runs)}
            )  # fmt: skip
            pooled.setdefault(treatment, []).append(runs[0])
        print(f"{label}: {len(target)} answers, {target.y.mean():.1%} correct "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip

    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"\nprobe {args.probe}; per domain (recalibrated rows: mean of {args.draws} draws)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    print("\nmean over domains")
    summary = table.groupby("treatment", sort=False).mean(numeric_only=True)
    print(summary.drop(columns=["n"]).to_string(float_format=lambda v: f"{v:.3f}"))

    print("\npooled over domains (first draw of each), bootstrap 95% intervals")
    header = f"{'treatment':<26}{'score':<10}" + "".join(f"{m:>24}" for m in METRICS)
    print(header)
    for treatment, runs in pooled.items():
        y = np.concatenate([r[0] for r in runs])
        for who, index in (("probe", 1), ("baseline", 2)):
            p = np.concatenate([r[index] for r in runs])
            values = evaluate_confidence(y, p, n_bootstrap=1000, random_state=args.seed)
            cells = "".join(f"{values[m].to_string():>24}" for m in METRICS)
            print(f"{treatment:<26}{who:<10}{cells}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
