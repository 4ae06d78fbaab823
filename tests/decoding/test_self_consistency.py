"""The self-consistency baseline: answer keys by format, ROUGE-L agreement of free-text
answers, agreement with the greedy answer against a naive one-sample-at-a-time loop, token
counts, and the confidence of records."""

from __future__ import annotations

import random
from functools import cache

import numpy as np
import pytest
from tiny_models import make_tiny_llm

import perturbprobe
from perturbprobe.data import Record, load_dataset
from perturbprobe.data.graders import normalize_answer
from perturbprobe.data.schema import example_from_row
from perturbprobe.decoding.self_consistency import (
    SelfConsistency,
    answer_agreement,
    answer_key,
    lcs_length,
    rouge_l_f1,
    self_consistency,
    self_consistency_confidence,
)
from perturbprobe.errors import DatasetError, GenerationError


def make_example(example_id, question, answers, **fields):
    """A validated dataset example with these fields."""
    return example_from_row(
        {"id": example_id, "question": question, "answers": answers, **fields}, "test"
    )


NUMERIC = make_example("num", "What is six times seven?", ["42"], grader="numeric")
CHOICE = make_example(
    "mc", "What is the capital of France?", ["Paris"], choices=["Rome", "Paris", "Madrid"]
)
SHORT = make_example("short", "Capital of France?", ["Paris"])
EXACT = make_example("exact", "Capital of France?", ["Paris"], grader="exact")
TRUEFALSE = make_example("tf", "True or false: ice is cold.", ["true"], format="truefalse")


KEYED = (NUMERIC, CHOICE, TRUEFALSE)


def agree(a: str, b: str, example) -> bool:
    key = answer_key(a, example)
    return key is not None and key == answer_key(b, example)


@cache
def reference_lcs(first: tuple, second: tuple) -> int:
    """The textbook recursion, independent of the module's table."""
    if not first or not second:
        return 0
    if first[0] == second[0]:
        return 1 + reference_lcs(first[1:], second[1:])
    return max(reference_lcs(first[1:], second), reference_lcs(first, second[1:]))


def reference_agreement(sample: str, response: str, example) -> float:
    """Key equality for keyed formats; otherwise ROUGE-L F1 = 2 LCS / (len + len)."""
    if example in KEYED:
        return float(agree(response, sample, example))
    a, b = tuple(normalize_answer(sample).split()), tuple(normalize_answer(response).split())
    return 2 * reference_lcs(a, b) / (len(a) + len(b)) if a and b else 0.0


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


@pytest.mark.parametrize(
    ("example", "same", "different"),
    [
        (
            NUMERIC,
            ["The answer is 42.", "42", "Six times seven makes 42, I believe", "forty-two"],
            ["41", "The answer is 42 or maybe 43", "The answer is 420."],
        ),
        (CHOICE, ["B) Paris", "Answer: B", "Paris is the capital"], ["A", "C) Madrid", "Rome"]),
        (
            TRUEFALSE,
            ["True.", "Yes, ice is cold", "That is correct", "It is not false."],
            ["False", "No, it is not", "The correct answer is false."],
        ),
    ],
)
def test_keyed_formats_agree_exactly_on_their_key(example, same, different):
    # 1 when the keys are equal however long and different the sentences, else 0: no partial
    # credit from shared words ("The answer is 42 or maybe 43" shares four words with the first)
    first = same[0]
    for response in same:
        assert answer_agreement(response, first, example) == 1.0, response
    for response in different:
        assert answer_agreement(response, first, example) == 0.0, response


def test_the_truefalse_key_is_the_graders_verdict():
    # truefalse_verdict's rules, which the old local parser lacked: a verdict word followed by
    # "answer" is skipped, and "no" inside a sentence is no verdict
    assert answer_key("The correct answer is false.", TRUEFALSE) == "false"
    assert answer_key("There is no doubt: it is true.", TRUEFALSE) == "true"
    assert answer_key("True or false: it is false", TRUEFALSE) == "false"  # the echo skipped
    assert answer_key("I don't think that is correct", TRUEFALSE) == "false"


# ================================================================= ROUGE-L on free text


def test_lcs_length_by_hand():
    tokens = str.split
    assert lcs_length(tokens("a b c d"), tokens("a c b d")) == 3  # a b d (or a c d)
    assert lcs_length(tokens("a b"), tokens("b a")) == 1
    assert lcs_length([], tokens("a")) == lcs_length(tokens("a"), []) == 0
    assert lcs_length(tokens("x y z"), tokens("x y z")) == 3
    assert lcs_length(tokens("a x b y c"), tokens("a b c")) == 3  # not contiguous


def test_lcs_length_equals_the_textbook_recursion():
    rng = random.Random(0)
    for _ in range(200):
        first = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        second = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        assert lcs_length(first, second) == reference_lcs(first, second), (first, second)


