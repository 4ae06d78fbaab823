"""The self-consistency baseline: answer keys by format, agreement with the greedy answer
against a naive one-sample-at-a-time loop, token counts, and the confidence of records."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny_llm

import perturbprobe
from perturbprobe.data import Record, load_dataset
from perturbprobe.data.schema import example_from_row
from perturbprobe.data.self_consistency import (
    SelfConsistency,
    answer_key,
    self_consistency,
    self_consistency_confidence,
)
from perturbprobe.errors import DatasetError, GenerationError

NUMERIC = example_from_row(
    {"id": "num", "question": "What is six times seven?", "answers": ["42"], "grader": "numeric"},
    "test",
)
CHOICE = example_from_row(
    {
        "id": "mc",
        "question": "What is the capital of France?",
        "choices": ["Rome", "Paris", "Madrid"],
        "answers": ["Paris"],
    },
    "test",
)
SHORT = example_from_row(
    {"id": "short", "question": "Capital of France?", "answers": ["Paris"]}, "t"
)
TRUEFALSE = example_from_row(
    {
        "id": "tf",
        "question": "True or false: ice is cold.",
        "answers": ["true"],
        "format": "truefalse",
    },
    "test",
)


def agree(a: str, b: str, example) -> bool:
    key = answer_key(a, example)
    return key is not None and key == answer_key(b, example)


# =============================================================================== answer keys


@pytest.mark.parametrize(
    ("example", "same", "different"),
    [
        (
            NUMERIC,
            ["The answer is 42.", "42", "42.0", "forty-two", "6 x 7 = 42"],
            ["41", "42 or 43", "420"],
        ),
        (CHOICE, ["B) Paris", "B", "(B)", "Answer: B", "b", "Paris"], ["A", "C) Madrid", "Rome"]),
        (SHORT, ["Paris.", "paris", "PARIS!", "The Paris", "Pâris"], ["Paris, France", "Rome"]),
        (TRUEFALSE, ["True.", "true, ice is cold", "Yes", "It is not false."], ["False", "No."]),
    ],
)
def test_answer_keys_by_format(example, same, different):
    first = same[0]
    for response in same:
        assert agree(first, response, example), (first, response)
    for response in different:
        assert not agree(first, response, example), (first, response)


def test_keys_are_the_graders_reading():
    assert answer_key("The answer is 42.", NUMERIC) == answer_key("42", NUMERIC) == "42.0"
    assert answer_key("B) Paris", CHOICE) == "B"  # the chosen letter
    assert answer_key("Paris", CHOICE) == "B"  # no letter: the one option named
    assert answer_key("Paris.", SHORT) == "paris"
    assert answer_key("It is not true", TRUEFALSE) == "false"


@pytest.mark.parametrize(
    ("response", "example"),
    [
        ("", SHORT),
        ("   ", SHORT),
        ("...", SHORT),
        ("I do not know", NUMERIC),
        ("", NUMERIC),
        ("I am not sure", CHOICE),
        ("Rome or Paris", CHOICE),  # two options named: no choice
        ("Maybe", TRUEFALSE),
    ],
)
def test_a_response_without_an_answer_has_no_key_and_never_agrees(response, example):
    assert answer_key(response, example) is None
    assert not agree(response, response, example)


# ================================================================ agreement on a tiny model


OPTIONS = {"n": 6, "temperature": 0.15, "seed": 5, "max_new_tokens": 2}  # short answers collide


@pytest.fixture(scope="module")
def tiny():
    llm = make_tiny_llm("llama")
    examples = [*load_dataset("builtin:easy-qa", limit=8), NUMERIC, CHOICE, TRUEFALSE]
    return llm, examples


def test_agreement_equals_a_naive_loop_one_sample_at_a_time(tiny):
    llm, examples = tiny
    result = self_consistency(llm, examples, None, batch_size=3, progress=False, **OPTIONS)
    gen = {"max_new_tokens": 2, "progress": False}
    expected_agreement, expected_tokens, expected_greedy_tokens = [], [], []
    for example in examples:  # each question alone, each sample on its own
        greedy = perturbprobe.generate(llm, list(example.messages), **gen)
        samples = perturbprobe.generate(
            llm, list(example.messages), n=6, temperature=0.15, seed=5, **gen
        )
        agreeing = 0
        for sample in samples:
            agreeing += agree(greedy.response, sample.response, example)
        expected_agreement.append(agreeing / 6)
        expected_tokens.append(sum(len(s.token_ids) + (len(s.token_ids) < 2) for s in samples))
        expected_greedy_tokens.append(greedy.generated_tokens)
    np.testing.assert_array_equal(result.agreement, expected_agreement)
    assert 0 < result.agreement.mean() < 1 and len(set(result.agreement)) >= 3  # a real spread
    np.testing.assert_array_equal(result.sample_tokens, expected_tokens)
    np.testing.assert_array_equal(result.greedy_tokens, expected_greedy_tokens)
    assert result.question_ids == [e.id for e in examples]
    assert all(len(row) == 6 for row in result.samples)
    summary = result.summary()
    assert summary["n"] == 6 and summary["questions"] == len(examples)
    assert summary["cost_ratio"] == pytest.approx(
        sum(expected_tokens) / sum(expected_greedy_tokens)
    )
    assert result.tokens_per_question == pytest.approx(np.mean(expected_tokens))


def test_given_greedy_answers_strings_or_guided_answers(tiny):
    llm, examples = tiny
    answers = perturbprobe.generate(
        llm, [list(e.messages) for e in examples], max_new_tokens=2, progress=False
    )
    from_answers = self_consistency(llm, examples, answers, progress=False, **OPTIONS)
    from_strings = self_consistency(
        llm, examples, [a.response for a in answers], progress=False, **OPTIONS
    )
    decoded_here = self_consistency(llm, examples, None, progress=False, **OPTIONS)
    np.testing.assert_array_equal(from_answers.agreement, decoded_here.agreement)
    np.testing.assert_array_equal(from_strings.agreement, decoded_here.agreement)
    np.testing.assert_array_equal(from_answers.greedy_tokens, decoded_here.greedy_tokens)
    assert from_strings.greedy_tokens.min() >= 1 and from_strings.greedy_tokens.max() <= 2
    # an empty greedy answer never agrees, whatever the samples say
    empty = self_consistency(llm, examples[:2], ["", ""], progress=False, **OPTIONS)
    assert empty.agreement.tolist() == [0.0, 0.0]


def test_bad_settings_are_clear_errors(tiny):
    llm, examples = tiny
    with pytest.raises(GenerationError, match="temperature must be > 0"):
        self_consistency(llm, examples, None, temperature=0.0, progress=False)
    with pytest.raises(GenerationError, match="n must be an integer >= 1"):
        self_consistency(llm, examples, None, n=0, progress=False)
    with pytest.raises(GenerationError, match="2 greedy responses for 11 examples"):
        self_consistency(llm, examples, ["a", "b"], progress=False)


# ============================================================== the confidence of records


def record(question, response, number=0):
    return Record(
        id=f"{question.id}-{number}",
        question_id=question.id,
        messages=question.messages,
        response=response,
        label=None,
        source="generated",
    )


def test_confidence_of_records_by_question_id():
    questions = (NUMERIC, CHOICE, SHORT)
    samples = (
        ("42", "It is 42.", "41", "", "forty-two"),
        ("B", "A", "B) Paris", "I am not sure", "Paris"),
        ("Paris.", "Rome", "paris", "Paris", "Lyon"),
    )
    result = SelfConsistency(
        examples=questions,
        greedy=("The answer is 42.", "B", "Paris"),
        samples=samples,
        agreement=np.array([0.6, 0.6, 0.6]),
        sample_tokens=np.array([10, 10, 10]),
        greedy_tokens=np.array([2, 2, 2]),
    )
    records = [
        record(SHORT, "PARIS"),
        record(NUMERIC, "The answer is 42."),
        record(NUMERIC, "41", 1),
        record(NUMERIC, "", 2),
        record(CHOICE, "C", 1),
        record(CHOICE, "(B)"),
        record(SHORT, "Lyon", 1),
    ]
    expected = [0.6, 0.6, 0.2, 0.0, 0.0, 0.6, 0.2]
    np.testing.assert_allclose(self_consistency_confidence(result, records), expected)
    np.testing.assert_allclose(result.confidence(records), expected)
    assert result.cost_ratio == 5.0
    stranger = Record("x-0", "x", SHORT.messages, "Paris", None, "generated")
    with pytest.raises(DatasetError, match="question 'x' has no self-consistency samples"):
        self_consistency_confidence(result, [stranger])


def test_the_greedy_records_confidence_is_the_agreement(tiny):
    llm, examples = tiny
    result = self_consistency(llm, examples, None, progress=False, **OPTIONS)
    records = [record(e, g) for e, g in zip(examples, result.greedy, strict=True)][::-1]
    np.testing.assert_array_equal(result.confidence(records), result.agreement[::-1])
