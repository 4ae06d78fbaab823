"""``builtin:broad``: many domains, each rendered in several answer formats.

Every :class:`~.facts.Fact` of a domain becomes one row per format it supports
(:func:`~.facts.fact_formats`):

- ``short``: the question, its aliases and wrong answers, graded ``contains``;
- ``number``: the same, graded ``numeric``;
- ``mc``: the canonical answer and three wrong answers as options in an order seeded by the
  row id, graded ``choice``;
- ``truefalse``: "True or false: <claim>." with the gold answer or, for about half the rows
  (chosen by the row id), a wrong one; answers True/Yes or False/No, graded ``truefalse``.

Rows carry ``domain``, ``format``, ``category`` (the domain) and ``fact`` (the id shared by
the renderings of one fact, for group-aware splits). Options, as in
``builtin:broad?domains=calendar,spelling&formats=mc,truefalse``:

- ``domains``: a subset of :data:`DOMAINS` (default all);
- ``formats``: a subset of the answer formats (default all).

A balanced sample of any dataset — N questions of each domain, spread over its formats — is
``load_dataset(..., per_domain=N, seed=S)`` (``collect --per-domain N``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from functools import cache
from urllib.parse import parse_qsl

from ...errors import DatasetError
from ..schema import ANSWER_FORMATS
from . import rule_domains, table_domains, word_domains
from .facts import Fact, display, fact_formats

__all__ = ["DOMAINS", "broad_rows", "describe_broad", "domain_rows"]

# name: (builder, where its facts come from)
DOMAINS: dict[str, tuple[Callable[[], list[Fact]], str]] = {
    "country_capitals": (table_domains.country_capitals, "tables/countries.csv"),
    "country_continents": (table_domains.country_continents, "tables/countries.csv"),
    "country_currencies": (table_domains.country_currencies, "tables/countries.csv"),
    "element_symbols": (table_domains.element_symbols, "tables/elements.csv"),
    "element_numbers": (table_domains.element_numbers, "tables/elements.csv"),
    "book_authors": (table_domains.book_authors, "tables/books.csv"),
    "animal_classes": (table_domains.animal_classes, "tables/animals.csv"),
    "animal_young": (table_domains.animal_young, "tables/animals.csv"),
    "unit_conversion": (rule_domains.unit_conversion, "rules"),
    "calendar": (rule_domains.calendar, "rules"),
    "word_problems": (rule_domains.word_problems, "rules"),
    "letter_counts": (word_domains.letter_counts, "rules over tables/words.csv"),
    "spelling": (word_domains.spelling, "rules over tables/words.csv"),
}
_OPTIONS = ("domains", "formats")
_GRADERS = {"short": "contains", "number": "numeric", "mc": "choice", "truefalse": "truefalse"}


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@cache
def domain_rows(domain: str) -> tuple[dict, ...]:
    """Every row of ``domain``, all formats (built once; callers get copies via
    :func:`broad_rows`)."""
    facts = DOMAINS[domain][0]()
    keys = [fact.key for fact in facts]
    if len(set(keys)) != len(keys):
        raise DatasetError(f"builtin:broad {domain}: repeated fact keys")
    for fact in facts:
        if len(fact.wrong) < 2:
            raise DatasetError(f"builtin:broad {domain}-{fact.key}: fewer than 2 wrong answers")
    return tuple(_render(fact, fmt) for fact in facts for fmt in fact_formats(fact))


def _render(fact: Fact, fmt: str) -> dict:
    """The schema row of ``fact`` in the answer format ``fmt``."""
    fact_id = f"{fact.domain}-{fact.key}"
    row = {"id": f"{fact_id}-{fmt}", "domain": fact.domain, "category": fact.domain}
    row |= {"format": fmt, "grader": _GRADERS[fmt], "fact": fact_id}
    question, answers, wrong = fact.question, list(fact.answers), list(fact.wrong[:3])
    paraphrases = list(fact.paraphrases)
    if fmt == "mc":
        gold = display(fact.answers)
        choices = [gold, *wrong]
        random.Random(_digest(row["id"])).shuffle(choices)
        row["choices"], answers = choices, [gold]
    elif fmt == "truefalse":
        truth = _digest(row["id"]) % 2 == 0
        claim = fact.statement(fact.answers[0] if truth else wrong[_digest(fact_id) % len(wrong)])
        sentence = claim + ("" if claim.endswith(".") else ".")
        question = f"True or false: {sentence}"
        paraphrases = [
            f"Is it true that {claim.rstrip('.')}?",
            f"Is the following statement true or false? {sentence[:1].upper()}{sentence[1:]}",
        ]
        yes, no = ["True", "Yes"], ["False", "No"]
        answers, wrong = (yes, no) if truth else (no, yes)
    row |= {"question": question, "answers": answers, "wrong_answers": wrong}
    if paraphrases:
        row["paraphrases"] = paraphrases
    return row


def broad_rows(query: str = "") -> list[tuple[str, dict]]:
    """``(location, row)`` pairs of ``builtin:broad?<query>`` (see the module docstring).

    Raises
    ------
    DatasetError
        An unknown option, domain or format, a non-integer or non-positive number, or a
        selection without questions.
    """
    domains, formats = _parse(query)
    rows: list[dict] = []
    for domain in domains:
        rows += [row for row in domain_rows(domain) if row["format"] in formats]
    if not rows:
        raise DatasetError(f"builtin:broad?{query}: no questions in these domains and formats")
    return [(f"builtin:broad row {i + 1}", _copy(row)) for i, row in enumerate(rows)]


def _copy(row: dict) -> dict:
    return {key: list(value) if isinstance(value, list) else value for key, value in row.items()}


def _parse(query: str) -> tuple[list[str], set[str]]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise DatasetError(
            f"builtin:broad options are {', '.join(_OPTIONS)}, got {sorted(unknown)}"
        )
    domains = _names(options.get("domains"), list(DOMAINS), "domain")
    formats = set(_names(options.get("formats"), list(ANSWER_FORMATS), "format"))
    return [d for d in DOMAINS if d in domains], formats


def _names(value: str | None, available: list[str], what: str) -> list[str]:
    """The comma-separated names in ``value`` (all of ``available`` when absent)."""
    if value is None:
        return available
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise DatasetError(
            f"unknown {what} {', '.join(map(repr, unknown)) or repr(value)} for builtin:broad; "
            f"available: {', '.join(available)}"
        )
    return names


def describe_broad() -> list[tuple[str, tuple[str, ...], int, str]]:
    """``(domain, formats, questions, source)`` of every domain of ``builtin:broad``."""
    described = []
    for domain, (_, source) in DOMAINS.items():
        rows = domain_rows(domain)
        present = {row["format"] for row in rows}
        formats = tuple(fmt for fmt in ANSWER_FORMATS if fmt in present)
        described.append((domain, formats, len(rows), source))
    return described
