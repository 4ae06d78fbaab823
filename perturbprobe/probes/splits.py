"""Train / validation / test splits grouped by question.

A question's generated, gold and wrong answers share most of their features' context (the
same prompt), so they must never straddle splits: a probe could otherwise recognise the
question instead of judging the answer. Splits are stratified by label where the groups
allow it, and seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ProbeError

__all__ = ["QuestionSplit", "split_by_question"]


@dataclass(frozen=True)
class QuestionSplit:
    """Row positions (int arrays) of each part; parts are disjoint and share no question."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, validation, test)."""
        return self.train, self.validation, self.test


def split_by_question(
    question_ids: Sequence[str],
    y: np.ndarray,
    *,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    random_state: int = 0,
) -> QuestionSplit:
    """Split rows into train / validation / test with no question in two parts.

    Uses scikit-learn's ``StratifiedGroupKFold`` twice: ``1/test_fraction`` folds give the
    test part, then the rest is split again for the validation part, so each part keeps
    about the overall share of correct answers.

    Parameters
    ----------
    question_ids : sequence of str (n,)
    y : int array (n,)
        1 correct, 0 incorrect.
    validation_fraction, test_fraction : float
        Approximate shares of rows (whole questions are moved, so shares are approximate).
    random_state : int

    Raises
    ------
    ProbeError
        Fractions out of range, fewer than 3 questions, or a part without both labels.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.asarray(question_ids, dtype=object)
    if not (0 < test_fraction < 1 and 0 < validation_fraction < 1):
        raise ProbeError("validation and test fractions must be between 0 and 1")
    if test_fraction + validation_fraction >= 1:
        raise ProbeError("validation_fraction + test_fraction must leave rows for training")
    if len(set(groups)) < 3:
        raise ProbeError(
            f"need at least 3 distinct questions to split train/validation/test, "
            f"got {len(set(groups))}"
        )

    def holdout(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n_folds = max(2, min(round(1 / fraction), len(set(groups[rows]))))
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        keep, out = next(folds.split(rows, y[rows], groups[rows]))
        return rows[keep], rows[out]

    rest, test = holdout(np.arange(len(y)), test_fraction, random_state)
    train, validation = holdout(rest, validation_fraction / (1 - test_fraction), random_state + 1)
    split = QuestionSplit(np.sort(train), np.sort(validation), np.sort(test))
    for part in ("train", "validation", "test"):
        labels = set(y[getattr(split, part)].tolist())
        if labels != {0, 1}:
            raise ProbeError(
                f"the {part} split has only {'correct' if labels == {1} else 'incorrect'} "
                "answers; collect more questions (or more varied answers) to fit a probe"
            )
    return split
