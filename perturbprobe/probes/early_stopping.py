"""The early-stopping split of probes that stop on a validation part (LightGBM, CCPS)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

from ..errors import ProbeError

__all__ = ["validation_split"]

_SPLIT_TRIES = 10


def validation_split(
    y: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    random_state: int | np.random.RandomState | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into a training and an early-stopping validation part.

    With ``groups`` (e.g. question ids) the split is a :class:`GroupShuffleSplit`, so all
    answers to one question land on the same side and validation measures generalisation to
    new questions; otherwise a :class:`StratifiedShuffleSplit`. Up to 10 seeded draws are tried
    until both sides hold both classes.

    Parameters
    ----------
    y : ndarray of int, shape (n,)
        Labels in {0, 1}.
    groups : ndarray, shape (n,), or None
        Group of each row.
    fraction : float in (0, 1)
        Share of rows (of groups, when grouped) put into validation.
    random_state : int, RandomState or None
        Seed of the draws.

    Returns
    -------
    train, validation : ndarray of int
        Row indices, disjoint, covering all rows.

    Raises
    ------
    ProbeError
        When no draw puts both classes on both sides (too few rows or groups).
    """
    if groups is None:
        splitter = StratifiedShuffleSplit(
            _SPLIT_TRIES, test_size=fraction, random_state=random_state
        )
    else:
        splitter = GroupShuffleSplit(_SPLIT_TRIES, test_size=fraction, random_state=random_state)
    try:
        for train, validation in splitter.split(np.zeros((len(y), 1)), y, groups):
            if np.unique(y[train]).size == 2 and np.unique(y[validation]).size == 2:
                return train, validation
    except ValueError as exc:  # too few rows or groups for the requested fraction
        raise ProbeError(f"cannot make an early-stopping validation split: {exc}") from exc
    unit = "question groups" if groups is not None else "rows"
    raise ProbeError(
        f"cannot split {len(y)} rows into training and validation parts that both hold correct "
        f"and incorrect answers (validation_fraction={fraction}); give more {unit} of each class"
    )
