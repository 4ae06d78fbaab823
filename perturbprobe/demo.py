"""The main job end to end on the embedded default LLM (``perturbprobe demo``).

1. Collect: the LLM answers a balanced sample of the built-in broad mixture —
   :data:`DEMO_PER_DOMAIN` questions of every domain of :data:`DEMO_DATASETS` — greedily, and
   a grader labels each answer. Only the LLM's own answers are used: teacher-forced gold and
   wrong answers cost extraction time and, for the activation probe, about 0.01 AUROC
   (``benchmarks/probe_quality.py --composition``).
2. Extract the cheap feature families (:data:`~perturbprobe.features.config.DEFAULT_FAMILIES`:
   the scalar families and the ``hidden_states`` block, from the same forward pass).
3. Fit with ``--probe auto``: leave-one-domain-out cross-validation on the training questions
   over the candidate probes × family sets (:func:`perturbprobe.probes.default_candidates`),
   so the choice is the one that does best on kinds of questions it did not see; the winner
   is refitted on every training answer, Platt-calibrated on their out-of-fold scores, and
   given a risk-controlled abstention threshold certified on the held-out questions.
4. Evaluate it next to the calibrated baselines on the held-out questions' answers (pooled,
   within-domain and per domain), save its bundle under ``models/<llm>/auto`` and write one
   report with both selection tables.

Steps 1 and 2 are cached in the output directory: a second run with the same LLM, datasets
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
from .bundles import ProbeBundle, llm_slug
from .calibration.report import Report
from .data import accuracy_table, load_dataset, read_records, write_records
from .decoding import collect
from .errors import DatasetError
from .features import ExtractorConfig, FeatureSet, extract
from .llm import LLM
from .training import fit_bundle

__all__ = ["DEMO_DATASETS", "DEMO_PER_DOMAIN", "DEMO_TARGET_RISK", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

# The training mixture: every generated domain of the broad set and easy-qa's hand-written
# categories, DEMO_PER_DOMAIN questions of each — sized so that the whole demo takes at most
# 15 minutes on 2 CPU cores (see the README for the measured timing).
DEMO_DATASETS = ("builtin:broad", "builtin:easy-qa")
DEMO_PER_DOMAIN = 50
# The abstention target: the mixture's answers are ~39 % right (62 % wrong); the threshold
# keeps the answers whose error rate is certified at most 35 %.
DEMO_TARGET_RISK = 0.35


@dataclass
class DemoResult:
    """What the demo produced."""

    accuracy: pd.DataFrame  # per-domain accuracy of the LLM's own answers
    report: Report  # the chosen probe and the baselines on the held-out generated answers
    best: str  # label of the candidate --probe auto chose
    bundle: ProbeBundle  # saved at bundle_path
    bundle_path: Path
    report_path: Path


def run_demo(
    llm: LLM,
    out_dir: str | Path,
    *,
    datasets: tuple[str, ...] = DEMO_DATASETS,
    per_domain: int | None = DEMO_PER_DOMAIN,
    limit: int | None = None,
    batch_size: int = 32,
    calibrator: str = "platt",
    target_risk: float = DEMO_TARGET_RISK,
    models_dir: str | Path = "models",
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Collect, extract, fit (auto), evaluate, save; outputs go under ``out_dir`` and
    ``models_dir``. ``limit`` keeps the first questions of each dataset's balanced sample."""
    out_dir = Path(out_dir)
    records = _records(llm, out_dir, datasets, per_domain, limit, batch_size, progress)
    featureset = _features(llm, records, out_dir, progress)
    bundle = fit_bundle(
        featureset,
        probe="auto",
        calibrator=calibrator,
        target_risk=target_risk,
        random_state=seed,
        progress=progress,
    )
    selection = bundle.manifest["selection"]["best"]
    best = f"{selection['probe']} on {' + '.join(selection['families'])}"
    bundle_path = Path(models_dir) / llm_slug(llm.name) / "auto"
    bundle.report.title = f"perturbprobe demo: {llm.name} on {' + '.join(datasets)}"
    bundle.save(bundle_path, overwrite=True)
    paths = bundle.report.write(out_dir / "report")
    return DemoResult(
        accuracy=accuracy_table(records, by="domain"),
        report=bundle.report,
        best=best,
        bundle=bundle,
        bundle_path=bundle_path,
        report_path=paths["report"],
    )


def demo_questions(datasets, per_domain: int | None, limit: int | None, seed: int = 0) -> list:
    """The demo's questions: each dataset's balanced sample (its first ``limit``), in turn."""
    examples, seen = [], {}
    for name in datasets:
        for example in load_dataset(name, per_domain=per_domain, limit=limit, seed=seed):
            if example.id in seen:
                raise DatasetError(f"question id {example.id!r} is in both {seen[example.id]} "
                                   f"and {name}")  # fmt: skip
            seen[example.id] = name
            examples.append(example)
    return examples


def _records(llm, out_dir: Path, datasets, per_domain, limit, batch_size, progress):
    """The LLM's graded answers; reused when the inputs match."""
    path = out_dir / "records.jsonl"
    key = {"llm": llm.fingerprint, "datasets": list(datasets), "per_domain": per_domain,
           "limit": limit}  # fmt: skip
    if _is_cached(path, key):
        logger.info("reusing the records in %s", path)
        return read_records(path)
    examples = demo_questions(datasets, per_domain, limit)
    records = collect(llm, examples, batch_size=batch_size, progress=progress)
    write_records(path, records)
    _write_key(path, key)
    return records


def _features(llm, records, out_dir: Path, progress) -> FeatureSet:
    """The cheap families for every record; reused when the LLM, options and records match."""
    path = out_dir / "features"
    config = ExtractorConfig.create()
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
