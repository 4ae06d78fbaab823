"""Domain transfer on the default LLM: which probe holds up on kinds of questions it never saw.

Input: a labelled FeatureSet whose records carry a ``domain`` (``perturbprobe collect`` on the
built-in datasets writes one; the demo's ``runs/demo/features`` is one). Only the LLM's own
(``generated``) answers are scored; teacher-forced gold/wrong answers train when
``--teacher-forced`` is given.

Two protocols, for every method:

- **held out** (leave one domain out, as fitted): for each domain with both classes, the
  method is fitted on every *other* domain; its calibrator is fitted, as ``fit`` does, on
  cross-fitted out-of-fold scores of the training answers (``--inner domain``: leave one
  training domain out; ``question``: 3 folds by question); the held-out domain's answers are
  scored with no label from it. Label-free methods (centring) may use its answers' features.
- **in domain**: 5 folds grouped by question over all domains, Platt maps cross-fitted
  across folds (what ``fit``'s selection does).

Metrics per protocol: pooled AUROC (all scored answers together — it can be won by telling
domains apart), within-domain AUROC (mean over domains of the AUROC inside each, with a
stratified bootstrap interval), the lowest domain's AUROC, the mean over domains of each
domain's ECE, pooled ECE and Brier. The calibrated mean token probability and (with
``--self-consistency FILE``, a JSONL of ``question_id``, ``agreement`` from
``benchmarks/self_consistency.py``) self-consistency are treated the same way; with it, every
score is evaluated on the questions that have a self-consistency score (methods still train
on every answer of the training domains).

Methods (``--methods``; probes on the ``hidden_states`` block unless said):

- ``mixture``: logistic-cv on every training answer, the reference;
- ``equal-domains``: the same, each domain weighted equally;
- ``leace``: the domain erased from the activations (LEACE, fitted on the training domains);
- ``centred``: activations centred per domain, on each domain's own answers (no labels);
- ``leace+centred``: both;
- ``domain-groups``: logistic-cv whose regularisation is chosen by inner folds grouped by
  domain (the C that transfers) instead of by question;
- ``fixed-effects``: a within-domain objective — one intercept per training domain (one-hot
  columns) so the weights learn only from differences inside domains, dropped at scoring;
- ``layer-<l>``: one layer of the block alone (per-layer choice);
- ``lightgbm-scalar``: LightGBM on the scalar families;
- ``stacking``: the scalar families stacked with the activations.

    python benchmarks/domain_transfer.py --features runs/demo/features [--methods ...]
        [--inner domain] [--self-consistency runs/sc.jsonl] [--out runs/domain_transfer.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from perturbprobe.calibration.calibrators import PlattCalibrator
from perturbprobe.calibration.domains import per_domain_metrics, within_domain_auroc
from perturbprobe.calibration.metrics import (
    brier_score_loss,
    expected_calibration_error,
    roc_auc_score,
)
from perturbprobe.data.splits import domain_folds
from perturbprobe.features import FeatureSet
from perturbprobe.probes import make_probe
from perturbprobe.probes.baselines import baseline_scores
from perturbprobe.probes.domain_invariance import DomainEraser, center_per_domain
from perturbprobe.probes.logistic_cv import cv_folds

BLOCK = "hidden_states"
DEFAULT_METHODS = (
    "mixture,equal-domains,leace,centred,leace+centred,fixed-effects,lightgbm-scalar,stacking"
)


@dataclass
class Data:
    """What the methods read: rows of the FeatureSet and their inputs."""

    fs: FeatureSet
    y: np.ndarray
    domains: np.ndarray
    questions: np.ndarray
    generated: np.ndarray  # bool (n,)
    block: np.ndarray  # (n, K) float32
    layers: list[int]

    def layer(self, layer: int) -> np.ndarray:
        """The block's columns of one layer, every pool (the block is pool, layer, dim)."""
        layout = self.fs.block_layouts[BLOCK]
        width, index = layout["hidden_size"], self.layers.index(layer)
        starts = [(pool * len(self.layers) + index) * width for pool in range(len(layout["pools"]))]
        return np.hstack([self.block[:, s : s + width] for s in starts])


