"""Localisation of sensitive response tokens and steps (``localize``, ``detection_rate``,
``perturbprobe localize``) on a tiny random Llama and on hand-made examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import make_tiny_llm, save_llm

from perturbprobe.cli import cli
from perturbprobe.errors import ExtractionError, PairEncodingError
from perturbprobe.features import Localization, detection_rate, extract, localize
from perturbprobe.features.localization import line_steps

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

PAIRS = [
    {"question": "What is 12 + 7?", "response": "12 + 7 = 19.\nSo the answer is 19."},
    {"messages": [{"role": "user", "content": "Name a colour."}], "response": "Blue"},
]


@pytest.fixture(scope="module")
def llm():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def found(llm):
    return localize(llm, PAIRS, overrides=["embedding_perturbation.samples=3"])


def test_spans_cover_the_response_text_in_order(found):
    for result, pair in zip(found, PAIRS, strict=True):
        spans = result.spans
        assert (spans[:, 0] <= spans[:, 1]).all() and (spans[1:, 0] == spans[:-1, 1]).all()
        text = "".join(pair["response"][s:e] for s, e in spans)
        assert text == pair["response"]
        # The template's end-of-turn tokens come after the text: empty spans at its end.
        assert spans[-1, 0] == spans[-1, 1] == len(pair["response"])


def test_scores_are_the_extracted_token_scores(llm, found):
    from perturbprobe.data import pair_record

    records = [pair_record(i, pair) for i, pair in enumerate(PAIRS)]
    fs = extract(
        llm,
        records,
        families="embedding_perturbation",
        overrides=["embedding_perturbation.samples=3"],
        progress=False,
    )
    for record, result in zip(records, found, strict=True):
        expected = fs.token_matrix(record.id)[:, 0]  # linf_adv
        np.testing.assert_allclose(result.scores, expected, rtol=1e-6)


def test_top_k_is_sorted_and_only_reports_text_tokens(found):
    result = found[0]
    top = result.top_k(4)
    assert [t.score for t in top] == sorted((t.score for t in top), reverse=True)
    in_text = result.spans[:, 1] > result.spans[:, 0]
    assert top[0].score == result.scores[in_text].max()
    for token in top:
        assert token.text == result.response[token.start : token.end] and token.text
    assert len(found[1].top_k(50)) == int((found[1].spans[:, 1] > found[1].spans[:, 0]).sum())


def test_step_scores_take_the_largest_overlapping_token(found):
    result = found[0]
    steps = line_steps(result.response)
    assert steps == [(0, 12), (13, 33)]
    scores = result.step_scores()
    for (start, end), value in zip(steps, scores, strict=True):
        naive = max(
            score
            for (s, e), score in zip(result.spans, result.scores, strict=True)
            if s < end and e > start
        )
        assert value == naive


def _handmade(scores, spans, response="ab\ncd"):
    return Localization(response, ["t"] * len(scores), np.array(spans), np.array(scores, float))


def test_detection_rate_by_hand():
    # Steps "ab" (0, 2) and "cd" (3, 5); tokens a, b, \n, c, d.
    spans = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    first = _handmade([0.1, 0.2, 0.0, 0.9, 0.3], spans)  # top-1 "c": in step 1
    second = _handmade([0.8, 0.2, 0.0, 0.1, 0.3], spans)  # top-1 "a": in step 0
    assert detection_rate([first, second], [1, 1], k=1) == 0.5
    assert detection_rate([first, second], [1, 1], k=3) == 1.0  # "d" enters second's top-3
    assert detection_rate([first], [0], k=1, steps=[[(0, 5)]]) == 1.0
    with pytest.raises(ExtractionError, match="first error step 2 is not one of its 2 steps"):
        detection_rate([first], [2])
    with pytest.raises(ExtractionError, match="one first-error step per localisation"):
        detection_rate([first, second], [1])


def test_bad_pairs_and_score_names(llm):
    with pytest.raises(PairEncodingError, match=r"pair 1: .*response"):
        localize(llm, [PAIRS[0], {"question": "x"}])
    with pytest.raises(ExtractionError, match="unknown score 'kl'"):
        localize(llm, PAIRS, score="kl")


def test_localize_command(llm, tmp_path):
    directory = tmp_path / "model"
    save_llm(llm, directory)
    pairs = tmp_path / "pairs.jsonl"
    rows = [{**PAIRS[0], "first_error_step": 1}, PAIRS[1]]
    pairs.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "found.jsonl"
    args = ["-q", "localize", "--model", str(directory), "--device", "cpu", "-i", str(pairs)]
    args += ["--top-k", "2", "--set", "embedding_perturbation.samples=3", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "detection rate (first wrong line among the top 2)" in result.stdout
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written[0]["top_tokens"]) == 2 and len(written[0]["line_scores"]) == 2
    assert written[1]["response"] == "Blue"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = CliRunner().invoke(cli, [*args[:6], "-i", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl:1: not valid JSON" in result.stderr
