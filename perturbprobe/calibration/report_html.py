"""The calibration report as one self-contained HTML page: inline style, images as ``data:``
URIs, readable offline and safe to e-mail (:func:`render_html` of a
:class:`~perturbprobe.calibration.report.Report`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._version import __version__
from .domains import DOMAIN_METRICS
from .metrics import METRICS, MetricInfo, MetricValue
from .report_json import jsonable

if TYPE_CHECKING:
    from .report import Report

__all__ = ["TOP_IMPORTANCES", "render_html"]

TOP_IMPORTANCES = 20
_DIGITS = 3
_INFO: dict[str, MetricInfo] = {**METRICS, **DOMAIN_METRICS}  # what the page knows about
# Known figures: heading and caption, in page order; other keys follow under their own name.
_FIGURES = {
    "reliability": (
        "Reliability of the primary score",
        "Fraction correct per confidence bin (blue) against the diagonal of perfect "
        "calibration; bars under the diagonal are over-confident. Grey: share of rows per bin.",
    ),
    "reliability_all": (
        "Reliability, every score",
        "The same diagram for each score, on the same rows and bins.",
    ),
    "histograms": (
        "Confidence by outcome",
        "How each score's confidence is distributed for correct (green) and incorrect (red) "
        "answers; the less the two overlap, the better the score ranks.",
    ),
    "risk_coverage": (
        "Risk–coverage",
        "Error rate among the answers kept when keeping only the most confident fraction; "
        "lower is better at every coverage. The legend gives each score's AURC.",
    ),
    "importances": (
        "Feature importances",
        f"The probe's {TOP_IMPORTANCES} most important features (e.g. LightGBM total gain).",
    ),
}
# The metrics table is split in two so that each fits the page width.
_GROUPS = (
    ("Accuracy and calibration", ("accuracy", "ece", "adaptive_ece", "mce", "brier", "nll")),
    (
        "Ranking and selective prediction",
        (
            "auroc",
            "within_domain_auroc",
            "auprc_correct",
            "auprc_incorrect",
            "aurc",
            *(name for name in METRICS if name.startswith("selective_accuracy@")),
        ),
    ),
)
_GROUPED = {name for _, members in _GROUPS for name in members}
_READING = (
    "Each row is a score of the same held-out answers: the probe (highlighted) and the "
    "baselines. Every score is read as the probability that the LLM's answer is correct. "
    "ECE, adaptive ECE, MCE, Brier, NLL and AURC are lower-is-better (&darr;); accuracy, AUROC, "
    "AUPRC and selective accuracy are higher-is-better (&uarr;). Calibration metrics (ECE, "
    "MCE, Brier, NLL) say whether a confidence of 0.8 is right 80% of the time; ranking "
    "metrics (AUROC, AUPRC, AURC, selective accuracy) say whether confident answers are more "
    "often right. The bracket under each value is a 95% bootstrap interval, from the same "
    "resamples for every score (paired). Binned errors (ECE, MCE) are biased upward on "
    "resamples, so their intervals lean high. The best value per metric is in bold."
)
_GROUP_NOTE = (
    "Each {what}'s number of answers and the LLM's accuracy there (fraction correct), then the "
    "score inside the {what}: its mean confidence (close to the accuracy when calibrated), "
    "AUROC with a 95% interval (resampling the {what}'s correct and incorrect answers "
    "separately; n/a when all its answers are correct, or all incorrect), ECE and Brier "
    "(point estimates; binned errors of small {what}s lean high). Shown in full: the primary "
    "score and the other score with the best mean AUROC per {what}."
)
_GROUP_COLUMNS = (
    ("n", "n"),
    ("accuracy", "accuracy"),
    ("mean_confidence", "mean confidence"),
    ("auroc", "AUROC&nbsp;&uarr;"),
    ("ece", "ECE&nbsp;&darr;"),
    ("brier", "Brier&nbsp;&darr;"),
)
_CSS = """
body{margin:0;background:#f3f4f6;color:#1f2328;
 font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
 sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 36px 48px;background:#fff}
h1{font-size:26px;margin:4px 0}
h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:1px solid #e5e7eb}
h3{font-size:16px;margin:24px 0 6px}
.lede,figcaption,.note,footer{color:#57606a}
.note,figcaption{font-size:13px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#f6f8fa;font-weight:600;text-align:right}
th.name,td.name{text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td .ci{display:block;color:#6b7280;font-size:11px}
td.best .v{font-weight:700}
tr.primary td{background:#fff8e1}
tr.primary td.name{box-shadow:inset 3px 0 #d4a017;font-weight:600}
.badge{font-size:11px;font-weight:600;color:#8a6d00;background:#ffe9a8;border-radius:8px;
 padding:0 6px;margin-left:6px}
figure{margin:14px 0 26px}
figure img{max-width:100%;height:auto}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.summary dt{font-weight:600}
dl.summary dd{margin:0}
pre{background:#f6f8fa;padding:8px 10px;border-radius:4px;font-size:12px;overflow-x:auto;
 margin:0}
details{margin:8px 0}
summary{cursor:pointer;color:#3a6ea5}
footer{margin-top:40px;font-size:12px}
"""

_SELECTION = (
    "Every candidate (a probe on a set of feature families) was cross-validated on the "
    "training questions only, with folds grouped by question; the scores are those of the "
    "LLM's own answers, Platt-calibrated across folds. The candidate with the lowest log-loss "
    "was refitted on the whole training part: it is the probe this report evaluates."
)


def render_html(report: Report) -> str:
    """``report`` as one self-contained HTML page (no external references)."""
    sections = [
        f"<h1>{_esc(report.title)}</h1>",
        f'<p class="lede">Primary score: <strong>{_esc(report.primary)}</strong> · '
        f"{len(report.metrics)} scores compared · perturbprobe {_esc(__version__)}</p>",
        "<h2>How to read this</h2>",
        f"<p>{_READING}</p>",
        _metric_definitions(report),
        "<h2>Metrics</h2>",
    ]
    if "within_domain_auroc" in _metric_names(report):
        sections.append(f'<p class="note">{_within_domain_note(report)}</p>')
    sections += _metrics_tables(report)
    sections += _group_sections(report)
    if report.selection is not None:
        sections += [
            "<h2>Model selection</h2>",
            f"<p>{_SELECTION}</p>",
            _html_table(report.selection),
        ]
    sections += _figures_html(report)
    if report.importances is not None and len(report.importances):
        sections += [
            f"<h2>Top {TOP_IMPORTANCES} feature importances</h2>",
            _html_table(_importance_frame(report.importances)),
        ]
    if report.ablation is not None:
        sections += ["<h2>Ablation</h2>", _html_table(report.ablation)]
    sections += ["<h2>Data</h2>", _render_mapping(report.summary)]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(report.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<main>\n{body}\n<footer>Generated by perturbprobe {_esc(__version__)}.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _metric_names(report: Report) -> list[str]:
    present = list(dict.fromkeys(name for row in report.metrics.values() for name in row))
    return [n for n in METRICS if n in present] + [n for n in present if n not in METRICS]


def _metric_definitions(report: Report) -> str:
    items = "".join(
        f"<dt>{_esc(name)} {_arrow(name)}</dt><dd>{_esc(_describe(name))}</dd>"
        for name in _metric_names(report)
    )
    return (
        f'<details><summary>Metric definitions</summary><dl class="summary">{items}</dl></details>'
    )


def _metrics_tables(report: Report) -> list[str]:
    names = _metric_names(report)
    grouped = [(group, [n for n in members if n in names]) for group, members in _GROUPS]
    grouped.append(("Other metrics", [n for n in names if n not in _GROUPED]))
    parts = []
    for group, members in grouped:
        if members:
            parts += [f"<h3>{_esc(group)}</h3>", _metrics_table(report, members)]
    return parts


def _metrics_table(report: Report, names: list[str]) -> str:
    best = {name: _best(name, [row.get(name) for row in report.metrics.values()]) for name in names}
    head = "".join(
        f'<th title="{_esc(name)}: {_esc(_describe(name))}">'
        f"{_esc(name).replace('_', '_<wbr>').replace('@', '<wbr>@')}&nbsp;{_arrow(name)}</th>"
        for name in names
    )
    rows = []
    for score, row in report.metrics.items():
        is_primary = score == report.primary
        badge = '<span class="badge">primary</span>' if is_primary else ""
        cells = "".join(_metric_cell(row.get(name), best[name]) for name in names)
        row_class = ' class="primary"' if is_primary else ""
        rows.append(f'<tr{row_class}><td class="name">{_esc(score)}{badge}</td>{cells}</tr>')
    return (
        '<div class="scroll"><table class="metrics"><thead><tr><th class="name">score</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _within_domain_note(report: Report) -> str:
    text = (
        "<strong>within_domain_auroc</strong> is the mean over domains of the AUROC inside "
        "each domain: unlike the pooled AUROC, a score cannot raise it by recognising which "
        "kind of question it is"
    )
    table = report.domain_table
    if table is None or report.primary not in table.index.get_level_values(0):
        return text + "."
    rows = table.loc[report.primary]
    used = int(rows["auroc"].notna().sum())
    skipped = len(rows) - used
    low, high = rows["accuracy"].min(), rows["accuracy"].max()
    return (
        f"{text} (the LLM is right on {low:.0%}&ndash;{high:.0%} of the answers, depending on "
        f"the domain). It averages the {used} domains holding both correct and incorrect "
        "answers"
        + (
            f" ({skipped} single-class domain{'s' if skipped > 1 else ''} skipped)"
            if skipped
            else ""
        )
        + "; its interval resamples the correct and the incorrect answers of each domain "
        "separately, the same resamples for every score."
    )


def _group_sections(report: Report) -> list[str]:
    parts = []
    for table, heading, what in (
        (report.domain_table, "By domain", "domain"),
        (report.format_table, "By answer format", "format"),
    ):
        if table is None:
            continue
        parts += [f"<h2>{heading}</h2>", f'<p class="note">{_GROUP_NOTE.format(what=what)}</p>']
        scores = list(dict.fromkeys(table.index.get_level_values(0)))
        shown = _shown_scores(table, report.primary)
        for score in shown:
            parts += [_score_heading(report, score), _group_table_html(table.loc[score], what)]
        rest = [score for score in scores if score not in shown]
        if rest:
            inner = "".join(
                _score_heading(report, score) + _group_table_html(table.loc[score], what)
                for score in rest
            )
            parts.append(
                f"<details><summary>The other {len(rest)} score{'s' if len(rest) > 1 else ''}"
                f" by {what}</summary>{inner}</details>"
            )
    return parts


def _score_heading(report: Report, score: str) -> str:
    badge = '<span class="badge">primary</span>' if score == report.primary else ""
    return f"<h3>{_esc(score)}{badge}</h3>"


def _figures_html(report: Report) -> list[str]:
    ordered = [key for key in _FIGURES if key in report.figures]
    ordered += [key for key in report.figures if key not in _FIGURES]
    parts = ["<h2>Figures</h2>"] if ordered else []
    for key in ordered:
        heading, caption = _FIGURES.get(key, (key, ""))
        data = base64.b64encode(report.figures[key]).decode("ascii")
        parts.append(
            f"<figure><h3>{_esc(heading)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_esc(heading)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return parts


# ---- helpers ------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _describe(metric: str) -> str:
    return _INFO[metric].description if metric in _INFO else "(not a built-in metric)"


def _arrow(metric: str) -> str:
    if metric not in _INFO:
        return ""
    return "&uarr;" if _INFO[metric].higher_is_better else "&darr;"


def _best(metric: str, values: list[MetricValue | None]) -> float:
    """The best point estimate of ``metric`` at display precision (nan: none to highlight)."""
    finite = [round(v.value, _DIGITS) for v in values if v is not None and math.isfinite(v.value)]
    if metric not in _INFO or not finite:
        return math.nan
    return max(finite) if _INFO[metric].higher_is_better else min(finite)


def _metric_cell(value: MetricValue | None, best: float) -> str:
    if value is None or not math.isfinite(value.value):
        return '<td class="num">n/a</td>'
    is_best = round(value.value, _DIGITS) == best
    interval = ""
    if math.isfinite(value.low) and math.isfinite(value.high):
        interval = f'<span class="ci">[{value.low:.{_DIGITS}f}, {value.high:.{_DIGITS}f}]</span>'
    return (
        f'<td class="num{" best" if is_best else ""}">'
        f'<span class="v">{value.value:.{_DIGITS}f}</span>{interval}</td>'
    )


def _shown_scores(table: pd.DataFrame, primary: str) -> list[str]:
    """The scores of a per-group table shown in full: the primary and the other score with
    the best mean per-group AUROC (the within-group AUROC), or the first other one."""
    scores = list(dict.fromkeys(table.index.get_level_values(0)))
    others = [score for score in scores if score != primary]
    means = {score: table.loc[score, "auroc"].mean() for score in others}
    finite = [score for score in others if math.isfinite(means[score])]
    best = max(finite, key=means.__getitem__) if finite else (others[0] if others else None)
    return [score for score in scores if score in (primary, best)]


def _group_table_html(rows: pd.DataFrame, what: str) -> str:
    """One score's per-group table: n, accuracy, mean confidence, AUROC [interval], ECE, Brier."""
    head = "".join(f"<th>{label}</th>" for _, label in _GROUP_COLUMNS)
    body = []
    for group, row in rows.iterrows():
        cells = [f'<td class="num">{int(row["n"]):,}</td>']
        for column, _ in _GROUP_COLUMNS[1:]:
            if column == "auroc":
                value = MetricValue(row["auroc"], row["auroc_low"], row["auroc_high"])
                cells.append(_metric_cell(value, math.nan))
            else:
                cells.append(f'<td class="num">{_format_cell(float(row[column]), _DIGITS)[0]}</td>')
        body.append(f'<tr><td class="name">{_esc(group)}</td>{"".join(cells)}</tr>')
    return (
        f'<div class="scroll"><table class="groups"><thead><tr><th class="name">{_esc(what)}</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _importance_frame(importances: pd.Series) -> pd.DataFrame:
    largest = importances.sort_values(ascending=False).iloc[:TOP_IMPORTANCES]
    total = importances.sum()
    return pd.DataFrame(
        {"importance": largest, "share of total": largest / total if total else np.nan},
        index=pd.Index(largest.index, name="feature"),
    )


def _format_cell(value: Any, decimals: int | None = None) -> tuple[str, bool]:
    """Text of a table cell and whether it is a number (right-aligned).

    Floats get ``decimals`` places, or 4 significant digits (no exponent above 1000) if None.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return _esc(value), False
    if isinstance(value, (int, np.integer)):
        return f"{value:,}", True
    if not math.isfinite(value):
        return "n/a", True
    if decimals is None:
        return (f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"), True
    return f"{value:,.{decimals}f}", True


def _column_decimals(column: pd.Series) -> int | None:
    """One number of decimals for a float column, from its largest magnitude."""
    if not pd.api.types.is_float_dtype(column) or not column.notna().any():
        return None
    largest = column.abs().max()
    return 0 if largest >= 1000 else 1 if largest >= 10 else 3


def _html_table(frame: pd.DataFrame) -> str:
    index_name = _esc(frame.index.name or "")
    head = "".join(f"<th>{_esc(column)}</th>" for column in frame.columns)
    decimals = [_column_decimals(frame.iloc[:, i]) for i in range(frame.shape[1])]
    rows = []
    for label, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        cells = []
        for value, places in zip(row, decimals, strict=True):
            text, numeric = _format_cell(value, places)
            cells.append(f'<td class="{"num" if numeric else "name"}">{text}</td>')
        rows.append(f'<tr><td class="name">{_esc(label)}</td>{"".join(cells)}</tr>')
    return (
        f'<div class="scroll"><table><thead><tr><th class="name">{index_name}</th>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def _render_value(value: Any) -> str:
    """A summary value: scalars as text, flat dicts as a nested list, the rest as JSON."""
    if _is_scalar(value):
        text, _ = _format_cell(value)
        return text
    if isinstance(value, Mapping) and value and all(_is_scalar(v) for v in value.values()):
        return _render_mapping(value)
    if isinstance(value, (list, tuple)) and all(_is_scalar(v) for v in value):
        return ", ".join(_render_value(v) for v in value)
    return f"<pre>{_esc(json.dumps(jsonable(value), indent=2, ensure_ascii=False))}</pre>"


def _render_mapping(mapping: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_render_value(v)}</dd>" for k, v in mapping.items())
    return f'<dl class="summary">{items}</dl>'
