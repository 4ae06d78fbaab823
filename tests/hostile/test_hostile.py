"""A hostile battery: bad inputs and bad conditions, stage by stage.

Every case gets either a clear one-line error (the CLI prints ``perturbprobe: error: ...`` on
stderr and exits non-zero without a traceback; the library raises a
:mod:`perturbprobe.errors` class) or a documented recovery — and nothing already on disk is
lost. Each test's docstring says the expected behaviour.

Everything runs on the tiny random Llama of ``tiny_models`` (saved to a directory for the
command line) and on gold records (no generation) where possible. The SIGINT and concurrency
cases start real processes of the console script; each is bounded by a timeout and killed at
teardown.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from tiny_models import make_tiny_llm

import perturbprobe.calibration.report as report_module
from perturbprobe._io import atomic_directory
from perturbprobe.bundles import BUNDLE_FORMAT_VERSION, ProbeBundle
from perturbprobe.bundles.verification import manifest_hash
from perturbprobe.cli import cli
from perturbprobe.data import load_dataset, read_records, write_records
from perturbprobe.decoding import collect
from perturbprobe.errors import (
    BundleError,
    DatasetError,
    ExtractionError,
    PerturbprobeError,
    PerturbprobeWarning,
    ProbeError,
)
from perturbprobe.features import FeatureSet, extract
from perturbprobe.features.featureset import FORMAT_VERSION
from perturbprobe.training import fit_bundle

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

PREFIX = "perturbprobe: error:"
INTERRUPTED = "perturbprobe: interrupted; nothing was written"
STARTUP_TIMEOUT = 180  # s: to a process's first progress line (~9 s on an idle machine)
EXIT_TIMEOUT = 60  # s: from SIGINT (or the end of the work) to the exit
FAMILIES = "baseline,entropy_dynamics"


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str):
    """The CLI in this process; the result has stdout and stderr apart."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2: stderr is always separate
    return runner.invoke(cli, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(PREFIX), result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def entries(directory: Path) -> list[str]:
    """Names in ``directory`` (hidden ones included: staging leftovers start with a dot)."""
    return sorted(path.name for path in directory.iterdir())


def snapshot(directory: Path) -> dict[str, str]:
    """Everything under ``directory`` by relative path: a file's sha256, or "dir"."""
    return {
        path.relative_to(directory).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(directory.rglob("*"))
    }


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def record_row(record_id: str, response: str = "Blue is a colour.", **fields) -> dict:
    return {
        "id": record_id,
        "question_id": record_id,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "response": response,
        "label": 1,
        "source": "gold",
        **fields,
    }


def question_row(question_id: str, **fields) -> dict:
    return {"id": question_id, "question": "2 + 2?", "answers": ["4"], **fields}


def corrupt_column(source: Path, target: Path, column: str, value: float) -> Path:
    """A copy of the FeatureSet ``source`` with every third value of ``column`` set to
    ``value``."""
    shutil.copytree(source, target)
    frame = pd.read_parquet(target / "features.parquet")
    frame.loc[::3, column] = value
    frame.to_parquet(target / "features.parquet", index=False)
    return target


# --------------------------------------------------------------------------- fixtures

_BLANK_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module", autouse=True)
def blank_report_figures():
    """Fits in this process write a blank PNG for each report figure: rendering them takes
    matplotlib ~1 s a figure on this machine, and these tests are about errors and files. The
    processes started below render them as usual."""

    def blank(fig, **kwargs) -> bytes:
        return _BLANK_PNG

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_module, "figure_to_png_bytes", blank)
        yield


@pytest.fixture(scope="module")
def llm():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def gold_records(module_dir):
    """Gold and wrong answers of 40 easy-qa questions (160 records)."""
    records = collect(None, load_dataset("builtin:easy-qa", limit=40), source="gold")
    return write_records(module_dir / "records.jsonl", records)


@pytest.fixture(scope="module")
def featureset(llm, gold_records):
    return extract(llm, read_records(gold_records), families=FAMILIES, progress=False)


