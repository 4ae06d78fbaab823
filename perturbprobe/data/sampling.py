"""Balanced samples of a dataset: the same number of questions from every domain.

Used by ``collect --per-domain`` and the demo, which fit on a broad mixture within a time
budget: a balanced sample keeps every domain represented (a probe selected leave-one-domain-
out needs each), and its order interleaves the domains, so any prefix of it is balanced too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from ..errors import DatasetError
from .schema import Example

__all__ = ["per_domain_sample"]


def per_domain_sample(examples: Sequence[Example], n: int, *, seed: int = 0) -> list[Example]:
    """Up to ``n`` examples of each domain, drawn without replacement from ``seed``.

    The draw is a seeded shuffle of each domain's examples (the same on every run and
    machine), and the result takes one example of each domain in turn (domains in order of
    first appearance), so the first k × (number of domains) examples hold k of each.

    Raises
    ------
    DatasetError
        If ``n`` < 1.
    """
    if n < 1:
        raise DatasetError(f"per-domain sample size must be >= 1, got {n}")
    by_domain: dict[str | None, list[Example]] = {}
    for example in examples:
        by_domain.setdefault(example.domain, []).append(example)
    drawn = []
    for domain, members in by_domain.items():
        digest = hashlib.sha256(f"{seed}:{domain}".encode()).digest()
        members = list(members)
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(members)
        drawn.append(members[:n])
    return [group[k] for k in range(n) for group in drawn if k < len(group)]
