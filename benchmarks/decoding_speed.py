"""Speed of perturbprobe's greedy decoder against transformers' own ``generate``.

`collect` and `perturbprobe generate` decode with :mod:`perturbprobe.decoding` (a KV-cache
loop that can fork rows); without a guard it must give transformers' greedy answers token for
token and cost no more. On the default LLM, for N easy-qa questions in batches of B, both are
timed in turn over several rounds, alternating which goes first (the minimum is kept), and
the answers are compared.

    python benchmarks/decoding_speed.py [--questions 64] [--batch-size 16] [--max-new-tokens 32]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import perturbprobe
from perturbprobe.data import load_dataset
from perturbprobe.decoding.reference import transformers_greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    llm = perturbprobe.load_llm("default")
    prompts = [e.messages for e in load_dataset("builtin:easy-qa", limit=args.questions)]
    runs = {
        "perturbprobe.generate": lambda: perturbprobe.generate(
            llm,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            progress=False,
        ),
        "transformers generate": lambda: transformers_greedy(
            llm, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        ),
    }
    times = {name: [] for name in runs}
    results = {}
    for round_number in range(args.rounds):
        names = list(runs) if round_number % 2 == 0 else list(reversed(runs))  # fair order
        for name in names:
            start = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    ours, reference = results["perturbprobe.generate"], results["transformers generate"]
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
