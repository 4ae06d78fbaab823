"""collect: gold and wrong answers as records (source="gold"), graded generated answers."""

from __future__ import annotations

import importlib
import json

import pytest

from perturbprobe.data import accuracy_table, load_dataset, read_records, write_records
from perturbprobe.decoding import collect
from perturbprobe.errors import DatasetError

collect_module = importlib.import_module("perturbprobe.decoding.collect")


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- collect gold


DATASET_ROWS = [
    {
        "id": "cap",
        "question": "What is the capital of France?",
        "answers": ["Paris", "paris, france"],
        "wrong_answers": ["Lyon", "Marseille", "Nice"],
        "paraphrases": ["Which city is France's capital?", "France's capital is?"],
        "category": "capitals",
    },
    {
        "id": "sum",
        "question": "What is 7 + 5?",
        "answers": ["12"],
        "wrong_answers": ["13", "11"],
        "category": "arithmetic",
        "grader": "numeric",
    },
    {"id": "lonely", "question": "Opposite of hot?", "answers": ["cold"]},
]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "questions.jsonl"
    write_lines(path, [json.dumps(row) for row in DATASET_ROWS])
    return load_dataset(path)


def test_collect_gold_records(dataset):
    records = collect(None, dataset, source="gold")
    assert [r.id for r in records] == [
        "cap/gold",
        "cap/wrong-1",
        "cap/wrong-2",
        "cap/wrong-3",
        "sum/gold",
        "sum/wrong-1",
        "sum/wrong-2",
        "lonely/gold",
    ]
    assert [r.label for r in records] == [1, 0, 0, 0, 1, 0, 0, 1]
    sources = ["gold", "wrong", "wrong", "wrong", "gold", "wrong", "wrong", "gold"]
    assert [r.source for r in records] == sources
    assert [r.response for r in records] == [
        "Paris",
        "Lyon",
        "Marseille",
        "Nice",
        "12",
        "13",
        "11",
        "cold",
    ]
    assert all(r.grader == "gold" for r in records)
    examples = {ex.id: ex for ex in dataset}
    for record in records:
        example = examples[record.question_id]
        assert record.id.startswith(f"{example.id}/")
        assert record.messages == example.messages
        assert record.paraphrases == example.paraphrases
        assert record.category == example.category
    assert records[0].paraphrases == (
        "Which city is France's capital?",
        "France's capital is?",
    )
    assert records[-1].category is None


def test_collect_gold_records_round_trip(tmp_path, dataset):
    records = collect(None, dataset, source="gold", progress=False)
    path = write_records(tmp_path / "out" / "records.jsonl", records)
    assert read_records(path) == records


def test_collect_gold_mc(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [json.dumps(DATASET_ROWS[0])])
    (example,) = load_dataset(path, format="mc")
    records = collect(None, [example], source="gold")
    letter = example.answers[0]
    assert records[0].response == letter
    assert sorted(r.response for r in records) == ["A", "B", "C", "D"]
    assert [r.label for r in records] == [1, 0, 0, 0]
    assert "Answer with the letter" in records[0].messages[-1]["content"]


def test_collect_gold_builtin_arithmetic():
    dataset = load_dataset("builtin:arithmetic?n=10&seed=1")
    records = collect(None, dataset, source="gold")
    assert len(records) == 40  # gold + 3 wrong answers each
    assert sum(r.label for r in records) == 10


def test_collect_unknown_source(dataset):
    with pytest.raises(DatasetError, match=r"unknown source 'teacher'; use one of generate, gold"):
        collect(None, dataset, source="teacher")


def test_collect_unknown_grader(dataset):
    with pytest.raises(DatasetError, match="unknown grader 'fuzzy'"):
        collect(None, dataset, source="gold", grader="fuzzy")


def test_collect_generate_needs_an_llm(dataset):
    with pytest.raises(ValueError, match="needs an LLM"):
        collect(None, dataset, source="generate")


# --------------------------------------------------------------------------- collect generate
# (generation itself replaced by canned responses: no LLM is loaded here)


@pytest.fixture
def canned(monkeypatch):
    answers = {}
    seen = {}

    def fake_generate(llm, prompts, *, max_new_tokens, batch_size, progress, names, group):
        seen.update(max_new_tokens=max_new_tokens, batch_size=batch_size, names=list(names))
        assert group is None  # one process
        return [answers[tuple(m["content"] for m in p)] for p in prompts]

    monkeypatch.setattr(collect_module, "generate_responses", fake_generate)
    return answers, seen


def test_collect_generate_grades_with_each_examples_grader(dataset, canned):
    answers, seen = canned
    answers[("What is the capital of France?",)] = "It is Paris."
    answers[("What is 7 + 5?",)] = "7 + 5 = 12"  # numeric: the last number counts
    answers[("Opposite of hot?",)] = "warm"
    records = collect(object(), dataset, max_new_tokens=7, batch_size=2, progress=False)
    assert [r.id for r in records] == ["cap/generated", "sum/generated", "lonely/generated"]
    assert [r.label for r in records] == [1, 1, 0]
    assert [r.grader for r in records] == ["contains", "numeric", "contains"]
    assert all(r.source == "generated" for r in records)
    assert records[0].response == "It is Paris."
    assert records[0].paraphrases == dataset[0].paraphrases
    assert seen["max_new_tokens"] == 7 and seen["batch_size"] == 2
    assert seen["names"] == ["question 'cap'", "question 'sum'", "question 'lonely'"]


def test_collect_generate_grader_override(dataset, canned):
    answers, _ = canned
    answers[("What is the capital of France?",)] = "Paris"
    answers[("What is 7 + 5?",)] = "12"
    answers[("Opposite of hot?",)] = "It is cold"
    by_name = collect(object(), dataset, grader="exact", progress=False)
    assert [r.label for r in by_name] == [1, 1, 0]
    assert {r.grader for r in by_name} == {"exact"}

    def always_wrong(response, example):
        return False

    by_callable = collect(object(), dataset, grader=always_wrong, progress=False)
    assert [r.label for r in by_callable] == [0, 0, 0]
    assert {r.grader for r in by_callable} == {"always_wrong"}


# --------------------------------------------------------------------------- accuracy table


def test_accuracy_table(dataset):
    records = collect(None, dataset, source="gold")
    table = accuracy_table(records)
    assert list(table.columns) == ["category", "n", "correct", "accuracy"]
    assert list(table["category"]) == ["capitals", "arithmetic", "(none)", "overall"]
    assert list(table["n"]) == [4, 3, 1, 8]
    assert list(table["correct"]) == [1, 1, 1, 3]
    assert table["accuracy"].tolist() == pytest.approx([0.25, 1 / 3, 1.0, 3 / 8])
