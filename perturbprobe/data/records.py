"""Records: a prompt, a response and its correctness label — the input of feature extraction.

JSONL fields (ARCHITECTURE.md): ``id``, ``question_id``, ``messages``, ``response``,
``label`` (1 correct, 0 incorrect, absent if unknown), ``source`` (``generated``, ``gold``,
``wrong``), ``grader``, ``paraphrases``; ``category`` when the question has one; ``domain``
(the kind of question) and ``format`` (``short``, ``mc``, ``truefalse``, ``number``) when
known — records written before they existed have neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import write_jsonl
from ..errors import DatasetError, PairEncodingError
from ..llm.pairs import validate_messages
from .loaders import parse_json_line
from .schema import ANSWER_FORMATS

__all__ = ["SOURCES", "Record", "accuracy_table", "pair_record", "read_records", "write_records"]

SOURCES = ("generated", "gold", "wrong")


@dataclass(frozen=True)
class Record:
    """One (prompt, response) pair with its label and provenance."""

    id: str
    question_id: str
    messages: tuple[dict[str, str], ...]
    response: str
    label: int | None
    source: str
    grader: str | None = None
    paraphrases: tuple[str, ...] = ()
    category: str | None = None
    domain: str | None = None
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "question_id": self.question_id,
            "messages": [dict(message) for message in self.messages],
            "response": self.response,
        }
        if self.label is not None:
            row["label"] = self.label
        row["source"] = self.source
        row["grader"] = self.grader
        row["paraphrases"] = list(self.paraphrases)
        for name in ("category", "domain", "format"):
            if getattr(self, name) is not None:
                row[name] = getattr(self, name)
        row.update(self.extra)
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "record") -> Record:
        """Validate a records row; errors name ``where`` and the field."""
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object")
        record_id = row.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise DatasetError(f"{where}: field 'id' is missing or not a string")
        where = f"{where} (id {record_id!r})"
        try:
            messages = tuple(validate_messages(row.get("messages"), what=where))
        except PairEncodingError as exc:
            raise DatasetError(str(exc)) from exc
        response = row.get("response")
        if not isinstance(response, str):
            raise DatasetError(f"{where}: field 'response' must be a string")
        label = row.get("label")
        if label not in (None, 0, 1) or isinstance(label, bool):
            raise DatasetError(f"{where}: field 'label' must be 0, 1 or absent, got {label!r}")
        source = row.get("source", "generated")
        if source not in SOURCES:
            raise DatasetError(f"{where}: field 'source' must be one of {', '.join(SOURCES)}")
        known = {"id", "question_id", "messages", "response", "label", "source", "grader"}
        known |= {"paraphrases", "category", "domain", "format"}
        for name in ("domain", "format"):
            if row.get(name) is not None and not isinstance(row[name], str):
                raise DatasetError(f"{where}: field {name!r} must be a string")
        if row.get("format") not in (None, *ANSWER_FORMATS):
            raise DatasetError(
                f"{where}: field 'format' must be one of {', '.join(ANSWER_FORMATS)}, "
                f"got {row['format']!r}"
            )
        return cls(
            id=record_id,
            question_id=str(row.get("question_id", record_id)),
            messages=messages,
            response=response,
            label=label,
            source=source,
            grader=row.get("grader"),
            paraphrases=tuple(row.get("paraphrases") or ()),
            category=row.get("category"),
            domain=row.get("domain"),
            format=row.get("format"),
            extra={key: value for key, value in row.items() if key not in known},
        )


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> Path:
    """Write records as JSONL, atomically (an interrupted write leaves the old file)."""
    return write_jsonl(path, (record.to_dict() for record in records))


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read and validate a records JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"records file {path} does not exist; create it with `collect`")
    records = []
    seen: dict[str, int] = {}  # record id -> line number
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM is fine
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at position "
                    f"{exc.start + 1}); records files are UTF-8 JSON lines"
                ) from None
            if not line.strip():
                continue
            record = Record.from_dict(parse_json_line(line, where), where)
            if record.id in seen:
                raise DatasetError(
                    f"{where}: duplicate record id {record.id!r} (first at line "
                    f"{seen[record.id]}); record ids must be unique"
                )
            seen[record.id] = number
            records.append(record)
    if not records:
        raise DatasetError(f"records file {path} is empty")
    return records


def pair_record(index: int, pair: Mapping[str, Any]) -> Record:
    """A label-less record (id ``str(index)``) for a pair to score: ``response`` and
    ``messages`` (a list of {"role", "content"} or a string) or ``question``; raises
    PairEncodingError naming what is wrong."""
    if not isinstance(pair, Mapping):
        raise PairEncodingError("expected an object with 'messages' (or 'question') and 'response'")
    prompt = pair.get("messages", pair.get("question"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if prompt is None:
        raise PairEncodingError("missing 'messages' (or 'question')")
    response = pair.get("response")
    if not isinstance(response, str):
        raise PairEncodingError("missing 'response' (a string)")
    messages = validate_messages(prompt, what="pair")
    return Record(
        id=str(index),
        question_id=str(index),
        messages=tuple(messages),
        response=response,
        label=None,
        source="generated",
    )


def accuracy_table(records: Sequence[Record], by: str = "category") -> pd.DataFrame:
    """Accuracy per ``by`` (``category``, ``domain`` or ``format``) plus an ``overall`` row:
    columns ``by``, n, correct, accuracy."""
    if by not in ("category", "domain", "format"):
        raise DatasetError(f"accuracy_table groups by category, domain or format, not {by!r}")
    labelled = [r for r in records if r.label is not None]
    if not labelled:
        raise DatasetError("no labelled records to summarise")
    frame = pd.DataFrame(
        {
            by: [getattr(r, by) or "(none)" for r in labelled],
            "label": [r.label for r in labelled],
        }
    )
    table = frame.groupby(by, sort=False)["label"].agg(n="count", correct="sum")
    table.loc["overall"] = [len(frame), int(frame["label"].sum())]
    table["accuracy"] = table["correct"] / table["n"]
    return table.reset_index()
