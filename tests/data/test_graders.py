"""Graders: normalisation, contains / exact / numeric / choice, the registry."""

from __future__ import annotations

import pytest

from perturbprobe.data.graders import (
    GRADERS,
    grade_choice,
    grade_contains,
    grade_exact,
    grade_numeric,
    grade_truefalse,
    grader_name_for,
    normalize_answer,
    parse_numbers,
    register_grader,
    resolve_grader,
    truefalse_verdict,
)
from perturbprobe.data.schema import example_from_row
from perturbprobe.errors import DatasetError


def open_example(*answers, **fields):
    return example_from_row(
        {"id": "q", "question": "Question?", "answers": list(answers), **fields}, "test"
    )


CAPITAL = example_from_row(
    {
        "id": "cap",
        "question": "What is the capital of France?",
        "answers": ["Paris"],
        "choices": ["London", "Paris", "Rome"],
    },
    "test",
)
PET = example_from_row(
    {"id": "pet", "question": "Which pet purrs?", "answers": ["cat"], "choices": ["dog", "cat"]},
    "test",
)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("PARIS", "paris"),
        ("  Paris,  France!  ", "paris france"),
        ("It's blue.", "it s blue"),
        ("The Nile", "nile"),
        ("a cat and an owl", "cat and owl"),
        ("the THE The", ""),
        ("theory", "theory"),
        ("Café", "cafe"),
        ("São Paulo", "sao paulo"),
        ("Zürich", "zurich"),
        ("Ångström", "angstrom"),
        ("1,000", "1000"),
        ("1,234,567 people", "1234567 people"),
        ("3.14", "3.14"),
        ("It is 3.5.", "it is 3.5"),
        ("end. start", "end start"),
        ("snake_case", "snake case"),
        ("(B)", "b"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_keeps_commas_that_are_not_thousands_separators():
    assert normalize_answer("1,23") == "1 23"
    assert normalize_answer("1,2345") == "1 2345"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", [42.0]),
        ("I think 5, no wait, 7", [5.0, 7.0]),
        ("The answer is -3.", [-3.0]),
        ("1,018", [1018.0]),
        ("2.5 apples", [2.5]),
        ("twelve", [12.0]),
        ("Seventy", [70.0]),
        ("zero or ninety", [0.0, 90.0]),
        ("hundred", [100.0]),
        ("no numbers here", []),
        ("10-5", [10.0, 5.0]),
    ],
)
def test_parse_numbers(text, expected):
    assert parse_numbers(text) == expected


# --------------------------------------------------------------------------- contains


@pytest.mark.parametrize(
    ("response", "correct"),
    [
        ("8", True),
        ("the answer is 8.", True),
        ("The answer is 8", True),
        ("8 apples", True),
        ("It's 8!", True),
        ("18", False),
        ("118", False),
        ("81", False),
        ("8.5", False),
        ("The answer is 18.", False),
        ("eighty", False),
    ],
)
def test_contains_matches_whole_words(response, correct):
    assert grade_contains(response, open_example("8")) is correct


@pytest.mark.parametrize(
    ("response", "correct"),
    [
        ("Paris", True),
        ("It is PARIS.", True),
        ("The capital is Paris, of course", True),
        ("Parisian", False),
        ("Lyon", False),
        ("", False),
    ],
)
def test_contains_normalises(response, correct):
    assert grade_contains(response, open_example("Paris")) is correct


def test_contains_any_alias_and_accents():
    example = open_example("São Paulo", "Sao Paulo city")
    assert grade_contains("It's sao paulo.", example)
    assert grade_contains("SÃO PAULO", example)
    assert not grade_contains("Paulo", example)


def test_contains_multiword_alias_needs_all_words_in_order():
    example = open_example("New York")
    assert grade_contains("I'd say New York City", example)
    assert not grade_contains("York, New", example)


def test_contains_thousands_separator():
    assert grade_contains("It is 1,018.", open_example("1018"))
    assert grade_contains("about 1018", open_example("1,018"))


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize(
    ("response", "correct"),
    [
        ("Paris", True),
        ("paris.", True),
        ("  The Paris! ", True),
        ("Paris, France", False),
        ("It is Paris", False),
        ("", False),
    ],
)
def test_exact(response, correct):
    assert grade_exact(response, open_example("Paris")) is correct


