"""Evaluate fitted bundles on labelled features: probes next to the calibrated baselines.

Every score is evaluated on the same rows with the same bootstrap resamples, so the report's
intervals compare like with like. The baselines (see :mod:`.baselines`) go through the
calibrators stored in the bundle, fitted on the same validation rows as the probe's. When the
records carry a domain (or an answer format), the report adds the within-domain AUROC and the
per-domain (per-format) tables (see :mod:`perturbprobe.calibration.domains`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._io import count_values
from ..bundles.bundle import ProbeBundle
from ..calibration.domains import has_groups
from ..calibration.report import Report, build_report
from ..features import FeatureSet
from ..probes.baselines import baseline_scores

__all__ = ["evaluate_bundles", "evaluated_on", "heldout_rows", "probe_label"]

logger = logging.getLogger(__name__)


def probe_label(bundle: ProbeBundle) -> str:
    """The name a bundle's probe has in reports, e.g. ``probe: lightgbm + isotonic``."""
    return f"probe: {bundle.manifest['probe']['name']} + {bundle.manifest['calibrator']['name']}"


def heldout_rows(bundle: ProbeBundle, featureset: FeatureSet) -> np.ndarray:
    """Positions of the records of ``featureset`` the bundle was neither fitted nor calibrated
    (or recalibrated) on: all of them for new data, the test part for the training features."""
    seen = {
        record_id
        for part in ("train", "validation", "recalibration")
        for record_id in bundle.split.get(part, [])
    }
    return np.flatnonzero([record_id not in seen for record_id in featureset.record_ids])


def evaluate_bundles(
    bundles: ProbeBundle | Sequence[ProbeBundle],
    featureset: FeatureSet,
    *,
    rows: np.ndarray | None = None,
    summary: dict[str, Any] | None = None,
    n_bootstrap: int = 1000,
    random_state: int = 0,
    title: str = "perturbprobe calibration report",
    allow_llm_mismatch: bool = False,
    ablation: pd.DataFrame | None = None,
    selection: pd.DataFrame | None = None,
) -> Report:
    """Report on the probes of ``bundles`` and the baselines, on the labelled rows ``rows``.

    Parameters
    ----------
    bundles : ProbeBundle or sequence of them
        The first is the primary (highlighted) score; the baselines use its calibrators.
    featureset : FeatureSet
        Must carry labels and the columns every bundle reads (checked).
    rows : int array, optional
        Positions of the records to evaluate on; default: those held out from every bundle.
    summary : dict, optional
        Extra entries for the report's data summary.
    allow_llm_mismatch : bool
        Evaluate features extracted with another LLM than the bundles' (normally refused).
    ablation : DataFrame, optional
        A table from :func:`family_ablation`, shown in the report.
    selection : DataFrame, optional
        The model-selection table of ``fit --probe auto``, shown in the report.

    Returns
    -------
    Report
        With ``within_domain_auroc`` per score and ``domain_table`` when any evaluated record
        has a domain, and ``format_table`` when any has an answer format (None otherwise).
    """
    bundles = [bundles] if isinstance(bundles, ProbeBundle) else list(bundles)
    if rows is None:
        rows = np.arange(len(featureset))
        for bundle in bundles:
            rows = np.intersect1d(rows, heldout_rows(bundle, featureset))
        if len(rows) < len(featureset):
            logger.info(
                "evaluating on the %d of %d records the probe(s) were not fitted or calibrated on",
                len(rows),
                len(featureset),
            )
    part = featureset.subset(rows)
    y = part.y
    scores = {
        probe_label(bundle): bundle.predict_confidence(part, allow_llm_mismatch=allow_llm_mismatch)
        for bundle in bundles
    }
    primary = bundles[0]
    for name, raw in baseline_scores(part.features).items():
        calibrator = primary.baseline_calibrators.get(name)
        if calibrator is not None:
            scores[f"baseline: {name}"] = calibrator.transform(raw)
    importances = getattr(primary.probe, "feature_importances_", None)
    report_summary = {
        "evaluated on": evaluated_on(y, part.sources),
        "LLM": primary.manifest["llm"],
        "probe": primary.manifest["probe"],
        "calibrator": primary.manifest["calibrator"]["name"],
        "training": primary.manifest.get("training", {}),
        "extractor config": primary.manifest["extractor"],
        **(summary or {}),
    }
    return build_report(
        y,
        scores,
        primary=probe_label(primary),
        summary=report_summary,
        importances=importances if hasattr(importances, "nlargest") else None,
        ablation=ablation,
        selection=selection,
        title=title,
        n_bootstrap=n_bootstrap,
        random_state=random_state,
        domains=part.domains if has_groups(part.domains) else None,
        formats=part.formats if has_groups(part.formats) else None,
    )


def evaluated_on(y: np.ndarray, sources: np.ndarray, **extra: Any) -> dict[str, Any]:
    """The report's summary of the answers a score was evaluated on (labels y (n,))."""
    return {
        "records": len(y),
        "correct": int(y.sum()),
        "positive rate": round(float(y.mean()), 4),
        "sources": count_values(sources),
        **extra,
    }
