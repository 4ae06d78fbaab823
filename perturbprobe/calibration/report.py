"""The calibration report: metrics and figures of a probe next to its baselines, as HTML + JSON.

:func:`build_report` evaluates every score on the same rows (same bootstrap resamples, so the
intervals are paired), draws the figures, and returns a :class:`Report`. ``Report.write``
produces the three files a probe bundle and ``perturbprobe evaluate`` ship:

- ``report.html``: one self-contained page (:mod:`~perturbprobe.calibration.report_html`);
- ``metrics.json``: the numbers (``{"value", "low", "high"}`` per score and metric), the data
  summary and the optional tables;
- ``reliability.png``: the primary score's reliability diagram.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write
from .._version import __version__
from ..errors import CalibrationError
from .domains import evaluate_domains, group_labels, has_groups
from .metrics import MetricValue, evaluate_confidence
from .plots import (
    figure_to_png_bytes,
    panel_grid,
    plot_confidence_histogram,
    plot_importances,
    plot_reliability,
    plot_risk_coverage,
)
from .report_html import TOP_IMPORTANCES, render_html
from .report_json import group_table_json, jsonable

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """A calibration report: metrics per score, figures and context.

    Attributes
    ----------
    title : str
    metrics : dict of str to dict of str to MetricValue
        Score name → metric name → value with interval (see
        :func:`~perturbprobe.calibration.metrics.evaluate_confidence`).
    primary : str
        The probe's score name; its row is highlighted. Must be a key of ``metrics``.
    summary : dict
        Data summary: n, positive rate, LLM, extractor config, splits… (nested dicts allowed).
    importances : pandas Series (n_features,), optional
        Feature name → importance; the largest 20 are shown.
    ablation : pandas DataFrame, optional
        An extra table (e.g. one row per feature family), shown as is.
    selection : pandas DataFrame, optional
        The model-selection table (``fit --probe auto``: one row per candidate), shown as is.
    figures : dict of str to bytes
        PNG images by name. ``"reliability"`` (the primary score's diagram) is also written
        as ``reliability.png``; known names get a heading and caption, others their name.
    domain_table : pandas DataFrame, optional
        Metrics within each domain, for every score: index (score, domain), columns
        :data:`~perturbprobe.calibration.domains.DOMAIN_COLUMNS` (n, accuracy,
        mean_confidence, auroc, auroc_low, auroc_high, ece, brier); see
        :func:`~perturbprobe.calibration.domains.evaluate_domains`. None when the answers
        have no domain (then ``metrics`` has no ``within_domain_auroc`` either).
    format_table : pandas DataFrame, optional
        The same by answer format: index (score, format).
    """

    title: str
    metrics: dict[str, dict[str, MetricValue]]
    primary: str
    summary: dict[str, Any]
    importances: pd.Series | None = None
    ablation: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None
    figures: dict[str, bytes] = field(default_factory=dict)
    domain_table: pd.DataFrame | None = None
    format_table: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.primary not in self.metrics:
            raise CalibrationError(
                f"primary score {self.primary!r} is not among the scores {list(self.metrics)}"
            )

    # ---- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: plain JSON types only (nan as None).

        Returns
        -------
        dict
            ``title``, ``primary``, ``perturbprobe_version``, ``metrics`` (score → metric →
            ``{"value", "low", "high"}``), ``summary``, ``importances`` (feature → value, or
            None), ``ablation`` and ``selection`` (pandas "split" layout: columns, index, data;
            or None); given domains or formats, also ``domain_table`` / ``format_table``
            (score → domain → column → value).
        """
        data = {
            "title": self.title,
            "primary": self.primary,
            "perturbprobe_version": __version__,
            "metrics": {
                score: {name: value.to_dict() for name, value in row.items()}
                for score, row in self.metrics.items()
            },
            "summary": self.summary,
            "importances": None if self.importances is None else self.importances.to_dict(),
            "ablation": None if self.ablation is None else self.ablation.to_dict("split"),
            "selection": None if self.selection is None else self.selection.to_dict("split"),
        }
        for key, table in (
            ("domain_table", self.domain_table),
            ("format_table", self.format_table),
        ):
            if table is not None:
                data[key] = group_table_json(table)
        return jsonable(data)

    # ---- HTML -----------------------------------------------------------------------------
    def to_html(self) -> str:
        """The report as one self-contained HTML page (no external references)."""
        return render_html(self)

    # ---- files ----------------------------------------------------------------------------
    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.html``, ``metrics.json`` and ``reliability.png`` into ``out_dir``.

        Each file is written to a temporary sibling and renamed, so an interrupted write
        leaves no half-written file. ``reliability.png`` is written when ``figures`` holds
        ``"reliability"`` (always, for reports from :func:`build_report`).

        Returns
        -------
        dict of str to Path
            ``"report"``, ``"metrics"`` and ``"reliability"`` → the written paths.
        """
        out = Path(out_dir)
        paths = {"report": out / "report.html", "metrics": out / "metrics.json"}
        with atomic_write(paths["report"]) as handle:
            handle.write(self.to_html())
        with atomic_write(paths["metrics"]) as handle:
            json.dump(self.to_json(), handle, indent=2, allow_nan=False, ensure_ascii=False)
            handle.write("\n")
        if "reliability" in self.figures:
            paths["reliability"] = out / "reliability.png"
            with atomic_write(paths["reliability"], "wb") as handle:
                handle.write(self.figures["reliability"])
        return paths


def build_report(
    y: Any,
    scores: Mapping[str, Any],
    *,
    primary: str,
    summary: dict[str, Any],
    importances: pd.Series | Mapping[str, float] | None = None,
    ablation: pd.DataFrame | None = None,
    selection: pd.DataFrame | None = None,
    title: str = "perturbprobe calibration report",
    n_bins: int = 15,
    n_bootstrap: int = 1000,
    random_state: int | None = 0,
    domains: Any | None = None,
    formats: Any | None = None,
) -> Report:
    """Evaluate every score on the same rows and draw the report's figures.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if the LLM's answer is correct, 0 if not.
    scores : mapping of str to array-like of float (n,)
        Score name (the probe, baselines such as ``"baseline: mean token prob"``) → predicted
        probability of correct for each row, in [0, 1].
    primary : str
        The probe's name among ``scores``.
    summary : dict
        Data summary shown on the page and stored in ``metrics.json``.
    importances : pandas Series or mapping of str to float, optional
        Feature → importance of the probe.
    ablation : pandas DataFrame, optional
        An extra table, shown as is.
    selection : pandas DataFrame, optional
        The model-selection table, shown as is.
    title : str, default="perturbprobe calibration report"
    n_bins : int, default=15
        Bins of the calibration errors and reliability diagrams.
    n_bootstrap : int, default=1000
        Bootstrap resamples (0: no intervals).
    random_state : int or None, default=0
        Seed of the resamples, shared by every score (paired intervals).
    domains : array-like (n,), optional
        Each answer's domain (str, None where unknown). When any is known, every score gains
        a ``within_domain_auroc`` metric and the report a ``domain_table`` (see
        :func:`~perturbprobe.calibration.domains.evaluate_domains`; its stratified resamples
        are shared by every score too). None, or all None: the report is as without.
    formats : array-like (n,), optional
        Each answer's format, likewise: a ``format_table`` when any is known.

    Returns
    -------
    Report
        With figures ``reliability``, ``reliability_all``, ``histograms``, ``risk_coverage``
        and, given importances, ``importances``.
    """
    if not scores:
        raise CalibrationError("scores is empty; give at least the probe's confidences")
    if primary not in scores:
        raise CalibrationError(f"primary score {primary!r} is not among the scores {list(scores)}")
    importance_series = None if importances is None else pd.Series(importances, dtype=float)
    metrics = {}
    for name, p in scores.items():
        metrics[name] = evaluate_confidence(
            y, p, n_bins=n_bins, n_bootstrap=n_bootstrap, random_state=random_state
        )
    y_arr = np.asarray(y)
    tables: dict[str, pd.DataFrame | None] = {"domain": None, "format": None}
    for what, groups in (("domain", domains), ("format", formats)):
        if groups is not None:
            group_labels(groups, len(y_arr), f"{what}s")  # the length is checked even if all None
        if not has_groups(groups):
            continue
        evaluation = evaluate_domains(
            y,
            scores,
            groups,
            n_bins=n_bins,
            n_bootstrap=n_bootstrap,
            random_state=random_state,
            index_name=what,
        )
        tables[what] = evaluation.table
        if what == "domain":
            for name, value in evaluation.within.items():
                metrics[name]["within_domain_auroc"] = value.metric_value()
    figures = {
        "reliability": figure_to_png_bytes(
            plot_reliability(y_arr, scores[primary], n_bins=n_bins, label=primary).figure
        )
    }
    fig, axes = panel_grid(len(scores))
    for ax, (name, p) in zip(axes, scores.items(), strict=True):
        plot_reliability(y_arr, p, n_bins=n_bins, ax=ax, label=name)
    figures["reliability_all"] = figure_to_png_bytes(fig)
    fig, axes = panel_grid(len(scores), panel_size=(4.0, 3.0))
    for ax, (name, p) in zip(axes, scores.items(), strict=True):
        plot_confidence_histogram(y_arr, p, ax=ax, label=name)
    figures["histograms"] = figure_to_png_bytes(fig)
    curves = {name: (y_arr, p) for name, p in scores.items()}
    figures["risk_coverage"] = figure_to_png_bytes(plot_risk_coverage(curves).figure)
    if importance_series is not None and len(importance_series):
        figures["importances"] = figure_to_png_bytes(
            plot_importances(importance_series, top=TOP_IMPORTANCES).figure
        )
    return Report(
        title=title,
        metrics=metrics,
        primary=primary,
        summary=summary,
        importances=importance_series,
        ablation=ablation,
        selection=selection,
        figures=figures,
        domain_table=tables["domain"],
        format_table=tables["format"],
    )
