"""The independent computation perturbprobe's decoder is checked against: transformers' own
``model.generate(do_sample=False)``, batched the way :func:`perturbprobe.generate` batches
(prompts sorted by length, left padding). Used by the tests and ``benchmarks/decoding_speed.py``;
the library itself never calls it.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from ..llm import LLM


def transformers_greedy(
    llm: LLM, prompts: list[list[dict[str, str]]], *, max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy answer token ids per prompt, without the end-of-turn token (as
    ``GuidedAnswer.token_ids``), in the prompts' order."""
    encoded = [llm.prompt_ids(prompt) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=llm.end_of_turn_ids,
        pad_token_id=llm.pad_id,
    )
    stop, result = set(llm.end_of_turn_ids), {}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = llm.pad([encoded[i] for i in rows], side="left")
        with torch.no_grad():
            out = llm.model.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config
            )
        for row, index in enumerate(rows):
            new = out[row, input_ids.shape[1] :].tolist()
            end = next((k for k, token in enumerate(new) if token in stop), len(new))
            result[index] = new[:end]
    return [result[i] for i in range(len(prompts))]
