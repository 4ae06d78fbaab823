"""The demo fits its default probe on the broad built-in mixture, selected leave-one-domain-out
(the LLM is replaced by graded stand-in answers and synthetic features: this checks what the
demo fits on, not probe quality)."""

from __future__ import annotations

import types

import numpy as np
from synthetic_features import synthetic_featureset

import perturbprobe.demo as demo
from perturbprobe.data import Record


def test_the_demo_mixture_is_broad():
    questions = demo.demo_questions(demo.DEMO_DATASETS, demo.DEMO_PER_DOMAIN, None)
    domains = {q.domain for q in questions}
    assert len(domains) >= 10 and len({q.format for q in questions}) >= 3
    counts = np.unique([q.domain for q in questions], return_counts=True)[1]
    assert counts.max() <= demo.DEMO_PER_DOMAIN  # a balanced sample, no domain dominates


def test_the_demo_fits_its_default_probe_on_many_domains(tmp_path, monkeypatch):
    def fake_collect(llm, examples, **kwargs):
        return [
            Record(f"{e.id}/generated", e.id, e.messages, "an answer", int(i % 3 == 0),
                   "generated", domain=e.domain, format=e.format)
            for i, e in enumerate(examples)
        ]  # fmt: skip

    def fake_features(llm, records, out_dir, progress):
        fs = synthetic_featureset(len(records), seed=5)
        fs = fs.subset(fs.sources == "generated")
        fs.features["record_id"] = [r.id for r in records]
        fs.features["question_id"] = [r.question_id for r in records]
        fs.features["domain"] = np.array([r.domain for r in records], dtype=object)
        return fs

    monkeypatch.setattr(demo, "collect", fake_collect)
    monkeypatch.setattr(demo, "_features", fake_features)
    llm = types.SimpleNamespace(name="stand-in/llm", fingerprint="0" * 64)
    result = demo.run_demo(
        llm, tmp_path / "run", per_domain=8, models_dir=tmp_path / "models", progress=False
    )
    manifest = result.bundle.manifest
    assert len(manifest["training"]["domains"]) >= 10  # not a single domain
    assert manifest["selection"]["fold_by"] == "domain"
    assert manifest["calibrator"]["fitted_on"] == "out-of-fold scores, folds by domain"
    assert result.bundle_path.is_dir() and result.report_path.is_file()
