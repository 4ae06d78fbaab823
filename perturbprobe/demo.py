"""The main job end to end on the embedded default LLM (``perturbprobe demo``).

Today: answer and grade a built-in dataset, extract every feature family, and rank the
features by how well each alone separates right from wrong answers (AUROC). Later issues add
probe fitting, calibration and reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .data import accuracy_table, collect, load_dataset, write_records
from .features import FeatureSet, extract
from .llm import LLM

__all__ = ["DemoResult", "feature_auroc", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo produced: the accuracy table, the feature ranking and where files went."""

    accuracy: pd.DataFrame
    ranking: pd.DataFrame | None  # None when every answer got the same label
    records_path: Path
    features_path: Path


def feature_auroc(featureset: FeatureSet) -> pd.DataFrame:
    """AUROC of each response-level feature alone for predicting ``label == 1``.

    Returns a DataFrame with columns ``feature``, ``auroc`` and ``separation`` =
    |AUROC − 0.5| (direction-free), sorted by separation, largest first.
    """
    from sklearn.metrics import roc_auc_score

    y = featureset.y
    if len(set(y)) < 2:
        raise ValueError("feature_auroc needs both correct and incorrect answers")
    rows = [(name, roc_auc_score(y, featureset.X[name])) for name in featureset.schema]
    table = pd.DataFrame(rows, columns=["feature", "auroc"])
    table["separation"] = (table["auroc"] - 0.5).abs()
    return table.sort_values("separation", ascending=False, ignore_index=True)


def run_demo(
    llm: LLM,
    out_dir: str | Path,
    *,
    dataset: str = "builtin:easy-qa",
    limit: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> DemoResult:
    """Collect and grade answers, extract all features, rank them; write under ``out_dir``."""
    out_dir = Path(out_dir)
    examples = load_dataset(dataset, limit=limit)
    records = collect(llm, examples, batch_size=batch_size, progress=progress)
    records_path = write_records(out_dir / "records.jsonl", records)
    logger.info("records written to %s", records_path)
    featureset = extract(llm, records, skip_invalid=True, progress=progress)
    features_path = featureset.save(out_dir / "features", overwrite=True)
    return DemoResult(
        accuracy=accuracy_table(records),
        ranking=feature_auroc(featureset) if len(set(featureset.y)) == 2 else None,
        records_path=records_path,
        features_path=features_path,
    )
