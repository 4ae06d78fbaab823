"""The dataset schema (``example_from_row``, choices, paraphrases, ``to_row``) and the
multiple-choice rendering (``to_multiple_choice``)."""

from __future__ import annotations

import pytest

from perturbprobe.data.graders import grade_choice
from perturbprobe.data.multiple_choice import to_multiple_choice
from perturbprobe.data.schema import Example, choice_letters, example_from_row, render_choices
from perturbprobe.errors import DatasetError, PerturbprobeError

WHERE = "data.jsonl line 7"


def row(**fields):
    base = {"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"]}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


# --------------------------------------------------------------------------- prompt


def test_question_becomes_a_single_user_message():
    example = example_from_row(row(question="  What is 2 + 2?  ", answers=["4", "four"]), WHERE)
    assert example.messages == ({"role": "user", "content": "What is 2 + 2?"},)
    assert example.question == "What is 2 + 2?"
    assert example.answers == ("4", "four")
    assert example.id == "q1"
    assert isinstance(example, Example)


def test_messages_row_keeps_the_conversation():
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of Italy?"},
    ]
    example = example_from_row(row(question=..., messages=messages, answers=["Rome"]), WHERE)
    assert example.messages == tuple(messages)
    assert example.question is None
    assert example.answers == ("Rome",)


def test_optional_fields_are_kept():
    example = example_from_row(
        row(
            wrong_answers=["Lyon", " Marseille "],
            paraphrases=["France's capital is which city?"],
            category="capitals",
            grader="exact",
            source_url="http://example.org",
        ),
        WHERE,
    )
    assert example.wrong_answers == ("Lyon", "Marseille")
    assert example.paraphrases == ("France's capital is which city?",)
    assert example.category == "capitals"
    assert example.grader == "exact"
    assert example.extra == {"source_url": "http://example.org"}


def test_integer_id_is_accepted_as_string():
    assert example_from_row(row(id=12), WHERE).id == "12"


def test_errors_are_perturbprobe_errors_and_value_errors():
    with pytest.raises(DatasetError) as info:
        example_from_row(row(answers=[]), WHERE)
    assert isinstance(info.value, PerturbprobeError)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"answers": ...}, r"data\.jsonl line 7 \(id 'q1'\): field 'answers' is missing"),
        ({"answers": None}, r"data\.jsonl line 7 \(id 'q1'\): field 'answers' is missing"),
        ({"answers": []}, r"data\.jsonl line 7 \(id 'q1'\): field 'answers' is empty"),
        ({"answers": "Paris"}, r"data\.jsonl line 7 \(id 'q1'\): field 'answers' must be a list"),
        ({"answers": ["Paris", ""]}, r"line 7 \(id 'q1'\): field 'answers' must hold non-empty"),
        ({"answers": ["Paris", "  "]}, r"line 7 \(id 'q1'\): field 'answers' must hold non-empty"),
        ({"answers": ["Paris", 3]}, r"line 7 \(id 'q1'\): field 'answers' must hold non-empty"),
        ({"question": ""}, r"data\.jsonl line 7 \(id 'q1'\): field 'question' is empty"),
        ({"question": "   "}, r"data\.jsonl line 7 \(id 'q1'\): field 'question' is empty"),
        ({"question": ...}, r"data\.jsonl line 7 \(id 'q1'\): needs a 'question' or a 'messages'"),
        ({"id": ...}, r"data\.jsonl line 7: field 'id' is missing"),
        ({"id": ""}, r"data\.jsonl line 7: field 'id' is missing or empty"),
        ({"id": "  "}, r"data\.jsonl line 7: field 'id' is missing or empty"),
        ({"id": True}, r"data\.jsonl line 7: field 'id'"),
        ({"wrong_answers": "Lyon"}, r"line 7 \(id 'q1'\): field 'wrong_answers' must be a list"),
        ({"paraphrases": [""]}, r"line 7 \(id 'q1'\): field 'paraphrases' must hold non-empty"),
        ({"choices": "A|B"}, r"line 7 \(id 'q1'\): field 'choices' must be a list"),
        ({"category": 3}, r"line 7 \(id 'q1'\): field 'category' must be a string"),
        ({"grader": ["exact"]}, r"line 7 \(id 'q1'\): field 'grader' must be a string"),
    ],
)
def test_schema_errors_name_location_and_field(fields, pattern):
    with pytest.raises(DatasetError, match=pattern):
        example_from_row(row(**fields), WHERE)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "user"}],
        [{"role": "robot", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    ],
)
def test_bad_messages_name_location_and_field(messages):
    with pytest.raises(DatasetError, match=r"data\.jsonl line 7 \(id 'q1'\): .*'messages'"):
        example_from_row(row(question=..., messages=messages), WHERE)