def test_exact_any_alias():
    example = open_example("NYC", "New York")
    assert grade_exact("new york", example)
    assert grade_exact("nyc", example)


# --------------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    ("response", "answer", "correct"),
    [
        ("42", "42", True),
        ("The answer is 42.", "42", True),
        ("42.0", "42", True),
        ("I think 41, no, 42", "42", True),
        ("42, or maybe 41", "42", False),
        ("142", "42", False),
        ("4.2", "42", False),
        ("twelve", "12", True),
        ("It's Twelve.", "12", True),
        ("2.5", "2.5", True),
        ("2.50", "2.5", True),
        ("2.6", "2.5", False),
        ("-3", "-3", True),
        ("The result is -3.", "-3", True),
        ("3", "-3", False),
        ("1,018", "1018", True),
        ("It is 1,018.", "1018", True),
        ("1018", "1,018", True),
        ("1,018", "18", False),
        ("no idea", "42", False),
        ("", "42", False),
    ],
)
def test_numeric(response, answer, correct):
    assert grade_numeric(response, open_example(answer)) is correct


def test_numeric_uses_the_first_answer():
    example = open_example("12", "twelve")
    assert grade_numeric("12", example)
    assert grade_numeric("twelve", example)


def test_numeric_needs_a_number_in_the_answer():
    with pytest.raises(DatasetError, match=r"q: the numeric grader needs a number"):
        grade_numeric("12", open_example("Paris"))


@pytest.mark.parametrize(("response", "answer"), [("twenty-one", "21"), ("six hundred", "600")])
def test_numeric_compound_number_words(response, answer):
    assert grade_numeric(response, open_example(answer))


# --------------------------------------------------------------------------- choice


@pytest.mark.parametrize(
    ("response", "correct"),
    [
        ("B", True),
        ("b", True),
        ("  B  ", True),
        ("(B)", True),
        ("B)", True),
        ("B) Paris", True),
        ("B. Paris", True),
        ("B: Paris", True),
        ("The answer is B.", True),
        ("the answer is B", True),
        ("Answer: B", True),
        ("Paris", True),
        ("paris.", True),
        ("The answer is Paris", True),
        ("A", False),
        ("a", False),
        ("C", False),
        ("(A)", False),
        ("A) London", False),
        ("The answer is C.", False),
        ("London", False),
        ("Rome", False),
        ("Paris or London", False),
        ("Paris, not Rome", False),
        ("D", False),
        ("", False),
        ("I don't know", False),
    ],
)
def test_choice(response, correct):
    assert CAPITAL.answers[0] == "B"
    assert grade_choice(response, CAPITAL) is correct


def test_choice_letter_wins_over_option_text():
    # "A) Paris": the letter says London, whatever text follows
    assert not grade_choice("A) Paris", CAPITAL)


def test_choice_a_cat_is_not_letter_a():
    # "A cat" names the option "cat" (B); it must not be read as the letter A (dog).
    assert PET.answers == ("B", "cat")
    assert grade_choice("A cat", PET)
    assert grade_choice("A cat.", PET)
    assert not grade_choice("A dog", PET)
    assert not grade_choice("A", PET)


def test_choice_needs_choices():
    with pytest.raises(DatasetError, match=r"q: the choice grader needs 'choices'"):
        grade_choice("B", open_example("Paris"))


# --------------------------------------------------------------------------- truefalse


