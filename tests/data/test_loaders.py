"""Loading datasets from JSONL, CSV and Parquet files (and the hf: prefix without datasets)."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perturbprobe.data import Dataset, load_dataset
from perturbprobe.data.loaders import read_rows
from perturbprobe.errors import DatasetError

ROWS = [
    {
        "id": "q1",
        "question": "What is the capital of France?",
        "answers": ["Paris", "paris, france"],
        "wrong_answers": ["Lyon", "Marseille"],
        "paraphrases": ["Which city is France's capital?", "France's capital city?"],
        "category": "capitals",
    },
    {
        "id": "q2",
        "question": "What is 7 + 5?",
        "answers": ["12", "twelve"],
        "wrong_answers": ["13", "11", "14"],
        "category": "arithmetic",
        "grader": "numeric",
    },
    {
        "id": "q3",
        "question": "Which planet is known as the red planet?",
        "answers": ["Mars"],
        "choices": ["Venus", "Mars", "Jupiter"],
        "paraphrases": ["The red planet is which one?"],
    },
    {
        "id": "q4",
        "messages": [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Opposite of hot?"},
        ],
        "answers": ["cold"],
        "category": "opposites",
    },
]
LIST_FIELDS = ("answers", "choices", "wrong_answers", "paraphrases", "messages")
# The CSV / Parquet columns the files below are written with.
COLUMNS = (  # noqa: SIM905
    "id question messages answers choices wrong_answers paraphrases category grader"
).split()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows, *, lists="json"):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            out = {}
            for key, value in r.items():
                if key in LIST_FIELDS:
                    use_json = lists == "json" or key == "messages"
                    value = json.dumps(value) if use_json else "|".join(value)
                out[key] = value
            writer.writerow(out)
    return path


def write_parquet(path, rows):
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows])
    pq.write_table(table, path)
    return path


# --------------------------------------------------------------------------- formats


def test_jsonl_loads_examples(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert isinstance(dataset, Dataset)
    assert len(dataset) == 4
    assert [ex.id for ex in dataset] == ["q1", "q2", "q3", "q4"]
    assert dataset.name == str(tmp_path / "d.jsonl")
    assert dataset.categories == ["capitals", "arithmetic", "opposites"]
    q1, q2, q3, q4 = dataset
    assert q1.answers == ("Paris", "paris, france")
    assert q1.paraphrases == ("Which city is France's capital?", "France's capital city?")
    assert q2.grader == "numeric"
    assert q3.answers == ("B", "Mars")
    assert q4.messages[0] == {"role": "system", "content": "Answer with one word."}
    assert dataset[1] is q2


@pytest.mark.parametrize("kind", ["csv-json", "csv-pipe", "parquet", "ndjson"])
def test_same_content_gives_equal_examples_across_formats(tmp_path, kind):
    expected = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS))
    if kind == "csv-json":
        path = write_csv(tmp_path / "d.csv", ROWS, lists="json")
    elif kind == "csv-pipe":
        path = write_csv(tmp_path / "d.csv", ROWS, lists="pipe")
    elif kind == "ndjson":
        path = write_jsonl(tmp_path / "d.ndjson", ROWS)
    else:
        path = write_parquet(tmp_path / "d.parquet", ROWS)
    loaded = load_dataset(path)
    assert list(loaded) == list(expected)
    for a, b in zip(loaded, expected, strict=True):
        assert a.to_row() == b.to_row()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "id,question,answers,wrong_answers\nq1,Capital of France?, Paris | paris ||,Lyon\n",
            {"answers": ("Paris", "paris"), "wrong_answers": ("Lyon",)},
            id="pipe_list_strips_items_and_drops_empty_ones",
        ),
        pytest.param(
            "id,question,answers,category,paraphrases\nq1,Capital of France?,Paris,,\n",
            {"category": None, "paraphrases": ()},
            id="empty_cells_are_absent_fields",
        ),
    ],
)
def test_csv_cells(tmp_path, text, expected):
    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    (example,) = load_dataset(path)
    for field, value in expected.items():
        got = getattr(example, field)
        assert got == value and type(got) is type(value), field


def test_parquet_schema_error_names_the_row(tmp_path):
    rows = [dict(ROWS[0]), {"id": "q2", "question": "Q?", "answers": []}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(DatasetError, match=r"d\.parquet row 2 \(id 'q2'\): field 'answers'"):
        load_dataset(path)


# --------------------------------------------------------------------------- errors

# Files that do not load, each with its one clear error: (file name, content — text, bytes or
# None for no file at all —, the error pattern, "{path}" standing for the file's path).
BAD_FILES = [
    pytest.param(
        "d.csv",
        "id,messages,answers\nq1,hello,Paris\n",
        r"d\.csv line 2: field 'messages' must be a JSON list",
        id="csv_messages_must_be_json",
    ),
    pytest.param(
        "d.csv",
        'id,question,answers\nq1,Q one?,Paris\nq2,Q two?,"[""a"", "\n',
        r"d\.csv line 3: field 'answers' is not a valid JSON",
        id="csv_bad_json_list_names_line_and_field",
    ),
    pytest.param(
        "d.csv",
        "id,question,answers\nq1,Q one?,Paris\nq2,Q two?,\n",
        r"d\.csv line 3 \(id 'q2'\): field 'answers'",
        id="csv_schema_error_names_the_physical_line",
    ),
    pytest.param(
        "d.parquet",
        "this is not parquet\n",
        r"d\.parquet: not a readable Parquet file",
        id="not_a_parquet_file",
    ),
    pytest.param(
        "bad.jsonl",
        "\n".join([json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), '{"id": "q3", "question": '])
        + "\n",
        r"{path} line 4: invalid JSON",
        id="malformed_json_line_names_file_and_line",
    ),
    pytest.param(  # a blank line before the bad row: line numbers count physical lines
        "bad.jsonl",
        "\n".join(
            [*map(json.dumps, ROWS[:2]), "", json.dumps({"id": "q3", "question": "No answers?"})]
        )
        + "\n",
        r"{path} line 4 \(id 'q3'\): field 'answers' is missing",
        id="schema_error_names_line_n",
    ),
    pytest.param(
        "bad.jsonl",
        json.dumps(ROWS[0]) + "\n[1, 2]\n",
        r"bad\.jsonl line 2: expected an object",
        id="non_object_json_line",
    ),
    pytest.param(
        "d.txt",
        json.dumps(ROWS[0]) + "\n",
        r"unknown file type '\.txt'",
        id="unknown_extension",
    ),
    pytest.param("nope.jsonl", None, r"nope\.jsonl does not exist", id="missing_file"),
    pytest.param(
        "empty.jsonl", "", r"empty.*: the dataset has no questions", id="empty_file-.jsonl"
    ),
    pytest.param(
        "empty.csv", "\n\n", r"empty.*: the dataset has no questions", id="empty_file-.csv"
    ),
    pytest.param("blank.jsonl", "\n   \n\n", "has no questions", id="blank_lines_only_jsonl"),
    pytest.param(
        "latin.jsonl",
        b'{"id": "q1", "question": "caf\xe9?", "answers": ["x"]}\n',
        r"latin\.jsonl: cannot read the file",
        id="undecodable_file",
    ),
]


@pytest.mark.parametrize(("name", "content", "pattern"), BAD_FILES)
def test_a_bad_file_is_one_clear_error(tmp_path, name, content, pattern):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=pattern.replace("{path}", re.escape(str(path)))):
        load_dataset(path)


def test_duplicate_ids(tmp_path):
    rows = [ROWS[0], ROWS[1], {**ROWS[2], "id": "q1"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DatasetError, match=r"dup\.jsonl line 3: id 'q1' already used at .*line 1"):
        load_dataset(path)


def test_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path)


def test_empty_parquet(tmp_path):
    path = write_parquet(tmp_path / "empty.parquet", [ROWS[0]])
    table = pq.read_table(path).slice(0, 0)
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match="has no questions"):
        load_dataset(path)


# --------------------------------------------------------------------------- options


def test_limit_keeps_the_first_questions(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert [ex.id for ex in load_dataset(path, limit=2)] == ["q1", "q2"]
    assert len(load_dataset(path, limit=100)) == 4


def test_limit_stops_before_later_schema_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"id": "bad", "question": "?"}])
    assert len(load_dataset(path, limit=1)) == 1
    with pytest.raises(DatasetError, match="'answers'"):
        load_dataset(path)


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(tmp_path, limit):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DatasetError, match="limit must be a positive"):
        load_dataset(path, limit=limit)


def test_format_mc(tmp_path):
    rows = [ROWS[0], ROWS[1], ROWS[2]]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dataset = load_dataset(path, format="mc")
    assert dataset.name == f"{path} (mc)"
    q1, q2, q3 = dataset
    assert sorted(q1.choices) == sorted(["Paris", "Lyon", "Marseille"])
    assert q1.grader == "choice"
    assert q1.choices[ord(q1.answers[0]) - ord("A")] == "Paris"
    assert q1.answers[1] == "Paris"
    assert "Answer with the letter" in q1.messages[-1]["content"]
    assert all("Answer with the letter" in p for p in q1.paraphrases)
    assert len(q2.choices) == 4
    # an example that already has choices is left as is
    assert q3 == load_dataset(path)[2]


def test_format_mc_needs_wrong_answers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {**ROWS[3], "id": "nowrong"}])
    with pytest.raises(DatasetError, match=r"'nowrong' has no 'wrong_answers'"):
        load_dataset(path, format="mc")


def test_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DatasetError, match=r"unknown dataset format 'yaml'.*open, mc"):
        load_dataset(path, format="yaml")


def test_string_and_path_sources_are_equivalent(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert list(load_dataset(str(path))) == list(load_dataset(path))


def test_read_rows_gives_locations(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    rows = list(read_rows(path))
    assert [where for where, _ in rows] == [f"{path} line 1", f"{path} line 2"]
    assert rows[0][1] == ROWS[0]


def test_hf_without_datasets_package(monkeypatch):
    # None in sys.modules makes `import datasets` raise ImportError whether or not
    # the package is installed, so this test is deterministic.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match=re.escape("perturbprobe[hf]")):
        load_dataset("hf:someone/some-dataset:train")


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None, reason="the optional 'datasets' package"
)
def test_hf_unknown_dataset_offline_is_a_dataset_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"cannot load hf:nobody/no-such-dataset-xyz"):
        load_dataset("hf:nobody/no-such-dataset-xyz")
