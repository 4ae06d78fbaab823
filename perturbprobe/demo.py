"""The main job end to end on the embedded default LLM (``perturbprobe demo``).

1. Collect: the LLM answers every question of a dataset greedily and a grader labels each
   answer; the questions' gold and wrong answers are added as extra training records.
2. Extract the feature families of :data:`DEMO_FAMILIES` (scalar families and the
   ``hidden_states`` block, from the same pass).
3. Fit with ``--probe auto``: grouped cross-validation on the training questions over the
   candidate probes × family sets (:func:`perturbprobe.probes.default_candidates`), the
   lowest log-loss refitted, with a Platt calibrator and a risk-controlled abstention
   threshold.
4. Evaluate it next to the calibrated baselines on the held-out questions' generated
   answers, save its bundle under ``models/<llm>/auto`` and write one report with the
   selection table and an ablation table: the chosen probe refitted on each family alone.

Steps 1 and 2 are cached in the output directory: a second run with the same LLM, dataset
and options reuses the records and features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ._io import atomic_write
from .calibration.report import Report
from .data import accuracy_table, collect, load_dataset, read_records, write_records
from .features import ExtractorConfig, FeatureSet, extract
from .llm import LLM
from .probes import ProbeBundle, family_ablation, fit_bundle, llm_slug, split_by_question

__all__ = ["DEMO_FAMILIES", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

# The families the demo extracts, within its 20-minute budget on 2 CPU cores (4,545 records;
# benchmarks/extract_speed.py): `sua` with its `hidden` source only, which reuses the CCPS
# trajectory, and `hidden_states`, which keeps the pass's own activations; neither costs a
# forward pass. Left out: embedding_perturbation (~20 forward passes per batch with r = 20,
# ~3 hours) and semantic_gradient and sua's embedding sources (a pass with gradients, ~3-4x a
# forward, ~25 more minutes); their value on the default LLM is measured in the README.
DEMO_FAMILIES = ("baseline", "ccps", "entropy_dynamics", "sua", "hidden_states")
DEMO_OPTIONS = ("sua.sources=hidden",)


@dataclass
class DemoResult:
    """What the demo produced."""

    accuracy: pd.DataFrame  # per-category accuracy of the LLM's own answers
    report: Report  # the chosen probe and the baselines on the held-out generated answers
    best: str  # label of the candidate --probe auto chose
    bundle: ProbeBundle  # saved at bundle_path
    bundle_path: Path
    report_path: Path


def run_demo(
    llm: LLM,
    out_dir: str | Path,
    *,
    dataset: str = "builtin:easy-qa",
    limit: int | None = None,
    batch_size: int = 32,
    calibrator: str = "platt",
    target_risk: float = 0.25,
    models_dir: str | Path = "models",
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Collect, extract, fit (auto), evaluate, save; outputs go under ``out_dir`` and
    ``models_dir``."""
    out_dir = Path(out_dir)
    records = _records(llm, out_dir, dataset, limit, batch_size, progress)
    featureset = _features(llm, records, out_dir, progress)
    split = split_by_question(featureset.question_ids, featureset.y, random_state=seed)
    bundle = fit_bundle(
        featureset,
        probe="auto",
        calibrator=calibrator,
        target_risk=target_risk,
        split=split,
        random_state=seed,
        progress=progress,
    )
    selection = bundle.manifest["selection"]["best"]
    best = f"{selection['probe']} on {' + '.join(selection['families'])}"
    bundle_path = Path(models_dir) / llm_slug(llm.name) / "auto"
    logger.info("ablation: %s on each family alone", selection["probe"])
    ablation = family_ablation(
        featureset,
        split,
        probe=selection["probe"],
        families=selection["families"],
        calibrator=calibrator,
    )
    bundle.report.ablation = ablation
    bundle.report.title = f"perturbprobe demo: {llm.name} on {dataset}"
    bundle.save(bundle_path, overwrite=True)
    paths = bundle.report.write(out_dir / "report")
    return DemoResult(
        accuracy=accuracy_table([r for r in records if r.source == "generated"]),
        report=bundle.report,
        best=best,
        bundle=bundle,
        bundle_path=bundle_path,
        report_path=paths["report"],
    )


def _records(llm, out_dir: Path, dataset, limit, batch_size, progress):
    """Generated answers plus gold and wrong answers; reused when the inputs match."""
    path = out_dir / "records.jsonl"
    key = {"llm": llm.fingerprint, "dataset": dataset, "limit": limit}
    if _is_cached(path, key):
        logger.info("reusing the records in %s", path)
        return read_records(path)
    examples = load_dataset(dataset, limit=limit)
    records = collect(llm, examples, batch_size=batch_size, progress=progress)
    records += collect(None, examples, source="gold")
    write_records(path, records)
    _write_key(path, key)
    return records


def _features(llm, records, out_dir: Path, progress) -> FeatureSet:
    """All families for every record; reused when the LLM, options and records match."""
    path = out_dir / "features"
    config = ExtractorConfig.create(DEMO_FAMILIES, DEMO_OPTIONS)
    records_digest = hashlib.sha256((out_dir / "records.jsonl").read_bytes()).hexdigest()
    key = {"llm": llm.fingerprint, "config": config.to_dict(), "records": records_digest}
    if _is_cached(path, key):
        logger.info("reusing the features in %s", path)
        return FeatureSet.load(path)
    featureset = extract(llm, records, config=config, skip_invalid=True, progress=progress)
    featureset.save(path, overwrite=True)
    _write_key(path, key)
    return featureset


def _key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key.json")


def _is_cached(path: Path, key: dict) -> bool:
    """Whether ``path`` was produced from exactly ``key`` (the key is written last)."""
    try:
        return path.exists() and json.loads(_key_path(path).read_text()) == key
    except (OSError, ValueError):
        return False


def _write_key(path: Path, key: dict) -> None:
    with atomic_write(_key_path(path)) as handle:
        json.dump(key, handle)
