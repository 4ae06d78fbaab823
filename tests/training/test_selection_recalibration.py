"""``fit --probe auto`` (grouped CV selection, checked against a hand-run loop), bundles that
read a hidden-state block, recalibration for a new domain, the known-accuracy correction and
the shift warning — on synthetic FeatureSets (no LLM needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold
from synthetic_features import synthetic_featureset

from perturbprobe.bundles import MIN_RECALIBRATION_ANSWERS, ProbeBundle
from perturbprobe.calibration.calibrators import PlattCalibrator
from perturbprobe.calibration.metrics import log_loss
from perturbprobe.data import split_by_question
from perturbprobe.data.splits import holdout_split
from perturbprobe.errors import BundleError, ProbeError
from perturbprobe.probes import LogisticProbe, make_probe
from perturbprobe.probes.baselines import baseline_scores
from perturbprobe.training import Candidate, default_candidates, fit_bundle, heldout_rows

CANDIDATES = [
    Candidate("logistic", ("baseline", "ccps")),
    Candidate("logistic", ("hidden_states",)),
]


@pytest.fixture(scope="module")
def featureset():
    return synthetic_featureset(160, block=True)


@pytest.fixture(scope="module")
def bundle(featureset, tmp_path_factory):
    fitted = fit_bundle(featureset, candidates=CANDIDATES, n_bootstrap=50, target_risk=0.3)
    fitted.save(tmp_path_factory.mktemp("bundle") / "b")  # recalibration records its hash
    return fitted


def new_domain(shift=-1.2, n=160, seed=7):
    """Generated answers of a domain where the LLM is right less often."""
    fs = synthetic_featureset(n, block=True, seed=seed, shift=shift, prefix="new")
    return fs.subset(fs.sources == "generated")


# ----------------------------------------------------------------------------- selection
def test_default_candidates(featureset):
    labels = [c.label for c in default_candidates(featureset)]
    assert labels == [
        "lightgbm on baseline + ccps",
        "logistic-cv on hidden_states",
        "stacking on baseline + ccps + hidden_states",
    ]
    no_block = synthetic_featureset(30)
    assert [c.probe for c in default_candidates(no_block)] == ["lightgbm"]


def test_selection_matches_a_hand_run_loop(featureset, bundle):
    """Re-run the documented procedure by hand: same folds, same fits, cross-fitted Platt."""
    y = featureset.y
    questions = np.asarray(featureset.question_ids, dtype=object)
    split = holdout_split(featureset.question_ids, y, holdout=0.2, random_state=0)
    train = split.train  # every non-test record: the selection runs on all of them
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    generated = featureset.sources == "generated"
    expected = {}
    for candidate in CANDIDATES:
        X, _ = featureset.matrix(candidate.families)
        scores = np.full(len(y), np.nan)
        fold_of = np.full(len(y), -1)
        for k, (a, b) in enumerate(folds.split(train, y[train], questions[train])):
            fit_rows, held = train[a], train[b]
            assert not set(questions[fit_rows]) & set(questions[held])  # grouped
            probe = LogisticProbe(random_state=0).fit(X[fit_rows], y[fit_rows])
            target = held[generated[held]]
            scores[target] = probe.predict_proba(X[target])[:, 1]
            fold_of[target] = k
        rows = train[generated[train]]
        calibrated = np.empty(len(rows))
        for k in range(5):
            inside = fold_of[rows] == k
            platt = PlattCalibrator().fit(scores[rows][~inside], y[rows][~inside])
            calibrated[inside] = platt.transform(scores[rows][inside])
        expected[candidate.label] = log_loss(y[rows], calibrated)
    table = bundle.report.selection
    for label, value in expected.items():
        assert table.loc[label, "log_loss"] == pytest.approx(value, abs=1e-4)
    winner = min(expected, key=expected.get)
    assert table.index[0] == winner
    chosen = bundle.manifest["selection"]["best"]
    assert f"{chosen['probe']} on {' + '.join(chosen['families'])}" == winner


def test_auto_bundle_reads_the_block_and_round_trips(featureset, bundle, tmp_path):
    assert bundle.manifest["selection"]["best"]["families"] == ["hidden_states"]
    assert bundle.blocks == ["hidden_states"] and bundle.schema == []
    assert bundle.extractor_config.families == ["hidden_states"]
    path = bundle.save(tmp_path / "b")
    html = (path / "report.html").read_text()
    assert "Model selection" in html and "logistic on hidden_states" in html
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["selection"]["index"][0] == "logistic on hidden_states"
    loaded = ProbeBundle.load(path)
    np.testing.assert_array_equal(
        loaded.predict_confidence(featureset), bundle.predict_confidence(featureset)
    )
    # features whose block has another layout are refused
    other = synthetic_featureset(20, block=True)
    other.manifest["blocks"]["hidden_states"] = {
        **other.manifest["blocks"]["hidden_states"],
        "layers": [2],
    }
    with pytest.raises(BundleError, match="hidden_states block is"):
        loaded.predict_confidence(other)


def test_auto_restricted_to_families(featureset):
    fitted = fit_bundle(
        featureset, candidates=CANDIDATES, families=["baseline", "ccps"], n_bootstrap=0
    )
    assert list(fitted.report.selection.index) == ["logistic on baseline + ccps"]
    assert fitted.blocks == []


def test_teacher_forced_weight(featureset):
    split = holdout_split(featureset.question_ids, featureset.y, random_state=0)
    dropped = fit_bundle(
        featureset, probe="logistic", split=split, teacher_forced_weight=0, n_bootstrap=0
    )
    assert dropped.manifest["training"]["sources"] == {"generated": len(split.train) // 3}
    # weight w on gold/wrong ≡ sklearn's sample_weight on the same rows
    half = fit_bundle(
        featureset, probe="logistic", split=split, teacher_forced_weight=0.5, n_bootstrap=0
    )
    X = half.probe_inputs(featureset)[split.train]
    w = np.where(featureset.sources[split.train] == "generated", 1.0, 0.5)
    by_hand = LogisticProbe().fit(X, featureset.y[split.train], sample_weight=w)
    np.testing.assert_allclose(
        half.probe.predict_proba(X)[:, 1], by_hand.predict_proba(X)[:, 1], rtol=1e-6
    )
    with pytest.raises(ProbeError, match="cannot weight rows"):
        fit_bundle(featureset, probe="ccps", split=split, teacher_forced_weight=0.5)


# ----------------------------------------------------------------------------- recalibration
def test_recalibrate_refits_only_the_calibrator(bundle, tmp_path):
    domain = new_domain()
    child = bundle.recalibrate(domain, target_risk=None)
    raw = bundle.predict_raw(domain)
    # Platt shrunk toward the parent's slope (tests/bundles/test_recalibration_safety.py)
    by_hand = PlattCalibrator().fit(raw, domain.y, prior_slope=bundle.calibrator.coef_)
    np.testing.assert_allclose(child.predict_confidence(domain), by_hand.transform(raw))
    assert child.probe is bundle.probe
    for name, score in baseline_scores(domain.features).items():
        slope = bundle.baseline_calibrators[name].coef_
        refit = PlattCalibrator().fit(score, domain.y, prior_slope=slope if slope > 0 else None)
        expected = refit.transform(score)
        np.testing.assert_allclose(child.baseline_calibrators[name].transform(score), expected)
    child.save(tmp_path / "child")
    loaded = ProbeBundle.load(tmp_path / "child")
    assert loaded.manifest["parent"]["manifest_sha256"] == bundle.manifest["manifest_sha256"]
    summary = loaded.manifest["recalibration"]
    assert summary["records"] == len(domain)
    assert summary["positive_rate"] == pytest.approx(domain.y.mean(), abs=1e-4)
    assert loaded.manifest["calibrator"]["positive_rate"] == pytest.approx(domain.y.mean())
    # the recalibration answers are no longer "held out" from the child
    assert len(heldout_rows(loaded, domain)) == 0
    # it is better calibrated on the new domain than the parent (ECE proxy: mean error)
    gap_parent = abs(bundle.predict_confidence(domain).mean() - domain.y.mean())
    gap_child = abs(loaded.predict_confidence(domain).mean() - domain.y.mean())
    assert gap_child < 0.02 < gap_parent


def test_recalibrate_with_threshold_certifies_on_unseen_answers(bundle):
    domain = new_domain(shift=0.0, n=300, seed=11)
    child = bundle.recalibrate(domain)  # the parent has a threshold: so does the child
    assert child.abstention is not None
    summary = child.manifest["recalibration"]
    assert summary["calibration_rows"] + summary["threshold_rows"] == len(domain)
    assert 0.3 < summary["threshold_rows"] / len(domain) < 0.5


def test_recalibrate_refuses_bad_data(bundle):
    domain = new_domain()
    with pytest.raises(ProbeError, match=f"at least {MIN_RECALIBRATION_ANSWERS} labelled"):
        bundle.recalibrate(domain.subset(np.arange(30)))
    one_class = domain.subset(domain.y == 0)
    with pytest.raises(ProbeError, match="at least 5 correct and 5 incorrect"):
        bundle.recalibrate(one_class)
    other_llm = synthetic_featureset(80, block=True, fingerprint="e" * 64)
    with pytest.raises(BundleError, match="fitted on LLM"):
        bundle.recalibrate(other_llm)
    other_config = synthetic_featureset(80, block=True)
    other_config.manifest["config"]["families"]["hidden_states"]["pools"] = "last"
    with pytest.raises(BundleError, match="was extracted with options"):
        bundle.recalibrate(other_config)


# ----------------------------------------------------------------------------- known accuracy
def test_target_accuracy_matches_bayes_rule(bundle):
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    source = bundle.manifest["calibrator"]["positive_rate"]
    target = 0.15
    odds = (p / (1 - p + 1e-300)) * (target / (1 - target)) / (source / (1 - source))
    expected = np.where(p == 1, 1.0, odds / (1 + odds))
    np.testing.assert_allclose(bundle.adjust_to_accuracy(p, target), expected, atol=1e-12)
    for bad in (0, 1, 1.5, -0.2, float("nan")):
        with pytest.raises(BundleError, match=r"target accuracy must be in \(0, 1\)"):
            bundle.adjust_to_accuracy(p, bad)


# ----------------------------------------------------------------------------- shift warning
def test_shift_warning_both_ways(bundle):
    same = synthetic_featureset(200, block=True, seed=21, prefix="s")
    same = same.subset(same.sources == "generated")
    check = bundle.check_shift(same, bundle.predict_raw(same))
    assert not check.shifted, check.message()
    shifted = new_domain(shift=-2.0, n=200, seed=22)
    check = bundle.check_shift(shifted, bundle.predict_raw(shifted))
    assert check.shifted
    assert "recalibrate" in check.message()


def test_no_false_alarms_over_many_in_distribution_batches(bundle):
    alarms = 0
    for seed in range(20):
        batch = synthetic_featureset(60, block=True, seed=100 + seed, prefix=f"b{seed}-")
        batch = batch.subset(batch.sources == "generated")
        alarms += bundle.check_shift(batch, bundle.predict_raw(batch)).shifted
    assert alarms == 0


def test_stacking_bundle_saves_sub_probe_files(featureset, tmp_path):
    split = split_by_question(featureset.question_ids, featureset.y, random_state=0)
    stacked = fit_bundle(
        featureset,
        probe="stacking",
        probe_params={"base_probes": [["baseline", "logistic"], ["ccps", "logistic"]]},
        split=split,
        n_bootstrap=0,
    )
    groups = [list(g) for g in stacked.probe.column_groups]
    assert groups == [["baseline", 3], ["ccps", 3], ["hidden_states", 24]]
    # the wide block is known from the FeatureSet's block layout, not from its name
    assert stacked.probe.wide_groups == tuple(featureset.block_layouts) == ("hidden_states",)
    assert type(stacked.probe.base_probes_[2]).__name__ == "LogisticCVProbe"
    path = stacked.save(tmp_path / "stacked")
    nested = [name for name in stacked.manifest["files"] if "/" in name]
    assert nested and all((path / name).is_file() for name in nested)
    (path / nested[0]).write_bytes(b"tampered")
    with pytest.raises(BundleError, match="corrupt or was modified"):
        ProbeBundle.load(path)
    assert make_probe("stacking").get_params()["n_folds"] == 5
