"""Graders: decide whether a response answers an :class:`Example` correctly.

A grader is any callable ``grader(response: str, example: Example) -> bool``. The built-in
ones are registered by name; register your own with :func:`register_grader` and name it in a
dataset row's ``grader`` field or pass it to :func:`perturbprobe.decoding.collect`. Every record
names the grader that labelled it.

- ``contains`` (default): a normalised alias occurs in the normalised response as whole words.
- ``exact``: the normalised response equals a normalised alias.
- ``numeric``: the last number in the response equals the first answer's number.
- ``choice``: the letter (or the text) of the chosen option is the correct one.
- ``truefalse``: the response's first verdict (true/false, yes/no, correct/incorrect) is the
  answer's; see :func:`truefalse_verdict`.

Normalisation: Unicode accents removed, lower-case, thousands separators dropped, punctuation
turned into spaces (decimal points between digits kept), the articles a/an/the removed. Matching
on whole words means "8" does not match "18".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from ..errors import DatasetError
from .schema import Example, choice_letters

__all__ = [
    "GRADERS",
    "Grader",
    "grade_choice",
    "grade_contains",
    "grade_exact",
    "grade_numeric",
    "grade_truefalse",
    "grader_name_for",
    "normalize_answer",
    "parse_numbers",
    "register_grader",
    "resolve_grader",
    "truefalse_verdict",
]

Grader = Callable[[str, Example], bool]

_ARTICLES = {"a", "an", "the"}
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        f"{_UNITS} fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70})
_NUMBER_WORDS.update({"eighty": 80, "ninety": 90, "hundred": 100})
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?|[a-z]+")
# A leading option letter: "B", "B)", "(B)", "B. Paris", "Answer: B", "The answer is B."
_LETTER = re.compile(r"\s*(?i:the\s+)?(?i:answer\s*(?:is)?\s*:?\s*)?\(?([A-Z])(?:[).:]|\s*$)")
_VERDICTS = {"true": True, "correct": True, "yes": True, "yeah": True, "yep": True}
_VERDICTS.update({"false": False, "incorrect": False, "untrue": False, "no": False, "nope": False})
_YES_NO = {"yes", "yeah", "yep", "no", "nope"}
_ANSWER_NOUNS = {"answer", "answers", "option", "choice", "response", "reply"}
_CLAUSE_ENDS = set(".,;:!?()")
# The question's own "True or false:" echoed back is no verdict.
_ECHO = re.compile(r"\b(?:true\s*(?:or|/)\s*false|false\s*(?:or|/)\s*true|yes\s*(?:or|/)\s*no)\b")
_VERDICT_TOKENS = re.compile(r"[a-z]+|[^\sa-z]")  # words, and each other character alone


def _fold(text: str) -> str:
    """Lower-case text without accents."""
    text = unicodedata.normalize("NFKD", text)
    return "".join(char for char in text if not unicodedata.combining(char)).lower()


def normalize_answer(text: str) -> str:
    """Lower-case, accent-free, punctuation-free text without articles, single-spaced."""
    text = _fold(text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep only decimal points
    text = re.sub(r"[^\w\s.]|_", " ", text)
    return " ".join(token for token in text.split() if token not in _ARTICLES)


def parse_numbers(text: str) -> list[float]:
    """Numbers in ``text`` in order of appearance: digits (with sign/decimals) and number
    words up to the hundreds, compounds included ("twelve" → 12, "twenty-one" → 21,
    "six hundred and five" → 605)."""
    values: list[float] = []
    words: int | None = None  # the number-word compound being read
    for token in _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())):
        if token in _NUMBER_WORDS:
            words = _extend_compound(words, _NUMBER_WORDS[token], values)
            continue
        if token == "and" and words is not None and words % 100 == 0:
            continue  # "six hundred and five"
        if words is not None:
            values.append(float(words))
            words = None
        if not token.isalpha():
            values.append(float(token))
    if words is not None:
        values.append(float(words))
    return values


def _extend_compound(current: int | None, word_value: int, values: list[float]) -> int:
    """Add one number word to the compound being read, or close it and start a new one."""
    if current is None:
        return word_value
    if word_value == 100 and 0 < current < 100:
        return current * 100  # six hundred
    fits_tens = current >= 100 and current % 100 == 0 and word_value < 100
    fits_units = current % 100 >= 20 and current % 10 == 0 and word_value < 10
    if fits_tens or fits_units:
        return current + word_value  # hundred five, twenty one
    values.append(float(current))
    return word_value


def grade_contains(response: str, example: Example) -> bool:
    """True if a normalised answer alias occurs in the normalised response as whole words."""
    padded = f" {normalize_answer(response)} "
    return any(f" {alias} " in padded for alias in map(normalize_answer, example.answers) if alias)


def grade_exact(response: str, example: Example) -> bool:
    """True if the normalised response equals a normalised answer alias."""
    normalized = normalize_answer(response)
    return any(normalized == normalize_answer(alias) for alias in example.answers)


def grade_numeric(response: str, example: Example) -> bool:
    """True if the last number in the response equals the number in ``answers[0]``."""
    expected = parse_numbers(example.answers[0])
    found = parse_numbers(response)
    if not expected:
        raise DatasetError(f"{example.id}: the numeric grader needs a number in 'answers'")
    if not found:
        return False
    return abs(found[-1] - expected[0]) <= 1e-9 * max(1.0, abs(expected[0]))


def grade_choice(response: str, example: Example) -> bool:
    """True if the response picks the correct option, by letter ("B", "(B)", "B) Paris",
    "Answer: B") or, failing a letter, by containing exactly one option's text."""
    if not example.choices:
        raise DatasetError(f"{example.id}: the choice grader needs 'choices'")
    letters = choice_letters(len(example.choices))
    correct = example.answers[0]
    stripped = response.strip()
    if len(stripped) == 1 and stripped.upper() in letters:
        return stripped.upper() == correct
    match = _LETTER.match(response)
    if match and match.group(1) in letters:
        return match.group(1) == correct
    padded = f" {normalize_answer(response)} "
    named = [
        letter
        for letter, text in zip(letters, example.choices, strict=True)
        if f" {normalize_answer(text)} " in padded
    ]
    return named == [correct]


