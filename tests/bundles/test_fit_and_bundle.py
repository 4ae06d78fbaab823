"""The fit workflow (split, fit, calibrate, abstain, evaluate) and the ProbeBundle format, on
synthetic FeatureSets: round trips, integrity checks and every bad-input case."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_features import SCHEMA, TOKEN_SCHEMA, synthetic_featureset

from perturbprobe.bundles import BUNDLE_FORMAT_VERSION, ProbeBundle, llm_slug
from perturbprobe.bundles.verification import manifest_hash
from perturbprobe.calibration.metrics import roc_auc_score
from perturbprobe.cli import cli
from perturbprobe.data import split_by_question
from perturbprobe.errors import BundleError, CalibrationError, ProbeError
from perturbprobe.features import ExtractorConfig
from perturbprobe.training import (
    bundle_split,
    evaluate_bundles,
    family_ablation,
    fit_bundle,
    heldout_rows,
)

# Small training budgets: these tests check wiring and files, not probe quality.
FAST = {
    "lightgbm": {"n_estimators": 60},
    "logistic": {},
    "ccps": {"contrastive_epochs": 4, "epochs": 4},
    "ccps-cnn": {"contrastive_epochs": 3, "epochs": 3},
}


@pytest.fixture(scope="module")
def featureset():
    return synthetic_featureset()


@pytest.fixture(scope="module")
def lgbm_bundle(featureset):
    return fit_bundle(
        featureset,
        probe="lightgbm",
        calibrator="isotonic",
        probe_params=FAST["lightgbm"],
        target_risk=0.3,
        n_bootstrap=50,
    )


@pytest.fixture
def saved(lgbm_bundle, tmp_path):
    return lgbm_bundle.save(tmp_path / "bundle")


# ----------------------------------------------------------------------------- splits


def test_split_is_grouped_by_question_disjoint_and_complete(featureset):
    split = split_by_question(featureset.question_ids, featureset.y, random_state=3)
    questions = np.asarray(featureset.question_ids)
    parts = [set(questions[rows]) for rows in split.parts]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate(split.parts)) == list(range(len(featureset)))
    sizes = [len(rows) / len(featureset) for rows in split.parts]
    assert sizes == pytest.approx([0.6, 0.2, 0.2], abs=0.06)
    for rows in split.parts:
        assert set(featureset.y[rows]) == {0, 1}
    again = split_by_question(featureset.question_ids, featureset.y, random_state=3)
    assert all(np.array_equal(a, b) for a, b in zip(split.parts, again.parts, strict=True))
    other = split_by_question(featureset.question_ids, featureset.y, random_state=4)
    assert not np.array_equal(split.test, other.test)


def test_split_errors():
    with pytest.raises(ProbeError, match="at least 3 distinct questions"):
        split_by_question(["a", "a", "b", "b"], np.array([0, 1, 0, 1]))
    with pytest.raises(ProbeError, match="must leave rows for training"):
        split_by_question(list("abcdef"), np.array([0, 1] * 3), test_fraction=0.5,
                          validation_fraction=0.5)  # fmt: skip
    # Every incorrect answer belongs to one question: some part cannot have both labels.
    with pytest.raises(ProbeError, match="split has only correct answers"):
        split_by_question([f"q{i}" for i in range(20)] + ["q0"], np.array([1] * 20 + [0]))


# ----------------------------------------------------------------------------- fit workflow


@pytest.mark.parametrize("probe", ["lightgbm", "logistic", "ccps", "ccps-cnn"])
def test_fit_save_load_round_trip_gives_identical_predictions(featureset, probe, tmp_path):
    bundle = fit_bundle(featureset, probe=probe, probe_params=FAST[probe], n_bootstrap=20)
    path = bundle.save(tmp_path / probe)
    loaded = ProbeBundle.load(path)
    expected = bundle.predict_confidence(featureset)
    assert np.array_equal(loaded.predict_confidence(featureset), expected)
    assert expected.shape == (len(featureset),) and ((expected >= 0) & (expected <= 1)).all()
    if probe == "ccps-cnn":
        assert (loaded.schema, loaded.token_schema) == ([], TOKEN_SCHEMA)
    else:
        assert (loaded.schema, loaded.token_schema) == (SCHEMA, [])
    # The signal is strong: every probe beats chance clearly on the test questions.
    test = np.isin(featureset.record_ids, bundle.split["test"])
    assert roc_auc_score(featureset.y[test], expected[test]) > 0.75


def manifest_split(path):
    return json.loads((path / "split.json").read_text())


def test_bundle_files_and_manifest(saved, featureset):
    manifest = json.loads((saved / "manifest.json").read_text())
    files = sorted(p.name for p in saved.iterdir())
    assert files == sorted(
        ["manifest.json", "calibrators.json", "split.json", "report.html", "metrics.json",
         "reliability.png", "lightgbm.txt", "lightgbm.json", "shift.json"]
    )  # fmt: skip
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    assert manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert manifest["llm"] == featureset.manifest["llm"]
    assert manifest["extractor"] == featureset.manifest["config"]
    assert manifest["schema"] == SCHEMA and manifest["token_schema"] == []
    assert manifest["probe"]["name"] == "lightgbm"
    assert manifest["probe"]["params"]["n_estimators"] == 60
    # The calibrator is fitted on the out-of-fold scores of every training answer of the LLM.
    split = manifest_split(saved)
    assert split["validation"] == [] and len(split["test"]) > 0
    calibrated = np.isin(featureset.record_ids, split["train"])
    calibrated &= featureset.sources == "generated"  # calibration uses the LLM's own answers
    assert manifest["calibrator"] == {
        "name": "isotonic",
        "rows": int(calibrated.sum()),
        "positive_rate": round(float(featureset.y[calibrated].mean()), 6),
        "fitted_on": "out-of-fold scores, folds by question",
    }
    sources = manifest["training"]["sources"]
    assert set(sources) == {"generated", "gold", "wrong"}
    assert sum(sources.values()) == manifest["training"]["records"]
    assert manifest["training"]["heldout_sources"] == ["generated"]
    metrics = manifest["metrics"]
    assert set(metrics) == {
        "probe: lightgbm + isotonic",
        "baseline: mean token prob",
        "baseline: sequence prob",
        "baseline: mean entropy",
    }
    assert {"auroc", "ece", "brier"} <= set(metrics["probe: lightgbm + isotonic"])
    assert manifest["abstention"]["target_risk"] == 0.3
    assert manifest["manifest_sha256"] == manifest_hash(manifest)


def test_heldout_parts_are_generated_answers_and_training_uses_all(lgbm_bundle, featureset):
    sources = dict(zip(featureset.record_ids, featureset.sources, strict=True))
    assert {sources[i] for i in lgbm_bundle.split["train"]} == {"generated", "gold", "wrong"}
    n = lgbm_bundle.report.summary["evaluated on"]["records"]
    test_generated = [i for i in lgbm_bundle.split["test"] if sources[i] == "generated"]
    assert n == len(test_generated)
    assert lgbm_bundle.report.summary["evaluated on"]["sources"] == {"generated": n}


def test_abstention_survives_the_round_trip(lgbm_bundle, saved, featureset):
    loaded = ProbeBundle.load(saved)
    assert loaded.abstention == lgbm_bundle.abstention
    confidence = loaded.predict_confidence(featureset)
    abstain = loaded.abstain(confidence)
    if loaded.abstention.threshold is None:
        assert abstain.all()
    else:
        assert np.array_equal(abstain, confidence < loaded.abstention.threshold)


def test_family_selection(featureset):
    bundle = fit_bundle(featureset, probe="logistic", families=["ccps"], n_bootstrap=0)
    assert bundle.schema == [c for c in SCHEMA if c.startswith("ccps/")]
    assert bundle.extractor_config.families == ["ccps"]
    with pytest.raises(ProbeError, match="no entropy_dynamics columns"):
        fit_bundle(featureset, probe="logistic", families=["entropy_dynamics"])


def test_evaluate_on_training_features_uses_only_unseen_records(lgbm_bundle, featureset):
    rows = heldout_rows(lgbm_bundle, featureset)
    assert set(np.asarray(featureset.record_ids)[rows]) == set(lgbm_bundle.split["test"])
    report = evaluate_bundles(lgbm_bundle, featureset, n_bootstrap=0)
    assert report.summary["evaluated on"]["records"] == len(rows)
    fresh = synthetic_featureset(30, seed=7, prefix="new")
    assert len(heldout_rows(lgbm_bundle, fresh)) == len(fresh)


def test_llm_slug():
    assert llm_slug("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert llm_slug("/models/My Model.gguf") == "my-model"
    assert llm_slug("/tmp/tiny/") == "tiny"


# ----------------------------------------------------------------------------- bad input


def test_single_class_and_too_few_rows_are_refused(featureset):
    one_class = featureset.subset(np.flatnonzero(featureset.y == 1))
    with pytest.raises(ProbeError, match=r"only 0 incorrect answers .* at least 20"):
        fit_bundle(one_class)
    few = featureset.subset(np.arange(30))  # 10 questions: ~13 correct, ~17 incorrect
    with pytest.raises(ProbeError, match="at least 20 of each"):
        fit_bundle(few)


def test_unknown_probe_and_calibrator_names(featureset):
    with pytest.raises(ProbeError, match="unknown probe 'forest'"):
        fit_bundle(featureset, probe="forest")
    with pytest.raises(CalibrationError, match="unknown calibrator 'beta'"):
        fit_bundle(featureset, calibrator="beta")


def test_infinite_features_are_refused_and_missing_ones_imputed_with_a_warning(featureset):
    broken = featureset.subset(np.arange(len(featureset)))
    broken.features = broken.features.copy()
    broken.features.loc[5, "ccps/noise:mean"] = np.inf
    with pytest.raises(ProbeError, match="ccps/noise:mean"):
        fit_bundle(broken, probe="logistic", n_bootstrap=0)
    broken.features.loc[5, "ccps/noise:mean"] = np.nan
    with pytest.warns(UserWarning, match="missing"):
        bundle = fit_bundle(broken, probe="logistic", n_bootstrap=0)
    assert np.isfinite(bundle.predict_confidence(broken)).all()


def test_another_llm_is_refused_unless_allowed(lgbm_bundle):
    other = synthetic_featureset(30, seed=1, fingerprint="0" * 64)
    with pytest.raises(BundleError, match=r"fitted on LLM 'synthetic/llm'.*allow_llm_mismatch"):
        lgbm_bundle.predict_confidence(other)
    assert len(lgbm_bundle.predict_confidence(other, allow_llm_mismatch=True)) == len(other)


def test_missing_columns_other_options_or_response_end_are_refused(lgbm_bundle, featureset):
    fewer = featureset.subset(np.arange(len(featureset)))
    fewer.features = fewer.features.drop(columns=["ccps/noise:max"])
    fewer.manifest = {**fewer.manifest, "schema": [c for c in SCHEMA if c != "ccps/noise:max"]}
    with pytest.raises(BundleError, match=r"lack 1 column.*ccps/noise:max"):
        lgbm_bundle.predict_confidence(fewer)
    for override, message in (("ccps.radius=10", "family 'ccps' was extracted with options"),
                              ("response_end=eot", "response_end='eot'")):  # fmt: skip
        config = ExtractorConfig.from_dict(featureset.manifest["config"]).with_overrides([override])
        other = featureset.subset(np.arange(len(featureset)))
        other.manifest = {**featureset.manifest, "config": config.to_dict()}
        with pytest.raises(BundleError, match=message):
            lgbm_bundle.predict_confidence(other)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "lightgbm.txt").write_text("tree\n"), "lightgbm.txt is corrupt"),
        (lambda p: (p / "calibrators.json").unlink(), "calibrators.json is missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "unreadable"),
        (lambda p: (p / "manifest.json").unlink(), "is not a probe bundle"),
    ],
)
def test_corrupt_bundles_are_refused(saved, damage, message):
    damage(saved)
    with pytest.raises(BundleError, match=message):
        ProbeBundle.load(saved)


def test_hand_edited_manifest_is_refused(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["llm"]["fingerprint"] = "0" * 64  # e.g. to force the probe onto another LLM
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="was edited"):
        ProbeBundle.load(saved)


def test_other_format_version_is_refused(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = BUNDLE_FORMAT_VERSION + 1
    manifest["manifest_sha256"] = manifest_hash(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"format version {BUNDLE_FORMAT_VERSION + 1}.*upgrade"):
        ProbeBundle.load(saved)


# ----------------------------------------------------------------------------- never runs code
class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran the bundle author's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rehash(path):
    """Recompute every file hash and the manifest's own hash, as a malicious author would."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {
        f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }
    manifest["manifest_sha256"] = manifest_hash(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture(scope="module")
def logistic_bundle(featureset):
    return fit_bundle(featureset, probe="logistic", n_bootstrap=20)


@pytest.mark.parametrize("version", ["current", 1])
def test_a_crafted_pickle_bundle_is_refused_and_its_code_never_runs(
    logistic_bundle, featureset, tmp_path, version
):
    """The attack of the old format: replace the logistic state by a pickle and recompute the
    hashes (as the current format, and as a version-1 bundle). Loading is refused, through
    the library and the CLI, and the payload never runs."""
    path = logistic_bundle.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("logistic")) == [
        "logistic.json",
        "logistic.safetensors",
    ]
    marker = tmp_path / "pwned"
    for name in ("logistic.json", "logistic.safetensors"):
        (path / name).unlink()
    (path / "logistic.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    manifest = _rehash(path)
    if version == 1:
        manifest["format_version"] = 1
        manifest["manifest_sha256"] = manifest_hash(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest))
    message = "version 1 may hold a pickle" if version == 1 else "logistic"
    with pytest.raises(BundleError, match=message):
        ProbeBundle.load(path)
    features = tmp_path / "features"
    featureset.save(features)
    result = CliRunner().invoke(
        cli, ["evaluate", "--bundle", str(path), "--features", str(features)]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tamper", "rehash", "message"),
    [
        (lambda p: (p / "notes.txt").write_text("x"), False, "notes.txt is not listed"),
        (lambda p: (p / "extra").mkdir(), True, "unexpected directory extra"),
        (lambda p: (p / "link.json").symlink_to(p / "split.json"), True, "link.json is a symbolic"),
    ],
)
def test_a_bundle_must_hold_exactly_the_listed_regular_files(saved, tamper, rehash, message):
    """A file the manifest does not list, a directory holding no listed file and a symbolic
    link (even one the recomputed hashes cover) are refused."""
    tamper(saved)
    if rehash:
        _rehash(saved)
    with pytest.raises(BundleError, match=message):
        ProbeBundle.load(saved)


