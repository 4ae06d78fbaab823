"""Facts: one question with its accepted answers and plausible wrong answers, before it is
rendered in an answer format (:mod:`.broad`), and the helpers the generators share.

Wrong answers are checked against the gold aliases the way the graders read them: a wrong
answer that contains an alias as whole words (or is contained in one) after
:func:`~perturbprobe.data.graders.normalize_answer` is dropped, since the ``contains`` and
``choice`` graders could not tell the two apart.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import cache

from ..graders import normalize_answer

__all__ = [
    "Fact",
    "article",
    "contains_words",
    "display",
    "fact_formats",
    "fmt_number",
    "letter_like",
    "near_numbers",
    "number_aliases",
    "ordinal",
    "pick_wrong",
    "rng_for",
    "shuffled",
    "slug",
]

_norm = cache(normalize_answer)
# An option text the choice grader would read as the letter of an option A-D ("C", "A. A. Milne").
_LETTER_LIKE = re.compile(r"\s*\(?[A-Da-d](?:[).:]|\s*$)")
_UNITS = (  # noqa: SIM905
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()  # noqa: SIM905


@dataclass(frozen=True)
class Fact:
    """A question of ``domain`` (``key`` unique within it) before rendering.

    ``answers`` are the accepted aliases (the first is canonical), ``wrong`` the plausible
    wrong answers, most plausible first. ``claim`` is a statement template: ``{}`` takes an
    answer and ``{a}`` its article, e.g. ``"the capital of Peru is {}"``. ``numeric`` facts are
    graded by number instead of by text.
    """

    domain: str
    key: str
    question: str
    answers: tuple[str, ...]
    wrong: tuple[str, ...]
    claim: str
    paraphrases: tuple[str, ...] = ()
    numeric: bool = False

    def statement(self, value: str) -> str:
        """The claim with ``value`` as its answer."""
        return self.claim.format(value, a=article(value))


def fact_formats(fact: Fact) -> tuple[str, ...]:
    """The answer formats ``fact`` can be rendered in.

    ``number`` for numeric facts, else ``short`` unless an alias occurs in the question
    (echoing the question would count as right); ``mc`` with three wrong answers and a gold
    text that cannot be read as an option letter; ``truefalse`` always.
    """
    formats = []
    if fact.numeric:
        formats.append("number")
    elif not any(contains_words(fact.question, alias) for alias in fact.answers):
        formats.append("short")
    if len(fact.wrong) >= 3 and not letter_like(display(fact.answers)):
        formats.append("mc")
    formats.append("truefalse")
    return tuple(formats)


def contains_words(text: str, alias: str) -> bool:
    """True if the normalised ``alias`` occurs in the normalised ``text`` as whole words."""
    return f" {_norm(alias)} " in f" {_norm(text)} "


def letter_like(text: str) -> bool:
    """True if the choice grader would read ``text`` as an option letter."""
    return bool(_LETTER_LIKE.match(text))


def display(aliases: tuple[str, ...]) -> str:
    """The first alias that cannot be read as an option letter (else the first)."""
    return next((alias for alias in aliases if not letter_like(alias)), aliases[0])


def pick_wrong(answers: Iterable[str], candidates: Iterable[str], k: int = 3) -> tuple[str, ...]:
    """The first ``k`` candidates that are usable wrong answers, in order.

    A candidate is dropped when it normalises to nothing, reads as an option letter, repeats
    an earlier pick, or overlaps an alias as whole words (either way round).
    """
    aliases = tuple(answers)
    picked: list[str] = []
    for candidate in candidates:
        norm = _norm(candidate)
        if not norm or letter_like(candidate) or norm in map(_norm, picked):
            continue
        if any(contains_words(candidate, a) or contains_words(a, candidate) for a in aliases):
            continue
        picked.append(candidate)
        if len(picked) == k:
            break
    return tuple(picked)


def rng_for(*parts: object) -> random.Random:
    """A random generator seeded from ``parts`` with SHA-256: the same on every run and machine."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffled(items: Iterable, rng: random.Random) -> list:
    """A shuffled copy of ``items``."""
    items = list(items)
    rng.shuffle(items)
    return items


def slug(text: str) -> str:
    """An ASCII id fragment: ``"the Côte d'Ivoire"`` → ``"cote-d-ivoire"``."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"^the\s+", "", text)).strip("-")


def article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def ordinal(n: int) -> str:
    """``1`` → ``"1st"``, ``12`` → ``"12th"``, ``23`` → ``"23rd"``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def fmt_number(value: Fraction | int) -> str:
    """A number as plain decimal digits (``Fraction(5, 2)`` → ``"2.5"``); exact or an error."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    if Fraction(text) != value:
        raise ValueError(f"{value} has no short decimal form")
    return text


def number_words(n: int) -> str:
    """English words of ``0 <= n < 1000``: ``342`` → ``"three hundred and forty-two"``."""
    if n < 20:
        return _UNITS[n]
    if n < 100:
        tens, units = divmod(n, 10)
        return _TENS[tens - 2] + (f"-{_UNITS[units]}" if units else "")
    hundreds, rest = divmod(n, 100)
    head = f"{_UNITS[hundreds]} hundred"
    return f"{head} and {number_words(rest)}" if rest else head


def number_aliases(value: Fraction | int) -> tuple[str, ...]:
    """Accepted spellings of a number: digits, with thousands separators, and in words."""
    digits = fmt_number(value)
    aliases = [digits]
    value = Fraction(value)
    if value.denominator == 1 and value >= 1000:
        aliases.append(f"{value.numerator:,}")
    if value.denominator == 1 and 0 <= value < 1000:
        aliases.append(number_words(value.numerator))
    return tuple(aliases)


def near_numbers(value: Fraction | int, candidates: Iterable, k: int = 3) -> tuple[str, ...]:
    """The first ``k`` distinct positive candidates other than ``value``, as digit strings."""
    picked: list[str] = []
    for candidate in candidates:
        candidate = Fraction(candidate)
        text = fmt_number(candidate)
        if candidate != value and candidate > 0 and text not in picked:
            picked.append(text)
        if len(picked) == k:
            break
    return tuple(picked)
