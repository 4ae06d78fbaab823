"""The built-in datasets: ``builtin:easy-qa`` (shipped JSONL) and ``builtin:arithmetic``."""

from __future__ import annotations

import operator
import re
from collections import Counter
from importlib import resources

import pytest

from perturbprobe.data import builtin_names, load_dataset
from perturbprobe.data.builtin import arithmetic_rows, load_builtin
from perturbprobe.data.graders import grader_name_for, normalize_answer, resolve_grader
from perturbprobe.errors import DatasetError

EASY_QA_FILE = resources.files("perturbprobe.data.builtin").joinpath("easy_qa.jsonl")
needs_easy_qa = pytest.mark.skipif(
    not EASY_QA_FILE.is_file(), reason="perturbprobe/data/builtin/easy_qa.jsonl not written yet"
)
NUMERIC_CATEGORIES = ("arithmetic_small", "arithmetic_large")
_OPS = {"+": operator.add, "-": operator.sub, "−": operator.sub, "×": operator.mul}
_OPS |= {"x": operator.mul, "*": operator.mul}
_ARITHMETIC = re.compile(r"What is (-?\d+) ([-+−×x*]) (-?\d+)\?")


def arithmetic_of(question: str) -> int | None:
    """The value of a "What is A op B?" question, None when it has another shape."""
    match = _ARITHMETIC.fullmatch(question.strip())
    if not match:
        return None
    a, op, b = match.groups()
    return _OPS[op](int(a), int(b))


def grader_of(example):
    return resolve_grader(grader_name_for(example))[1]


# --------------------------------------------------------------------------- registry


def test_builtin_names():
    assert builtin_names() == ["easy-qa", "arithmetic", "broad"]


@pytest.mark.parametrize("name", ["nope", "easyqa", "", "arithmetics", "Broad"])
def test_unknown_builtin_lists_the_available_ones(name):
    with pytest.raises(
        DatasetError,
        match=rf"unknown built-in dataset '{name}'; available: builtin:easy-qa, "
        r"builtin:arithmetic, builtin:broad",
    ):
        load_dataset(f"builtin:{name}")


# --------------------------------------------------------------------------- easy-qa


@pytest.fixture(scope="module")
def easy_qa():
    if not EASY_QA_FILE.is_file():
        pytest.skip("perturbprobe/data/builtin/easy_qa.jsonl not written yet")
    return load_dataset("builtin:easy-qa")


@needs_easy_qa
def test_easy_qa_size_and_categories(easy_qa):
    assert easy_qa.name == "builtin:easy-qa"
    assert len(easy_qa) >= 600
    assert len(easy_qa.categories) >= 8
    counts = Counter(example.category for example in easy_qa)
    assert None not in counts, "every easy-qa question has a category"
    assert min(counts.values()) >= 20, counts
    assert set(NUMERIC_CATEGORIES) <= set(counts)


@needs_easy_qa
def test_easy_qa_every_question_has_aliases_and_wrong_answers(easy_qa):
    for example in easy_qa:
        assert example.question, example.id
        assert len(example.answers) >= 1, example.id
        assert 2 <= len(example.wrong_answers) <= 3, example.id
        assert len(set(map(normalize_answer, example.wrong_answers))) == len(
            example.wrong_answers
        ), f"{example.id}: duplicate wrong answers"


@needs_easy_qa
def test_easy_qa_paraphrases(easy_qa):
    with_paraphrases = [ex for ex in easy_qa if ex.paraphrases]
    assert sum(3 <= len(ex.paraphrases) <= 5 for ex in easy_qa) >= 150
    for example in with_paraphrases:
        assert len(example.paraphrases) <= 5, example.id
        assert example.question not in example.paraphrases, example.id
        assert len(set(example.paraphrases)) == len(example.paraphrases), example.id


@needs_easy_qa
def test_easy_qa_wrong_answers_are_not_correct_aliases(easy_qa):
    for example in easy_qa:
        aliases = {normalize_answer(alias) for alias in example.answers}
        for wrong in example.wrong_answers:
            assert normalize_answer(wrong) not in aliases, f"{example.id}: {wrong!r}"


@needs_easy_qa
def test_easy_qa_grader_rejects_every_wrong_answer(easy_qa):
    # collect --source gold labels wrong answers 0; the question's own grader must agree.
    for example in easy_qa:
        grade = grader_of(example)
        for wrong in example.wrong_answers:
            assert not grade(wrong, example), f"{example.id}: wrong answer {wrong!r} graded right"


@needs_easy_qa
def test_easy_qa_grader_accepts_every_alias_of_open_questions(easy_qa):
    for example in easy_qa:
        if example.category in NUMERIC_CATEGORIES:
            continue
        grade = grader_of(example)
        for alias in example.answers:
            assert grade(alias, example), f"{example.id}: alias {alias!r} graded wrong"


@needs_easy_qa
def test_easy_qa_grader_accepts_every_alias_of_numeric_questions(easy_qa):
    failures = [
        (example.id, alias)
        for example in easy_qa
        if example.category in NUMERIC_CATEGORIES
        for alias in example.answers
        if not grader_of(example)(alias, example)
    ]
    assert failures == []


