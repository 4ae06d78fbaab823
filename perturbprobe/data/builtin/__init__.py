"""Built-in datasets, shipped with the package.

- ``builtin:easy-qa``: hand-written short-answer questions over several categories with a
  spread of difficulty for small models; each has aliases and plausible wrong answers, many
  have paraphrases (``perturbprobe/data/builtin/easy_qa.jsonl``).
- ``builtin:arithmetic``: addition, subtraction and multiplication problems generated from a
  seed; ``builtin:arithmetic?n=200&seed=3`` chooses the size and the seed (default 300, 0).
- ``builtin:broad``: 13 domains (capitals, continents, currencies, element symbols and
  numbers, authors, animals, unit conversions, calendar, word problems, letter counts,
  spelling) in the short, number, mc and truefalse formats, generated from the fact tables in
  ``tables/`` and from rules; ``builtin:broad?domains=calendar&formats=mc`` selects (see
  :mod:`.broad`).

:func:`describe_builtin` lists every built-in domain with its formats, size and source.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

from ...errors import DatasetError
from .broad import DOMAINS, broad_rows, describe_broad

__all__ = [
    "ACCURACY_FILE",
    "BUILTIN_DATASETS",
    "BuiltinDomain",
    "arithmetic_rows",
    "builtin_names",
    "describe_builtin",
    "load_builtin",
    "measured_accuracy",
]

# The default LLM's greedy accuracy per built-in domain, written by
# benchmarks/dataset_accuracy.py and shown by `perturbprobe datasets`.
ACCURACY_FILE = Path(__file__).with_name("accuracy.json")

BUILTIN_DATASETS = {
    "easy-qa": "short-answer questions in several categories, with aliases, wrong answers "
    "and paraphrases",
    "arithmetic": "generated +, -, × problems (options: n, seed), graded numerically",
    "broad": f"{len(DOMAINS)} domains from fact tables and rules in the short, number, mc and "
    "truefalse formats (options: domains, formats)",
}
_NUMERIC_CATEGORIES = ("arithmetic_small", "arithmetic_large")


def builtin_names() -> list[str]:
    """Names accepted after ``builtin:``."""
    return list(BUILTIN_DATASETS)


def load_builtin(spec: str) -> list[tuple[str, dict]]:
    """``(location, row)`` pairs of the built-in dataset ``spec`` (``name[?k=v&...]``)."""
    name, _, query = spec.partition("?")
    if name not in BUILTIN_DATASETS:
        raise DatasetError(
            f"unknown built-in dataset {name!r}; available: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_DATASETS)
        )
    if name == "broad":
        return broad_rows(query)
    options = dict(parse_qsl(query, keep_blank_values=True))
    if name == "easy-qa":
        if options:
            raise DatasetError(f"builtin:easy-qa takes no options, got {query!r}")
        return list(_easy_qa_rows())
    unknown = set(options) - {"n", "seed"}
    if unknown:
        raise DatasetError(f"builtin:arithmetic options are n and seed, got {sorted(unknown)}")
    try:
        n, seed = int(options.get("n", 300)), int(options.get("seed", 0))
    except ValueError:
        raise DatasetError(f"builtin:arithmetic options must be integers, got {query!r}") from None
    if n < 1:
        raise DatasetError(f"builtin:arithmetic needs n >= 1, got {n}")
    return [
        (f"builtin:arithmetic row {i + 1}", row) for i, row in enumerate(arithmetic_rows(n, seed))
    ]


class BuiltinDomain(NamedTuple):
    """One domain of a built-in dataset, as ``perturbprobe datasets`` lists it."""

    dataset: str
    domain: str
    formats: tuple[str, ...]
    questions: int
    source: str


def describe_builtin() -> list[BuiltinDomain]:
    """Every domain of every built-in dataset with its answer formats, number of questions
    (at the default options) and where its questions come from."""
    easy_qa = Counter(row["domain"] for _, row in _easy_qa_rows())
    described = [
        BuiltinDomain(
            "easy-qa",
            domain,
            ("number",) if domain in _NUMERIC_CATEGORIES else ("short",),
            count,
            "easy_qa.jsonl (hand-written)",
        )
        for domain, count in easy_qa.items()
    ]
    described.append(
        BuiltinDomain("arithmetic", "arithmetic", ("number",), 300, "generated from a seed")
    )
    described += [BuiltinDomain("broad", *row) for row in describe_broad()]
    return described


def measured_accuracy() -> dict:
    """``{"accuracy": {dataset: {domain: {"n", "correct"}}}, "model", "decoding", "measured",
    "note"}`` from :data:`ACCURACY_FILE`; empty when it was never measured."""
    if not ACCURACY_FILE.is_file():
        return {}
    return json.loads(ACCURACY_FILE.read_text(encoding="utf-8"))


def _easy_qa_rows() -> Iterator[tuple[str, dict]]:
    text = resources.files(__name__).joinpath("easy_qa.jsonl").read_text("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if row.get("category") in _NUMERIC_CATEGORIES:
                row.setdefault("grader", "numeric")
            row.setdefault("domain", row.get("category"))
            yield f"builtin:easy-qa line {number}", row


_OPERATIONS = {
    "add": (
        lambda a, b: a + b,
        ("What is {a} + {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?"),
    ),
    "subtract": (
        lambda a, b: a - b,
        ("What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"),
    ),
    "multiply": (
        lambda a, b: a * b,
        ("What is {a} × {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?"),
    ),
}
# (category, operation, operand range): small to larger numbers, i.e. easy to hard.
_LEVELS = (
    ("add_1digit", "add", (1, 9)),
    ("subtract_1digit", "subtract", (1, 9)),
    ("multiply_1digit", "multiply", (2, 9)),
    ("add_2digit", "add", (10, 99)),
    ("subtract_2digit", "subtract", (10, 99)),
    ("multiply_2digit", "multiply", (11, 39)),
    ("add_3digit", "add", (100, 999)),
)


def arithmetic_rows(n: int, seed: int) -> list[dict]:
    """``n`` arithmetic questions cycling through difficulty levels, reproducible from ``seed``.

    Each row has the result (digits) as answer, three nearby wrong results (off by one, by ten,
    or with swapped digits) and two paraphrases; subtraction never goes negative.
    """
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        category, operation, (low, high) = _LEVELS[index % len(_LEVELS)]
        apply, templates = _OPERATIONS[operation]
        a, b = rng.randint(low, high), rng.randint(low, high)
        if operation == "subtract" and b > a:
            a, b = b, a
        result = apply(a, b)
        rows.append(
            {
                "id": f"arithmetic-{seed}-{index + 1:04d}",
                "category": category,
                "domain": "arithmetic",
                "question": templates[0].format(a=a, b=b),
                "answers": [str(result)],
                "wrong_answers": _near_misses(result, rng),
                "paraphrases": [t.format(a=a, b=b) for t in templates[1:]],
                "grader": "numeric",
            }
        )
    return rows


def _near_misses(result: int, rng: random.Random) -> list[str]:
    """Three distinct plausible wrong results."""
    candidates = [result + 1, result - 1, result + 10, result - 10, result + 2]
    swapped = int(str(result)[::-1]) if result >= 10 else None
    if swapped is not None and swapped != result:
        candidates.insert(0, swapped)
    picked = []
    for value in candidates:
        if value != result and value >= 0 and value not in picked:
            picked.append(value)
    rng.shuffle(picked)
    return [str(value) for value in picked[:3]]
