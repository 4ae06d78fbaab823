"""What the commands print: metric tables, model selection, abstention, accuracy, listings."""

from __future__ import annotations

import click

_TABLE_METRICS = (
    "auroc",
    "within_domain_auroc",
    "ece",
    "brier",
    "auprc_incorrect",
    "selective_accuracy@80",
)


def print_metrics(report, title: str) -> None:
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


def print_selection(table) -> None:
    """The cross-validation table(s) of ``fit``: one per kind of folds, the deciding one first."""
    columns = ["log_loss", "log_loss_sd", "auroc", "within_domain_auroc", "brier", "features"]
    for position, (folds, part) in enumerate(table.groupby("folds", sort=False)):
        decides = "lowest log-loss wins" if position == 0 else "shown for comparison"
        click.echo(
            f"\nmodel selection, {folds} (the LLM's own answers on the training questions, "
            f"Platt-calibrated across folds; {decides})"
        )
        click.echo(part[[c for c in columns if c in part]].to_string())


def print_abstention(threshold) -> None:
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


def print_accuracy(table, title: str) -> None:
    """An ``accuracy_table``: one line per group (its first column), a rule, overall."""
    by = table.columns[0]
    width = max(20, *(len(str(name)) for name in table[by]))
    click.echo(f"\n{title}")
    click.echo(f"{by:<{width}} {'n':>5} {'correct':>8} {'accuracy':>9}")
    for name, n, correct, accuracy in table.itertuples(index=False):
        if name == "overall":
            click.echo("-" * (width + 25))
        click.echo(f"{name:<{width}} {n:>5} {correct:>8} {accuracy:>9.1%}")


def print_builtin_datasets(rows, measured: dict) -> None:
    """`datasets`: one line per built-in domain with the measured accuracy, then the totals."""
    accuracy = measured.get("accuracy", {})
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


def print_sps(scores, n_sets: int) -> None:
    """`sps`: the grid of Semantic Preservation Scores, offsets × layers."""
    click.echo(f"SPS on {n_sets} paraphrase sets (rows: offset from the prompt end)")
    click.echo("offset " + "".join(f"{layer:>6}" for layer in range(scores.shape[1])))
    for row, values in enumerate(scores, 1):
        click.echo(f"{row:>6} " + "".join(f"{v:>6.2f}" for v in values))


def print_unscored(input_path, errors: dict, shown: int = 20) -> None:
    """`score`: the first ``shown`` lines that could not be scored, with the reason, on stderr."""
    for number, reason in list(errors.items())[:shown]:
        click.echo(f"perturbprobe: {input_path}:{number}: not scored: {reason}", err=True)
    if len(errors) > shown:
        click.echo(f"perturbprobe: … and {len(errors) - shown} more lines not scored", err=True)


def generation_summary(answers, n_rows: int, out, guard) -> str:
    """`generate`'s last line: answers, generated tokens per answer, and with --guard (the
    ``GuardConfig``) the forks and, for top-k branches, how many kept a non-greedy branch."""
    tokens = sum(answer.generated_tokens for answer in answers) / len(answers)
    summary = f"{n_rows} answers written to {out} ({tokens:.1f} generated tokens per answer"
    if guard is not None:
        forked = sum(bool(answer.interventions) for answer in answers)
        summary += f"; {forked} forked"
        if guard.branch_mode == "top-k":
            kept = sum(
                not a.interventions[0].alternatives[0].chosen for a in answers if a.interventions
            )
            summary += f", {kept} kept a branch other than the greedy one"
    return summary + ")"
