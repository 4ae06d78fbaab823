"""`fit` (probe, calibrator, report → bundle), `evaluate` (a bundle next to the baselines) and
`recalibrate` (a bundle's calibrator refitted on a new domain)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ProbeError
from . import runtime
from .choices import PROBES, SELECT_BY
from .group import cli
from .options import (
    DIRECTORY,
    allow_llm_mismatch_option,
    batch_size_option,
    bundle_option,
    calibrator_option,
    choice_option,
    features_option,
    model_options,
    out_option,
    overwrite_option,
    parse_params,
    records_option,
    seed_option,
)
from .output import print_abstention, print_metrics, print_selection


@cli.command()
@features_option("FeatureSet directory written by `extract` (labelled records).", required=True)
@choice_option(
    "--probe",
    "-p",
    choices=PROBES,
    default="auto",
    help="auto: cross-validation on the training questions over lightgbm on the scalar "
    "families, logistic-cv on hidden_states and stacking over all; the lowest log-loss wins "
    "(the table is printed and in the report).",
)
@choice_option(
    "--select-by",
    choices=SELECT_BY,
    default="auto",
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
    type=DIRECTORY,
    help="Your own labelled test FeatureSet (other questions, same LLM and families): every "
    "record of --features trains, and the report and --target-risk use these answers.",
)
@calibrator_option()
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
@seed_option("Seeds split and probe.")
@overwrite_option()
@out_option("Bundle directory  [default: models/<llm>/<probe>]", directory=True, required=False)
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
    from .._io import check_writable
    from ..bundles import llm_slug
    from ..features import FeatureSet
    from ..training import fit_bundle
    from ..training.fitting import TEACHER_FORCED_WEIGHT

    featureset = FeatureSet.load(features)
    out = out or Path("models") / llm_slug(featureset.manifest["llm"]["name"]) / probe
    runtime.refuse_existing(out, overwrite, ProbeError)
    check_writable(out)
    bundle = fit_bundle(
        featureset,
        probe=probe,
        calibrator=calibrator,
        probe_params=parse_params(params),
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
        print_selection(bundle.report.selection)
    tested = (
        f"your test answers ({test_features})"
        if test_features
        else "held-out test questions"
        if holdout
        else "cross-validated, no test part"
    )
    print_metrics(bundle.report, title=tested)
    if bundle.abstention is not None:
        print_abstention(bundle.abstention)
    click.echo(f"\nbundle written to {out} (report: {out / 'report.html'})")


@cli.command()
@bundle_option()
@features_option(
    "Labelled FeatureSet directory; records the probe was fitted or calibrated on are left out.",
    required=True,
)
@allow_llm_mismatch_option("Evaluate features from a different LLM.")
@click.option(
    "--ablation",
    is_flag=True,
    help="Also refit the bundle's probe on each feature family alone (on the bundle's split; "
    "needs the features it was fitted on) and add the table to the report.",
)
@out_option("Directory for report.html and metrics.json.", directory=True)
def evaluate(bundle, features, allow_llm_mismatch, ablation, out):
    """Report a bundle's probe next to the calibrated baselines on labelled features."""
    from ..bundles import ProbeBundle
    from ..features import FeatureSet
    from ..training import bundle_split, evaluate_bundles, family_ablation

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
    print_metrics(report, title=f"{report.summary['evaluated on']['records']} records")
    if table is not None:
        click.echo(f"\nablation on the bundle's test part\n{table.to_string()}")
    click.echo(f"\nreport written to {paths['report']}")


@cli.command()
@model_options()
@bundle_option()
@records_option(
    "Labelled records JSONL of the new domain (from `collect`); features are extracted with "
    "the bundle's families and options."
)
@features_option("Instead of --records: a labelled FeatureSet extracted with the bundle's options.")
@calibrator_option(default=None, help="Calibrator kind  [default: the bundle's]")
@batch_size_option(8)
@allow_llm_mismatch_option("Accept features from another LLM.")
@overwrite_option()
@out_option("The recalibrated bundle's directory.", directory=True)
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
    from ..bundles import ProbeBundle
    from ..data import read_records
    from ..features import FeatureSet

    if (records is None) == (features is None):
        raise ProbeError("give exactly one of --records and --features")
    runtime.refuse_existing(out, overwrite, ProbeError)
    parent = ProbeBundle.load(bundle)
    if features is not None:
        featureset = FeatureSet.load(features)
    else:
        items = read_records(records)
        featureset = parent.extract(
            runtime.load_model(model, dtype, device),
            items,
            allow_llm_mismatch=allow_llm_mismatch,
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
        print_abstention(child.abstention)
    click.echo(f"bundle written to {out}")