def truefalse_example(*answers):
    return open_example(*answers, grader="truefalse")


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        ("True", True),
        ("true.", True),
        ("TRUE", True),
        ("False", False),
        ("False. The capital of Peru is Lima.", False),
        ("True. The capital of Peru is Lima.", True),
        ("That is not true.", False),
        ("That isn't true", False),
        ("That is not quite correct.", False),
        ("I don't think that is correct.", False),
        ("The statement is not false.", True),
        ("It is untrue.", False),
        ("Correct!", True),
        ("Incorrect: Lima is the capital.", False),
        ("The correct answer is False.", False),
        ("The correct option is true", True),
        ("True or false? False.", False),
        ("Yes or no: no", False),
        ("Yes", True),
        ("Yes, Lima is the capital of Peru.", True),
        ("No.", False),
        ("No, the capital is Lima.", False),
        ("The answer is no.", False),
        ("The answer is yes", True),
        ("Nope", False),
        ("It is not Quito, so the statement is true.", True),
        ("There is no doubt that this is true.", True),
        ("Lima is the capital of Peru.", None),
        ("I am not sure.", None),
        ("", None),
        ("That's right", None),
        ("Truely", None),
    ],
)
def test_truefalse_verdict(response, verdict):
    assert truefalse_verdict(response) is verdict


@pytest.mark.parametrize(
    ("response", "if_true", "if_false"),
    [
        ("True", True, False),
        ("False", False, True),
        ("Yes.", True, False),
        ("That is not true", False, True),
        ("Lima.", False, False),  # no verdict: wrong either way
        ("", False, False),
        ("True or false: the capital of Peru is Lima.", False, False),
    ],
)
def test_truefalse_grader(response, if_true, if_false):
    assert grade_truefalse(response, truefalse_example("True", "Yes")) is if_true
    assert grade_truefalse(response, truefalse_example("False", "No")) is if_false
    assert grade_truefalse(response, truefalse_example("No")) is if_false


def test_truefalse_needs_a_verdict_in_the_answer():
    with pytest.raises(DatasetError, match=r"q: the truefalse grader needs True or False"):
        grade_truefalse("True", truefalse_example("Lima"))


def test_truefalse_is_the_format_of_its_grader():
    example = truefalse_example("True")
    assert example.format == "truefalse"
    assert grader_name_for(example) == "truefalse"


# --------------------------------------------------------------------------- registry


@pytest.fixture
def clean_registry():
    before = dict(GRADERS)
    yield
    GRADERS.clear()
    GRADERS.update(before)


def test_builtin_graders_are_registered():
    for name, function in [
        ("contains", grade_contains),
        ("exact", grade_exact),
        ("numeric", grade_numeric),
        ("choice", grade_choice),
        ("truefalse", grade_truefalse),
    ]:
        assert GRADERS[name] is function
        assert resolve_grader(name) == (name, function)


def test_register_and_resolve_custom_grader(clean_registry):
    calls = []

    def starts_with_answer(response, example):
        calls.append((response, example.id))
        return response.startswith(example.answers[0])

    register_grader("prefix", starts_with_answer)
    name, function = resolve_grader("prefix")
    assert name == "prefix"
    assert function is starts_with_answer
    example = open_example("Paris", grader="prefix")
    assert grader_name_for(example) == "prefix"
    _, grade = resolve_grader(grader_name_for(example))
    assert grade("Paris!", example)
    assert not grade("It is Paris", example)
    assert calls == [("Paris!", "q"), ("It is Paris", "q")]


def test_register_overrides_existing_name(clean_registry):
    register_grader("exact", lambda response, example: True)
    assert resolve_grader("exact")[1]("anything", open_example("Paris"))


def test_resolve_a_callable_uses_its_name():
    def my_grader(response, example):
        return True

    assert resolve_grader(my_grader) == ("my_grader", my_grader)


def test_resolve_a_callable_object_without_name():
    class Grader:
        def __call__(self, response, example):
            return False

    grader = Grader()
    assert resolve_grader(grader) == ("Grader", grader)


def test_register_non_callable_is_a_type_error(clean_registry):
    with pytest.raises(TypeError, match="'broken' must be callable"):
        register_grader("broken", "contains")
    assert "broken" not in GRADERS


def test_unknown_grader(clean_registry):
    with pytest.raises(DatasetError, match=r"unknown grader 'fuzzy'.*choice, contains, exact"):
        resolve_grader("fuzzy")


def test_grader_name_for_defaults():
    assert grader_name_for(open_example("Paris")) == "contains"
    assert grader_name_for(CAPITAL) == "choice"
    assert grader_name_for(open_example("4", grader="numeric")) == "numeric"