@pytest.mark.parametrize(
    ("sample", "greedy", "expected"),
    [
        # [capital of france is paris] / [paris is capital of france] ("the" dropped):
        # LCS = "capital of france" = 3; P = 3/5, R = 3/5, F1 = 3/5
        ("The capital of France is Paris.", "Paris is the capital of France.", 3 / 5),
        # [it is paris i think] / [paris]: LCS = "paris" = 1; P = 1/5, R = 1/1,
        # F1 = 2 (1/5)(1) / (1/5 + 1) = (2/5) / (6/5) = 1/3
        ("It is Paris, I think", "Paris", 1 / 3),
        # [eiffel tower is in paris france] / [eiffel tower stands in paris]:
        # LCS = "eiffel tower in paris" = 4; P = 4/6, R = 4/5,
        # F1 = 2 (2/3)(4/5) / (2/3 + 4/5) = (16/15) / (22/15) = 8/11
        ("The Eiffel Tower is in Paris, France.", "Eiffel Tower stands in Paris.", 8 / 11),
        # [paris france] / [paris]: LCS = 1; P = 1/2, R = 1, F1 = 2/3
        ("Paris, France", "Paris", 2 / 3),
    ],
)
def test_rouge_l_f1_by_hand(sample, greedy, expected):
    tokens = normalize_answer(sample).split(), normalize_answer(greedy).split()
    assert rouge_l_f1(*tokens) == pytest.approx(expected)
    assert rouge_l_f1(*tokens[::-1]) == pytest.approx(expected)  # symmetric
    for example in (SHORT, EXACT):  # the contains and exact graders alike
        assert answer_agreement(sample, greedy, example) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["Paris.", "The sky is blue today", "It is 42, I think"])
def test_identical_answers_agree_fully(text):
    assert rouge_l_f1(text.split(), text.split()) == 1.0
    assert answer_agreement(text, text, SHORT) == 1.0
    assert answer_agreement(text.upper() + "!", text, SHORT) == 1.0  # same normalised tokens


@pytest.mark.parametrize(
    ("sample", "greedy"),
    [
        ("Rome", "Paris"),
        ("It is Rome", "Paris, France"),
        ("", "Paris"),  # empty sample
        ("Paris", ""),  # empty greedy answer
        ("", ""),
        ("...", "!?"),  # nothing left after normalisation
        ("The", "the a an"),  # articles only
    ],
)
def test_disjoint_or_empty_answers_agree_not_at_all(sample, greedy):
    assert answer_agreement(sample, greedy, SHORT) == 0.0
    assert rouge_l_f1(normalize_answer(sample).split(), normalize_answer(greedy).split()) == 0.0


def test_one_word_answers_keep_exact_match():
    # on one-word answers ROUGE-L F1 is exact match of the normalised word
    for same in ["Paris.", "paris", "PARIS!", "The Paris", "Pâris"]:
        assert answer_agreement(same, "Paris", SHORT) == 1.0
    assert answer_agreement("Rome", "Paris", SHORT) == 0.0


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
    assert answer_agreement(response, response, example) == 0.0


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
        agreeing = 0.0
        for sample in samples:  # key equality, or 2 LCS / (len + len) by the recursion
            agreeing += reference_agreement(sample.response, greedy.response, example)
        expected_agreement.append(agreeing / 6)
        expected_tokens.append(sum(len(s.token_ids) + (len(s.token_ids) < 2) for s in samples))
        expected_greedy_tokens.append(greedy.generated_tokens)
    np.testing.assert_allclose(result.agreement, expected_agreement, rtol=0, atol=1e-12)
    assert 0 < result.agreement.mean() < 1 and len(set(result.agreement)) >= 3  # a real spread
    keyed = [e in KEYED for e in examples]
    assert all((result.agreement[keyed] * 6) % 1 == 0)  # keyed: a share of the 6 samples
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


SENTENCE = make_example("sentence", "Where is the Eiffel Tower?", ["Paris"])


def test_confidence_of_records_by_question_id():
    questions = (NUMERIC, CHOICE, SHORT, SENTENCE)
    samples = (
        ("42", "It is 42.", "41", "", "forty-two"),
        ("B", "A", "B) Paris", "I am not sure", "Paris"),
        ("Paris.", "Rome", "paris", "Paris", "Lyon"),
        ("It is in Paris.", "Paris", "In Paris, France.", "Rome", ""),
    )
    result = SelfConsistency(
        examples=questions,
        greedy=("The answer is 42.", "B", "Paris", "It is in Paris"),
        samples=samples,
        agreement=np.array([0.6, 0.6, 0.6, 0.4]),
        sample_tokens=np.array([10, 10, 10, 10]),
        greedy_tokens=np.array([2, 2, 2, 2]),
    )
    records = [
        record(SHORT, "PARIS"),
        record(NUMERIC, "The answer is 42."),
        record(NUMERIC, "41", 1),
        record(NUMERIC, "", 2),
        record(CHOICE, "C", 1),
        record(CHOICE, "(B)"),
        record(SHORT, "Lyon", 1),
        record(SENTENCE, "It is in Paris."),
        record(SENTENCE, "Paris", 1),
        record(SENTENCE, "Lyon", 2),
    ]
    # "It is in Paris." = [it is in paris] against the five samples: itself 1; [paris]
    # LCS 1, 2/(1+4) = 2/5; [in paris france] LCS "in paris" 2, 4/(3+4) = 4/7; Rome 0; "" 0.
    # "Paris" = [paris]: [it is in paris] 2/5; itself 1; [in paris france] 2/(1+3) = 1/2; 0; 0.
    expected = [0.6, 0.6, 0.2, 0.0, 0.0, 0.6, 0.2]
    expected += [(1 + 2 / 5 + 4 / 7) / 5, (2 / 5 + 1 + 1 / 2) / 5, 0.0]
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
