"""Family ablation: what each feature family buys on your model.

The same probe (type, hyper-parameters, calibrator) is fitted on each feature family alone
and on all of them, on one split, and evaluated on the same held-out rows with the same
bootstrap resamples, so the rows of the table are directly comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..bundles.bundle import ProbeBundle
from ..calibration.metrics import evaluate_confidence
from ..data.splits import QuestionSplit
from ..errors import BundleError
from ..features import FeatureSet
from ..probes.base import probe_class
from .fitting import fit_bundle

__all__ = ["ABLATION_METRICS", "bundle_split", "family_ablation"]

logger = logging.getLogger(__name__)

ABLATION_METRICS = ("auroc", "ece", "brier", "aurc")


def family_ablation(
    featureset: FeatureSet,
    split: QuestionSplit,
    *,
    probe: str = "lightgbm",
    probe_params: dict[str, Any] | None = None,
    families: Sequence[str] | None = None,
    calibrator: str = "platt",
    heldout_sources: Sequence[str] | None = None,
    random_state: int = 0,
    n_bootstrap: int = 1000,
) -> pd.DataFrame:
    """Fit ``probe`` on each family alone and on all families; evaluate each on the test part.

    Parameters
    ----------
    featureset : FeatureSet
        Labelled features with at least one family.
    split : QuestionSplit
        The train / validation / test parts (e.g. a bundle's, see :func:`bundle_split`).
    families : sequence of str, optional
        The families to ablate (default: every family the probe can read); the last row
        fits on all of them together.
    probe, probe_params, calibrator, heldout_sources, random_state
        As in :func:`fit_bundle`.
    n_bootstrap : int
        Resamples of the intervals (the same resamples for every row).

    Returns
    -------
    DataFrame
        One row per family and a last row ``all families`` (all of ``families``); columns
        ``features`` (how many columns the probe read) and one ``"value [low, high]"`` column
        per metric of :data:`ABLATION_METRICS`.
    """
    sequence = probe_class(probe).input_kind == "sequence"
    columns = featureset.token_schema if sequence else featureset.schema
    readable = list(dict.fromkeys(name.split("/", 1)[0] for name in columns))
    if not sequence:
        readable += list(featureset.block_layouts)
    if families is None:
        families = readable
    else:
        families = [family for family in families if family in readable]
    rows = []
    for family in [*families, None]:
        logger.info("ablation: %s on %s", probe, family or "all families")
        bundle = fit_bundle(
            featureset,
            probe=probe,
            probe_params=probe_params,
            calibrator=calibrator,
            families=families if family is None else [family],
            heldout_sources=heldout_sources,
            split=split,
            random_state=random_state,
            n_bootstrap=0,
        )
        sources = bundle.manifest["training"]["heldout_sources"]
        test = split.test[np.isin(featureset.sources[split.test], sources)]
        part = featureset.subset(test)
        values = evaluate_confidence(
            part.y,
            bundle.predict_confidence(part),
            n_bootstrap=n_bootstrap,
            random_state=random_state,
        )
        row = {"features": int(bundle.probe.n_features_in_)}
        row.update({metric: values[metric].to_string() for metric in ABLATION_METRICS})
        rows.append(pd.Series(row, name=family or "all families"))
    table = pd.DataFrame(rows)
    table.index.name = f"{probe} + {calibrator} on"
    return table


def bundle_split(bundle: ProbeBundle, featureset: FeatureSet) -> QuestionSplit:
    """The bundle's train / validation / test parts as row positions of ``featureset``;
    raises BundleError if ``featureset`` lacks records the bundle was fitted on."""
    position = {record_id: i for i, record_id in enumerate(featureset.record_ids)}
    parts = []
    for name in ("train", "validation", "test"):
        ids = bundle.split.get(name, [])
        missing = [record_id for record_id in ids if record_id not in position]
        if missing or (not ids and name != "validation"):
            raise BundleError(
                f"the features lack {len(missing) or 'all'} of the bundle's {name} records "
                f"(e.g. {missing[:1] or ids[:1]}); an ablation refits the probe, so it needs the "
                "features the bundle was fitted on"
            )
        parts.append(np.sort(np.array([position[record_id] for record_id in ids], dtype=np.int64)))
    return QuestionSplit(*parts)
