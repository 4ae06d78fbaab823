"""`collect` (answer and grade a dataset) and `datasets` (list the built-in ones)."""

from __future__ import annotations

import click

from . import runtime
from .choices import COLLECT_SOURCES, DATASET_FORMATS, grader_help
from .group import cli
from .options import (
    batch_size_option,
    choice_option,
    limit_option,
    max_new_tokens_option,
    model_options,
    out_option,
    per_domain_option,
    seed_option,
)
from .output import print_accuracy, print_builtin_datasets


@cli.command()
@model_options()
@click.option(
    "--dataset",
    "-d",
    required=True,
    help="builtin:broad, builtin:easy-qa, builtin:arithmetic (see `perturbprobe datasets`), or "
    "a .jsonl/.csv/.parquet file.",
)
@limit_option("Use only the first N questions.")
@per_domain_option(
    "A balanced sample: N questions of each domain (seeded by --seed), domains interleaved."
)
@seed_option("Seeds --per-domain.")
@choice_option(
    "--format",
    "fmt",
    choices=DATASET_FORMATS,
    default="open",
    help="open: short answers; mc: multiple choice answered with a letter.",
)
@choice_option(
    "--source",
    choices=COLLECT_SOURCES,
    default="generate",
    help="generate: the LLM answers greedily and a grader labels it; gold: write the gold answer "
    "(label 1) and the wrong answers (label 0) without generating.",
)
@click.option("--grader", default=None, help=grader_help())
@max_new_tokens_option()
@batch_size_option(16)
@out_option("Records JSONL to write.")
@click.pass_obj
def collect(
    obj,
    model,
    device,
    dtype,
    dataset,
    limit,
    per_domain,
    seed,
    fmt,
    source,
    grader,
    max_new_tokens,
    batch_size,
    out,
):
    """Answer a dataset with the LLM, grade the answers, write records (JSONL)."""
    from .. import data
    from .._io import check_writable
    from ..decoding import collect as collect_records

    examples = data.load_dataset(dataset, format=fmt, limit=limit, per_domain=per_domain, seed=seed)
    check_writable(out)  # before the work, not after it
    group = runtime.join_process_group(obj)
    llm = None if source == "gold" else runtime.load_model(model, dtype, device, group)
    records = collect_records(
        llm,
        examples,
        source=source,
        grader=grader,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=obj["progress"],
        group=group,
    )
    if group is not None and not group.is_root:
        return  # rank 0 writes
    data.write_records(out, records)
    by = "domain" if len({r.domain for r in records}) > 1 else "category"
    table = data.accuracy_table(records, by=by)
    print_accuracy(table, title=f"{examples.name}: {len(records)} records")
    click.echo(f"records written to {out}")


@cli.command()
def datasets():
    """List the built-in datasets: every domain with its answer formats, number of questions,
    source, and the default LLM's measured greedy accuracy."""
    from ..data.builtin import describe_builtin, measured_accuracy

    print_builtin_datasets(describe_builtin(), measured_accuracy())
