"""The ``perturbprobe`` command: thin wrappers over the library's public functions.

User errors (:class:`perturbprobe.PerturbprobeError`) end with a one-line message on stderr and
exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import numpy as np

from ._version import __version__
from .errors import ExtractionError, PerturbprobeError, ProbeError

logger = logging.getLogger("perturbprobe")

_MODEL_HELP = (
    "LLM: 'default' (embedded SmolLM2-135M-Instruct), a local directory, a .gguf file or a hub id."
)


_BUNDLE_OPTION = click.option(
    "--bundle",
    "-b",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle directory written by `fit`.",
)
_SET_HELP = "Override an extractor option, e.g. --set ccps.radius=10 --set response_end=eot."


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
        "--device-map",
        type=click.Choice(["auto", "balanced"]),
        default=None,
        expose_value=False,
        callback=lambda ctx, _, value: ctx.obj.__setitem__("device_map", value),
        help="Split the model over the visible GPUs (accelerate); instead of --device.",
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
      perturbprobe fit --features features/ --probe lightgbm
      perturbprobe score --bundle models/<llm>/lightgbm --input pairs.jsonl --out scored.jsonl
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
    help="builtin:broad, builtin:easy-qa, builtin:arithmetic (see `perturbprobe datasets`), or "
    "a .jsonl/.csv/.parquet file.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N questions.")
@click.option(
    "--per-domain",
    type=click.IntRange(min=1),
    default=None,
    help="A balanced sample: N questions of each domain (seeded by --seed), domains interleaved.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds --per-domain.")
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
    from . import data
    from ._io import check_writable

    examples = data.load_dataset(dataset, format=fmt, limit=limit, per_domain=per_domain, seed=seed)
    check_writable(out)  # before the work, not after it
    group = _process_group(obj)
    llm = None if source == "gold" else _load(model, dtype, device, group)
    records = data.collect(
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
    _print_accuracy(table, title=f"{examples.name}: {len(records)} records")
    click.echo(f"records written to {out}")


@cli.command()
def datasets():
    """List the built-in datasets: every domain with its answer formats, number of questions,
    source, and the default LLM's measured greedy accuracy."""
    from .data.builtin import describe_builtin, measured_accuracy

    measured = measured_accuracy()
    accuracy = measured.get("accuracy", {})
    rows = describe_builtin()
    width = max(len(row.domain) for row in rows)
    click.echo(
        f"{'dataset':<11} {'domain':<{width}} {'formats':<26} {'questions':>9} "
        f"{'accuracy (n)':>14}  source"
    )
    for row in rows:
        found = accuracy.get(row.dataset, {}).get(row.domain)
        cell = f"{found['correct'] / found['n']:.1%} ({found['n']})" if found else "-"
        click.echo(
            f"{row.dataset:<11} {row.domain:<{width}} {','.join(row.formats):<26} "
            f"{row.questions:>9} {cell:>14}  {row.source}"
        )
    domains = {(row.dataset, row.domain) for row in rows}
    formats = {fmt for row in rows for fmt in row.formats}
    total = sum(row.questions for row in rows)
    click.echo(f"\n{len(domains)} domains, {len(formats)} answer formats, {total} questions")
    if measured:
        click.echo(
            f"accuracy: {measured['model']}, {measured['decoding']}, measured "
            f"{measured['measured']}" + (f" ({measured['note']})" if measured.get("note") else "")
        )
    click.echo("sources and licences: perturbprobe/data/builtin/tables/SOURCES.md")


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
    help="Comma-separated feature families, or 'all'  [default: the cheap ones, about 1.5x a "
    "forward pass: baseline,ccps,entropy_dynamics,sua (hidden source),hidden_states; opt in "
    "to embedding_perturbation, semantic_gradient and sua's embedding sources]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help=_SET_HELP,
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
    from ._io import check_writable
    from .data import read_records
    from .features import ExtractorConfig
    from .features import extract as run_extract

    items = read_records(records)
    config = ExtractorConfig.create(families, overrides)  # fail on bad options before loading
    if out.exists() and not overwrite:
        raise ExtractionError(f"{out} already exists; choose another --out or pass --overwrite")
    check_writable(out)
    group = _process_group(obj)
    llm = _load(model, dtype, device, group)
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


