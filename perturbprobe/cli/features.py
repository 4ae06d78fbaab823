"""`extract` (features for records), `localize` (sensitive response tokens) and `sps` (the
Semantic Preservation Score grid that picks SemGrad's token)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExtractionError
from . import runtime
from .choices import LOCALIZATION_SCORES, families_help
from .group import cli
from .options import (
    batch_size_option,
    choice_option,
    input_option,
    limit_option,
    model_options,
    out_option,
    overrides_option,
    overwrite_option,
    records_option,
)
from .output import print_sps


@cli.command()
@model_options()
@records_option("Records JSONL written by `collect`.", required=True)
@click.option("--families", "-f", default=None, help=families_help())
@batch_size_option(8)
@overrides_option()
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip records that cannot be scored (listed in the manifest) instead of failing.",
)
@click.option(
    "--memory-mb",
    type=click.FloatRange(min=1),
    default=256.0,
    show_default=True,
    help="Memory budget of the tokens × vocabulary head arithmetic (results do not depend on it).",
)
@overwrite_option()
@out_option("FeatureSet directory to write.", directory=True)
@click.pass_obj
def extract(
    obj,
    model,
    device,
    dtype,
    records,
    families,
    batch_size,
    overrides,
    skip_invalid,
    memory_mb,
    overwrite,
    out,
):
    """Compute features for records: one teacher-forced pass per batch, every family."""
    from .._io import check_writable
    from ..data import read_records
    from ..features import ExtractorConfig
    from ..features import extract as run_extract

    items = read_records(records)
    config = ExtractorConfig.create(families, overrides)  # fail on bad options before loading
    runtime.refuse_existing(out, overwrite, ExtractionError)
    check_writable(out)
    group = runtime.join_process_group(obj)
    llm = runtime.load_model(model, dtype, device, group)
    featureset = run_extract(
        llm,
        items,
        config=config,
        batch_size=batch_size,
        skip_invalid=skip_invalid,
        memory_mb=memory_mb,
        progress=obj["progress"],
        group=group,
    )
    if featureset is None:
        return  # not rank 0: rank 0 writes
    featureset.save(out, overwrite=overwrite)
    counts = featureset.manifest["counts"]
    click.echo(
        f"{counts['scored']} records scored ({counts['skipped']} skipped), "
        f"{len(featureset.schema)} features, {counts['tokens']} tokens → {out}"
    )


@cli.command()
@model_options()
@input_option(
    "JSONL of pairs: 'messages' (or 'question') and 'response'; optional 'first_error_step' "
    "(index of the first wrong line) to report the detection rate."
)
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@choice_option("--score", choices=LOCALIZATION_SCORES, default="linf_adv")
@overrides_option()
@batch_size_option(8)
@out_option("Write each pair with its top tokens and line scores as JSONL.", required=False)
@click.pass_obj
def localize(obj, model, device, dtype, input_path, top_k, score, overrides, batch_size, out):
    """The response tokens most sensitive to perturbed input embeddings, per pair."""
    import numpy as np

    from .._io import write_jsonl
    from ..features import detection_rate
    from ..features import localize as run_localize

    rows = runtime.read_jsonl(input_path)
    found = run_localize(
        runtime.load_model(model, dtype, device),
        rows,
        score=score,
        overrides=overrides,
        batch_size=batch_size,
        progress=obj["progress"],
    )
    output = []
    for number, (row, result) in enumerate(zip(rows, found, strict=True), 1):
        top = result.top_k(top_k)
        shown = ", ".join(f"{t.text!r}@{t.start} {t.score:.3g}" for t in top)
        click.echo(f"{number}: {shown}")
        steps = result.step_scores()
        output.append(
            {
                **row,
                "top_tokens": [vars(t) for t in top],
                "line_scores": [None if np.isnan(s) else float(s) for s in steps],
            }
        )
    annotated = [i for i, row in enumerate(rows) if "first_error_step" in row]
    if annotated:
        rate = detection_rate(
            [found[i] for i in annotated],
            [int(rows[i]["first_error_step"]) for i in annotated],
            k=top_k,
        )
        click.echo(f"detection rate (first wrong line among the top {top_k}): {rate:.1%} "
                   f"of {len(annotated)} annotated pairs")  # fmt: skip
    if out is not None:
        write_jsonl(out, output)
        click.echo(f"written to {out}")


@cli.command()
@model_options()
@click.option(
    "--dataset",
    "-d",
    default="builtin:easy-qa",
    show_default=True,
    help="A dataset whose rows have 'paraphrases'; each question and its paraphrases form a set.",
)
@limit_option("Use at most N paraphrase sets.", minimum=2)
@click.option("--positions", type=click.IntRange(min=1), default=10, show_default=True)
@batch_size_option(8)
@out_option("Heatmap of the grid (PNG).", required=False, default=Path("sps.png"))
@click.pass_obj
def sps(obj, model, device, dtype, dataset, limit, positions, batch_size, out):
    """Semantic Preservation Score of the last prompt positions × layers (SemGrad's t*)."""
    from .. import data
    from ..calibration.plots import figure_to_png_bytes
    from ..features import default_semantic_offset, plot_sps, select_semantic_token

    sets = [[e.question or e.messages, *e.paraphrases] for e in data.load_dataset(dataset)]
    sets = [s for s in sets if len(s) > 1][:limit]
    llm = runtime.load_model(model, dtype, device)
    choice = select_semantic_token(
        llm, sets, n_positions=positions, batch_size=batch_size, progress=obj["progress"]
    )
    print_sps(choice.scores, len(sets))
    click.echo(
        f"best: offset {choice.offset}, layer band {choice.layers[0]}..{choice.layers[1]} "
        f"(the template's default t*: offset {default_semantic_offset(llm)})"
    )
    click.echo("to extract with it: " + " ".join(f"--set {o}" for o in choice.to_overrides()))
    axes = plot_sps(choice.scores, cell=(choice.offset, choice.layer))
    out.write_bytes(figure_to_png_bytes(axes.figure))
    click.echo(f"heatmap written to {out}")
