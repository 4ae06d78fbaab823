"""Batched greedy generation: the LLM answers prompts the way it would in production."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import PairEncodingError
from ..llm import LLM

if TYPE_CHECKING:
    from ..distributed import ProcessGroup

__all__ = ["generate_responses"]

logger = logging.getLogger(__name__)


def generate_responses(
    llm: LLM,
    prompts: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    names: Sequence[str] | None = None,
    group: ProcessGroup | None = None,
) -> list[str]:
    """Greedy answers to chat prompts, in the order given.

    Prompts are sorted by length and batched with left padding (so every row's next token
    sits in the last column); generation stops at an end-of-turn token or after
    ``max_new_tokens``. Greedy decoding makes the result deterministic.

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

    Returns
    -------
    list of str
        The decoded answers, stripped, without special tokens.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    from transformers import GenerationConfig

    names = list(names) if names is not None else [f"prompt {i}" for i in range(len(prompts))]
    encoded = [
        llm.prompt_ids(messages, what=name) for messages, name in zip(prompts, names, strict=True)
    ]
    if llm.max_length is not None:
        for ids, name in zip(encoded, names, strict=True):
            if len(ids) + max_new_tokens > llm.max_length:
                raise PairEncodingError(
                    f"{name}: {len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the "
                    f"model's context of {llm.max_length}"
                )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=llm.end_of_turn_ids,
        pad_token_id=llm.pad_id,
    )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if group is not None:  # whole batches per rank: every answer generated as in one process
        batches = group.shard(batches, cost=lambda index: len(encoded[index]) + max_new_tokens)
    answers: dict[int, str] = {}
    stop = set(llm.end_of_turn_ids)

    def run_batches() -> None:
        total = sum(map(len, batches))
        bar = tqdm(total=total, desc="generating", unit="q", disable=not progress)
        with torch.no_grad(), bar:
            for rows in batches:
                input_ids, attention_mask = llm.pad([encoded[i] for i in rows], side="left")
                width = input_ids.shape[1]
                output = llm.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                )
                for row, index in enumerate(rows):
                    new_tokens = output[row, width:].tolist()
                    end = next((k for k, t in enumerate(new_tokens) if t in stop), len(new_tokens))
                    text = llm.tokenizer.decode(new_tokens[:end], skip_special_tokens=True)
                    answers[index] = text.strip()
                bar.update(len(rows))

    if group is None:
        run_batches()
    else:
        group.run(run_batches)
        answers = group.all_gather(answers)
    return [answers[index] for index in range(len(encoded))]