def truefalse_verdict(text: str) -> bool | None:
    """The first true/false verdict in ``text``, None if it gives none.

    Verdict words: true, correct, yes (yeah, yep) → True; false, incorrect, untrue, no (nope)
    → False. Rules, in order:

    - "true or false" / "yes or no" (the question echoed back) is skipped;
    - yes and no count only as the first word or when followed by punctuation or the end
      ("No, ..." and "The answer is no." → False; "There is no doubt" gives no verdict);
    - a verdict word followed by answer/option/choice/response is skipped ("The correct answer
      is false" → False);
    - "not", "never" or "n't" earlier in the same clause flips the verdict ("That is not
      true", "I don't think that is correct" → False).

    "right" and "wrong" are not verdict words: "right" has too many other senses.
    """
    text = _ECHO.sub(" ", re.sub(r"n['’]t\b", " not", _fold(text)))
    tokens = _VERDICT_TOKENS.findall(text)
    for index, token in enumerate(tokens):
        if token not in _VERDICTS:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in _YES_NO:
            if index > 0 and following.isalpha():
                continue
        elif following in _ANSWER_NOUNS:
            continue
        clause: list[str] = []
        for previous in reversed(tokens[:index]):
            if previous in _CLAUSE_ENDS:
                break
            clause.append(previous)
        return _VERDICTS[token] != any(word in ("not", "never") for word in clause)
    return None


def grade_truefalse(response: str, example: Example) -> bool:
    """True if the response's verdict (:func:`truefalse_verdict`) is the verdict of
    ``answers[0]``; a response without a verdict is wrong."""
    expected = truefalse_verdict(example.answers[0])
    if expected is None:
        raise DatasetError(
            f"{example.id}: the truefalse grader needs True or False (or Yes or No) in 'answers'"
        )
    return truefalse_verdict(response) == expected


GRADERS: dict[str, Grader] = {
    "contains": grade_contains,
    "exact": grade_exact,
    "numeric": grade_numeric,
    "choice": grade_choice,
    "truefalse": grade_truefalse,
}


def register_grader(name: str, grader: Grader) -> None:
    """Make ``grader`` available under ``name`` (dataset rows can then name it)."""
    if not callable(grader):
        raise TypeError(f"grader {name!r} must be callable as grader(response, example)")
    GRADERS[name] = grader


def grader_name_for(example: Example) -> str:
    """The grader an example asks for: its ``grader`` field, else choice/contains."""
    if example.grader:
        return example.grader
    return "choice" if example.choices else "contains"


def resolve_grader(grader: str | Grader) -> tuple[str, Grader]:
    """``(name, callable)`` for a registered name or a callable (named after its ``__name__``)."""
    if callable(grader):
        return getattr(grader, "__name__", type(grader).__name__), grader
    try:
        return grader, GRADERS[grader]
    except KeyError:
        raise DatasetError(
            f"unknown grader {grader!r}; registered graders: {', '.join(sorted(GRADERS))}"
        ) from None
