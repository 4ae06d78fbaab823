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
    """Up to ``n`` examples of each domain, spread as evenly over its answer formats as they
    allow, drawn without replacement from ``seed``.

    Each (domain, format) group is shuffled with a seed of its own (the same on every run and
    machine); a domain's sample takes one of each format in turn, and the result one example
    of each domain in turn (domains in order of first appearance), so the first
    k × (number of domains) examples hold k of each domain.

    Raises
    ------
    DatasetError
        If ``n`` < 1.
    """
    if n < 1:
        raise DatasetError(f"per-domain sample size must be >= 1, got {n}")
    groups: dict[str | None, dict[str, list[Example]]] = {}
    for example in examples:
        groups.setdefault(example.domain, {}).setdefault(example.format, []).append(example)
    drawn = []
    for domain, by_format in groups.items():
        shuffled = [
            _shuffled(members, f"{seed}:{domain}:{fmt}") for fmt, members in by_format.items()
        ]
        drawn.append(_interleave(shuffled)[:n])
    return _interleave(drawn)


def _shuffled(members: list[Example], key: str) -> list[Example]:
    digest = hashlib.sha256(key.encode()).digest()
    members = list(members)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(members)
    return members


def _interleave(lists: list[list[Example]]) -> list[Example]:
    """One item of each list in turn, until every list is used up."""
    longest = max((len(items) for items in lists), default=0)
    return [items[k] for k in range(longest) for items in lists if k < len(items)]