def test_non_mapping_row_is_an_error():
    with pytest.raises(DatasetError, match=r"data\.jsonl line 7: expected an object"):
        example_from_row(["q1", "question"], WHERE)


# --------------------------------------------------------------------------- choices


CHOICES = ["London", "Paris", "Rome"]


@pytest.mark.parametrize("answer", ["B", "b", "Paris", "paris", " PARIS "])
def test_choice_answer_letter_or_text_is_normalised(answer):
    example = example_from_row(row(answers=[answer], choices=CHOICES), WHERE)
    assert example.answers == ("B", "Paris")
    assert example.choices == tuple(CHOICES)


def test_choice_answer_first_matching_alias_wins():
    example = example_from_row(row(answers=["Lutetia", "C"], choices=CHOICES), WHERE)
    assert example.answers == ("C", "Rome")


@pytest.mark.parametrize("answers", [["Berlin"], ["D"], ["Par"]])
def test_choice_answer_not_among_choices_is_an_error(answers):
    with pytest.raises(DatasetError, match=r"line 7 \(id 'q1'\): field 'answers' must name one"):
        example_from_row(row(answers=answers, choices=CHOICES), WHERE)


def test_choices_are_rendered_into_the_prompt():
    example = example_from_row(row(answers=["B"], choices=CHOICES), WHERE)
    content = example.messages[-1]["content"]
    assert content == (
        "What is the capital of France?\nA) London\nB) Paris\nC) Rome\n"
        "Answer with the letter of the correct option."
    )
    assert content == render_choices("What is the capital of France?", CHOICES)
    # the raw question is kept for to_row
    assert example.question == "What is the capital of France?"


def test_choices_render_into_last_message_of_a_conversation():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    example = example_from_row(row(question=..., messages=messages, choices=CHOICES), WHERE)
    assert example.messages[0] == {"role": "system", "content": "Be brief."}
    assert example.messages[1]["role"] == "user"
    assert example.messages[1]["content"] == render_choices("Capital of France?", CHOICES)


def test_paraphrases_are_rendered_with_the_choices():
    example = example_from_row(
        row(answers=["Paris"], choices=CHOICES, paraphrases=["France's capital?", "Which city?"]),
        WHERE,
    )
    assert example.paraphrases == (
        render_choices("France's capital?", CHOICES),
        render_choices("Which city?", CHOICES),
    )
    for paraphrase in example.paraphrases:
        assert "A) London\nB) Paris\nC) Rome" in paraphrase


def test_choice_letters():
    assert choice_letters(3) == ["A", "B", "C"]
    assert choice_letters(26)[-1] == "Z"
    with pytest.raises(DatasetError, match="at most 26"):
        choice_letters(27)


# --------------------------------------------------------------------------- to_row


@pytest.mark.parametrize(
    "source",
    [
        {"id": "q1", "question": "2 + 2?", "answers": ["4", "four"]},
        {
            "id": "q2",
            "question": "Capital of France?",
            "answers": ["Paris"],
            "wrong_answers": ["Lyon", "Nice"],
            "paraphrases": ["France's capital?", "Which city is France's capital?"],
            "category": "capitals",
            "grader": "exact",
        },
        {
            "id": "q3",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of Spain?"},
            ],
            "answers": ["Madrid"],
        },
        {"id": "q4", "question": "Capital of France?", "answers": ["B"], "choices": CHOICES},
    ],
)
def test_to_row_round_trips(source):
    example = example_from_row(source, WHERE)
    again = example_from_row(example.to_row(), WHERE)
    assert again == example
    assert again.to_row() == example.to_row()