@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "a\\b.json", ".hidden", "a//b"])
def test_unsafe_listed_names_are_refused(saved, name):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][name] = "0" * 64
    manifest["manifest_sha256"] = manifest_hash(manifest)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unsafe file name"):
        ProbeBundle.load(saved)


def test_interrupted_save_leaves_no_bundle(lgbm_bundle, tmp_path, monkeypatch):
    def fail(directory):
        (directory / "half-written").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(lgbm_bundle.probe, "save_state", fail)
    with pytest.raises(KeyboardInterrupt):
        lgbm_bundle.save(tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_overwrite(lgbm_bundle, saved):
    with pytest.raises(BundleError, match="already exists"):
        lgbm_bundle.save(saved)
    lgbm_bundle.save(saved, overwrite=True)
    loaded = ProbeBundle.load(saved)
    assert loaded.report is None  # the report's files stay on disk; load verifies, not parses
    assert repr(loaded).startswith("ProbeBundle(lightgbm + isotonic, 6 features")


# ----------------------------------------------------------------------------- ablation


def test_family_ablation_rows_and_bundle_split(lgbm_bundle, featureset):
    split = bundle_split(lgbm_bundle, featureset)
    ids = np.asarray(featureset.record_ids)
    for part, rows in zip(("train", "validation", "test"), split.parts, strict=True):
        assert sorted(ids[rows]) == sorted(lgbm_bundle.split[part])
    table = family_ablation(featureset, split, probe="logistic", n_bootstrap=30)
    assert list(table.index) == ["baseline", "ccps", "all families"]
    assert table["features"].tolist() == [3, 3, 6]
    assert list(table.columns) == ["features", "auroc", "ece", "brier", "aurc"]
    # The signal lives in the ccps columns: ccps alone ranks answers well.
    assert float(table.loc["ccps", "auroc"].split()[0]) > 0.75
    # The "all families" row is the bundle fit_bundle makes with the same split and seed.
    full = fit_bundle(featureset, probe="logistic", split=split, n_bootstrap=0)
    test = split.test[featureset.sources[split.test] == "generated"]
    part = featureset.subset(test)
    auroc = roc_auc_score(part.y, full.predict_confidence(part))
    assert table.loc["all families", "auroc"].startswith(f"{auroc:.3f}")


def test_bundle_split_needs_the_training_records(lgbm_bundle):
    with pytest.raises(BundleError, match=r"lack .* of the bundle's train records"):
        bundle_split(lgbm_bundle, synthetic_featureset(30, prefix="new"))
