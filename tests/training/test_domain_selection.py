"""Leave-one-domain-out model selection, the holdout and the cross-fitted calibration of
``fit_bundle``, on synthetic FeatureSets whose questions belong to domains."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from synthetic_features import synthetic_featureset

from perturbprobe.calibration.calibrators import PlattCalibrator
from perturbprobe.data.splits import domain_folds, holdout_split
from perturbprobe.errors import ProbeError
from perturbprobe.probes import make_probe
from perturbprobe.probes.logistic_cv import cv_folds
from perturbprobe.training import fit_bundle
from perturbprobe.training.selection import Candidate, select_probe

FAST = {"n_estimators": 40}
DOMAINS = ("capitals", "elements", "units", "weekdays", "spelling")


def with_domains(featureset, names=DOMAINS):
    """``featureset`` with each question in one of ``names`` (questions dealt in turn)."""
    questions = np.asarray(featureset.question_ids)
    number = np.array([int(q.lstrip("q")) for q in questions])
    featureset.features["domain"] = np.asarray(names, dtype=object)[number % len(names)]
    return featureset


@pytest.fixture(scope="module")
def featureset():
    return with_domains(synthetic_featureset(150))


def test_domain_folds_never_mix_domains(featureset):
    rows = np.arange(len(featureset))
    evaluated = featureset.sources == "generated"
    folds = domain_folds(rows, featureset.domains, featureset.y, evaluated)
    assert len(folds) == len(DOMAINS)
    held_domains = []
    for train, held in folds:
        (domain,) = set(featureset.domains[held].tolist())  # one domain per held-out fold
        assert domain not in set(featureset.domains[train].tolist())
        assert len(train) + len(held) == len(rows)
        held_domains.append(domain)
    assert sorted(held_domains) == sorted(DOMAINS)


def test_selection_by_domain_scores_each_domain_with_a_model_that_never_saw_it(featureset):
    rows = np.arange(len(featureset))
    seen_by_fit = []

    class Recording:
        """A probe that records the domains it was fitted on, then scores by its mean label."""

        name = "recording"

        def fit(self, X, y, groups=None, sample_weight=None):
            seen_by_fit.append(set(featureset.domains[X].tolist()))
            self.n_features_in_ = 1
            return self

        def predict_proba(self, X):
            p = 1 / (1 + np.exp(-featureset.features["ccps/signal:mean"].to_numpy()[X]))
            return np.column_stack([1 - p, p])

    generated = rows[featureset.sources == "generated"]
    selection = select_probe(
        featureset,
        rows,
        lambda candidate: (Recording(), lambda positions: positions),
        [Candidate("recording", ("ccps",))],
        evaluation_rows=generated,
        fold_by="domain",
    )
    assert selection.fold_by == "domain" and selection.n_folds == len(DOMAINS)
    assert all(len(seen) == len(DOMAINS) - 1 for seen in seen_by_fit)
    scores = selection.scores["recording on ccps"]
    assert np.isfinite(scores[generated]).all()
    for k in range(len(DOMAINS)):  # a fold holds out one domain, whose model never saw it
        held = selection.fold_of == k
        (domain,) = set(featureset.domains[held].tolist())
        assert domain not in seen_by_fit[k]
    row = selection.table.iloc[0]
    assert 0.5 < row["within_domain_auroc"] <= 1 and 0.5 < row["auroc"] <= 1


def test_a_single_class_domain_is_skipped_with_a_warning(featureset, caplog):
    y = featureset.y.copy()
    only_right = featureset.domains == "units"
    y[only_right] = 1
    rows = np.arange(len(featureset))
    with caplog.at_level(logging.WARNING, logger="perturbprobe.data.splits"):
        folds = domain_folds(rows, featureset.domains, y, featureset.sources == "generated")
    assert len(folds) == len(DOMAINS) - 1
    assert "skipped 1 of 5 domains" in caplog.text and "units" in caplog.text
    # Its rows still train every other fold.
    assert all(only_right[train].any() for train, _ in folds)


def test_auto_selects_by_domain_with_three_domains_and_shows_both_tables(featureset):
    bundle = fit_bundle(featureset, n_bootstrap=0)
    selection = bundle.manifest["selection"]
    assert selection["fold_by"] == "domain" and selection["n_folds"] == len(DOMAINS)
    folds = set(bundle.report.selection["folds"])
    assert folds == {"leave one domain out", "grouped by question"}
    assert bundle.manifest["calibrator"]["fitted_on"] == "out-of-fold scores, folds by domain"
    assert set(bundle.manifest["training"]["domains"]) == set(DOMAINS)


def test_two_domains_fall_back_to_question_folds_and_domain_is_refused():
    two = with_domains(synthetic_featureset(90, seed=1), names=("a", "b"))
    bundle = fit_bundle(two, probe="lightgbm", probe_params=FAST, n_bootstrap=0)
    assert bundle.manifest["calibrator"]["fitted_on"] == "out-of-fold scores, folds by question"
    with pytest.raises(ProbeError, match=r"at least 3 domains .* have 2 \(a, b\)") as caught:
        fit_bundle(two, probe="lightgbm", probe_params=FAST, select_by="domain")
    assert "\n" not in str(caught.value)
    one = synthetic_featureset(60, seed=2)  # no domain recorded
    with pytest.raises(ProbeError, match="no domain recorded"):
        fit_bundle(one, probe="lightgbm", probe_params=FAST, select_by="domain")


def test_calibrator_is_fitted_on_the_out_of_fold_scores_of_every_training_answer(featureset):
    bundle = fit_bundle(
        featureset, probe="lightgbm", probe_params=FAST, select_by="question", n_bootstrap=0
    )
    train = np.isin(featureset.record_ids, bundle.split["train"])
    generated = train & (featureset.sources == "generated")
    assert bundle.manifest["calibrator"]["rows"] == int(generated.sum())
    assert bundle.manifest["training"]["records"] == int(train.sum())  # refitted on all of it
    assert not np.isin(bundle.split["test"], bundle.split["train"]).any()
    # The shipped probe is fitted on every training record, not on 60% of them.
    assert int(train.sum()) > 0.75 * len(featureset)
    # ... and its calibrator is Platt on the out-of-fold scores of all of them: redo by hand.
    rows = np.flatnonzero(train)
    X, y = bundle.probe_inputs(featureset), featureset.y  # a DataFrame: the named columns
    questions = np.asarray(featureset.question_ids, dtype=object)
    oof = np.full(len(y), np.nan)
    for fit_rows, held in cv_folds(y[rows], questions[rows], 5, 0):
        fit_rows, held = rows[fit_rows], rows[held]
        probe = make_probe("lightgbm", random_state=0, **FAST)
        probe.fit(X.iloc[fit_rows], y[fit_rows], groups=questions[fit_rows])
        target = held[featureset.sources[held] == "generated"]
        oof[target] = probe.predict_proba(X.iloc[target])[:, 1]
    expected = PlattCalibrator().fit(oof[generated], y[generated])
    grid = np.linspace(0.01, 0.99, 25)
    np.testing.assert_allclose(bundle.calibrator.transform(grid), expected.transform(grid))


def test_holdout_zero_reports_the_cross_validated_scores(featureset):
    bundle = fit_bundle(featureset, probe="lightgbm", probe_params=FAST, holdout=0, n_bootstrap=0)
    assert bundle.split["test"] == [] and len(bundle.split["train"]) == len(featureset)
    what = bundle.report.summary["evaluated on"]["what"]
    assert what.startswith("cross-validated out-of-fold scores (folds by domain)")
    assert bundle.report.summary["evaluated on"]["records"] == int(
        (featureset.sources == "generated").sum()
    )
    assert 0.5 < bundle.report.metrics["probe: lightgbm + platt"]["auroc"].value <= 1
    with pytest.raises(ProbeError, match="pass a holdout > 0"):
        fit_bundle(featureset, probe="lightgbm", probe_params=FAST, holdout=0, target_risk=0.2)


def test_holdout_split_parts():
    fs = synthetic_featureset(50, seed=3)
    split = holdout_split(fs.question_ids, fs.y, holdout=0.25)
    questions = np.asarray(fs.question_ids)
    assert not set(questions[split.train]) & set(questions[split.test])
    assert len(split.validation) == 0
    assert 0.15 < len(split.test) / len(fs) < 0.35
    with pytest.raises(ProbeError, match=r"holdout must be in \[0, 1\)"):
        holdout_split(fs.question_ids, fs.y, holdout=1.0)


def test_the_users_own_test_features(featureset, tmp_path):
    own = synthetic_featureset(60, seed=9, prefix="own")
    bundle = fit_bundle(
        featureset,
        probe="lightgbm",
        probe_params=FAST,
        test_features=own,
        target_risk=0.4,
        n_bootstrap=0,
    )
    assert len(bundle.split["train"]) == len(featureset) and bundle.split["test"] == []
    generated = int((own.sources == "generated").sum())
    assert bundle.report.summary["evaluated on"]["records"] == generated
    assert bundle.abstention.n == generated  # certified on the user's answers
    assert bundle.manifest["training"]["split"]["test_features"] is True
    with pytest.raises(ProbeError, match="share 150 questions with the training features"):
        fit_bundle(featureset, probe="lightgbm", probe_params=FAST, test_features=featureset)


def test_fit_command_takes_a_test_featureset(featureset, tmp_path):
    from click.testing import CliRunner

    from perturbprobe.cli import cli

    train = featureset.save(tmp_path / "train")
    test = synthetic_featureset(60, seed=9, prefix="own").save(tmp_path / "test")
    args = ["fit", "-f", str(train), "--test", str(test), "-p", "logistic", "-o"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert f"your test answers ({test})" in result.output
    assert "model selection, leave one domain out" in result.output  # the named probe's CV
