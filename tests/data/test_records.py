"""Records JSONL (write/read, validation, atomic writes) and the accuracy table."""

from __future__ import annotations

import importlib
import json
import re

import pytest

from perturbprobe.data import Record, accuracy_table, read_records, write_records
from perturbprobe.data.schema import example_from_row
from perturbprobe.decoding import collect
from perturbprobe.errors import DatasetError

io_module = importlib.import_module("perturbprobe._io")

MESSAGES = ({"role": "user", "content": "What is the capital of France?"},)


def make_record(record_id="q1/gold", **fields):
    base = {
        "id": record_id,
        "question_id": record_id.split("/")[0],
        "messages": MESSAGES,
        "response": "Paris",
        "label": 1,
        "source": "gold",
        "grader": "gold",
        "paraphrases": ("Which city is France's capital?",),
        "category": "capitals",
    }
    base.update(fields)
    return Record(**base)


def good_row(record_id="r1", **fields):
    row = {
        "id": record_id,
        "question_id": "q1",
        "messages": [{"role": "user", "content": "Q?"}],
        "response": "A",
        "label": 1,
        "source": "generated",
        "grader": "contains",
        "paraphrases": [],
    }
    row.update(fields)
    return {k: v for k, v in row.items() if v is not ...}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- write / read


def test_write_read_round_trip(tmp_path):
    records = [
        make_record("q1/gold"),
        make_record("q1/wrong-1", response="Lyon", label=0, source="wrong"),
        make_record(
            "q2/generated",
            messages=(
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Zürich is in which country? ☃"},
            ),
            response="Switzerland",
            label=None,
            source="generated",
            grader="contains",
            paraphrases=(),
            category=None,
        ),
    ]
    path = write_records(tmp_path / "records.jsonl", records)
    assert path == tmp_path / "records.jsonl"
    again = read_records(path)
    assert again == records
    assert [r.to_dict() for r in again] == [r.to_dict() for r in records]
    # non-ASCII is written as is, one JSON object per line
    text = path.read_text(encoding="utf-8")
    assert "Zürich" in text and "☃" in text
    assert len(text.splitlines()) == 3


def test_records_jsonl_fields(tmp_path):
    path = write_records(
        tmp_path / "r.jsonl", [make_record(), make_record("q2/x", label=None, category=None)]
    )
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {
        "id": "q1/gold",
        "question_id": "q1",
        "messages": [dict(MESSAGES[0])],
        "response": "Paris",
        "label": 1,
        "source": "gold",
        "grader": "gold",
        "paraphrases": ["Which city is France's capital?"],
        "category": "capitals",
    }
    assert "label" not in second  # absent if unknown
    assert "category" not in second


def test_extra_fields_round_trip(tmp_path):
    record = make_record(extra={"model": "tiny", "score": 0.5})
    (again,) = read_records(write_records(tmp_path / "r.jsonl", [record]))
    assert again.extra == {"model": "tiny", "score": 0.5}
    assert again.to_dict()["model"] == "tiny"


def test_write_creates_parent_directories(tmp_path):
    path = write_records(tmp_path / "a" / "b" / "r.jsonl", [make_record()])
    assert read_records(path) == [make_record()]


def test_write_overwrites(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, [make_record("a/gold"), make_record("b/gold")])
    write_records(path, [make_record("c/gold")])
    assert [r.id for r in read_records(path)] == ["c/gold"]


def test_read_defaults(tmp_path):
    row = {"id": "r1", "messages": [{"role": "user", "content": "Q?"}], "response": "A"}
    (record,) = read_records(write_lines(tmp_path / "r.jsonl", [json.dumps(row)]))
    assert record.question_id == "r1"
    assert record.source == "generated"
    assert record.label is None
    assert record.grader is None
    assert record.paraphrases == ()
    assert record.category is None


def test_read_skips_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "r.jsonl", [json.dumps(good_row("r1")), "", "  ", json.dumps(good_row("r2"))]
    )
    assert [r.id for r in read_records(path)] == ["r1", "r2"]