def test_to_row_of_a_plain_example_is_the_input_row():
    source = {
        "id": "q2",
        "question": "Capital of France?",
        "answers": ["Paris", "paris, france"],
        "wrong_answers": ["Lyon"],
        "paraphrases": ["France's capital?"],
        "category": "capitals",
        "grader": "contains",
    }
    assert example_from_row(source, WHERE).to_row() == source


def test_to_row_round_trips_choices_with_paraphrases():
    example = example_from_row(
        row(answers=["B"], choices=CHOICES, paraphrases=["France's capital?"]), WHERE
    )
    again = example_from_row(example.to_row(), WHERE)
    assert again.paraphrases == example.paraphrases
    assert again == example


def test_to_row_round_trips_messages_with_choices():
    messages = [{"role": "user", "content": "Capital of France?"}]
    example = example_from_row(row(question=..., messages=messages, choices=CHOICES), WHERE)
    again = example_from_row(example.to_row(), WHERE)
    assert again.messages == example.messages


# --------------------------------------------------------------------------- multiple choice
# (perturbprobe.data.multiple_choice.to_multiple_choice, the ``--format mc`` rendering)


def open_question(example_id="cap", **fields):
    base = {
        "id": example_id,
        "question": "What is the capital of France?",
        "answers": ["Paris", "paris, france"],
        "wrong_answers": ["Lyon", "Marseille", "Nice"],
        "paraphrases": ["Which city is France's capital?"],
        "category": "capitals",
    }
    base.update(fields)
    return example_from_row(base, "mc test")


def test_mc_gold_answer_is_among_the_options_once():
    mc = to_multiple_choice(open_question())
    assert sorted(mc.choices) == sorted(["Paris", "Lyon", "Marseille", "Nice"])
    assert mc.choices.count("Paris") == 1
    letter, text = mc.answers
    assert text == "Paris"
    assert mc.choices[choice_letters(4).index(letter)] == "Paris"
    assert mc.grader == "choice"
    assert grade_choice(letter, mc)
    assert grade_choice("Paris", mc)
    assert not grade_choice("Lyon", mc)


def test_mc_wrong_answers_are_the_other_letters():
    mc = to_multiple_choice(open_question())
    letter = mc.answers[0]
    assert mc.wrong_answers == tuple(x for x in "ABCD" if x != letter)
    for wrong in mc.wrong_answers:
        assert not grade_choice(wrong, mc)


def test_mc_renders_prompt_and_paraphrases_with_the_options():
    mc = to_multiple_choice(open_question())
    expected = render_choices("What is the capital of France?", mc.choices)
    assert mc.messages == ({"role": "user", "content": expected},)
    assert mc.paraphrases == (render_choices("Which city is France's capital?", mc.choices),)
    assert mc.id == "cap"
    assert mc.category == "capitals"
    assert mc.question == "What is the capital of France?"


def test_mc_renders_into_the_last_message():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    example = example_from_row(
        {"id": "m", "messages": messages, "answers": ["Paris"], "wrong_answers": ["Lyon"]},
        "mc test",
    )
    mc = to_multiple_choice(example)
    assert mc.messages[0] == messages[0]
    assert mc.messages[1]["content"] == render_choices("Capital of France?", mc.choices)


def test_mc_order_is_deterministic():
    first = to_multiple_choice(open_question())
    second = to_multiple_choice(open_question())
    assert first.choices == second.choices
    assert first == second


def test_mc_order_depends_on_the_id():
    orders = {to_multiple_choice(open_question(f"q{i}")).choices for i in range(20)}
    assert len(orders) > 1
    positions = {to_multiple_choice(open_question(f"q{i}")).answers[0] for i in range(20)}
    assert len(positions) > 1  # the gold answer is not always in the same slot


def test_mc_is_idempotent_on_choice_examples():
    mc = to_multiple_choice(open_question())
    assert to_multiple_choice(mc) is mc
    given = example_from_row(row(answers=["B"], choices=CHOICES), WHERE)
    assert to_multiple_choice(given) is given


def test_mc_without_wrong_answers_is_an_error():
    example = example_from_row(row(id="lonely"), WHERE)
    with pytest.raises(DatasetError, match=r"question 'lonely' has no 'wrong_answers'"):
        to_multiple_choice(example)