@needs_easy_qa
def test_easy_qa_arithmetic_is_graded_numerically_and_correct(easy_qa):
    arithmetic = [ex for ex in easy_qa if ex.category in NUMERIC_CATEGORIES]
    assert len(arithmetic) >= 20
    parsed = 0
    for example in arithmetic:
        assert example.grader == "numeric", example.id
        value = arithmetic_of(example.question)
        if value is None:
            continue
        parsed += 1
        assert float(example.answers[0]) == value, f"{example.id}: {example.question}"
        assert grader_of(example)(str(value), example)
        for wrong in example.wrong_answers:
            assert float(wrong.replace(",", "")) != value, example.id
    assert parsed >= len(arithmetic) // 2, "most arithmetic questions read 'What is A op B?'"


@needs_easy_qa
def test_easy_qa_other_categories_use_the_default_grader(easy_qa):
    for example in easy_qa:
        if example.category not in NUMERIC_CATEGORIES:
            assert grader_name_for(example) in {"contains", "exact", "numeric"}, example.id


@needs_easy_qa
def test_easy_qa_ids_and_locations():
    rows = load_builtin("easy-qa")
    assert all(where.startswith("builtin:easy-qa line ") for where, _ in rows)
    ids = [row["id"] for _, row in rows]
    assert len(ids) == len(set(ids))


@needs_easy_qa
def test_easy_qa_limit_and_mc():
    assert len(load_dataset("builtin:easy-qa", limit=7)) == 7
    mc = load_dataset("builtin:easy-qa", format="mc", limit=30)
    assert mc.name == "builtin:easy-qa (mc)"
    for example in mc:
        assert example.grader == "choice"
        assert 3 <= len(example.choices) <= 4
        letter, text = example.answers
        assert example.choices["ABCD".index(letter)] == text


@needs_easy_qa
def test_easy_qa_takes_no_options():
    with pytest.raises(DatasetError, match="builtin:easy-qa takes no options"):
        load_dataset("builtin:easy-qa?n=5")


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_defaults():
    dataset = load_dataset("builtin:arithmetic")
    assert len(dataset) == 300
    assert dataset[0].id == "arithmetic-0-0001"
    assert len(dataset.categories) == 7


def test_arithmetic_options():
    dataset = load_dataset("builtin:arithmetic?n=50&seed=3")
    assert len(dataset) == 50
    assert dataset.name == "builtin:arithmetic?n=50&seed=3"
    assert [ex.id for ex in dataset][:2] == ["arithmetic-3-0001", "arithmetic-3-0002"]
    assert all(ex.grader == "numeric" for ex in dataset)


def test_arithmetic_is_deterministic_for_a_seed():
    first = load_dataset("builtin:arithmetic?n=60&seed=5")
    second = load_dataset("builtin:arithmetic?seed=5&n=60")
    assert list(first) == list(second)
    assert arithmetic_rows(40, 9) == arithmetic_rows(40, 9)


def test_arithmetic_differs_across_seeds():
    questions = {
        seed: [ex.question for ex in load_dataset(f"builtin:arithmetic?n=40&seed={seed}")]
        for seed in (0, 1, 2)
    }
    assert questions[0] != questions[1]
    assert questions[1] != questions[2]
    assert questions[0] != questions[2]


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_arithmetic_answers_are_correct(seed):
    dataset = load_dataset(f"builtin:arithmetic?n=140&seed={seed}")
    for example in dataset:
        value = arithmetic_of(example.question)
        assert value is not None, example.question
        assert value >= 0, f"negative result: {example.question}"
        assert example.answers == (str(value),)
        assert len(example.wrong_answers) == 3
        wrong_values = [int(w) for w in example.wrong_answers]
        assert value not in wrong_values
        assert len(set(wrong_values)) == 3
        assert min(wrong_values) >= 0
        assert len(example.paraphrases) == 2
        for paraphrase in example.paraphrases:
            numbers = [int(n) for n in re.findall(r"\d+", paraphrase)]
            assert sorted(numbers) == sorted(int(n) for n in re.findall(r"\d+", example.question))
        grade = grader_of(example)
        assert grade(f"The answer is {value}.", example)
        assert all(not grade(wrong, example) for wrong in example.wrong_answers)


def test_arithmetic_cycles_through_difficulty_levels():
    dataset = load_dataset("builtin:arithmetic?n=14")
    categories = [ex.category for ex in dataset]
    assert categories[:7] == categories[7:]
    assert categories[0] == "add_1digit"
    assert len(set(categories)) == 7


def test_arithmetic_with_limit():
    assert len(load_dataset("builtin:arithmetic?n=50&seed=3", limit=10)) == 10


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("arithmetic?n=0", r"needs n >= 1, got 0"),
        ("arithmetic?n=-5", r"needs n >= 1"),
        ("arithmetic?n=abc", r"options must be integers"),
        ("arithmetic?seed=1.5", r"options must be integers"),
        ("arithmetic?n=", r"options must be integers"),
        ("arithmetic?size=5", r"options are n and seed, got \['size'\]"),
        ("arithmetic?n=5&foo=1&bar=2", r"options are n and seed, got \['bar', 'foo'\]"),
    ],
)
def test_arithmetic_bad_options(spec, pattern):
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(f"builtin:{spec}")
