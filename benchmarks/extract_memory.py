"""Peak extra memory of the `ccps` head arithmetic on a long answer over a large vocabulary.

A synthetic linear head (V = 151,936, Qwen2's vocabulary; D = 896) and T = 2,000 response
tokens, S = 5 steps: the naive layout would hold S × T × V float32 = 6.1 GB. perturbprobe
processes the tokens in chunks sized by ``memory_mb``; this script reports the peak resident
memory above what the inputs already use, for a few budgets. Target: within about 1 GB.

    python benchmarks/extract_memory.py [--tokens 2000] [--vocab 151936] [--hidden 896]

Linux only (reads /proc/self/status and resets the peak through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from perturbprobe.features import CCPS, PassBatch
from perturbprobe.features.base import tokens_per_chunk
from perturbprobe.llm import Head


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(function) -> tuple[float, float]:
    """(peak resident memory above the current one in MiB, seconds) while running ``function``."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    return (_status_kib("VmHWM") - before) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument(
        "--budgets", default="128,256,512", help="memory_mb values, comma-separated"
    )
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden, generator=generator) * 0.05
    hidden = torch.randn(args.tokens, args.hidden, generator=generator) * 3
    token_ids = torch.randint(0, args.vocab, (args.tokens,), generator=generator)
    head = Head(weight=weight, bias=None, softcap=None)
    family = CCPS()
    naive_gib = family.config.steps * args.tokens * args.vocab * 4 / 2**30
    print(
        f"T = {args.tokens} tokens, V = {args.vocab}, D = {args.hidden}, S = "
        f"{family.config.steps}: S×T×V float32 would be {naive_gib:.1f} GiB\n"
    )
    print(f"{'memory_mb':>10} {'chunk tokens':>13} {'peak extra MiB':>15} {'seconds':>8}")
    for budget in (float(b) for b in args.budgets.split(",")):
        chunk = tokens_per_chunk(budget, args.vocab)
        batch = PassBatch(
            head=head,
            final_hidden=hidden,
            token_ids=token_ids,
            lengths=torch.tensor([args.tokens]),
            chunk_tokens=chunk,
        )
        extra, seconds = peak_extra_mib(lambda batch=batch: family.compute(batch))
        print(f"{budget:>10.0f} {chunk:>13} {extra:>15.0f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
