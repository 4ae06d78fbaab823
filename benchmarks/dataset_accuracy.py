"""The default LLM's greedy accuracy on every built-in domain, for ``perturbprobe datasets``.

Reads records written by ``perturbprobe collect`` (one file per built-in dataset, e.g.
``collect -d builtin:broad --per-domain 60 -o runs/bench/records-broad.jsonl``) and writes
``perturbprobe/data/builtin/accuracy.json``: per dataset and domain, the number of answers,
how many were right and the accuracy, with how they were measured.

    python benchmarks/dataset_accuracy.py broad=runs/bench/records-broad.jsonl \\
        easy-qa=runs/bench/records-easy-qa.jsonl [--note "per_domain=60, seed 0"]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from perturbprobe.data import accuracy_table, read_records
from perturbprobe.data.builtin import ACCURACY_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="DATASET=RECORDS")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(ACCURACY_FILE))
    args = parser.parse_args()
    measured = {}
    for spec in args.inputs:
        dataset, _, path = spec.partition("=")
        records = [r for r in read_records(path) if r.source == "generated"]
        table = accuracy_table(records, by="domain")
        measured[dataset] = {
            row.domain: {"n": int(row.n), "correct": int(row.correct)}
            for row in table.itertuples(index=False)
            if row.domain != "overall"
        }
        print(table.to_string(index=False))
    payload = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (the embedded default LLM)",
        "decoding": "greedy, 32 new tokens",
        "measured": dt.date.today().isoformat(),
        "note": args.note,
        "accuracy": measured,
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
