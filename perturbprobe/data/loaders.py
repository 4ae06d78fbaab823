"""Loading datasets: built-in names, JSONL / CSV / Parquet files, Hugging Face datasets.

``load_dataset("builtin:easy-qa")``, ``load_dataset("questions.jsonl")``,
``load_dataset("hf:org/name:split")`` (needs ``pip install perturbprobe[hf]``). Every row is
validated against :mod:`perturbprobe.data.schema`; errors name the file, the line or row, and
the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .sampling import per_domain_sample
from .schema import Example, example_from_row

__all__ = ["FORMATS", "Dataset", "load_dataset", "read_rows"]

FORMATS = ("open", "mc")
_LIST_FIELDS = ("answers", "choices", "wrong_answers", "paraphrases", "messages")


@dataclass(frozen=True)
class Dataset(Sequence):
    """A named, validated list of :class:`Example` (ids unique)."""

    name: str
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def categories(self) -> list[str]:
        """Distinct categories in order of first appearance."""
        return list(dict.fromkeys(ex.category for ex in self.examples if ex.category))


def load_dataset(
    source: str | os.PathLike,
    *,
    format: str = "open",
    limit: int | None = None,
    per_domain: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load and validate a dataset.

    Parameters
    ----------
    source : str or path
        ``builtin:<name>`` (see :func:`perturbprobe.data.builtin_names`), a ``.jsonl``,
        ``.csv`` or ``.parquet`` file, or ``hf:<dataset id>[:<split>]``.
    format : {"open", "mc"}
        ``"mc"`` renders every question as multiple choice (its answer among its wrong
        answers, in a fixed shuffled order, answered with a letter).
    limit : int, optional
        Keep the first ``limit`` questions (of the per-domain sample, with ``per_domain``).
    per_domain : int, optional
        A balanced sample: up to ``per_domain`` questions of each domain, drawn with
        ``seed``, domains interleaved (:func:`~perturbprobe.data.sampling.per_domain_sample`).
    seed : int
        Seeds the per-domain sample.

    Every example gets a ``domain``: its row's ``domain`` field (the built-in datasets set
    one, e.g. easy-qa's category), else the dataset's name (``builtin:arithmetic`` →
    ``arithmetic``, a file → its stem, ``hf:org/name`` → ``name``). Domains drive the
    within-domain metrics and leave-one-domain-out model selection.

    Raises
    ------
    DatasetError
        Unknown name, unreadable file, or a row that breaks the schema.
    """
    from .builtin import load_builtin
    from .multiple_choice import to_multiple_choice

    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be a positive number of questions, got {limit}")
    name = str(source)
    if name.startswith("builtin:"):
        rows = load_builtin(name.removeprefix("builtin:"))
    elif name.startswith("hf:"):
        rows = _hf_rows(name.removeprefix("hf:"))
    else:
        rows = read_rows(Path(name).expanduser())
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        example = example_from_row(row, where)
        if example.id in seen:
            raise DatasetError(
                f"{where}: id {example.id!r} already used at {seen[example.id]}; ids must be unique"
            )
        seen[example.id] = where
        examples.append(example)
        if limit is not None and per_domain is None and len(examples) >= limit:
            break
    if not examples:
        raise DatasetError(f"{name}: the dataset has no questions")
    if format == "mc":
        examples = [to_multiple_choice(example) for example in examples]
    fallback = default_domain(name)
    examples = [replace(example, domain=example.domain or fallback) for example in examples]
    if per_domain is not None:
        examples = per_domain_sample(examples, per_domain, seed=seed)[:limit]
    return Dataset(name=name if format == "open" else f"{name} (mc)", examples=tuple(examples))


def default_domain(source: str) -> str:
    """The domain of a dataset's questions that name none: the dataset's short name."""
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:").partition("?")[0]
    if source.startswith("hf:"):
        return source.removeprefix("hf:").partition(":")[0].rsplit("/", 1)[-1]
    return Path(source).stem


def read_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(location, row)`` pairs of a JSONL, CSV or Parquet file, without schema checks."""
    if not path.is_file():
        raise DatasetError(
            f"dataset {path} does not exist; give a .jsonl/.csv/.parquet file or builtin:<name>"
        )
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".csv": _csv_rows}
    readers[".parquet"] = _parquet_rows
    if suffix not in readers:
        raise DatasetError(f"{path}: unknown file type {suffix!r}; use .jsonl, .csv or .parquet")
    try:
        return list(readers[suffix](path))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the file: {exc}") from exc


def parse_json_line(line: str, where: str) -> Any:
    """The JSON value of one line of a JSON-lines file; DatasetError naming ``where``
    (e.g. ``"data.jsonl line 3"``) if it is not valid JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: invalid JSON ({exc.msg})") from exc


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                where = f"{path} line {number}"
                yield where, parse_json_line(line, where)


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """CSV cells of list fields hold a JSON array or a ``|``-separated list."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            where = f"{path} line {reader.line_num}"
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if key is None or value is None or value == "":
                    continue
                if key in _LIST_FIELDS:
                    value = _parse_list_cell(value, key, where)
                parsed[key] = value
            yield where, parsed


def _parse_list_cell(value: str, key: str, where: str) -> Any:
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{where}: field '{key}' is not a valid JSON list ({exc.msg})"
            ) from exc
    if key == "messages":
        raise DatasetError(f"{where}: field 'messages' must be a JSON list of messages")
    return [item.strip() for item in value.split("|") if item.strip()]


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {number}", {k: v for k, v in row.items() if v is not None}


def _hf_rows(spec: str) -> list[tuple[str, Mapping]]:
    dataset_id, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "loading hf: datasets needs the 'datasets' package: pip install 'perturbprobe[hf]'"
        ) from None
    try:
        loaded = datasets.load_dataset(dataset_id, split=split or "train")
    except Exception as exc:  # hub/network errors come in many types
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError(
            f"cannot load hf:{spec} (offline, or not in the local datasets cache): {first_line}; "
            "export it to JSONL/CSV/Parquet and pass the file instead"
        ) from exc
    return [(f"hf:{spec} row {index + 1}", row) for index, row in enumerate(loaded)]