# ---- methods: fit on train rows, score score rows --------------------------------------------
def fit_score(method: str, data: Data, train: np.ndarray, score: np.ndarray, seed: int):
    """Raw scores (len(score),) of ``method`` fitted on rows ``train``."""
    y, groups = data.y[train], data.questions[train]
    if method == "domain-groups":
        groups = data.domains[train]
    weights = None
    if method in ("lightgbm-scalar", "stacking"):
        families = [f for f in data.fs.families if f != BLOCK]
        if method == "stacking":
            families.append(BLOCK)
        X, column_groups = data.fs.matrix(families)
        params = {"column_groups": tuple(column_groups)} if method == "stacking" else {}
        probe = make_probe(method.split("-")[0], random_state=seed, **params)
        probe.fit(X[train], y, groups=groups)
        return probe.predict_proba(X[score])[:, 1]
    X = data.layer(int(method.split("-")[1])) if method.startswith("layer-") else data.block
    X_train, X_score = X[train], X[score]
    if "centred" in method:
        X_train = center_per_domain(X_train, data.domains[train])
        X_score = center_per_domain(X_score, data.domains[score])
    if "leace" in method:
        eraser = DomainEraser().fit(X_train, data.domains[train])
        X_train, X_score = eraser.transform(X_train), eraser.transform(X_score)
    if method == "equal-domains":
        names, index, counts = np.unique(
            data.domains[train], return_inverse=True, return_counts=True
        )
        weights = len(train) / (len(names) * counts[index])
    if method == "fixed-effects":
        names, index = np.unique(data.domains[train], return_inverse=True)
        X_train = np.hstack([X_train, 3.0 * np.eye(len(names))[index]])
        X_score = np.hstack([X_score, np.zeros((len(score), len(names)))])
    probe = make_probe("logistic-cv", random_state=seed)
    probe.fit(X_train.astype(np.float32), y, groups=groups, sample_weight=weights)
    return probe.predict_proba(X_score.astype(np.float32))[:, 1]


def oof_scores(method, data: Data, rows: np.ndarray, folds, seed: int) -> np.ndarray:
    """Out-of-fold raw scores (n,) on the generated rows of ``folds``' held-out parts."""
    scores = np.full(len(data.y), np.nan)
    for train, held in folds:
        target = held[data.generated[held]]
        scores[target] = fit_score(method, data, train, target, seed)
    return scores


def inner_folds(data: Data, rows: np.ndarray, inner: str, seed: int):
    if inner == "domain":
        return domain_folds(rows, data.domains, data.y, data.generated)
    return [(rows[a], rows[b]) for a, b in cv_folds(data.y[rows], data.questions[rows], 3, seed)]


# ---- protocols --------------------------------------------------------------------------------
def held_out(method, data: Data, inner: str, seed: int, baseline=None):
    """Leave one domain out, as fitted: (y, calibrated confidence, domain) of scored answers."""
    rows = np.arange(len(data.y))
    ys, ps, ds = [], [], []
    for train, held in domain_folds(rows, data.domains, data.y, data.generated):
        target = held[data.generated[held]]
        calibration = train[data.generated[train]]
        if baseline is None:
            raw = fit_score(method, data, train, target, seed)
            inner_oof = oof_scores(method, data, train, inner_folds(data, train, inner, seed), seed)
            calibration = calibration[np.isfinite(inner_oof[calibration])]
            reference = inner_oof[calibration]
        else:  # a score that needs no fitting: calibrate on the training domains' answers
            raw, reference = baseline[target], baseline[calibration]
        platt = PlattCalibrator().fit(reference, data.y[calibration])
        ys.append(data.y[target])
        ps.append(platt.transform(raw))
        ds.append(data.domains[target])
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(ds)


def in_domain(method, data: Data, seed: int, baseline=None):
    """5 folds by question, Platt cross-fitted across folds."""
    rows = np.arange(len(data.y))
    folds = [(rows[a], rows[b]) for a, b in cv_folds(data.y, data.questions, 5, seed)]
    raw = baseline if baseline is not None else oof_scores(method, data, rows, folds, seed)
    fold_of = np.full(len(rows), -1)
    for k, (_, held) in enumerate(folds):
        fold_of[held] = k
    scored = rows[data.generated]
    p = np.empty(len(scored))
    for k in range(len(folds)):
        inside, outside = fold_of[scored] == k, fold_of[scored] != k
        platt = PlattCalibrator().fit(raw[scored][outside], data.y[scored][outside])
        p[inside] = platt.transform(raw[scored][inside])
    return data.y[scored], p, data.domains[scored]


