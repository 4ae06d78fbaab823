"""The multiple-choice rendering of an open question (``--format mc``)."""

from __future__ import annotations

import hashlib
import random

from ..errors import DatasetError
from .schema import Example, choice_letters, example_from_row

__all__ = ["to_multiple_choice"]


def to_multiple_choice(example: Example) -> Example:
    """Render ``example`` as multiple choice over its first answer and its wrong answers.

    The option order is a shuffle seeded by the example id, so it is the same on every run
    and machine. Paraphrases are rendered with the same options. The correct answer becomes
    ``(letter, text)`` and the grader ``choice``.

    Raises
    ------
    DatasetError
        If the example has no wrong answers to offer as distractors.
    """
    if example.choices:
        return example
    if not example.wrong_answers:
        raise DatasetError(
            f"question {example.id!r} has no 'wrong_answers'; the mc format needs distractors"
        )
    options = [example.answers[0], *example.wrong_answers]
    seed = int.from_bytes(hashlib.sha256(example.id.encode()).digest()[:8], "big")
    random.Random(seed).shuffle(options)
    letter = choice_letters(len(options))[options.index(example.answers[0])]
    row = example.to_row()
    row.update(answers=[letter], choices=options, grader="choice", format="mc")
    row.pop("wrong_answers", None)
    return example_from_row(row, f"question {example.id!r}")
