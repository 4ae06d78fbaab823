"""Records, datasets and FeatureSets carry the domain and the answer format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_features import synthetic_featureset

from perturbprobe.data import Record, load_dataset, read_records, write_records
from perturbprobe.errors import DatasetError
from perturbprobe.features import FeatureSet


def test_datasets_give_every_question_a_domain_and_a_format(tmp_path):
    easy = load_dataset("builtin:easy-qa")
    assert {e.domain for e in easy} == set(easy.categories)  # easy-qa: its categories
    assert load_dataset("builtin:arithmetic?n=5")[0].domain == "arithmetic"
    assert {e.format for e in load_dataset("builtin:arithmetic?n=5")} == {"number"}
    mc = load_dataset("builtin:easy-qa", format="mc", limit=3)
    assert [e.format for e in mc] == ["mc"] * 3 and mc[0].domain == easy[0].domain
    path = tmp_path / "my-questions.jsonl"
    rows = [
        {"id": "a", "question": "Capital of Peru?", "answers": ["Lima"]},
        {"id": "b", "question": "2+2?", "answers": ["4"], "grader": "numeric", "domain": "sums"},
        {"id": "c", "question": "Sky blue?", "answers": ["True"], "format": "truefalse"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_dataset(path)
    assert [e.domain for e in loaded] == ["my-questions", "sums", "my-questions"]
    assert [e.format for e in loaded] == ["short", "number", "truefalse"]
    path.write_text(json.dumps({**rows[0], "format": "essay"}) + "\n")
    with pytest.raises(DatasetError, match="field 'format' must be one of short, mc"):
        load_dataset(path)


def test_records_round_trip_domain_and_format(tmp_path):
    record = Record("q/generated", "q", ({"role": "user", "content": "?"},), "x", 1, "generated",
                    domain="capitals", format="short")  # fmt: skip
    again = read_records(write_records(tmp_path / "r.jsonl", [record]))[0]
    assert (again.domain, again.format) == ("capitals", "short")
    old = {"id": "o", "messages": [{"role": "user", "content": "?"}], "response": "x"}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_records(tmp_path / "old.jsonl")[0].domain is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({**old, "format": "poem"}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1 .*'format' must be one of"):
        read_records(tmp_path / "bad.jsonl")


def test_featureset_keeps_domains_and_reads_version_3(tmp_path):
    fs = synthetic_featureset(20)
    assert list(fs.features.columns[:6]) == [
        "record_id", "question_id", "label", "source", "domain", "format"
    ]  # fmt: skip
    assert all(d is None for d in fs.domains)
    fs.features["domain"] = np.where(np.arange(len(fs)) % 2, "a", "b")
    fs.features["format"] = "short"
    loaded = FeatureSet.load(fs.save(tmp_path / "v4"))
    assert loaded.domains.tolist() == fs.domains.tolist() and set(loaded.formats) == {"short"}
    # A version-3 directory (no domain, no format columns) is still read.
    old = synthetic_featureset(20)
    old.features = old.features.drop(columns=["domain", "format"])
    old.manifest = {**old.manifest, "format_version": 3}
    path = tmp_path / "v3"
    path.mkdir()
    old.features.to_parquet(path / "features.parquet", index=False)
    old.tokens.to_parquet(path / "tokens.parquet", index=False)
    (path / "manifest.json").write_text(json.dumps(old.manifest))
    read = FeatureSet.load(path)
    assert len(read) == 60 and all(d is None for d in read.domains)
    assert read.schema == old.schema


def test_a_per_domain_sample_interleaves_domains_so_any_prefix_is_balanced():
    sample = load_dataset("builtin:easy-qa", per_domain=3, limit=22)
    counts = {}
    for example in sample:
        counts[example.domain] = counts.get(example.domain, 0) + 1
    assert len(counts) == 11 and set(counts.values()) == {2}
    again = load_dataset("builtin:easy-qa", per_domain=3, limit=22)
    assert [e.id for e in again] == [e.id for e in sample]
    other = load_dataset("builtin:easy-qa", per_domain=3, limit=22, seed=1)
    assert [e.id for e in other] != [e.id for e in sample]
