"""Localisation: which response tokens (and which reasoning steps) are most sensitive to
perturbed input embeddings — where an answer is likely to have gone wrong (the
embedding-perturbation paper's use of its per-token scores).

>>> found = localize(llm, [{"question": "2 + 2?", "response": "2 + 2 = 5"}])  # doctest: +SKIP
>>> [(t.text, t.score) for t in found[0].top_k(2)]                             # doctest: +SKIP

A :class:`Localization` holds one response's per-token scores with each token's character
span in the response text; tokens the chat template appends after the answer (end of turn)
have empty spans at the end of the text and are never reported. Steps are character ranges
of the response (by default its non-empty lines); a step's score is the largest score of a
token overlapping it. :func:`detection_rate` is the paper's headline metric: the share of
responses whose annotated first erroneous step contains one of the top-k tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.records import pair_record
from ..errors import ExtractionError, PerturbprobeError
from .config import ExtractorConfig
from .embedding_perturbation import SCORES
from .engine import extract

__all__ = ["Localization", "SensitiveToken", "detection_rate", "line_steps", "localize"]

_FAMILY = "embedding_perturbation"


@dataclass(frozen=True)
class SensitiveToken:
    """One response token: position, text, character span [start, end) and score."""

    index: int
    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Localization:
    """Per-token sensitivity of one response.

    Attributes
    ----------
    response : str
    tokens : list of str (T,)
        The response tokens as the tokenizer spells them.
    spans : int array (T, 2)
        [start, end) character offsets of each token in ``response`` (empty past the text).
    scores : float array (T,)
        The chosen score (e.g. ``linf_adv``) per token.
    """

    response: str
    tokens: list[str]
    spans: np.ndarray
    scores: np.ndarray

    def top_k(self, k: int = 5) -> list[SensitiveToken]:
        """The k highest-scoring tokens of the response text, highest first."""
        in_text = np.flatnonzero(self.spans[:, 1] > self.spans[:, 0])
        ranked = in_text[np.argsort(-self.scores[in_text], kind="stable")][:k]
        return [
            SensitiveToken(
                int(i),
                self.response[self.spans[i, 0] : self.spans[i, 1]],
                int(self.spans[i, 0]),
                int(self.spans[i, 1]),
                float(self.scores[i]),
            )
            for i in ranked
        ]

    def step_scores(self, steps: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """Score of each step (n_steps,): the largest score of a token overlapping it
        (NaN for a step no token overlaps); steps default to the response's lines."""
        steps = line_steps(self.response) if steps is None else steps
        out = np.full(len(steps), np.nan)
        for s, (start, end) in enumerate(steps):
            overlap = (self.spans[:, 0] < end) & (self.spans[:, 1] > start)
            if overlap.any():
                out[s] = self.scores[overlap].max()
        return out

    def steps_of_top_k(self, k: int, steps: Sequence[tuple[int, int]]) -> set[int]:
        """Indices of the steps that contain at least one of the top-k tokens."""
        found = set()
        for token in self.top_k(k):
            for s, (start, end) in enumerate(steps):
                if token.start < end and token.end > start:
                    found.add(s)
        return found


def line_steps(text: str) -> list[tuple[int, int]]:
    """[start, end) character ranges of the non-empty lines of ``text``."""
    steps, start = [], 0
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if stripped.strip():
            steps.append((start, start + len(stripped)))
        start += len(line)
    return steps


def localize(
    llm,
    pairs: Iterable[Mapping[str, Any]],
    *,
    score: str = "linf_adv",
    overrides: Iterable[str] = (),
    batch_size: int = 8,
    progress: bool = False,
) -> list[Localization]:
    """Per-token sensitivity of each pair's response, with character spans.

    Parameters
    ----------
    llm : LLM
    pairs : iterable of mappings with ``response`` and ``messages`` (or ``question``)
    score : {"linf_adv", "l2_adv", "random"}
    overrides : iterable of "key=value"
        Options of the family, e.g. ``["embedding_perturbation.linf_alpha=1e-3"]``.

    Raises
    ------
    ExtractionError
        Unknown score; PairEncodingError for a pair that cannot be scored (it is named).
    """
    if score not in SCORES:
        raise ExtractionError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    records = []
    for index, pair in enumerate(pairs):
        try:
            records.append(pair_record(index, pair))
        except PerturbprobeError as exc:
            raise type(exc)(f"pair {index}: {exc}") from exc
    config = ExtractorConfig.create([_FAMILY], overrides)
    featureset = extract(llm, records, config=config, batch_size=batch_size, progress=progress)
    results = []
    tokens = featureset.tokens.sort_values(["record_id", "token_index"])
    by_record = dict(iter(tokens.groupby("record_id", sort=False)))
    for record in records:
        rows = by_record[record.id]
        ids = rows["token_id"].tolist()
        results.append(
            Localization(
                response=record.response,
                tokens=rows["token"].tolist(),
                spans=_char_spans(llm.tokenizer, ids, record.response),
                scores=rows[f"{_FAMILY}/{score}"].to_numpy(dtype=np.float64),
            )
        )
    return results


def detection_rate(
    localizations: Sequence[Localization],
    first_error_steps: Sequence[int],
    *,
    k: int = 5,
    steps: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> float:
    """Share of responses whose annotated first erroneous step holds one of the top-k tokens.

    Parameters
    ----------
    localizations : sequence of Localization (n,)
    first_error_steps : sequence of int (n,)
        Index of the first erroneous step of each response.
    k : int
    steps : sequence (n,) of step ranges, optional
        Each response's steps as character ranges; default: its non-empty lines.
    """
    if len(localizations) != len(first_error_steps) or not localizations:
        raise ExtractionError("detection_rate needs one first-error step per localisation")
    hits = []
    for i, (found, error_step) in enumerate(zip(localizations, first_error_steps, strict=True)):
        ranges = line_steps(found.response) if steps is None else steps[i]
        if not 0 <= error_step < len(ranges):
            raise ExtractionError(
                f"response {i}: first error step {error_step} is not one of its {len(ranges)} steps"
            )
        hits.append(error_step in found.steps_of_top_k(k, ranges))
    return float(np.mean(hits))


def _char_spans(tokenizer, ids: list[int], text: str) -> np.ndarray:
    """[start, end) of each token in ``text`` by incremental decoding, clipped to the text."""
    ends, previous = [], 0
    for i in range(len(ids)):
        decoded = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        common = next(
            (n for n, (a, b) in enumerate(zip(decoded, text, strict=False)) if a != b),
            min(len(decoded), len(text)),
        )  # characters of the text the decoded prefix reproduces
        previous = max(common, previous)
        ends.append(previous)
    starts = [0, *ends[:-1]]
    return np.array([starts, ends], dtype=np.int64).T