_PROBES = ["auto", "lightgbm", "logistic", "logistic-cv", "stacking", "ccps", "ccps-cnn"]
_CALIBRATORS = ["platt", "isotonic", "temperature", "histogram", "none"]


@cli.command()
@click.option(
    "--features",
    "-f",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="FeatureSet directory written by `extract` (labelled records).",
)
@click.option(
    "--probe",
    "-p",
    type=click.Choice(_PROBES),
    default="auto",
    show_default=True,
    help="auto: cross-validation on the training questions over lightgbm on the scalar "
    "families, logistic-cv on hidden_states and stacking over all; the lowest log-loss wins "
    "(the table is printed and in the report).",
)
@click.option(
    "--select-by",
    type=click.Choice(["auto", "domain", "question"]),
    default="auto",
    show_default=True,
    help="Cross-validation folds: domain leaves one domain out (the choice that does best on "
    "kinds of questions it did not see), question groups by question; auto takes domain when "
    "the training answers come from at least 3 domains.",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the questions held out to test the shipped bundle (and certify "
    "--target-risk); 0: fit and calibrate on everything, the cross-validation table is the "
    "estimate.",
)
@click.option(
    "--test",
    "test_features",
    type=click.Path(file_okay=False, path_type=Path),
    help="Your own labelled test FeatureSet (other questions, same LLM and families): every "
    "record of --features trains, and the report and --target-risk use these answers.",
)
@click.option(
    "--calibrator", "-c", type=click.Choice(_CALIBRATORS), default="platt", show_default=True
)
@click.option(
    "--families",
    help="Fit on these comma-separated feature families only  [default: every column]",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Probe hyper-parameter, e.g. --param n_estimators=300 (values parsed as JSON).",
)
@click.option(
    "--target-risk",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Store an abstention threshold keeping the error rate of kept answers at most this.",
)
@click.option(
    "--delta",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="The threshold's guarantee holds with probability at least 1 - delta.",
)
@click.option(
    "--teacher-forced-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Training weight of gold and wrong (teacher-forced) answers relative to the LLM's own "
    "(0 drops them)  [default: TEACHER_FORCED_WEIGHT, from the benchmark]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds split and probe.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle directory  [default: models/<llm>/<probe>]",
)
@click.pass_obj
def fit(
    obj,
    features,
    probe,
    calibrator,
    families,
    params,
    select_by,
    holdout,
    test_features,
    target_risk,
    delta,
    teacher_forced_weight,
    seed,
    overwrite,
    out,
):
    """Fit a probe, calibrate it on cross-fitted scores, test it on held-out questions; save a
    bundle with its report."""
    from ._io import check_writable
    from .features import FeatureSet
    from .probes import fit_bundle, llm_slug
    from .probes.fitting import TEACHER_FORCED_WEIGHT

    featureset = FeatureSet.load(features)
    out = out or Path("models") / llm_slug(featureset.manifest["llm"]["name"]) / probe
    if out.exists() and not overwrite:
        raise ProbeError(f"{out} already exists; choose another --out or pass --overwrite")
    check_writable(out)
    bundle = fit_bundle(
        featureset,
        probe=probe,
        calibrator=calibrator,
        probe_params=_parse_params(params),
        families=[name.strip() for name in families.split(",")] if families else None,
        teacher_forced_weight=(
            TEACHER_FORCED_WEIGHT if teacher_forced_weight is None else teacher_forced_weight
        ),
        select_by=select_by,
        holdout=holdout,
        test_features=None if test_features is None else FeatureSet.load(test_features),
        target_risk=target_risk,
        delta=delta,
        random_state=seed,
        progress=obj["progress"],
    )
    bundle.save(out, overwrite=overwrite)
    if bundle.report.selection is not None:
        _print_selection(bundle.report.selection)
    tested = (
        f"your test answers ({test_features})"
        if test_features
        else "held-out test questions"
        if holdout
        else "cross-validated, no test part"
    )
    _print_metrics(bundle.report, title=tested)
    if bundle.abstention is not None:
        _print_abstention(bundle.abstention)
    click.echo(f"\nbundle written to {out} (report: {out / 'report.html'})")


@cli.command()
@_BUNDLE_OPTION
@click.option(
    "--features",
    "-f",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Labelled FeatureSet directory; records the probe was fitted or calibrated on are "
    "left out.",
)
@click.option("--allow-llm-mismatch", is_flag=True, help="Evaluate features from a different LLM.")
@click.option(
    "--ablation",
    is_flag=True,
    help="Also refit the bundle's probe on each feature family alone (on the bundle's split; "
    "needs the features it was fitted on) and add the table to the report.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for report.html and metrics.json.",
)
def evaluate(bundle, features, allow_llm_mismatch, ablation, out):
    """Report a bundle's probe next to the calibrated baselines on labelled features."""
    from .features import FeatureSet
    from .probes import ProbeBundle, bundle_split, evaluate_bundles, family_ablation

    probe_bundle = ProbeBundle.load(bundle)
    featureset = FeatureSet.load(features)
    probe_bundle.check_features(featureset, allow_llm_mismatch=allow_llm_mismatch)
    table = None
    if ablation:
        table = family_ablation(
            featureset,
            bundle_split(probe_bundle, featureset),
            probe=probe_bundle.manifest["probe"]["name"],
            probe_params=probe_bundle.manifest["probe"]["params"],
            calibrator=probe_bundle.manifest["calibrator"]["name"],
        )
    report = evaluate_bundles(
        probe_bundle, featureset, allow_llm_mismatch=allow_llm_mismatch, ablation=table
    )
    paths = report.write(out)
    _print_metrics(report, title=f"{report.summary['evaluated on']['records']} records")
    if table is not None:
        click.echo(f"\nablation on the bundle's test part\n{table.to_string()}")
    click.echo(f"\nreport written to {paths['report']}")


@cli.command()
@_common_model_options
@_BUNDLE_OPTION
@click.option(
    "--input",
    "-i",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL of pairs: 'messages' (or 'question') and 'response'; other fields pass through.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--allow-llm-mismatch",
    is_flag=True,
    help="Score even if the LLM differs from the one the probe was fitted on.",
)
@click.option(
    "--target-accuracy",
    type=float,
    default=None,
    help="The LLM's known accuracy on this traffic, in (0, 1): confidences are moved from the "
    "calibration data's accuracy to it (prior-shift correction).",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL to write: the input rows with 'confidence' (and 'abstain').",
)
@click.pass_obj
def score(
    obj,
    model,
    device,
    dtype,
    bundle,
    input_path,
    batch_size,
    allow_llm_mismatch,
    target_accuracy,
    out,
):
    """Score answers with a saved bundle (production use); input order is kept."""
    from .probes import ProbeBundle, Scorer, score_file

    probe_bundle = ProbeBundle.load(bundle)  # verify before loading the LLM
    if target_accuracy is not None:
        probe_bundle.adjust_to_accuracy(np.array([0.5]), target_accuracy)  # fail early
    group = _process_group(obj)
    scorer = Scorer(
        probe_bundle,
        _load(model, dtype, device, group),
        allow_llm_mismatch=allow_llm_mismatch,
        batch_size=batch_size,
        target_accuracy=target_accuracy,
        group=group,
    )
    outcome = score_file(scorer, input_path, out, progress=obj["progress"])
    if outcome is None:
        return  # not rank 0: rank 0 writes
    errors, shift = outcome
    if shift is not None and not shift.shifted:
        click.echo(f"shift check: {shift.message()}", err=True)
    for number, reason in list(errors.items())[:20]:
        click.echo(f"perturbprobe: {input_path}:{number}: not scored: {reason}", err=True)
    if len(errors) > 20:
        click.echo(f"perturbprobe: … and {len(errors) - 20} more lines not scored", err=True)
    click.echo(f"scored lines written to {out} ({len(errors)} could not be scored)")


@cli.command()
@_common_model_options
@click.option(
    "--input",
    "-i",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL of prompts: 'messages' (or 'question'); other fields (e.g. 'id') pass through.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL to write: the input rows with 'response' (and 'guard' with --guard).",
)
@click.option("--guard", is_flag=True, help="Branch at an early entropy spike (GUARD).")
@click.option(
    "--bundle",
    "-b",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --guard: score branches with this bundle's probe [default: mean log-prob].",
)
@click.option(
    "--branches", "-k", type=int, default=3, show_default=True, help="K branches per fork."
)
@click.option(
    "--z", type=float, default=3.0, show_default=True, help="Spike threshold in robust σ."
)
@click.option(
    "--window",
    "-w",
    type=int,
    default=16,
    show_default=True,
    help="Only the first W tokens can fork.",
)
@click.option(
    "--max-interventions",
    "-n",
    type=int,
    default=1,
    show_default=True,
    help="Forks per answer at most.",
)
@click.option(
    "--min-entropy",
    type=float,
    default=0.0,
    show_default=True,
    help="A spike needs at least this entropy (nats).",
)
@click.option(
    "--branch-mode",
    type=click.Choice(["top-k", "sample"]),
    default="top-k",
    show_default=True,
    help="top-k: the K most likely tokens, continued greedily; sample: K sampled continuations.",
)
@click.option(
    "--temperature", type=float, default=1.0, show_default=True, help="For --branch-mode sample."
)
@click.option("--seed", type=int, default=0, show_default=True, help="For --branch-mode sample.")
@click.option("--allow-llm-mismatch", is_flag=True, help="Use a bundle fitted on another LLM.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.pass_context
def generate(
    ctx,
    model,
    device,
    dtype,
    input_path,
    out,
    guard,
    bundle,
    allow_llm_mismatch,
    max_new_tokens,
    batch_size,
    **guard_options,
):
    """Answer prompts greedily; with --guard, branch at early entropy spikes and keep the
    branch the probe (or the mean log-prob) rates best."""
    from ._io import check_writable
    from .decoding import GuardConfig
    from .decoding.files import generate_file, read_prompts
    from .errors import GenerationError
    from .probes import ProbeBundle, Scorer

    obj = ctx.obj
    if not guard:
        given = [
            name
            for name in (*guard_options, "bundle", "allow_llm_mismatch")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise GenerationError(f"{option} only applies with --guard")
    config = GuardConfig(**guard_options) if guard else None  # bad options fail here
    rows = read_prompts(input_path)[0]  # a bad file fails before the model loads
    probe_bundle = ProbeBundle.load(bundle) if bundle is not None else None
    check_writable(out)
    group = _process_group(obj)
    llm = _load(model, dtype, device, group)
    scorer = (
        Scorer(probe_bundle, llm, allow_llm_mismatch=allow_llm_mismatch)
        if probe_bundle is not None
        else None
    )
    answers = generate_file(
        llm,
        input_path,
        out,
        scorer=scorer,
        guard=config,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=obj["progress"],
        group=group,
    )
    if answers is None:
        return  # not rank 0: rank 0 writes
    tokens = sum(answer.generated_tokens for answer in answers) / len(answers)
    summary = f"{len(rows)} answers written to {out} ({tokens:.1f} generated tokens per answer"
    if guard:
        forked = sum(bool(answer.interventions) for answer in answers)
        summary += f"; {forked} forked"
        if config.branch_mode == "top-k":
            kept = sum(
                not a.interventions[0].alternatives[0].chosen for a in answers if a.interventions
            )
            summary += f", {kept} kept a branch other than the greedy one"
    click.echo(summary + ")")


@cli.command()
@_common_model_options
@_BUNDLE_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most pairs merged into one extraction batch.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long a batch waits for more pairs after its oldest one arrived.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most pairs waiting; beyond, requests get 503 with Retry-After.",
)
@click.option(
    "--max-pairs",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most pairs per request.",
)
@click.option(
    "--max-response-chars",
    type=click.IntRange(min=1),
    default=16_000,
    show_default=True,
    help="Longest response accepted, in characters.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=2_000_000,
    show_default=True,
    help="Largest request body.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a request may wait for its results (504).",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    default=None,
    help="Require 'Authorization: Bearer <key>' on /v1/* and /metrics, the key read from "
    "environment variable VAR.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Pairs per teacher-forced pass inside a batch (memory).",
)
@click.option(
    "--allow-llm-mismatch",
    is_flag=True,
    help="Serve even if the LLM differs from the one the probe was fitted on.",
)
@click.option(
    "--target-accuracy",
    type=float,
    default=None,
    help="The LLM's known accuracy on the traffic (prior-shift correction).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One log line per request (method, path, status; never the body).",
)
@click.pass_obj
def serve(
    obj,
    model,
    device,
    dtype,
    bundle,
    host,
    port,
    api_key_env,
    batch_size,
    allow_llm_mismatch,
    target_accuracy,
    access_log,
    **limits,
):
    """Serve a saved bundle over HTTP: POST /v1/score, /healthz, /readyz, /metrics, /docs.

    \b
    Pairs of concurrent requests are merged into one extraction batch. Stop with SIGTERM or
    Ctrl-C: requests in flight are answered first, then the process exits 0.
    """
    import os

    from .probes import ProbeBundle, Scorer
    from .serve import ServeSettings, create_app
    from .serve import serve as run_server

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise PerturbprobeError(
                f"--api-key-env {api_key_env}: that environment variable is unset or empty"
            )
    try:
        settings = ServeSettings(api_key=api_key, **limits)
    except ValueError as exc:
        raise PerturbprobeError(str(exc)) from exc
    probe_bundle = ProbeBundle.load(bundle)  # verify before loading the LLM
    scorer = Scorer(
        probe_bundle,
        _load(model, dtype, device),
        allow_llm_mismatch=allow_llm_mismatch,
        batch_size=batch_size,
        target_accuracy=target_accuracy,
    )
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who reaches it can score", host)
    logger.info("serving %r on http://%s:%d", probe_bundle, host, port)
    run_server(
        create_app(scorer, settings),
        host=host,
        port=port,
        drain_timeout=settings.request_timeout + 5,
        log_level="info" if obj["progress"] else "warning",
        access_log=access_log,
    )


@cli.command()
@_common_model_options
@click.option(
    "--input",
    "-i",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL of pairs: 'messages' (or 'question') and 'response'; optional 'first_error_step' "
    "(index of the first wrong line) to report the detection rate.",
)
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--score",
    type=click.Choice(["linf_adv", "l2_adv", "random"]),
    default="linf_adv",
    show_default=True,
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each pair with its top tokens and line scores as JSONL.",
)
@click.pass_obj
def localize(obj, model, device, dtype, input_path, top_k, score, overrides, batch_size, out):
    """The response tokens most sensitive to perturbed input embeddings, per pair."""
    import numpy as np

    from ._io import write_jsonl
    from .features import detection_rate
    from .features import localize as run_localize

    rows = _read_jsonl(input_path)
    found = run_localize(
        _load(model, dtype, device),
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
@_common_model_options
@click.option(
    "--dataset",
    "-d",
    default="builtin:easy-qa",
    show_default=True,
    help="A dataset whose rows have 'paraphrases'; each question and its paraphrases form a set.",
)
@click.option("--limit", type=click.IntRange(min=2), help="Use at most N paraphrase sets.")
@click.option("--positions", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("sps.png"),
    show_default=True,
    help="Heatmap of the grid (PNG).",
)
@click.pass_obj
def sps(obj, model, device, dtype, dataset, limit, positions, batch_size, out):
    """Semantic Preservation Score of the last prompt positions × layers (SemGrad's t*)."""
    from . import data
    from .calibration.plots import figure_to_png_bytes
    from .features import default_semantic_offset, plot_sps, select_semantic_token

    sets = [[e.question or e.messages, *e.paraphrases] for e in data.load_dataset(dataset)]
    sets = [s for s in sets if len(s) > 1][:limit]
    llm = _load(model, dtype, device)
    choice = select_semantic_token(
        llm, sets, n_positions=positions, batch_size=batch_size, progress=obj["progress"]
    )
    scores = choice.scores
    click.echo(f"SPS on {len(sets)} paraphrase sets (rows: offset from the prompt end)")
    click.echo("offset " + "".join(f"{layer:>6}" for layer in range(scores.shape[1])))
    for row, values in enumerate(scores, 1):
        click.echo(f"{row:>6} " + "".join(f"{v:>6.2f}" for v in values))
    click.echo(
        f"best: offset {choice.offset}, layer band {choice.layers[0]}..{choice.layers[1]} "
        f"(the template's default t*: offset {default_semantic_offset(llm)})"
    )
    click.echo("to extract with it: " + " ".join(f"--set {o}" for o in choice.to_overrides()))
    axes = plot_sps(scores, cell=(choice.offset, choice.layer))
    out.write_bytes(figure_to_png_bytes(axes.figure))
    click.echo(f"heatmap written to {out}")


@cli.command()
@_common_model_options
@click.option(
    "--dataset",
    "-d",
    "datasets",
    multiple=True,
    help="A dataset of the training mixture (repeat the option for several)  "
    "[default: builtin:broad and builtin:easy-qa]",
)
@click.option(
    "--per-domain",
    type=click.IntRange(min=1),
    default=None,
    help="Questions of each domain in the balanced sample  [default: DEMO_PER_DOMAIN, 50]",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Use only the first N questions of each dataset."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Records, features and the report; records and features are reused on a second run.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    help="The best probe's bundle goes to <models-dir>/<llm>/auto.",
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

    from .demo import DEMO_DATASETS, DEMO_PER_DOMAIN, run_demo

    start = time.perf_counter()
    datasets = tuple(datasets) or DEMO_DATASETS
    llm = _load(model, dtype, device)
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
    _print_accuracy(result.accuracy, title=f"{llm.name} on {' + '.join(datasets)}")
    _print_selection(result.report.selection)
    click.echo(f"→ chosen: {result.best}")
    _print_metrics(result.report, title="held-out questions, the LLM's own answers")
    if result.bundle.abstention is not None:
        _print_abstention(result.bundle.abstention)
    click.echo(f"bundle written to {result.bundle_path}")
    click.echo(f"report written to {result.report_path}")
    click.echo(f"done in {time.perf_counter() - start:.0f} s")


@cli.command()
@_common_model_options
@_BUNDLE_OPTION
@click.option(
    "--records",
    "-r",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled records JSONL of the new domain (from `collect`); features are extracted "
    "with the bundle's families and options.",
)
@click.option(
    "--features",
    "-f",
    type=click.Path(file_okay=False, path_type=Path),
    help="Instead of --records: a labelled FeatureSet extracted with the bundle's options.",
)
@click.option(
    "--calibrator",
    "-c",
    type=click.Choice(_CALIBRATORS),
    default=None,
    help="Calibrator kind  [default: the bundle's]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--allow-llm-mismatch", is_flag=True, help="Accept features from another LLM.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output bundle.")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The recalibrated bundle's directory.",
)
@click.pass_obj
def recalibrate(
    obj,
    model,
    device,
    dtype,
    bundle,
    records,
    features,
    calibrator,
    batch_size,
    allow_llm_mismatch,
    overwrite,
    out,
):
    """Refit a bundle's calibrator (and threshold) on labelled answers of a new domain."""
    from .data import read_records
    from .features import FeatureSet
    from .features import extract as run_extract
    from .probes import ProbeBundle

    if (records is None) == (features is None):
        raise ProbeError("give exactly one of --records and --features")
    if out.exists() and not overwrite:
        raise ProbeError(f"{out} already exists; choose another --out or pass --overwrite")
    parent = ProbeBundle.load(bundle)
    if features is not None:
        featureset = FeatureSet.load(features)
    else:
        items = read_records(records)
        llm = _load(model, dtype, device)
        parent.check_llm(llm.identity(), allow_mismatch=allow_llm_mismatch)
        featureset = run_extract(
            llm,
            items,
            config=parent.extractor_config,
            batch_size=batch_size,
            progress=obj["progress"],
        )
    child = parent.recalibrate(
        featureset,
        calibrator=calibrator,
        allow_llm_mismatch=allow_llm_mismatch,
        source=str(records or features),
    )
    child.save(out, overwrite=overwrite)
    summary = child.manifest["recalibration"]
    click.echo(
        f"recalibrated {child.manifest['calibrator']['name']} on {summary['records']} answers "
        f"({summary['positive_rate']:.1%} correct); the probe's AUROC on them "
        f"{summary['auroc']:.3f} [{summary['auroc_low']:.3f}, {summary['auroc_high']:.3f}]"
    )
    if child.abstention is not None:
        _print_abstention(child.abstention)
    click.echo(f"bundle written to {out}")


def _process_group(obj):
    """The torchrun job this command runs in (None outside one); ranks other than 0 show no
    progress bars or info logs."""
    from .distributed import process_group

    group = process_group()
    if group is not None and not group.is_root:
        obj["progress"] = False
        logging.getLogger().setLevel(logging.WARNING)
    return group


def _load(model: str, dtype: str, device: str | None, group=None):
    from transformers.utils import logging as transformers_logging

    from .llm import load_llm

    device_map = click.get_current_context().obj.get("device_map")
    if device is None and device_map is None and group is not None:
        device = str(group.device())  # cuda:LOCAL_RANK, or the CPU

    transformers_logging.disable_progress_bar()  # our own bars show the work that matters
    logger.info("loading %s", model)
    return load_llm(model, dtype=dtype, device=device, device_map=device_map)


def _read_jsonl(path: Path) -> list[dict]:
    import json

    from .errors import DatasetError

    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc})") from exc
    return rows