def summarise(y, p, domains, n_bootstrap: int, seed: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        within = within_domain_auroc(y, p, domains, n_bootstrap=n_bootstrap, random_state=seed)
        table = per_domain_metrics(y, p, domains, n_bootstrap=0)
    table = table[table["auroc"].notna()]  # domains with both classes
    columns = ["n", "accuracy", "auroc", "ece", "brier"]
    per_domain = {str(name): row[columns].to_dict() for name, row in table.iterrows()}
    return {
        "pooled_auroc": roc_auc_score(y, p),
        "within_domain_auroc": within.value,
        "within_low": within.low,
        "within_high": within.high,
        "min_domain_auroc": float(table["auroc"].min()),
        "mean_domain_ece": float(table["ece"].mean()),
        "pooled_ece": expected_calibration_error(y, p),
        "brier": brier_score_loss(y, p),
        "per_domain": per_domain,
    }


def load(path: str, teacher_forced: bool, group_by: str = "domain") -> Data:
    """The FeatureSet's rows for the methods; ``group_by="format"`` holds out answer formats
    instead of domains."""
    fs = FeatureSet.load(path)
    keep = np.isin(fs.sources, ["generated", "gold", "wrong"] if teacher_forced else ["generated"])
    fs = fs.subset(keep)
    groups = fs.formats if group_by == "format" else fs.domains
    if all(d is None for d in groups):
        raise SystemExit(f"{path}: the records carry no {group_by}; collect them again")
    return Data(
        fs=fs,
        y=fs.y,
        domains=groups.astype(str),
        questions=np.asarray(fs.question_ids, dtype=object),
        generated=fs.sources == "generated",
        block=np.asarray(fs.blocks[BLOCK], dtype=np.float32),
        layers=list(fs.block_layouts[BLOCK]["layers"]),
    )


def self_consistency_scores(path: str, data: Data) -> np.ndarray:
    agreement = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        agreement[row["question_id"]] = float(row["agreement"])
    return np.array([agreement.get(q, np.nan) for q in data.questions])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="runs/demo/features")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--inner", choices=("domain", "question"), default="domain")
    parser.add_argument("--teacher-forced", action="store_true")
    parser.add_argument(
        "--group-by", choices=("domain", "format"), default="domain", help="what is held out"
    )
    parser.add_argument("--self-consistency", default=None, metavar="JSONL")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/domain_transfer.json")
    args = parser.parse_args()
    start = time.perf_counter()
    data = load(args.features, args.teacher_forced, args.group_by)
    generated = data.generated
    print(
        f"{int(generated.sum())} generated answers ({data.y[generated].mean():.1%} correct) in "
        f"{len(set(data.domains[generated]))} {args.group_by}s; {len(data.y)} training records",
        flush=True,
    )
    scores = {"baseline: mean token prob": baseline_scores(data.fs.features)["mean token prob"]}
    if args.self_consistency:  # every score on the questions that have the baseline's
        agreement = self_consistency_scores(args.self_consistency, data)
        scores["baseline: self-consistency (N=5)"] = agreement
        data.generated = data.generated & np.isfinite(agreement)
        print(f"evaluated on the {int(data.generated.sum())} answers with self-consistency")
    results = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()] + list(scores):
        began = time.perf_counter()
        baseline = scores.get(name)
        row = {
            "held_out": summarise(
                *held_out(name, data, args.inner, args.seed, baseline), args.bootstrap, args.seed
            ),
            "in_domain": summarise(
                *in_domain(name, data, args.seed, baseline), args.bootstrap, args.seed
            ),
        }
        row["seconds"] = round(time.perf_counter() - began, 1)
        results[name] = row
        print(f"{name}: {row['seconds']} s", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def print_tables(results: dict) -> None:
    def cell(row, key):
        if key == "within_domain_auroc":
            return f"{row[key]:.3f} [{row['within_low']:.3f}, {row['within_high']:.3f}]"
        return f"{row[key]:.3f}"

    keys = ["pooled_auroc", "within_domain_auroc", "min_domain_auroc", "mean_domain_ece"]
    keys += ["pooled_ece", "brier"]
    for protocol in ("held_out", "in_domain"):
        print(f"\n{protocol.replace('_', ' ')}")
        frame = pd.DataFrame(
            {name: {k: cell(r[protocol], k) for k in keys} for name, r in results.items()}
        ).T
        print(frame.to_string())
    best = max(results, key=lambda n: results[n]["held_out"]["within_domain_auroc"])
    print(f"\nper held-out domain: {best} vs the mean-token-probability baseline")
    table = pd.DataFrame(results[best]["held_out"]["per_domain"]).T
    base = pd.DataFrame(results["baseline: mean token prob"]["held_out"]["per_domain"]).T
    table["baseline auroc"], table["baseline ece"] = base["auroc"], base["ece"]
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
