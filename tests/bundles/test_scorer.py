"""Production scoring (Scorer, score_file) and the fit / evaluate / score commands, end to end
on a tiny random Llama: real extraction, real bundles on disk."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import make_tiny_llm, save_llm

from perturbprobe.bundles import ProbeBundle, Scorer, score_file
from perturbprobe.cli import cli
from perturbprobe.data import Record, write_records
from perturbprobe.errors import BundleError, PairEncodingError
from perturbprobe.features import extract
from perturbprobe.training import fit_bundle

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown"]


def _records(n_questions: int = 48) -> list[Record]:
    """Per question: a 'right' answer (label 1: repeats the question's word) and two wrong
    ones (label 0: other words), so features can tell them apart even on a random model."""
    rng = np.random.default_rng(0)
    records = []
    for q in range(n_questions):
        word = COLOURS[q % len(COLOURS)]
        messages = ({"role": "user", "content": f"Say {word} {q}."},)
        answers = [(f"{word} {word}", 1, "generated"), (f"{word}", 1, "gold")]
        answers += [(" ".join(rng.choice(COLOURS, 3)), 0, "wrong") for _ in range(2)]
        answers.append((f"no {rng.choice(COLOURS)} at all", 0, "generated"))
        for k, (response, label, source) in enumerate(answers):
            records.append(
                Record(
                    id=f"q{q}/{k}",
                    question_id=f"q{q}",
                    messages=messages,
                    response=response,
                    label=label,
                    source=source,
                )
            )
    return records


@pytest.fixture(scope="module")
def llm():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def featureset(llm):
    return extract(llm, _records(), families="baseline,ccps,entropy_dynamics", progress=False)


@pytest.fixture(scope="module")
def bundle_dir(featureset, tmp_path_factory):
    bundle = fit_bundle(
        featureset,
        probe="logistic",
        families=["baseline", "ccps"],
        target_risk=0.4,
        n_bootstrap=20,
    )
    return bundle.save(tmp_path_factory.mktemp("models") / "tiny")


PAIRS = [
    {"question": "Say red 1.", "response": "red red"},
    {"messages": [{"role": "user", "content": "Say blue 2."}], "response": "green pink"},
    {"question": "Say white 3.", "response": "white", "id": "kept"},
]


def test_scorer_matches_the_bundle_on_extracted_features(llm, bundle_dir, featureset):
    scorer = Scorer.load(bundle_dir, llm=llm)
    records = [r for r in _records() if r.question_id in ("q3", "q4")]
    scores = scorer.score([{"messages": list(r.messages), "response": r.response} for r in records])
    features = extract(llm, records, families="baseline,ccps", progress=False)
    expected = ProbeBundle.load(bundle_dir).predict_confidence(features)
    np.testing.assert_allclose(scores.confidence, expected, rtol=0, atol=1e-12)
    assert scores.errors == {}
    threshold = scorer.bundle.abstention.threshold
    assert scores.abstain.tolist() == [
        threshold is None or bool(c < threshold) for c in scores.confidence
    ]
    single = scorer.confidence(list(records[0].messages), records[0].response)
    assert single == pytest.approx(scores.confidence[0], abs=1e-12)


def test_scorer_extracts_only_the_families_the_bundle_reads(llm, bundle_dir, monkeypatch):
    import perturbprobe.bundles.scorer as scorer_module

    seen = []
    real_extract = scorer_module.extract

    def spy(*args, config, **kwargs):
        seen.append(config.families)
        return real_extract(*args, config=config, **kwargs)

    monkeypatch.setattr(scorer_module, "extract", spy)
    Scorer.load(bundle_dir, llm=llm).score(PAIRS)
    assert seen == [["baseline", "ccps"]]


def test_invalid_pairs_are_reported_and_the_rest_scored(llm, bundle_dir):
    scorer = Scorer.load(bundle_dir, llm=llm)
    pairs = [PAIRS[0], {"question": "Say red."}, {"question": "Say red.", "response": ""},
             "not an object", {"response": "red"}, PAIRS[2]]  # fmt: skip
    scores = scorer.score(pairs)
    assert sorted(scores.errors) == [1, 2, 3, 4]
    assert "response" in scores.errors[1] and "empty" in scores.errors[2]
    assert "messages" in scores.errors[4]
    assert np.isnan(scores.confidence[[1, 2, 3, 4]]).all()
    assert np.isfinite(scores.confidence[[0, 5]]).all()
    assert scores.abstain[[1, 2, 3, 4]].all()
    alone = scorer.score([PAIRS[0], PAIRS[2]]).confidence
    assert np.array_equal(scores.confidence[[0, 5]], alone)
    with pytest.raises(PairEncodingError, match="empty"):
        scorer.confidence("Say red.", "")
    nothing = scorer.score([{"question": "x", "response": ""}])
    assert list(nothing.errors) == [0] and np.isnan(nothing.confidence).all()


def test_confidence_does_not_depend_on_the_batch(llm, bundle_dir):
    """The same answers scored all at once, in threes and one by one: float32 rounding moves
    features by a few ulps between batchings, and the probe must not amplify that (before,
    features constant up to rounding made confidences differ by up to 0.18)."""
    scorer = Scorer.load(bundle_dir, llm=llm)
    words = ["red", "blue", "green", "pink"] * 6
    pairs = [{"question": f"Say {w} {i}.", "response": f"{w} " * (1 + i % 5)} for i, w in
             enumerate(words)]  # fmt: skip
    together = scorer.score(pairs).confidence
    threes = np.concatenate([scorer.score(pairs[i : i + 3]).confidence for i in range(0, 24, 3)])
    alone = np.array([scorer.confidence(p["question"], p["response"]) for p in pairs])
    np.testing.assert_allclose(threes, together, rtol=0, atol=1e-4)
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-4)


def test_concurrent_calls_give_the_sequential_results(llm, bundle_dir):
    scorer = Scorer.load(bundle_dir, llm=llm)
    pairs = [(p.get("question") or p["messages"], p["response"]) for p in PAIRS] * 3
    expected = [scorer.confidence(*pair) for pair in pairs]
    results = [None] * len(pairs)

    def work(i):
        results[i] = scorer.confidence(*pairs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_another_llm_is_refused_unless_allowed(bundle_dir):
    other = make_tiny_llm("llama", seed=1)
    with pytest.raises(BundleError, match="fitted on LLM 'tiny-llama-seed0'"):
        Scorer.load(bundle_dir, llm=other)
    scorer = Scorer.load(bundle_dir, llm=other, allow_llm_mismatch=True)
    assert np.isfinite(scorer.score(PAIRS).confidence).all()


def test_score_file_keeps_order_and_reports_bad_lines(llm, bundle_dir, tmp_path):
    lines = [json.dumps(PAIRS[0]), "{broken", "", json.dumps({"question": "q", "response": ""}),
             json.dumps(PAIRS[2])]  # fmt: skip
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    errors, _ = score_file(Scorer.load(bundle_dir, llm=llm), source, tmp_path / "out.jsonl")
    assert list(errors) == [2, 4]
    assert "not valid JSON" in errors[2] and "empty" in errors[4]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # blank lines are skipped, every other line keeps its place
    assert rows[0]["question"] == PAIRS[0]["question"] and 0 <= rows[0]["confidence"] <= 1
    assert rows[1]["confidence"] is None and "error" in rows[1]
    assert rows[3]["id"] == "kept" and isinstance(rows[3]["abstain"], bool)


# ----------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def saved_model(llm, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_llm(llm, directory)
    return directory


def test_fit_evaluate_score_commands(saved_model, tmp_path):
    runner = CliRunner()
    model = ["--model", str(saved_model), "--device", "cpu"]
    records = tmp_path / "records.jsonl"
    write_records(records, _records())
    features = tmp_path / "features"
    args = ["-q", "extract", *model, "-r", str(records), "-o", str(features)]
    result = runner.invoke(cli, [*args, "--families", "baseline,ccps"])
    assert result.exit_code == 0, result.output

    bundle = tmp_path / "bundle"
    args = ["-q", "fit", "-f", str(features), "-p", "logistic", "-c", "platt", "-o", str(bundle)]
    result = runner.invoke(cli, [*args, "--param", "C=0.5", "--target-risk", "0.4"])
    assert result.exit_code == 0, result.output
    assert (
        "probe: logistic + platt" in result.stdout and "baseline: mean token prob" in result.stdout
    )
    assert ProbeBundle.load(bundle).probe.C == 0.5
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and "already exists" in result.stderr

    report = tmp_path / "report"
    args = ["-q", "evaluate", "-b", str(bundle), "-f", str(features), "-o", str(report)]
    result = runner.invoke(cli, [*args, "--ablation"])
    assert result.exit_code == 0, result.output
    assert (report / "report.html").is_file() and (report / "metrics.json").is_file()
    assert "ablation on the bundle's test part" in result.stdout
    ablation = json.loads((report / "metrics.json").read_text())["ablation"]
    assert ablation["index"] == ["baseline", "ccps", "all families"]

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n{bad\n")
    out = tmp_path / "scored.jsonl"
    args = ["-q", "score", *model, "-b", str(bundle), "-i", str(pairs), "-o", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{pairs}:4: not scored: not valid JSON" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in rows] == [None, None, "kept", None]
    assert all(isinstance(r["confidence"], float) for r in rows[:3])


def test_command_errors_are_one_line(saved_model, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["fit", "-f", str(tmp_path), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not a FeatureSet directory" in result.stderr
    args = ["score", "--model", str(saved_model), "-b", str(tmp_path), "-i", "x", "-o", "y"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and "is not a probe bundle" in result.stderr


def test_gradient_family_bundles_score_in_production(llm, tmp_path):
    """A probe on semantic_gradient and sua (with a non-default t*, band and λ) scores through
    the Scorer exactly as on features extracted with the bundle's recorded config."""
    records = _records(24)
    options = [
        "semantic_gradient.semantic_offset=2",
        "semantic_gradient.layer_band=0-1",
        "sua.lam=0.5",
        "sua.embed_samples=3",
    ]
    fs = extract(llm, records, families="semantic_gradient,sua", overrides=options,
                 progress=False)  # fmt: skip
    bundle = fit_bundle(fs, probe="lightgbm", n_bootstrap=10)
    path = bundle.save(tmp_path / "gradients")
    assert ProbeBundle.load(path).extractor_config.family_configs["sua"].lam == 0.5
    scorer = Scorer.load(path, llm=llm)
    heldout = records[:10]
    scores = scorer.score([{"messages": list(r.messages), "response": r.response} for r in heldout])
    expected = ProbeBundle.load(path).predict_confidence(fs.subset(np.arange(10)))
    np.testing.assert_allclose(scores.confidence, expected, rtol=0, atol=1e-6)


def test_a_bundle_extracts_what_its_probe_reads_with_its_llm_only(llm, bundle_dir):
    bundle = ProbeBundle.load(bundle_dir)
    records = [r for r in _records() if r.question_id in ("q5", "q6")]
    features = bundle.extract(llm, records, progress=False)
    assert features.families == ["baseline", "ccps"]  # not entropy_dynamics, which it never reads
    expected = extract(llm, records, families="baseline,ccps", progress=False)
    np.testing.assert_array_equal(features.X.to_numpy(), expected.X[features.schema].to_numpy())
    assert bundle.predict_confidence(features).shape == (len(records),)
    with pytest.raises(BundleError, match="fitted on LLM 'tiny-llama-seed0'"):
        bundle.extract(make_tiny_llm("llama", seed=1), records, progress=False)
