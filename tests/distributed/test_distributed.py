"""Data-parallel runs under torchrun (2 processes, gloo on CPU): `extract`, `collect` and
`score` write what one process writes; a failing rank fails the run and writes nothing.

Every run uses one intra-op thread per process, so single and sharded runs do the same
arithmetic and features compare bitwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import make_tiny_llm

from perturbprobe.data import Record, load_dataset, write_records
from perturbprobe.decoding import collect
from perturbprobe.distributed import ProcessGroup
from perturbprobe.errors import PerturbprobeWarning
from perturbprobe.features import FeatureSet, extract
from perturbprobe.training import fit_bundle

pytestmark = pytest.mark.slow

TIMEOUT = 300
FAULT_DIR = Path(__file__).parent / "distributed_fault"


def environment(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def run_single(*args, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "perturbprobe", "-q", *map(str, args)]
    return subprocess.run(
        command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def run_torchrun(*args, cwd, nproc=2, **env) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "perturbprobe",
        "-q",
        *map(str, args),
    ]
    return subprocess.run(
        command, cwd=cwd, env=environment(**env), capture_output=True, text=True, timeout=TIMEOUT
    )


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def llm():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def records_file(workdir):
    """Gold and wrong answers of 5 questions (one response long, to unbalance the batches)
    plus an empty response that --skip-invalid skips: 21 records."""
    records = collect(None, load_dataset("builtin:easy-qa", limit=5), source="gold")
    first = records[0]
    records[0] = Record(
        first.id,
        first.question_id,
        first.messages,
        first.response + " and so on" * 12,
        first.label,
        first.source,
    )
    records.append(Record("empty", "q-empty", first.messages, " ", 0, "wrong"))
    return write_records(workdir / "records.jsonl", records)


def assert_same_featureset(sharded: Path, single: Path) -> None:
    a, b = FeatureSet.load(sharded), FeatureSet.load(single)
    pd.testing.assert_frame_equal(a.features, b.features, check_exact=True)
    pd.testing.assert_frame_equal(a.tokens, b.tokens, check_exact=True)
    assert a.blocks.keys() == b.blocks.keys()
    for name in a.blocks:
        np.testing.assert_array_equal(a.blocks[name], b.blocks[name])
    ignore = {"created", "world_size"}
    assert {k: v for k, v in a.manifest.items() if k not in ignore} == {
        k: v for k, v in b.manifest.items() if k not in ignore
    }
    assert (a.manifest["world_size"], b.manifest["world_size"]) == (2, 1)


@pytest.mark.parametrize(
    ("limit", "batch_size"), [(None, 3), (2, 4)], ids=["uneven-batches", "one-rank-idle"]
)
def test_extract_under_torchrun_writes_what_one_process_writes(
    workdir, tiny_llama_dir, records_file, limit, batch_size
):
    """21 records in batches of 3 (7 batches over 2 ranks, one invalid skipped), and 2
    records in one batch of 4 (rank 1 gets nothing): same FeatureSet, bitwise."""
    records = records_file
    if limit is not None:
        records = workdir / f"records-{limit}.jsonl"
        records.write_text("".join(records_file.read_text().splitlines(True)[:limit]))
    families = "baseline,ccps,entropy_dynamics,hidden_states"
    args = [
        "extract",
        "--model",
        tiny_llama_dir,
        "--records",
        records,
        "--families",
        families,
        "--batch-size",
        batch_size,
        "--skip-invalid",
    ]
    name = f"{limit}-{batch_size}"
    ok(run_single(*args, "--device", "cpu", "--out", f"single-{name}", cwd=workdir))
    ok(run_torchrun(*args, "--out", f"sharded-{name}", cwd=workdir))
    assert_same_featureset(workdir / f"sharded-{name}", workdir / f"single-{name}")


def test_collect_under_torchrun_writes_what_one_process_writes(workdir, tiny_llama_dir):
    """Generated answers (5 questions, batches of 2) and gold records: same files."""
    for source, extra in (
        ("generate", ["--model", tiny_llama_dir, "--max-new-tokens", 6]),
        ("gold", []),
    ):
        args = [
            "collect",
            "--dataset",
            "builtin:easy-qa",
            "--limit",
            5,
            "--batch-size",
            2,
            "--source",
            source,
            *extra,
        ]
        ok(run_single(*args, "--out", f"single-{source}.jsonl", cwd=workdir))
        ok(run_torchrun(*args, "--out", f"sharded-{source}.jsonl", cwd=workdir))
        single = (workdir / f"single-{source}.jsonl").read_bytes()
        assert (workdir / f"sharded-{source}.jsonl").read_bytes() == single
        assert len(single.splitlines()) == (5 if source == "generate" else 20)


def test_guarded_generate_under_torchrun_writes_what_one_process_writes(workdir, tiny_llama_dir):
    """7 prompts in batches of 2 (4 batches over 2 ranks), forks on the way: same file."""
    prompts = workdir / "prompts.jsonl"
    questions = [e.messages[-1]["content"] for e in load_dataset("builtin:easy-qa", limit=7)]
    prompts.write_text(
        "".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(questions))
    )
    args = [
        "generate",
        "--model",
        tiny_llama_dir,
        "--input",
        prompts,
        "--batch-size",
        2,
        "--max-new-tokens",
        8,
        "--guard",
        "--z",
        1.0,
        "--window",
        6,
    ]
    ok(run_single(*args, "--out", "single-answers.jsonl", cwd=workdir))
    ok(run_torchrun(*args, "--out", "sharded-answers.jsonl", cwd=workdir))
    single = (workdir / "single-answers.jsonl").read_bytes()
    assert (workdir / "sharded-answers.jsonl").read_bytes() == single
    rows = [json.loads(line) for line in single.splitlines()]
    assert len(rows) == 7 and any(row["guard"]["interventions"] for row in rows)


def test_score_under_torchrun_writes_what_one_process_writes(
    workdir, tiny_llama_dir, records_file, llm
):
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    featureset = extract(
        llm,
        collect(None, load_dataset("builtin:easy-qa", limit=30), source="gold"),
        families="baseline",
        progress=False,
    )
    with warnings.catch_warnings():  # few answers of a class: noisy, fine for this test
        warnings.simplefilter("ignore", PerturbprobeWarning)
        bundle = fit_bundle(featureset, probe="logistic", n_bootstrap=10)
    bundle = bundle.save(workdir / "bundle")
    lines = [
        json.dumps({"id": r["id"], "messages": r["messages"], "response": r["response"]})
        for r in records
    ] + ["not json"]
    pairs = workdir / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    args = [
        "score",
        "--model",
        tiny_llama_dir,
        "--bundle",
        bundle,
        "--input",
        pairs,
        "--batch-size",
        3,
    ]
    ok(run_single(*args, "--device", "cpu", "--out", "single-scored.jsonl", cwd=workdir))
    ok(run_torchrun(*args, "--out", "sharded-scored.jsonl", cwd=workdir))
    single = (workdir / "single-scored.jsonl").read_bytes()
    assert (workdir / "sharded-scored.jsonl").read_bytes() == single
    scored = [json.loads(line) for line in single.splitlines()]
    assert len(scored) == 22 and scored[-1]["confidence"] is None  # the empty and bad lines
    assert sum(row["confidence"] is None for row in scored) == 2


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_failing_rank_fails_the_run_and_writes_nothing(
    workdir, tiny_llama_dir, records_file, failing_rank
):
    """Rank k raises in its first pass: the run exits non-zero with that error, and the
    output directory is the previous complete one (or absent)."""
    out = workdir / f"failed-{failing_rank}"
    args = [
        "extract",
        "--model",
        tiny_llama_dir,
        "--records",
        records_file,
        "--families",
        "baseline",
        "--batch-size",
        3,
        "--skip-invalid",
    ]
    if failing_rank == 1:  # a previous complete output must survive
        ok(run_single(*args, "--device", "cpu", "--out", out, cwd=workdir))
        before = (out / "features.parquet").read_bytes()
    result = run_torchrun(
        *args,
        "--out",
        out,
        "--overwrite",
        cwd=workdir,
        PYTHONPATH=str(FAULT_DIR),
        PERTURBPROBE_TEST_FAIL_RANK=str(failing_rank),
    )
    assert result.returncode != 0
    assert "injected failure in the extraction pass" in result.stderr
    if failing_rank == 1:
        assert (out / "features.parquet").read_bytes() == before
        assert f"rank {failing_rank} of 2 failed" in result.stderr
    else:
        assert not out.exists()
    assert (
        sorted(p.name for p in workdir.iterdir() if p.name.startswith(f".failed-{failing_rank}"))
        == []
    )


def test_shard_deals_whole_batches_by_work_deterministically():
    batches = [[0, 1], [2, 3], [4], [5, 6], [7]]
    cost = {0: 9, 1: 9, 2: 5, 3: 5, 4: 4, 5: 1, 6: 1, 7: 1}.__getitem__
    shares = [ProcessGroup(rank, 2, rank).shard(batches, cost) for rank in (0, 1)]
    assert shares == [[[0, 1]], [[2, 3], [4], [5, 6], [7]]]  # loads 18 and 17
    assert sorted(shares[0] + shares[1]) == sorted(batches)
    idle = [ProcessGroup(rank, 3, rank).shard([[0]], cost) for rank in range(3)]
    assert idle == [[[0]], [], []]


def test_device_map_on_a_cpu_only_machine_gives_the_plain_features(tiny_llama_dir, records_file):
    """--device-map auto without GPUs: accelerate keeps every layer on the CPU and the
    gradient families (ccps, semantic_gradient through the embedding pass) give the same
    features as the plain load."""
    from perturbprobe.data import read_records
    from perturbprobe.errors import ModelLoadError
    from perturbprobe.llm import load_llm

    records = read_records(records_file)[:6]
    families = "baseline,ccps,semantic_gradient"
    plain = extract(
        load_llm(tiny_llama_dir, device="cpu"), records, families=families, progress=False
    )
    mapped_llm = load_llm(tiny_llama_dir, device_map="auto")
    assert {p.device.type for p in mapped_llm.model.parameters()} == {"cpu"}
    mapped = extract(mapped_llm, records, families=families, progress=False)
    pd.testing.assert_frame_equal(mapped.features, plain.features, check_exact=True)
    with pytest.raises(ModelLoadError, match="either a device or a device_map"):
        load_llm(tiny_llama_dir, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="unknown device_map 'sequential'"):
        load_llm(tiny_llama_dir, device_map="sequential")