@pytest.fixture(scope="module")
def featureset_dir(featureset, module_dir):
    return featureset.save(module_dir / "features")


@pytest.fixture(scope="module")
def bundle_dir(featureset, module_dir):
    return fit_bundle(featureset, probe="logistic", n_bootstrap=10).save(module_dir / "bundle")


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "perturbprobe"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from perturbprobe.cli import main; main()"]


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python installs its Ctrl-C
    handler. A test run started as a shell's background job (``make test &``, nohup)
    inherits SIGINT *ignored* — the CLI would then rightly ignore the test's interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Process:
    """A CLI process whose stderr goes to a file that can be read while it runs."""

    def __init__(self, directory: Path, name: str, args: list[str]) -> None:
        self.log = directory / f"{name}.stderr"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(self.log, "wb") as stderr:
            self.popen = subprocess.Popen(
                [*_console_script(), *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=directory,
                env=env,
                preexec_fn=_default_sigint,
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self) -> int:
        return self.popen.wait(timeout=EXIT_TIMEOUT)


@contextlib.contextmanager
def cli_processes(directory: Path, commands: dict[str, list]) -> Iterator[dict[str, Process]]:
    """Start one CLI process per command at once (cwd ``directory``); any still running on
    the way out is killed."""
    processes: dict[str, Process] = {}
    try:
        for name, args in commands.items():
            processes[name] = Process(directory, name, args)
        yield processes
    finally:
        for process in processes.values():
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait(timeout=EXIT_TIMEOUT)


def interrupt_when(markers: dict[Process, str]) -> None:
    """Send SIGINT to each process as soon as its marker (a progress bar or a log line) is on
    its stderr — provably mid-work; fail if it exits first or never gets there."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pending = dict(markers)
    while pending:
        for process, marker in list(pending.items()):
            if marker in process.stderr:
                process.popen.send_signal(signal.SIGINT)
                del pending[process]
            elif process.popen.poll() is not None:
                pytest.fail(
                    f"exited {process.popen.returncode} before {marker!r}:\n{process.stderr}"
                )
        assert time.monotonic() < deadline, f"no {sorted(pending.values())} in {STARTUP_TIMEOUT} s"
        time.sleep(0.02)


# =========================================================================== 1. records files


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [json.dumps(record_row("a")), '{"id": "b", "response": '],
            "line 2: invalid JSON (Expecting value)",
        ),
        (
            [json.dumps(record_row("a")), json.dumps(record_row("b")).encode()[:-2] + b'\xff"}'],
            "line 2: not UTF-8 text (byte 0xff at position",
        ),
        (
            [json.dumps(record_row(i)) for i in ("a", "b", "a")],
            "line 3: duplicate record id 'a' (first at line 1); record ids must be unique",
        ),
    ],
    ids=["malformed-json", "not-utf8", "duplicate-id"],
)
def test_extract_refuses_a_bad_records_file(tmp_path, tiny_llama_dir, lines, message):
    """A malformed line, a non-UTF-8 line or a duplicate id: DatasetError / one-line error
    naming the file and line (and the id), before the model is loaded; nothing written."""
    records = write_lines(tmp_path / "records.jsonl", lines)
    with pytest.raises(DatasetError, match=re.escape(f"{records} {message}")):
        read_records(records)
    out = tmp_path / "features"
    result = run_cli("extract", "--model", tiny_llama_dir, "-r", records, "-o", out)
    assert_one_line_error(result, f"{records} {message}")
    assert entries(tmp_path) == ["records.jsonl"]


LONG_RESPONSE = "blue " * 300  # > 256 tokens: the tiny model's context


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("   ", "the response is empty"),
        (LONG_RESPONSE, "exceed the model's context of 256; shorten the prompt or response"),
    ],
    ids=["empty", "over-long"],
)
def test_extract_unscorable_response_is_an_error_naming_the_record(
    tmp_path, tiny_llama_dir, llm, response, reason
):
    """An empty or over-long response: PairEncodingError naming the record and pointing at
    --skip-invalid; nothing written."""
    rows = [record_row("a"), record_row("bad", response), record_row("c")]
    records = write_lines(tmp_path / "records.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(PerturbprobeError, match=f"record 'bad': .*{re.escape(reason)}"):
        extract(llm, read_records(records), families="baseline", progress=False)
    out = tmp_path / "features"
    result = run_cli("extract", "--model", tiny_llama_dir, "-r", records, "-o", out)
    assert_one_line_error(result, "record 'bad'", reason, "use --skip-invalid to skip such records")
    assert entries(tmp_path) == ["records.jsonl"]


@pytest.mark.parametrize("response", ["", LONG_RESPONSE], ids=["empty", "over-long"])
def test_extract_skip_invalid_skips_warns_and_counts(tmp_path, tiny_llama_dir, caplog, response):
    """With --skip-invalid such a record is skipped with a logged WARNING (on stderr from the
    command line), counted in the summary line and listed in the manifest with its reason; the
    others are extracted."""
    rows = [record_row("a"), record_row("bad", response), record_row("c")]
    records = write_lines(tmp_path / "records.jsonl", [json.dumps(r) for r in rows])
    out = tmp_path / "features"
    args = ["extract", "--model", tiny_llama_dir, "--device", "cpu", "-r", records, "-o", out]
    result = run_cli(*args, "--families", "baseline", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "2 records scored (1 skipped)" in result.stdout
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(message.startswith("skipping record 'bad'") for message in warned), warned
    loaded = FeatureSet.load(out)
    assert loaded.record_ids == ["a", "c"]
    assert [s["id"] for s in loaded.skipped] == ["bad"]
    counts = loaded.manifest["counts"]
    assert counts == {"records": 3, "scored": 2, "skipped": 1, "tokens": len(loaded.tokens)}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps(question_row("a")), "{not json"], "line 2: invalid JSON"),
        (
            [json.dumps(question_row("a")), b'{"id": "b", "question": "\xff", "answers": ["4"]}'],
            "cannot read the file: 'utf-8' codec can't decode byte 0xff",
        ),
        (
            [json.dumps(question_row(i)) for i in ("a", "b", "a")],
            "line 3: id 'a' already used at",
        ),
        (
            [json.dumps(question_row("a", answers=[""]))],
            "line 1 (id 'a'): field 'answers' must hold non-empty strings",
        ),
    ],
    ids=["malformed-json", "not-utf8", "duplicate-id", "empty-answer"],
)
def test_collect_refuses_a_bad_questions_file(tmp_path, lines, message):
    """collect (gold) on a questions file with a malformed line, non-UTF-8 bytes, a duplicate
    id or an empty answer: DatasetError / one-line error naming the file (and line, id)."""
    questions = write_lines(tmp_path / "questions.jsonl", lines)
    with pytest.raises(DatasetError, match=re.escape(str(questions))):
        load_dataset(questions)
    out = tmp_path / "records.jsonl"
    result = run_cli("collect", "-d", questions, "--source", "gold", "-o", out)
    assert_one_line_error(result, f"{questions}", message)
    assert entries(tmp_path) == ["questions.jsonl"]


def test_collect_over_long_question_is_an_error_naming_it(tmp_path, tiny_llama_dir):
    """collect (generate) with a question longer than the model's context: one-line error
    naming the question, before generating anything. (Gold collection needs no model: an
    over-long gold answer is caught by extract, as above.)"""
    long_question = question_row("long", question="What is " + "blue " * 300 + "?")
    questions = write_lines(
        tmp_path / "questions.jsonl", [json.dumps(question_row("a")), json.dumps(long_question)]
    )
    out = tmp_path / "records.jsonl"
    result = run_cli(
        "collect", "--model", tiny_llama_dir, "--device", "cpu", "-d", questions, "-o", out
    )
    assert_one_line_error(result, "question 'long'", "exceed the model's context of 256")
    assert entries(tmp_path) == ["questions.jsonl"]


# ================================================================ 2. NaN / inf before fit


def test_fit_imputes_nan_with_a_warning(tmp_path, featureset_dir):
    """NaN in a feature column: fit warns (PerturbprobeWarning, "imputed with the training
    medians") and succeeds, in the library and through the CLI."""
    column = "entropy_dynamics/max_entropy"
    corrupted = corrupt_column(featureset_dir, tmp_path / "features", column, np.nan)
    with pytest.warns(PerturbprobeWarning, match="imputed with the training medians"):
        fit_bundle(FeatureSet.load(corrupted), probe="logistic", n_bootstrap=10)
    out = tmp_path / "bundle"
    with pytest.warns(PerturbprobeWarning, match="missing feature values .* are imputed"):
        result = run_cli("-q", "fit", "-f", corrupted, "-p", "logistic", "-o", out)
    assert result.exit_code == 0, result.output
    ProbeBundle.load(out)


@pytest.mark.parametrize("column", ["entropy_dynamics/max_entropy", "baseline/prob:mean"])
def test_fit_refuses_inf_naming_the_column(tmp_path, featureset_dir, column):
    """inf in a feature column: ProbeError / one-line error naming the column; no bundle."""
    corrupted = corrupt_column(featureset_dir, tmp_path / "features", column, np.inf)
    message = f"X holds infinite values in columns '{column}'; replace or clip them"
    with pytest.raises(ProbeError, match=re.escape(message)):
        fit_bundle(FeatureSet.load(corrupted), probe="logistic", n_bootstrap=10)
    out = tmp_path / "bundle"
    result = run_cli("-q", "fit", "-f", corrupted, "-p", "logistic", "-o", out)
    assert_one_line_error(result, message)
    assert entries(tmp_path) == ["features"]


def test_fit_nan_in_a_baseline_score_column_leaves_that_baseline_out(tmp_path, featureset_dir):
    """NaN in a column a calibrated baseline reads (baseline/prob:mean): the probe imputes it
    like any column, the 'mean token prob' baseline is left out of the report with a warning
    naming the column, and the bundle is written."""
    column = "baseline/prob:mean"
    corrupted = corrupt_column(featureset_dir, tmp_path / "features", column, np.nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("-q", "fit", "-f", corrupted, "-p", "logistic", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    messages = [str(warning.message) for warning in caught]
    assert any("imputed" in m for m in messages)
    assert any("'mean token prob' baseline is left out" in m and column in m for m in messages)
    assert "mean token prob" not in ProbeBundle.load(tmp_path / "b").baseline_calibrators


# =========================================================================== 3. formats


def test_featureset_with_a_removed_column_is_refused_at_load(tmp_path, featureset_dir):
    """features.parquet without a column its manifest lists: ExtractionError at load naming
    the column; fit stops with one line and writes nothing."""
    corrupted = tmp_path / "features"
    shutil.copytree(featureset_dir, corrupted)
    frame = pd.read_parquet(corrupted / "features.parquet")
    frame = frame.drop(columns="baseline/prob:mean")
    frame.to_parquet(corrupted / "features.parquet", index=False)
    message = "features.parquet columns do not match the manifest (missing 'baseline/prob:mean')"
    with pytest.raises(ExtractionError, match=re.escape(message)):
        FeatureSet.load(corrupted)
    result = run_cli("fit", "-f", corrupted, "-o", tmp_path / "bundle")
    assert_one_line_error(result, str(corrupted), message, "extract the features again")
    assert entries(tmp_path) == ["features"]


def test_featureset_from_a_future_format_version_is_refused(tmp_path, featureset_dir):
    """A FeatureSet manifest of a newer format version: ExtractionError saying which versions
    this perturbprobe reads and to upgrade it."""
    future = tmp_path / "features"
    shutil.copytree(featureset_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (future / "manifest.json").write_text(json.dumps(manifest))
    message = f"FeatureSet format version {FORMAT_VERSION + 1}, this perturbprobe"
    with pytest.raises(ExtractionError, match=re.escape(message)):
        FeatureSet.load(future)
    result = run_cli("fit", "-f", future, "-o", tmp_path / "bundle")
    assert_one_line_error(result, message, f", {FORMAT_VERSION}; upgrade perturbprobe")
    assert entries(tmp_path) == ["features"]


def test_bundle_from_a_future_format_version_is_refused(tmp_path, bundle_dir, featureset_dir):
    """A bundle manifest of a newer format version (its manifest_sha256 recomputed, so only
    the version is wrong): BundleError naming the version and the one this perturbprobe
    reads; evaluate stops with one line and writes nothing."""
    future = tmp_path / "bundle"
    shutil.copytree(bundle_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = BUNDLE_FORMAT_VERSION + 1
    manifest["manifest_sha256"] = manifest_hash(manifest)
    (future / "manifest.json").write_text(json.dumps(manifest))
    message = (
        f"bundle format version {BUNDLE_FORMAT_VERSION + 1}, this perturbprobe reads "
        f"{BUNDLE_FORMAT_VERSION}"
    )
    with pytest.raises(BundleError, match=re.escape(message)):
        ProbeBundle.load(future)
    result = run_cli("evaluate", "-b", future, "-f", featureset_dir, "-o", tmp_path / "report")
    assert_one_line_error(result, message)
    assert entries(tmp_path) == ["bundle"]


# =========================================================================== 4. SIGINT


@dataclass
class Interrupted:
    """One interrupted command: its arguments, its output (existing before the run), a
    snapshot of the output's parent directory before the run, and how the run ended."""

    args: list
    out: Path
    marker: str
    before: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    stderr: str = ""


# enough questions that collect is still generating when the interrupt arrives
COLLECT_LIMIT = 600


@pytest.fixture(scope="module")
def interrupted(module_dir, tiny_llama_dir, gold_records, featureset_dir, bundle_dir):
    """collect, extract and fit, each started over an existing complete output (collect
    always replaces its file; extract and fit with --overwrite) and sent SIGINT once its
    progress line shows it is mid-work. The three run at once: importing torch and
    transformers is most of their time."""
    root = module_dir / "interrupted"
    records = root / "collect" / "records.jsonl"
    records.parent.mkdir(parents=True)
    records.write_text(json.dumps(record_row("previous")) + "\n")
    features = root / "extract" / "features"
    shutil.copytree(featureset_dir, features)
    bundle = root / "fit" / "bundle"
    shutil.copytree(bundle_dir, bundle)
    model = ["--model", tiny_llama_dir, "--device", "cpu"]
    collect_args = [
        "collect",
        *model,
        "-d",
        "builtin:easy-qa",
        "--limit",
        str(COLLECT_LIMIT),
        "--max-new-tokens",
        "64",
        "-o",
        records,
    ]
    extract_args = ["extract", *model, "-r", gold_records, "--families", "baseline"]
    extract_args += ["--batch-size", "1", "--overwrite", "-o", features]
    fit_args = ["fit", "-f", featureset_dir, "-p", "logistic", "--overwrite", "-o", bundle]
    runs = {
        "collect": Interrupted(collect_args, records, marker="generating:"),
        "extract": Interrupted(extract_args, features, marker="extracting:"),
        "fit": Interrupted(fit_args, bundle, marker="fitting logistic on"),
    }
    for run in runs.values():
        run.before = snapshot(run.out.parent)
    with cli_processes(root, {name: run.args for name, run in runs.items()}) as processes:
        interrupt_when({processes[name]: run.marker for name, run in runs.items()})
        for name, run in runs.items():
            run.returncode = processes[name].wait()
            run.stderr = processes[name].stderr
    return runs


def assert_interrupted(run: Interrupted) -> None:
    """Exit 130 with the one-line notice, and the output's directory exactly as before: the
    existing output intact, nothing new (no partial output, no temporary leftover)."""
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip().splitlines()[-1] == INTERRUPTED, run.stderr
    assert "Traceback" not in run.stderr
    assert snapshot(run.out.parent) == run.before


# Each command replaces an existing complete output: any write to the output path (a
# partial file, a directory emptied early) would show in the snapshot, so this also covers
# "nothing that looks complete appears". The rerun (in this process) then writes a new output.


def test_sigint_during_collect(interrupted):
    """SIGINT while generating: exit 130 with one line, the existing records file intact, no
    temporary file left; the same command then succeeds."""
    run = interrupted["collect"]
    assert_interrupted(run)
    assert [r.id for r in read_records(run.out)] == ["previous"]
    rerun = run_cli("-q", *run.args)
    assert rerun.exit_code == 0, rerun.output
    assert len(read_records(run.out)) == COLLECT_LIMIT and entries(run.out.parent) == [
        "records.jsonl"
    ]


def test_sigint_during_extract(interrupted):
    """SIGINT while extracting (--overwrite): exit 130, the existing FeatureSet intact, no
    staging directory left; the same command then succeeds."""
    run = interrupted["extract"]
    assert_interrupted(run)
    assert FeatureSet.load(run.out).families == FAMILIES.split(",")
    rerun = run_cli("-q", *run.args)
    assert rerun.exit_code == 0, rerun.output
    assert FeatureSet.load(run.out).families == ["baseline"]
    assert entries(run.out.parent) == ["features"]


def test_sigint_during_fit(interrupted):
    """SIGINT while fitting (--overwrite; after its "fitting logistic" log line): exit 130, the
    existing bundle intact and still loading, no staging directory left; the same command then
    succeeds."""
    run = interrupted["fit"]
    assert_interrupted(run)
    ProbeBundle.load(run.out)
    rerun = run_cli("-q", *run.args)
    assert rerun.exit_code == 0, rerun.output
    assert snapshot(run.out.parent) != run.before and entries(run.out.parent) == ["bundle"]
    ProbeBundle.load(run.out)


def test_interrupt_while_writing_a_featureset_keeps_the_old_one(
    tmp_path, monkeypatch, tiny_llama_dir, featureset_dir
):
    """Ctrl-C inside the staging directory (while features are written, --overwrite): exit
    130, the staging directory is removed and the existing FeatureSet is intact."""
    existing = tmp_path / "features"
    shutil.copytree(featureset_dir, existing)
    before = snapshot(existing)
    records = write_lines(tmp_path / "records.jsonl", [json.dumps(record_row("a"))])

    def interrupt(self, path, *args, **kwargs):
        assert Path(path).parent.name.startswith(".features."), path  # inside the staging
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", interrupt)
    args = ["extract", "--model", tiny_llama_dir, "--device", "cpu", "-r", records, "-o", existing]
    result = run_cli("-q", *args, "--families", "baseline", "--overwrite")
    assert result.exit_code == 130 and result.stderr.strip() == INTERRUPTED
    assert entries(tmp_path) == ["features", "records.jsonl"] and snapshot(existing) == before


def test_interrupt_between_the_two_renames_restores_the_old_directory(tmp_path, monkeypatch):
    """Replacing a directory moves the old one aside, then renames the new one in; an interrupt
    between the two puts the old one back (and removes the new one)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_rename, calls = Path.rename, []

    def rename(self, target):
        calls.append((self.name, Path(target).name))
        if len(calls) == 3:  # 1: new → out (refused: not empty), 2: out → aside, 3: new → out
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_directory(out) as staging:
        (staging / "new.txt").write_text("new")
    monkeypatch.undo()
    assert calls[1][0] == "out" and calls[2][1] == "out"
    assert entries(tmp_path) == ["out"] and (out / "old.txt").read_text() == "old"


# =========================================================================== 5. concurrent writers


def test_two_extract_processes_to_one_directory(tmp_path, tiny_llama_dir, gold_records):
    """Two `extract --out D` at once (no --overwrite): one wins, the other fails with one line
    ("already exists" / "written by another run meanwhile"); D is a complete FeatureSet."""
    out = tmp_path / "shared" / "features"
    out.parent.mkdir()
    args = ["-q", "extract", "--model", tiny_llama_dir, "--device", "cpu", "-r", gold_records]
    args += ["--families", "baseline", "-o", out]
    with cli_processes(tmp_path, {"first": args, "second": args}) as processes:
        codes = {name: p.popen.wait(timeout=STARTUP_TIMEOUT) for name, p in processes.items()}
        stderr = {name: p.stderr for name, p in processes.items()}
    assert sorted(codes.values()) == [0, 1], stderr
    loser = stderr[next(name for name, code in codes.items() if code == 1)].strip().splitlines()
    assert len(loser) == 1 and loser[0].startswith(PREFIX), loser
    assert "already exists" in loser[0] or "written by another run meanwhile" in loser[0]
    assert len(FeatureSet.load(out)) == 160
    assert entries(out.parent) == ["features"]


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "no-overwrite"])
def test_concurrent_saves_to_one_directory_never_mix(tmp_path, featureset, overwrite):
    """Four threads save different FeatureSets to one directory at the same moment: with
    overwrite all succeed and the last one wins; without it exactly one succeeds and the others
    raise ExtractionError. Either way the directory is one writer's complete FeatureSet and no
    temporary directory is left."""
    writers = [featureset.subset(np.arange(10 * k, 10 * k + 10)) for k in range(4)]
    out = tmp_path / "features"
    if overwrite:
        featureset.save(out)  # something to replace
    barrier = threading.Barrier(len(writers))
    outcomes: list[object] = [None] * len(writers)

    def save(k: int) -> None:
        barrier.wait()
        try:
            writers[k].save(out, overwrite=overwrite)
            outcomes[k] = "saved"
        except Exception as exc:  # recorded and checked below
            outcomes[k] = exc

    threads = [threading.Thread(target=save, args=(k,)) for k in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes.count("saved") == (len(writers) if overwrite else 1), outcomes
    for outcome in outcomes:
        if outcome != "saved":
            assert isinstance(outcome, ExtractionError), repr(outcome)
            assert "already exists" in str(outcome) or "another run" in str(outcome)
    loaded = FeatureSet.load(out)
    assert loaded.record_ids in [w.record_ids for w in writers]
    assert set(loaded.tokens["record_id"]) == set(loaded.record_ids)
    assert entries(tmp_path) == ["features"]


# =========================================================================== 6. read-only output


@pytest.fixture
def read_only_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 0o555 does not stop root from writing")
    directory = tmp_path / "read-only"
    directory.mkdir()
    (directory / "keep.txt").write_text("untouched")
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)  # so that pytest can clean up


@pytest.mark.parametrize("command", ["collect", "extract", "fit"])
def test_read_only_output_directory(
    read_only_dir, tiny_llama_dir, gold_records, featureset_dir, command
):
    """--out in a read-only directory: one-line error naming the output and the directory,
    before any work; nothing changes there."""
    out = read_only_dir / "out"
    args = {
        "collect": ["collect", "-d", "builtin:easy-qa", "--limit", "3", "--source", "gold"],
        "extract": ["extract", "--model", tiny_llama_dir, "-r", gold_records],
        "fit": ["fit", "-f", featureset_dir, "-p", "logistic"],
    }[command]
    result = run_cli(*args, "-o", out)
    assert_one_line_error(result, f"cannot write {out}: {read_only_dir} is not writable")
    assert entries(read_only_dir) == ["keep.txt"]
    assert (read_only_dir / "keep.txt").read_text() == "untouched"


def test_read_only_output_directory_library(read_only_dir, featureset):
    """The library's writers raise PerturbprobeError naming the output."""
    features = read_only_dir / "features"
    with pytest.raises(PerturbprobeError, match=re.escape(f"cannot write {features}: Permission")):
        featureset.save(features)
    records = read_only_dir / "records.jsonl"
    with pytest.raises(PerturbprobeError, match=re.escape(f"cannot write {records}: Permission")):
        write_records(records, [])
    assert entries(read_only_dir) == ["keep.txt"]
