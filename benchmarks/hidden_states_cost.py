"""What the ``hidden_states`` family costs: time on the pass it shares, memory of its block.

1. Time, on the embedded default LLM (the pairs of ``extract_speed.py``): ``baseline`` alone
   against ``baseline,hidden_states``, and ``ccps`` against ``ccps,hidden_states`` — the block is
   pooled from the same forward pass, so the ratio should stay near 1 (target ≤ 1.05). Timed
   in turn over several rounds, minimum kept.
2. Memory: a FeatureSet holding 10,000 records × 5 layers × D = 4,096 (an 8B model's block,
   float16) is built, saved, loaded (memory-mapped), subset and turned into a probe's float32
   matrix; the peak resident memory of each step is printed next to the block's size.

    python benchmarks/hidden_states_cost.py [--pairs 32] [--batch-size 8] [--rounds 5]
        [--records 10000] [--width 20480]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from extract_speed import build_records, time_interleaved

import perturbprobe
from perturbprobe.features import ExtractorConfig, FeatureSet, extract


def peak_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_table(args) -> None:
    llm = perturbprobe.load_llm("default")
    records = build_records(args.pairs)

    def run(families):
        config = ExtractorConfig.create(families)
        return lambda: extract(
            llm, records, config=config, batch_size=args.batch_size, progress=False
        )

    rows = {
        "baseline": run("baseline"),
        "baseline + hidden_states": run("baseline,hidden_states"),
        "ccps": run("ccps"),
        "ccps + hidden_states": run("ccps,hidden_states"),
    }
    seconds = time_interleaved(rows, args.rounds)
    print(f"\n{args.pairs} pairs, batch {args.batch_size}, minimum of {args.rounds} rounds")
    print(f"{'families':<28}{'s/pair':>10}{'ratio':>8}")
    for name, value in seconds.items():
        shared = name.split(" + ")[0]
        ratio = value / seconds[shared]
        print(f"{name:<28}{value / args.pairs:>10.4f}{ratio:>8.3f}")


def memory_table(args) -> None:
    before = peak_mib()
    rng = np.random.default_rng(0)
    n, width = args.records, args.width
    block = np.empty((n, width), dtype=np.float16)
    for start in range(0, n, 1000):  # filled in slices: no float64 temporary of the whole
        block[start : start + 1000] = rng.standard_normal((min(1000, n - start), width))
    features = pd.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(n)],
            "question_id": [f"q{i // 5}" for i in range(n)],
            "label": pd.array(rng.integers(0, 2, n), dtype="Int64"),
            "source": "generated",
        }
    )
    tokens = pd.DataFrame(columns=["record_id", "token_index", "token_id", "token"])
    layout = {"pools": ["mean"], "layers": [1, 2, 3, 4, 5], "hidden_size": width // 5,
              "columns": width, "dtype": "float16", "order": "pool, layer, dimension"}  # fmt: skip
    manifest = {
        "format_version": 3,
        "config": ExtractorConfig.create("hidden_states").to_dict(),
        "schema": [],
        "token_schema": [],
        "blocks": {"hidden_states": layout},
        "llm": {"name": "synthetic", "fingerprint": "0" * 64},
        "counts": {"records": n},
        "skipped": [],
    }
    fs = FeatureSet(features=features, tokens=tokens, manifest=manifest,
                    blocks={"hidden_states": block})  # fmt: skip
    size = block.nbytes / 2**20
    steps = [("block built", peak_mib())]
    with tempfile.TemporaryDirectory() as tmp:
        fs.save(Path(tmp) / "fs")
        steps.append(("saved", peak_mib()))
        del fs, block
        loaded = FeatureSet.load(Path(tmp) / "fs")
        steps.append(("loaded (memory-mapped)", peak_mib()))
        part = loaded.subset(np.arange(0, n, 2))
        steps.append(("subset of half the rows", peak_mib()))
        X, _ = part.matrix()
        steps.append((f"float32 matrix of the half {X.shape}", peak_mib()))
    print(f"\nblock {n} × {width} float16 = {size:.0f} MiB; peak resident memory (MiB)")
    print(f"{'step':<44}{'peak':>8}{'above start':>14}")
    for name, value in steps:
        print(f"{name:<44}{value:>8.0f}{value - before:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=5 * 4096)
    parser.add_argument("--skip-time", action="store_true")
    args = parser.parse_args()
    memory_table(args)  # first: the peak must not include the LLM
    if not args.skip_time:
        time_table(args)


if __name__ == "__main__":
    main()
