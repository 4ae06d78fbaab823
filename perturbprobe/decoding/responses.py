"""Batched generation: the LLM answers prompts the way it would in production (greedy), or
samples n answers per prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..llm import LLM
from .guided import generate

if TYPE_CHECKING:
    from ..distributed import ProcessGroup

__all__ = ["generate_responses"]


def generate_responses(
    llm: LLM,
    prompts: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    names: Sequence[str] | None = None,
    group: ProcessGroup | None = None,
    n: int = 1,
    temperature: float | None = None,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str] | list[list[str]]:
    """Greedy (or sampled) answers to chat prompts, in the order given.

    Prompts are sorted by length and batched with left padding (so every row's next token
    sits in the last column); generation stops at an end-of-turn token or after
    ``max_new_tokens``. Greedy decoding makes the result deterministic. This is
    :func:`perturbprobe.generate` without a guard.

    Parameters
    ----------
    llm : LLM
    prompts : sequence of message lists
    max_new_tokens : int
    batch_size : int
    progress : bool
        Show a progress bar over prompts.
    names : sequence of str, optional
        Names of the prompts for error messages (e.g. question ids).
    group : ProcessGroup, optional
        Under torchrun: each rank generates its share of the batches and every rank gets
        all the answers (:mod:`perturbprobe.distributed`).
    n, temperature, top_p, seed
        Sampling, as in :func:`perturbprobe.generate` (default: one greedy answer).

    Returns
    -------
    list of str
        The decoded answers, stripped, without special tokens; with n > 1 a list of n
        answers per prompt.
    """
    answers = generate(
        llm,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        names=names,
        group=group,
        n=n,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    if n > 1:
        return [[answer.response for answer in samples] for samples in answers]
    return [answer.response for answer in answers]