def test_read_label_zero(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(good_row(label=0))])
    assert read_records(path)[0].label == 0


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ('{"id": "r3", "messages": ', r"{path} line 3: invalid JSON"),
        ("[1, 2]", r"{path} line 3: expected a JSON object"),
        (
            json.dumps(good_row("r3", label=2)),
            r"{path} line 3 \(id 'r3'\): field 'label' must be 0, 1",
        ),
        (json.dumps(good_row("r3", label="1")), r"{path} line 3 \(id 'r3'\): field 'label'"),
        (json.dumps(good_row("r3", label=True)), r"{path} line 3 \(id 'r3'\): field 'label'"),
        (json.dumps(good_row("r3", label=-1)), r"{path} line 3 \(id 'r3'\): field 'label'"),
        (json.dumps(good_row("r3", messages=...)), r"{path} line 3 \(id 'r3'\): .*'messages'"),
        (json.dumps(good_row("r3", messages=[])), r"{path} line 3 \(id 'r3'\): .*'messages'"),
        (
            json.dumps(good_row("r3", messages=[{"role": "user"}])),
            r"{path} line 3 \(id 'r3'\): .*'messages'",
        ),
        (json.dumps(good_row("r3", response=...)), r"{path} line 3 \(id 'r3'\): field 'response'"),
        (json.dumps(good_row("r3", response=5)), r"{path} line 3 \(id 'r3'\): field 'response'"),
        (json.dumps(good_row("r3", source="human")), r"{path} line 3 \(id 'r3'\): field 'source'"),
        (json.dumps(good_row(...)), r"{path} line 3: field 'id' is missing"),
        (json.dumps(good_row(7)), r"{path} line 3: field 'id' is missing or not a string"),
        (json.dumps(good_row("r1")), r"{path} line 3: duplicate record id 'r1'"),
    ],
)
def test_read_errors_name_the_line(tmp_path, bad_line, pattern):
    path = write_lines(
        tmp_path / "r.jsonl", [json.dumps(good_row("r1")), json.dumps(good_row("r2")), bad_line]
    )
    with pytest.raises(DatasetError, match=pattern.replace("{path}", re.escape(str(path)))):
        read_records(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"records file .*nope\.jsonl does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_read_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"records file .*empty\.jsonl is empty"):
        read_records(path)


# --------------------------------------------------------------------------- atomic write


class ExplodingRecord(Record):
    def to_dict(self):
        raise RuntimeError("boom while serialising")


def assert_untouched(tmp_path, path, original: bytes):
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "temp file left behind"


def test_atomic_write_record_raising(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(path, [make_record("old/gold")])
    original = path.read_bytes()
    records = [make_record("a/gold"), make_record("b/gold"), ExplodingRecord(**vars(make_record()))]
    with pytest.raises(RuntimeError, match="boom"):
        write_records(path, records)
    assert_untouched(tmp_path, path, original)
    assert [r.id for r in read_records(path)] == ["old/gold"]


def test_atomic_write_json_dumps_raising(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    write_records(path, [make_record("old/gold")])
    original = path.read_bytes()
    real_dumps = json.dumps
    calls = []

    def flaky_dumps(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("disk on fire")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(io_module.json, "dumps", flaky_dumps)
    with pytest.raises(ValueError, match="disk on fire"):
        write_records(path, [make_record(f"q{i}/gold") for i in range(5)])
    monkeypatch.undo()
    assert len(calls) == 3
    assert_untouched(tmp_path, path, original)


def test_atomic_write_generator_raising_leaves_no_file(tmp_path):
    path = tmp_path / "records.jsonl"

    def records():
        yield make_record("a/gold")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_records(path, records())
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- accuracy table


def test_accuracy_table_ignores_unlabelled_records():
    records = [
        make_record("a/1", label=1, category="x"),
        make_record("a/2", label=0, category="x"),
        make_record("a/3", label=None, category="x"),
        make_record("b/1", label=None, category="y"),
    ]
    table = accuracy_table(records)
    assert list(table["category"]) == ["x", "overall"]
    assert list(table["n"]) == [2, 2]
    assert table["accuracy"].tolist() == [0.5, 0.5]


def test_accuracy_table_without_labels():
    with pytest.raises(DatasetError, match="no labelled records"):
        accuracy_table([make_record(label=None)])
    with pytest.raises(DatasetError, match="no labelled records"):
        accuracy_table([])


def test_record_from_dict_direct():
    row = good_row("r9", category="c", extra_field=[1, 2])
    record = Record.from_dict(row)
    assert record.extra == {"extra_field": [1, 2]}
    assert record.to_dict() == row
    with pytest.raises(DatasetError, match=r"^record: field 'id'"):
        Record.from_dict({"messages": []})
    example = example_from_row(
        {"id": "cap", "question": "Capital of France?", "answers": ["Paris"]}, "x"
    )
    assert collect(None, [example], source="gold")[0].question_id == "cap"
