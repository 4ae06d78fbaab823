"""`demo`: the main job, end to end, on the embedded default LLM."""

from __future__ import annotations

from pathlib import Path

import click

from . import runtime
from .group import cli
from .options import DIRECTORY, batch_size_option, limit_option, model_options, per_domain_option
from .output import print_abstention, print_accuracy, print_metrics, print_selection


def _directory_option(name: str, default: str, help: str):
    """A directory the demo writes, with its default shown."""
    return click.option(name, type=DIRECTORY, default=Path(default), show_default=True, help=help)


@cli.command()
@model_options()
@click.option(
    "--dataset",
    "-d",
    "datasets",
    multiple=True,
    help="A dataset of the training mixture (repeat the option for several)  "
    "[default: builtin:broad and builtin:easy-qa]",
)
@per_domain_option(
    "Questions of each domain in the balanced sample  [default: DEMO_PER_DOMAIN, 50]"
)
@limit_option("Use only the first N questions of each dataset.")
@batch_size_option(32)
@_directory_option(
    "--out-dir",
    "runs/demo",
    "Records, features and the report; records and features are reused on a second run.",
)
@_directory_option(
    "--models-dir", "models", "The best probe's bundle goes to <models-dir>/<llm>/auto."
)
@click.pass_obj
def demo(obj, model, device, dtype, datasets, per_domain, limit, batch_size, out_dir, models_dir):
    """The main job, end to end, on the embedded default LLM.

    Answers and grades a balanced sample of the built-in broad mixture, extracts the cheap
    families (baseline, ccps, entropy_dynamics, sua's hidden source, hidden_states), selects
    the probe leave-one-domain-out (`fit --probe auto`), calibrates it on out-of-fold scores,
    compares it with the calibrated baselines on held-out questions (pooled, within-domain
    and per domain), saves the bundle and writes an HTML report.
    """
    import time

    from ..demo import DEMO_DATASETS, DEMO_PER_DOMAIN, run_demo

    start = time.perf_counter()
    datasets = tuple(datasets) or DEMO_DATASETS
    llm = runtime.load_model(model, dtype, device)
    result = run_demo(
        llm,
        out_dir,
        datasets=datasets,
        per_domain=per_domain or DEMO_PER_DOMAIN,
        limit=limit,
        batch_size=batch_size,
        models_dir=models_dir,
        progress=obj["progress"],
    )
    print_accuracy(result.accuracy, title=f"{llm.name} on {' + '.join(datasets)}")
    print_selection(result.report.selection)
    click.echo(f"→ chosen: {result.best}")
    print_metrics(result.report, title="held-out questions, the LLM's own answers")
    if result.bundle.abstention is not None:
        print_abstention(result.bundle.abstention)
    click.echo(f"bundle written to {result.bundle_path}")
    click.echo(f"report written to {result.report_path}")
    click.echo(f"done in {time.perf_counter() - start:.0f} s")