def _parse_params(items) -> dict:
    import json

    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ProbeError(f"--param {item!r} is not of the form KEY=VALUE")
        try:
            params[key.strip()] = json.loads(raw)
        except ValueError:
            params[key.strip()] = raw
    return params


_TABLE_METRICS = (
    "auroc",
    "within_domain_auroc",
    "ece",
    "brier",
    "auprc_incorrect",
    "selective_accuracy@80",
)


def _print_metrics(report, title: str) -> None:
    """The metrics table; with domains, the within-domain AUROC (the mean over domains of the
    AUROC inside each, which recognising the domain cannot raise) and the per-domain table."""
    click.echo(f"\n{title} (95% bootstrap intervals; ECE and Brier: lower is better)")
    names = list(report.metrics)
    metrics = [m for m in _TABLE_METRICS if all(m in report.metrics[n] for n in names)]
    width = max(len(name) for name in names) + 2
    click.echo(" " * width + "".join(f"{metric:>24}" for metric in metrics))
    for name in names:
        cells = [report.metrics[name][metric].to_string() for metric in metrics]
        click.echo(f"{name:<{width}}" + "".join(f"{cell:>24}" for cell in cells))
    for kind, table in (("domain", report.domain_table), ("format", report.format_table)):
        if table is not None:
            click.echo(f"\n{report.primary}, per {kind}")
            click.echo(table.loc[report.primary].round(3).to_string())


