"""The fact tables shipped in ``tables/``: CSV files read with per-row validation.

Each table has a header row naming its columns. A cell holds text, an integer, or a list of
``|``-separated aliases (the first is the canonical form). A malformed row raises a
:class:`~perturbprobe.errors.DatasetError` on one line naming the file, the line and the cause.
See ``tables/SOURCES.md`` for where the facts come from.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ...errors import DatasetError

__all__ = ["TABLES", "TABLES_DIR", "Column", "load_table", "read_table"]

TABLES_DIR = Path(__file__).with_name("tables")


@dataclass(frozen=True)
class Column:
    """One column of a table: its ``name``, ``kind`` (text, int or list) and whether a row
    may leave it empty."""

    name: str
    kind: str = "text"
    required: bool = True

    def parse(self, cell: str) -> Any:
        """The cell's value (None or ``()`` when empty and optional); ValueError names the cause."""
        cell = cell.strip()
        if not cell:
            if self.required:
                raise ValueError(f"required cell '{self.name}' is empty")
            return () if self.kind == "list" else None
        if self.kind == "int":
            try:
                return int(cell)
            except ValueError:
                raise ValueError(f"'{self.name}' must be an integer, got {cell!r}") from None
        if self.kind == "list":
            items = tuple(item.strip() for item in cell.split("|"))
            if not all(items):
                raise ValueError(f"'{self.name}' has an empty alias in {cell!r}")
            return items
        return cell


# Column layouts of the shipped tables; the first column of each is its unique key.
TABLES: dict[str, tuple[Column, ...]] = {
    "countries": (
        Column("country", "list"),
        Column("capital", "list", required=False),
        Column("capital_decoys", "list", required=False),
        Column("continent", "list"),
        Column("currency", "list", required=False),
        Column("currency_decoys", "list", required=False),
    ),
    "elements": (Column("atomic_number", "int"), Column("symbol"), Column("name", "list")),
    "books": (Column("title"), Column("kind"), Column("author", "list"), Column("group")),
    "animals": (
        Column("animal"),
        Column("class"),
        Column("young", "list", required=False),
    ),
    "words": (Column("word"),),
}


def read_table(path: str | os.PathLike, columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    """Validated rows of the CSV table at ``path``, as dicts keyed by column name.

    Raises
    ------
    DatasetError
        ``"<path> line <n>: <cause>"`` for an unreadable file, a header that is not
        ``columns``, a row with the wrong number of fields, an empty required cell, a
        non-integer in an integer column, an empty alias, or a repeated key (first column).
    """
    names = [column.name for column in columns]
    rows: list[dict[str, Any]] = []
    first_seen: dict[Any, int] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            for cells in reader:
                line = reader.line_num
                if line == 1:
                    if [cell.strip() for cell in cells] != names:
                        _fail(path, line, f"the header must be {','.join(names)}, got {cells}")
                    continue
                if not cells:
                    continue
                if len(cells) != len(columns):
                    _fail(path, line, f"expected {len(columns)} fields, got {len(cells)}")
                try:
                    row = {c.name: c.parse(cell) for c, cell in zip(columns, cells, strict=True)}
                except ValueError as exc:
                    _fail(path, line, str(exc))
                key = row[names[0]]
                key = key[0] if isinstance(key, tuple) else key
                if key in first_seen:
                    _fail(path, line, f"'{names[0]}' {key!r} repeats line {first_seen[key]}")
                first_seen[key] = line
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the table: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: the table has no rows")
    return rows


def _fail(path: str | os.PathLike, line: int, cause: str) -> None:
    raise DatasetError(f"{path} line {line}: {cause}")


@cache
def load_table(name: str) -> tuple[dict[str, Any], ...]:
    """The rows of the shipped table ``tables/<name>.csv`` (read once, then cached)."""
    return tuple(read_table(TABLES_DIR / f"{name}.csv", TABLES[name]))
