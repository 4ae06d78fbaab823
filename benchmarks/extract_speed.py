"""Speed of the `ccps` family against a bare forward pass and the naive per-token way.

On the embedded default LLM, for 32 pairs (~60-token prompts, ~20-token responses):

  (a) a bare teacher-forced forward pass (transformers' model(...), batched, no gradients);
  (b) perturbprobe's `ccps` family (one forward pass per batch + closed-form head arithmetic);
  (c) the naive way of the CCPS reference code: per response token a prefix forward pass, one
      more with autograd for the Jacobian, then S head evaluations and per-feature `.item()`.

Prints seconds per pair and response tokens per second, and the ratios (b)/(a), (c)/(b).
(a) and (b) are timed in turn over several rounds and the minimum is kept; (c) is timed once
on a subset of pairs and scaled to all of them (it is ~50x slower).
Targets: (b)/(a) <= 1.3 and (c)/(b) >= 20.

Then a second table: each family alone and all together, as a multiple of (a) on the same
pairs (``--family-pairs``), with r = 2 and r = 20 random embedding samples (r = 2, the least
the variance allows, stands for "without random"). Targets (issue 5): every family but
``random`` <= 3.5x, ``random`` with r = 20 <= 8x.

    python benchmarks/extract_speed.py [--pairs 32] [--naive-pairs 8] [--batch-size 8]
                                       [--family-pairs 16] [--skip-ccps]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import perturbprobe
from perturbprobe.data import Record, load_dataset
from perturbprobe.features import ExtractorConfig, extract

SYSTEM = (
    "You are a careful assistant who answers general knowledge questions. Give the answer "
    "first, then one short sentence of explanation. Do not add anything else."
)


def build_records(n: int) -> list[Record]:
    """n pairs from builtin:easy-qa with a system prompt (~60 tokens) and ~20-token answers."""
    records = []
    for example in load_dataset("builtin:easy-qa", limit=n):
        answer = example.answers[0]
        response = f"The answer is {answer}. I am quite sure about this, it is a well known fact."
        messages = ({"role": "system", "content": SYSTEM}, *example.messages)
        records.append(Record(example.id, example.id, messages, response, 1, "gold"))
    return records


def time_interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Minimum wall time of each function over ``repeats`` rounds, run in turn each round.

    Interleaving exposes every function to the same machine conditions; the minimum is the
    usual robust estimate of a function's cost on a shared machine (noise only adds time).
    """
    for function in functions.values():
        function()  # warm-up
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bare_forward(llm, pairs, batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = [pair.input_ids for pair in pairs[start : start + batch_size]]
            input_ids, attention_mask = llm.pad(batch)
            llm.model(input_ids=input_ids, attention_mask=attention_mask)


def naive_ccps(llm, pair, radius: float = 20.0, steps: int = 5) -> list[dict[str, float]]:
    """The CCPS reference's loop for one pair: 2 forward passes per token + S head calls."""
    model, head = llm.model, llm.model.get_output_embeddings()
    prompt, response = list(pair.prompt_ids), list(pair.response_ids)
    rows = []
    for t, token in enumerate(response):
        prefix = torch.tensor([prompt + response[:t]])
        with torch.no_grad():
            out = model(input_ids=prefix, output_hidden_states=True)
        hidden = out.hidden_states[-1][0, -1]
        logits = out.logits[0, -1]
        with torch.enable_grad():  # the Jacobian: another forward pass, with autograd
            grad_out = model(input_ids=prefix, output_hidden_states=True)
            h = grad_out.hidden_states[-1][0, -1]
            loss = -torch.log_softmax(head(h), dim=-1)[token]
            (jacobian,) = torch.autograd.grad(loss, h)
        direction = jacobian / jacobian.norm()
        probs = torch.softmax(logits, -1)
        features = {"orig_prob": probs[token].item(), "jac_norm": jacobian.norm().item()}
        for k in range(1, steps + 1):
            perturbed = head(hidden + k * radius / steps * direction)
            log_q = torch.log_softmax(perturbed, -1)
            features[f"lp_{k}"] = log_q[token].item()
            features[f"kl_{k}"] = torch.sum(probs * (torch.log_softmax(logits, -1) - log_q)).item()
            features[f"ent_{k}"] = -(log_q.exp() * log_q).sum().item()
            features[f"argmax_{k}"] = perturbed.argmax().item()
        rows.append(features)
    return rows


_R2 = ["embedding_perturbation.samples=2"]
FAMILY_ROWS = {
    "baseline": ("baseline", []),
    "ccps": ("ccps", []),
    "entropy_dynamics": ("entropy_dynamics", []),
    "embedding_perturbation, r = 2": ("embedding_perturbation", _R2),
    "embedding_perturbation, r = 20": ("embedding_perturbation", []),
    "semantic_gradient": ("semantic_gradient", []),
    "sua (hidden only)": ("sua", ["sua.sources=hidden"]),
    "sua, r = 20": ("sua", []),
    "all families, r = 2": (None, [*_R2, "sua.embed_samples=2"]),
    "all families, r = 20": (None, []),
}


def family_table(llm, records, batch_size: int, repeats: int) -> None:
    """Seconds per pair of each family alone (and all together), as a multiple of (a)."""
    pairs = [llm.encode_pair(r.messages, r.response) for r in records]
    functions = {"bare": lambda: bare_forward(llm, pairs, batch_size)}
    for name, (family, overrides) in FAMILY_ROWS.items():
        config = ExtractorConfig.create(family, overrides)
        functions[name] = lambda config=config: extract(
            llm, records, config=config, batch_size=batch_size, progress=False
        )
    best = time_interleaved(functions, repeats)
    print(f"\n{'family':<34} {'s/pair':>9} {'x bare':>8}")
    for name, seconds in best.items():
        print(f"{name:<34} {seconds / len(pairs):>9.4f} {seconds / best['bare']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--naive-pairs", type=int, default=8, help="pairs timed for (c)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--family-pairs", type=int, default=16, help="pairs of the family table")
    parser.add_argument("--skip-ccps", action="store_true", help="only the family table")
    args = parser.parse_args()

    llm = perturbprobe.load_llm("default")
    if not args.skip_ccps:
        ccps_table(llm, args)
    print(f"\nper family, {args.family_pairs} pairs, minimum of 2 interleaved rounds")
    family_table(llm, build_records(args.family_pairs), args.batch_size, repeats=2)


def ccps_table(llm, args) -> None:
    """The ccps table: (a) bare, (b) ccps, (c) naive per-token."""
    records = build_records(args.pairs)
    pairs = [llm.encode_pair(r.messages, r.response) for r in records]
    prompt_tokens = statistics.mean(len(p.prompt_ids) for p in pairs)
    response_tokens = sum(len(p.response_ids) for p in pairs)
    print(
        f"{llm.name}, {args.pairs} pairs, mean prompt {prompt_tokens:.0f} tokens, "
        f"mean response {response_tokens / len(pairs):.1f} tokens, batch size "
        f"{args.batch_size}, torch threads {torch.get_num_threads()}"
    )

    best = time_interleaved(
        {
            "bare": lambda: bare_forward(llm, pairs, args.batch_size),
            "ours": lambda: extract(
                llm, records, families="ccps", batch_size=args.batch_size, progress=False
            ),
        },
        args.repeats,
    )
    bare, ours = best["bare"], best["ours"]
    subset = pairs[: args.naive_pairs]
    start = time.perf_counter()
    for pair in subset:
        naive_ccps(llm, pair)
    naive = (time.perf_counter() - start) * len(pairs) / len(subset)  # scaled to all pairs

    rows = [
        ("(a) bare forward pass", bare),
        ("(b) perturbprobe ccps", ours),
        (f"(c) naive per-token ({len(subset)} pairs, scaled)", naive),
    ]
    print(f"\n{'method':<40} {'s/pair':>9} {'resp tok/s':>11}")
    for name, seconds in rows:
        print(f"{name:<40} {seconds / len(pairs):>9.4f} {response_tokens / seconds:>11.1f}")
    ratio_ba, ratio_cb = ours / bare, naive / ours
    print(f"\n(b)/(a) = {ratio_ba:.2f}  (target <= 1.3: {'met' if ratio_ba <= 1.3 else 'MISSED'})")
    print(f"(c)/(b) = {ratio_cb:.1f}  (target >= 20: {'met' if ratio_cb >= 20 else 'MISSED'})")
    if not math.isfinite(ratio_cb):
        raise SystemExit("timing failed")


if __name__ == "__main__":
    main()
