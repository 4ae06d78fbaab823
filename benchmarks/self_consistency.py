"""Self-consistency on the default LLM: N = 5 sampled answers against the greedy one, and its cost.

Reads the LLM's graded greedy answers (records written by ``perturbprobe collect``), takes
``--per-domain`` questions of each domain (a seeded, balanced subset), samples N answers per
question at temperature T (``perturbprobe.decoding.self_consistency``) and writes one JSONL row per
question — ``question_id``, ``domain``, ``agreement``, ``label`` (the greedy answer's),
``sample_tokens``, ``greedy_tokens`` — for ``benchmarks/domain_transfer.py
--self-consistency``. Prints the cost (generated tokens per question, × greedy) and the raw
pooled and within-domain AUROC of the agreement.

    python benchmarks/self_consistency.py --records runs/bench/records.jsonl \\
        --datasets builtin:broad,builtin:easy-qa --per-domain 20 --out runs/bench/sc.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

import perturbprobe
from perturbprobe.calibration.domains import within_domain_auroc
from perturbprobe.calibration.metrics import roc_auc_score
from perturbprobe.data import load_dataset, read_records
from perturbprobe.data.sampling import per_domain_sample
from perturbprobe.decoding import self_consistency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="runs/bench/records.jsonl")
    parser.add_argument("--datasets", default="builtin:broad,builtin:easy-qa")
    parser.add_argument("--per-domain", type=int, default=20)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/sc.jsonl")
    args = parser.parse_args()
    records = {r.question_id: r for r in read_records(args.records) if r.source == "generated"}
    examples = {e.id: e for name in args.datasets.split(",") for e in load_dataset(name)}
    chosen = per_domain_sample(
        [examples[q] for q in records if q in examples], args.per_domain, seed=args.seed
    )
    start = time.perf_counter()
    llm = perturbprobe.load_llm("default")
    result = self_consistency(
        llm,
        chosen,
        [records[e.id].response for e in chosen],
        n=args.n,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=32,
    )
    seconds = time.perf_counter() - start
    labels = np.array([records[e.id].label for e in chosen])
    domains = np.array([e.domain for e in chosen])
    rows = [
        {
            "question_id": e.id,
            "domain": e.domain,
            "agreement": float(a),
            "label": int(y),
            "sample_tokens": int(s),
            "greedy_tokens": int(g),
        }
        for e, a, y, s, g in zip(
            chosen, result.agreement, labels, result.sample_tokens, result.greedy_tokens,
            strict=True,
        )
    ]  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        within = within_domain_auroc(labels, result.agreement, domains, random_state=args.seed)
    summary = result.summary()
    print(
        f"{len(chosen)} questions, {len(set(domains))} domains, N = {args.n}, "
        f"T = {args.temperature}: {seconds:.0f} s\n"
        f"generated tokens per question: {summary['sample_tokens_per_question']:.1f} sampled vs "
        f"{summary['greedy_tokens_per_question']:.1f} greedy ({summary['cost_ratio']:.2f}x)\n"
        f"raw agreement: pooled AUROC {roc_auc_score(labels, result.agreement):.3f}, "
        f"within-domain AUROC {within.to_string()}\nwritten to {args.out}"
    )


if __name__ == "__main__":
    main()
