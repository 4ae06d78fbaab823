"""Train / validation / test splits grouped by question.

A question's generated, gold and wrong answers share most of their features' context (the
same prompt), so they must never straddle splits: a probe could otherwise recognise the
question instead of judging the answer. Splits are stratified by label where the groups
allow it, and seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ProbeError

__all__ = [
    "MIN_DOMAINS",
    "QuestionSplit",
    "domain_folds",
    "holdout_split",
    "split_by_question",
]

logger = logging.getLogger(__name__)

# Fewest domains with both classes for leave-one-domain-out folds: with two, each fold trains
# on one domain only, which says little about domains not seen.
MIN_DOMAINS = 3


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

    rest, test = _holdout(y, groups, np.arange(len(y)), test_fraction, random_state)
    train, validation = _holdout(
        y, groups, rest, validation_fraction / (1 - test_fraction), random_state + 1
    )
    split = QuestionSplit(np.sort(train), np.sort(validation), np.sort(test))
    for part in ("train", "validation", "test"):
        labels = set(y[getattr(split, part)].tolist())
        if labels != {0, 1}:
            raise ProbeError(
                f"the {part} split has only {'correct' if labels == {1} else 'incorrect'} "
                "answers; collect more questions (or more varied answers) to fit a probe"
            )
    return split


def holdout_split(
    question_ids: Sequence[str], y: np.ndarray, *, holdout: float = 0.2, random_state: int = 0
) -> QuestionSplit:
    """Rows for fitting (``train``) and a held-out ``test`` part of about ``holdout`` of the
    rows, by question and stratified by label; ``validation`` is empty (the calibrator is
    fitted on cross-fitted scores of the training rows). ``holdout=0``: no test part.

    Raises
    ------
    ProbeError
        ``holdout`` outside [0, 1), fewer than 2 questions, or a part with one class.
    """
    y = np.asarray(y)
    groups = np.asarray(question_ids, dtype=object)
    if not 0 <= holdout < 1:
        raise ProbeError(f"holdout must be in [0, 1), got {holdout}")
    empty = np.zeros(0, dtype=np.int64)
    if holdout == 0:
        return QuestionSplit(np.arange(len(y)), empty, empty)
    if len(set(groups)) < 2:
        raise ProbeError(
            f"need at least 2 distinct questions to hold some out, got {len(set(groups))}"
        )
    rest, test = _holdout(y, groups, np.arange(len(y)), holdout, random_state)
    for part, rows in (("training", rest), ("test", test)):
        labels = set(y[rows].tolist())
        if labels != {0, 1}:
            raise ProbeError(
                f"the {part} part has only {'correct' if labels == {1} else 'incorrect'} "
                "answers; collect more questions, or pass holdout 0"
            )
    return QuestionSplit(np.sort(rest), empty, np.sort(test))


def domain_folds(
    rows: np.ndarray, domains: np.ndarray, y: np.ndarray, evaluated: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-domain-out folds over ``rows``: per domain, (the other domains' rows, this
    domain's rows). A domain whose ``evaluated`` rows hold one class cannot be scored: it
    forms no fold (its rows still train the others), with a warning that counts them.

    Parameters
    ----------
    rows : int array
        Positions (of the whole FeatureSet) to make folds of.
    domains, y : arrays (n_records,)
        Every record's domain and label.
    evaluated : bool array (n_records,)
        The records whose scores count (the LLM's own answers).

    Raises
    ------
    ProbeError
        Fewer than :data:`MIN_DOMAINS` domains with both classes.
    """
    names = list(dict.fromkeys(domains[rows].tolist()))
    folds, skipped = [], []
    for name in names:
        inside = rows[domains[rows] == name]
        scored = inside[evaluated[inside]]
        if len(set(y[scored].tolist())) < 2:
            skipped.append(name)
            continue
        folds.append((rows[domains[rows] != name], inside))
    if skipped:
        logger.warning(
            "leave-one-domain-out: skipped %d of %d domains whose answers are all of one "
            "class (%s); they still train the other folds",
            len(skipped),
            len(names),
            ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else ""),
        )
    if len(folds) < MIN_DOMAINS:
        raise ProbeError(
            f"leave-one-domain-out needs at least {MIN_DOMAINS} domains with both correct and "
            f"incorrect answers, found {len(folds)} ({', '.join(map(str, names[:10]))}); "
            "select by question instead (--select-by question)"
        )
    return folds


def _holdout(y, groups, rows: np.ndarray, fraction: float, seed: int):
    """(kept, held out) rows: one fold of ``round(1 / fraction)`` grouped by question."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = max(2, min(round(1 / fraction), len(set(groups[rows]))))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    keep, out = next(folds.split(rows, y[rows], groups[rows]))
    return rows[keep], rows[out]
