"""The dataset schema: one :class:`Example` per question, validated with located errors.

A dataset row (JSONL object, CSV row or Parquet row) has

- ``id`` (str, unique): the question id;
- ``question`` (str) **or** ``messages`` (list of ``{"role", "content"}``): the prompt;
- ``answers`` (non-empty list of str): accepted answers (aliases); with ``choices`` they hold
  the correct choice's text or letter;
- optional ``choices`` (list of str): multiple choice options, shown as A), B), ...;
- optional ``wrong_answers`` (list of str): plausible wrong answers (for ``--source gold``);
- optional ``paraphrases`` (list of str): the question reworded, same answer;
- optional ``category`` (str) and ``grader`` (str, a registered grader name);
- optional ``domain`` (str): the kind of question, for domain-aware metrics and selection
  (default: the dataset's own default, see :func:`perturbprobe.data.load_dataset`);
- optional ``format`` (str): the answer format, one of :data:`ANSWER_FORMATS` (default:
  ``mc`` with choices, ``number`` with the numeric grader, ``truefalse`` with the truefalse
  grader, else ``short``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatasetError, PairEncodingError
from ..llm.pairs import validate_messages

__all__ = [
    "ANSWER_FORMATS",
    "Example",
    "answer_format",
    "choice_letters",
    "example_from_row",
    "render_choices",
]

# The answer formats a record can carry: a short free-text answer, a multiple-choice letter,
# a true/false judgement, a number.
ANSWER_FORMATS = ("short", "mc", "truefalse", "number")

_KNOWN_FIELDS = {
    "id",
    "question",
    "messages",
    "answers",
    "choices",
    "wrong_answers",
    "paraphrases",
    "category",
    "grader",
    "domain",
    "format",
}


@dataclass(frozen=True)
class Example:
    """One question of a dataset. ``messages`` is the prompt the LLM sees."""

    id: str
    messages: tuple[dict[str, str], ...]
    answers: tuple[str, ...]
    question: str | None = None
    choices: tuple[str, ...] = ()
    wrong_answers: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()
    category: str | None = None
    grader: str | None = None
    domain: str | None = None
    format: str = "short"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    source_row: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_row(self) -> dict[str, Any]:
        """The example as a schema row (inverse of :func:`example_from_row`).

        Examples read from a row give that row back: it holds the question, messages and
        paraphrases before the options of a multiple-choice question were rendered into them.
        """
        if self.source_row is not None:
            return dict(self.source_row)
        row: dict[str, Any] = {"id": self.id}
        if self.question is not None:
            row["question"] = self.question
        else:
            row["messages"] = [dict(message) for message in self.messages]
        row["answers"] = list(self.answers)
        for name in ("choices", "wrong_answers", "paraphrases"):
            if getattr(self, name):
                row[name] = list(getattr(self, name))
        for name in ("category", "grader", "domain", "format"):
            if getattr(self, name) is not None:
                row[name] = getattr(self, name)
        return row


def _string_list(row: Mapping, name: str, where: str, *, required: bool = False) -> tuple:
    value = row.get(name)
    if value is None or (not required and value == []):
        if required:
            raise DatasetError(f"{where}: field '{name}' is missing; give a non-empty list")
        return ()
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise DatasetError(f"{where}: field '{name}' must be a list of strings, got {value!r}")
    items = tuple(value)
    if required and not items:
        raise DatasetError(f"{where}: field '{name}' is empty; give at least one answer")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(
                f"{where}: field '{name}' must hold non-empty strings, found {item!r}"
            )
    return tuple(item.strip() for item in items)


def _optional_string(row: Mapping, name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field '{name}' must be a string, got {value!r}")
    return value


def example_from_row(row: Mapping[str, Any], where: str) -> Example:
    """Validate one dataset row and build an :class:`Example`.

    Parameters
    ----------
    row : mapping
        The row's fields.
    where : str
        Location for error messages, e.g. ``"data.jsonl line 12"``.

    Raises
    ------
    DatasetError
        Naming ``where`` and the field that is wrong.
    """
    if not isinstance(row, Mapping):
        raise DatasetError(f"{where}: expected an object with fields, got {type(row).__name__}")
    example_id = row.get("id")
    if isinstance(example_id, int) and not isinstance(example_id, bool):
        example_id = str(example_id)
    if not isinstance(example_id, str) or not example_id.strip():
        raise DatasetError(f"{where}: field 'id' is missing or empty")
    where = f"{where} (id {example_id!r})"

    question = row.get("question")
    messages = row.get("messages")
    if question is not None:
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{where}: field 'question' is empty")
        question = question.strip()
        messages = ({"role": "user", "content": question},)
    elif messages is not None:
        question = None
        try:
            messages = tuple(validate_messages(list(messages), what=where))
        except (PairEncodingError, TypeError) as exc:
            raise DatasetError(str(exc)) from exc
    else:
        raise DatasetError(f"{where}: needs a 'question' or a 'messages' field")

    answers = _string_list(row, "answers", where, required=True)
    choices = _string_list(row, "choices", where)
    if choices:
        answers = _choice_answers(answers, choices, where)
        last = messages[-1]
        messages = (*messages[:-1], {**last, "content": render_choices(last["content"], choices)})
    paraphrases = _string_list(row, "paraphrases", where)
    wrong_answers = _string_list(row, "wrong_answers", where)
    if choices:  # the wrong answers of a multiple-choice question are the other letters
        paraphrases = tuple(render_choices(text, choices) for text in paraphrases)
        letters = choice_letters(len(choices))
        wrong_answers = tuple(letter for letter in letters if letter != answers[0])
    grader = _optional_string(row, "grader", where)
    domain = _optional_string(row, "domain", where)
    format_ = _optional_string(row, "format", where)
    if format_ is not None and format_ not in ANSWER_FORMATS:
        raise DatasetError(
            f"{where}: field 'format' must be one of {', '.join(ANSWER_FORMATS)}, got {format_!r}"
        )
    return Example(
        id=example_id.strip(),
        messages=messages,
        answers=answers,
        question=question,
        choices=choices,
        wrong_answers=wrong_answers,
        paraphrases=paraphrases,
        category=_optional_string(row, "category", where),
        grader=grader,
        domain=domain,
        format=format_ or answer_format(choices, grader),
        extra={key: value for key, value in row.items() if key not in _KNOWN_FIELDS},
        source_row=dict(row),
    )


def answer_format(choices: tuple[str, ...] | list[str], grader: str | None) -> str:
    """The default answer format of a question with these ``choices`` and ``grader``."""
    if choices or grader == "choice":
        return "mc"
    return {"numeric": "number", "truefalse": "truefalse"}.get(grader or "", "short")


def _choice_answers(answers: tuple[str, ...], choices: tuple[str, ...], where: str) -> tuple:
    """(letter, choice text) of the correct choice named by ``answers`` (text or letter)."""
    letters = choice_letters(len(choices))
    for answer in answers:
        for letter, text in zip(letters, choices, strict=True):
            if answer.lower() in (letter.lower(), text.lower()):
                return (letter, text)
    raise DatasetError(
        f"{where}: field 'answers' must name one of the choices (text or letter "
        f"{', '.join(letters)})"
    )


def choice_letters(n: int) -> list[str]:
    """The letters A, B, C, ... of ``n`` choices."""
    if n > 26:
        raise DatasetError(f"at most 26 choices are supported, got {n}")
    return [chr(ord("A") + index) for index in range(n)]


def render_choices(question: str, choices: tuple[str, ...] | list[str]) -> str:
    """The question followed by lettered options and the instruction to answer with a letter."""
    options = "\n".join(
        f"{letter}) {text}"
        for letter, text in zip(choice_letters(len(choices)), choices, strict=True)
    )
    return f"{question}\n{options}\nAnswer with the letter of the correct option."
