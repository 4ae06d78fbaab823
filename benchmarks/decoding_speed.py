"""Speed of perturbprobe's greedy decoder against transformers' own ``generate``.

`collect` and `perturbprobe generate` decode with :mod:`perturbprobe.decoding` (a KV-cache
loop that can fork rows); without a guard it must give transformers' greedy answers token for
token and cost no more. On the default LLM, for N easy-qa questions in batches of B, both are
timed in turn over several rounds (the minimum is kept), and the answers are compared.

    python benchmarks/decoding_speed.py [--questions 64] [--batch-size 16] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

import perturbprobe
from perturbprobe.data import load_dataset


def transformers_greedy(llm, prompts, batch_size, max_new_tokens) -> list[list[int]]:
    """The naive way: ``model.generate(do_sample=False)`` on the same length-sorted batches."""
    encoded = [llm.prompt_ids(p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=llm.end_of_turn_ids,
        pad_token_id=llm.pad_id,
    )
    stop, result = set(llm.end_of_turn_ids), {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = llm.pad([encoded[i] for i in rows], side="left")
            out = llm.model.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config
            )
            for row, index in enumerate(rows):
                new = out[row, input_ids.shape[1] :].tolist()
                end = next((k for k, t in enumerate(new) if t in stop), len(new))
                result[index] = new[:end]
    return [result[i] for i in range(len(prompts))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    llm = perturbprobe.load_llm("default")
    prompts = [e.messages for e in load_dataset("builtin:easy-qa", limit=args.questions)]
    times = {"perturbprobe.generate": [], "transformers generate": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        ours = perturbprobe.generate(
            llm,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=False,
        )
        times["perturbprobe.generate"].append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = transformers_greedy(llm, prompts, args.batch_size, args.max_new_tokens)
        times["transformers generate"].append(time.perf_counter() - start)
    tokens = sum(a.generated_tokens for a in ours)
    same = sum(a.token_ids == r for a, r in zip(ours, reference, strict=True))
    print(f"{len(prompts)} questions, batches of {args.batch_size}, {tokens} generated tokens")
    print("| decoder | seconds (min of rounds) | tokens/s |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} | {tokens / min(values):.0f} |")
    ratio = min(times["perturbprobe.generate"]) / min(times["transformers generate"])
    print(f"ratio perturbprobe / transformers: {ratio:.2f}×")
    print(f"answers identical token for token: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