def _print_selection(table) -> None:
    """The cross-validation table(s) of ``fit``: one per kind of folds, the deciding one first."""
    columns = ["log_loss", "log_loss_sd", "auroc", "within_domain_auroc", "brier", "features"]
    for position, (folds, part) in enumerate(table.groupby("folds", sort=False)):
        decides = "lowest log-loss wins" if position == 0 else "shown for comparison"
        click.echo(
            f"\nmodel selection, {folds} (the LLM's own answers on the training questions, "
            f"Platt-calibrated across folds; {decides})"
        )
        click.echo(part[[c for c in columns if c in part]].to_string())


def _print_abstention(threshold) -> None:
    if threshold.threshold is None:
        click.echo(
            f"\nno abstention threshold certifies risk <= {threshold.target_risk} "
            f"(delta {threshold.delta}); every answer would be abstained on"
        )
        return
    click.echo(
        f"\nabstain below confidence {threshold.threshold:.3f}: keeps {threshold.coverage:.1%} "
        f"of test answers with error rate {threshold.selective_risk:.3f} "
        f"(<= {threshold.target_risk} with probability >= {1 - threshold.delta:.2f})"
    )


def _print_accuracy(table, title: str) -> None:
    """An ``accuracy_table``: one line per group (its first column), a rule, overall."""
    by = table.columns[0]
    width = max(20, *(len(str(name)) for name in table[by]))
    click.echo(f"\n{title}")
    click.echo(f"{by:<{width}} {'n':>5} {'correct':>8} {'accuracy':>9}")
    for name, n, correct, accuracy in table.itertuples(index=False):
        if name == "overall":
            click.echo("-" * (width + 25))
        click.echo(f"{name:<{width}} {n:>5} {correct:>8} {accuracy:>9.1%}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="perturbprobe")


if __name__ == "__main__":
    main()
