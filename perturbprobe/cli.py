"""The ``perturbprobe`` command: thin wrappers over the library's public functions.

User errors (:class:`perturbprobe.PerturbprobeError`) end with a one-line message on stderr and
exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ._version import __version__
from .errors import ExtractionError, PerturbprobeError

logger = logging.getLogger("perturbprobe")

_MODEL_HELP = (
    "LLM: 'default' (embedded SmolLM2-135M-Instruct), a local directory, a .gguf file or a hub id."
)


class _Group(click.Group):
    """Turns user errors into one-line messages (unless --debug) and Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PerturbprobeError as exc:
            if ctx.meta.get("perturbprobe.debug"):
                raise
            click.echo(f"perturbprobe: error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("perturbprobe: interrupted; nothing was written", err=True)
            ctx.exit(130)


def _common_model_options(function):
    function = click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16", "float16"]),
        default="float32",
        show_default=True,
        help="Weights dtype (features are computed in float32 regardless).",
    )(function)
    function = click.option(
        "--device", default=None, help="cpu, cuda or cuda:N  [default: cuda when present, else cpu]"
    )(function)
    return click.option("--model", "-m", default="default", show_default=True, help=_MODEL_HELP)(
        function
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="perturbprobe")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs; errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """Calibrated confidence that an LLM's answer is right, from the stability of its internals.

    \b
    Typical flow:
      perturbprobe collect --dataset builtin:easy-qa --out records.jsonl
      perturbprobe extract --records records.jsonl --out features/
    Run `perturbprobe COMMAND --help` for the options of a command.
    """
    ctx.meta["perturbprobe.debug"] = debug
    ctx.obj = {"progress": not quiet}
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not debug:
        for noisy in ("transformers", "httpx", "urllib3", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@cli.command()
@_common_model_options
@click.option(
    "--dataset",
    "-d",
    required=True,
    help="builtin:easy-qa, builtin:arithmetic, or a .jsonl/.csv/.parquet file.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N questions.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["open", "mc"]),
    default="open",
    show_default=True,
    help="open: short answers; mc: multiple choice answered with a letter.",
)
@click.option(
    "--source",
    type=click.Choice(["generate", "gold"]),
    default="generate",
    show_default=True,
    help="generate: the LLM answers greedily and a grader labels it; gold: write the gold answer "
    "(label 1) and the wrong answers (label 0) without generating.",
)
@click.option(
    "--grader",
    default=None,
    help="Override every question's grader (contains, exact, numeric, choice).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records JSONL to write.",
)
@click.pass_obj
def collect(
    obj, model, device, dtype, dataset, limit, fmt, source, grader, max_new_tokens, batch_size, out
):
    """Answer a dataset with the LLM, grade the answers, write records (JSONL)."""
    from . import data

    examples = data.load_dataset(dataset, format=fmt, limit=limit)
    llm = None if source == "gold" else _load(model, dtype, device)
    records = data.collect(
        llm,
        examples,
        source=source,
        grader=grader,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=obj["progress"],
    )
    data.write_records(out, records)
    _print_accuracy(data.accuracy_table(records), title=f"{examples.name}: {len(records)} records")
    click.echo(f"records written to {out}")


@cli.command()
@_common_model_options
@click.option(
    "--records",
    "-r",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records JSONL written by `collect`.",
)
@click.option(
    "--families",
    "-f",
    default=None,
    help="Comma-separated feature families  [default: all: baseline,ccps,entropy_dynamics]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an extractor option, e.g. --set ccps.radius=10 --set response_end=eot.",
)
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
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="FeatureSet directory to write.",
)
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
    from .data import read_records
    from .features import ExtractorConfig
    from .features import extract as run_extract

    items = read_records(records)
    config = ExtractorConfig.create(families, overrides)  # fail on bad options before loading
    if out.exists() and not overwrite:
        raise ExtractionError(f"{out} already exists; choose another --out or pass --overwrite")
    llm = _load(model, dtype, device)
    featureset = run_extract(
        llm,
        items,
        config=config,
        batch_size=batch_size,
        skip_invalid=skip_invalid,
        memory_mb=memory_mb,
        progress=obj["progress"],
    )
    featureset.save(out, overwrite=overwrite)
    counts = featureset.manifest["counts"]
    click.echo(
        f"{counts['scored']} records scored ({counts['skipped']} skipped), "
        f"{len(featureset.schema)} features, {counts['tokens']} tokens → {out}"
    )


@cli.command()
@_common_model_options
@click.option("--dataset", "-d", default="builtin:easy-qa", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N questions.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Where the demo writes its outputs.",
)
@click.pass_obj
def demo(obj, model, device, dtype, dataset, limit, batch_size, out_dir):
    """The main job, end to end, on the embedded default LLM.

    Loads the LLM, answers and grades a built-in dataset, prints the accuracy per category,
    extracts every feature family and prints the features that best separate right from
    wrong answers. Writes records and features under --out-dir.
    """
    from .demo import run_demo

    llm = _load(model, dtype, device)
    result = run_demo(
        llm,
        out_dir,
        dataset=dataset,
        limit=limit,
        batch_size=batch_size,
        progress=obj["progress"],
    )
    _print_accuracy(result.accuracy, title=f"{llm.name} on {dataset}")
    if result.ranking is None:
        click.echo("\nall answers got the same label: no feature ranking (use more questions)")
    else:
        click.echo("\nfeatures that best separate right from wrong answers (AUROC of each alone)")
        for row in result.ranking.head(10).itertuples(index=False):
            click.echo(f"  {row.feature:<45} {row.auroc:.3f}")
        baseline = result.ranking.set_index("feature").loc["baseline/mean_log_prob", "auroc"]
        click.echo(f"  {'baseline/mean_log_prob, for comparison':<45} {baseline:.3f}")
    click.echo(f"\nrecords written to {result.records_path}")
    click.echo(f"features written to {result.features_path}")


def _load(model: str, dtype: str, device: str | None):
    from transformers.utils import logging as transformers_logging

    from .llm import load_llm

    transformers_logging.disable_progress_bar()  # our own bars show the work that matters
    logger.info("loading %s", model)
    return load_llm(model, dtype=dtype, device=device)


def _print_accuracy(table, title: str) -> None:
    click.echo(f"\n{title}")
    click.echo(f"{'category':<20} {'n':>5} {'correct':>8} {'accuracy':>9}")
    for row in table.itertuples(index=False):
        if row.category == "overall":
            click.echo("-" * 45)
        click.echo(f"{row.category:<20} {row.n:>5} {row.correct:>8} {row.accuracy:>9.1%}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="perturbprobe")


if __name__ == "__main__":
    main()
