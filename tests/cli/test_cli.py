"""The ``perturbprobe`` command line: --version/--help, ``collect --source gold``, user errors.

Nothing here loads an LLM: ``collect --source gold`` writes gold and wrong answers, and
``load_model`` is replaced by a function that fails the test if called.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import perturbprobe
import perturbprobe.cli.runtime as cli_module
from perturbprobe.cli import cli
from perturbprobe.data import accuracy_table, read_records
from perturbprobe.errors import DatasetError

PREFIX = "perturbprobe: error:"


def make_runner() -> CliRunner:
    """A runner whose result has stdout and stderr apart (click < 8.2 needs mix_stderr)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2: stderr is always separate, the argument is gone
        return CliRunner()


@pytest.fixture
def runner():
    return make_runner()


@pytest.fixture(autouse=True)
def no_llm(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI tried to load an LLM")

    monkeypatch.setattr(cli_module, "load_model", refuse)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- version / help


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(runner, flag):
    result = runner.invoke(cli, [flag])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"perturbprobe, version {perturbprobe.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(runner, flag):
    result = runner.invoke(cli, [flag])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    for text in ("collect", "demo", "--debug", "--quiet", "--version"):
        assert text in result.stdout


def test_collect_help(runner):
    result = runner.invoke(cli, ["collect", "--help"])
    assert result.exit_code == 0
    for option in ("--dataset", "--limit", "--format", "--source", "--grader", "--out", "--model"):
        assert option in result.stdout
    assert "open|mc" in result.stdout.replace(" ", "") or "[open|mc]" in result.stdout


def test_missing_required_option_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["collect", "--dataset", "builtin:easy-qa", "--source", "gold"])
    assert result.exit_code == 2
    assert "--out" in result.stderr


# --------------------------------------------------------------------------- collect gold


def test_collect_gold_easy_qa(runner, tmp_path):
    out = tmp_path / "runs" / "records.jsonl"
    args = ["-q", "collect", "-d", "builtin:easy-qa", "--limit", "6", "--source", "gold"]
    result = runner.invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = read_records(out)
    question_ids = list(dict.fromkeys(r.question_id for r in records))
    assert len(question_ids) == 6
    assert sum(r.label for r in records) == 6
    assert all(r.id.endswith("/gold") == (r.label == 1) for r in records)
    assert {r.source for r in records} == {"gold", "wrong"}
    # the printed table: title, header, one line per category, a rule, overall
    lines = result.stdout.splitlines()
    assert f"builtin:easy-qa: {len(records)} records" in lines
    assert any(line.split()[:4] == ["category", "n", "correct", "accuracy"] for line in lines)
    table = accuracy_table(records)
    for row in table.itertuples(index=False):
        expected = [row.category, str(row.n), str(row.correct), f"{row.accuracy:.1%}"]
        assert expected in [line.split() for line in lines], (expected, result.stdout)
    assert "-" * 45 in lines
    assert lines[-1] == f"records written to {out}"
    assert result.stderr == ""


def test_collect_gold_arithmetic_prints_every_category(runner, tmp_path):
    out = tmp_path / "records.jsonl"
    args = ["collect", "-d", "builtin:arithmetic?n=14&seed=2", "--source", "gold", "-o", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert len(records) == 14 * 4
    first_words = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    for category in ("add_1digit", "subtract_2digit", "multiply_2digit", "add_3digit", "overall"):
        assert category in first_words
    overall = next(line for line in result.stdout.splitlines() if line.startswith("overall"))
    assert overall.split() == ["overall", "56", "14", "25.0%"]


def test_collect_gold_mc(runner, tmp_path):
    out = tmp_path / "records.jsonl"
    args = ["collect", "-d", "builtin:arithmetic?n=5", "--format", "mc", "--source", "gold"]
    result = runner.invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert {r.response for r in records} == {"A", "B", "C", "D"}
    assert "builtin:arithmetic?n=5 (mc): 20 records" in result.stdout


def test_collect_gold_from_a_file(runner, tmp_path):
    dataset = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"id": "a", "question": "2+2?", "answers": ["4"], "wrong_answers": ["5"]},
            {"id": "b", "question": "Sky?", "answers": ["blue"], "category": "colours"},
        ],
    )
    out = tmp_path / "records.jsonl"
    result = runner.invoke(cli, ["collect", "-d", str(dataset), "--source", "gold", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [r.id for r in read_records(out)] == ["a/gold", "a/wrong-1", "b/gold"]
    assert "(none)" in result.stdout


# --------------------------------------------------------------------------- user errors


def bad_dataset(tmp_path, kind):
    if kind == "unknown builtin":
        return "builtin:nope", ["unknown built-in dataset 'nope'", "builtin:easy-qa"]
    if kind == "missing file":
        return str(tmp_path / "missing.jsonl"), ["missing.jsonl does not exist"]
    path = tmp_path / "bad.jsonl"
    if kind == "malformed json":
        path.write_text('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": \n')
        return str(path), [f"{path} line 2: invalid JSON"]
    if kind == "no answers":
        write_jsonl(
            path, [{"id": "a", "question": "Q?", "answers": ["x"]}, {"id": "b", "question": "Q?"}]
        )
        return str(path), [f"{path} line 2 (id 'b'): field 'answers' is missing"]
    if kind == "empty answers":
        write_jsonl(path, [{"id": "a", "question": "Q?", "answers": []}])
        return str(path), [f"{path} line 1 (id 'a'): field 'answers' is empty"]
    if kind == "bad extension":
        path = tmp_path / "bad.yaml"
        path.write_text("id: a\n")
        return str(path), ["unknown file type '.yaml'"]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "unknown builtin",
        "missing file",
        "malformed json",
        "no answers",
        "empty answers",
        "bad extension",
    ],
)
def test_user_error_is_one_line_on_stderr(runner, tmp_path, kind):
    dataset, fragments = bad_dataset(tmp_path, kind)
    out = tmp_path / "records.jsonl"
    result = runner.invoke(cli, ["collect", "-d", dataset, "--source", "gold", "-o", str(out)])
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_user_error_leaves_an_existing_output_untouched(runner, tmp_path):
    out = tmp_path / "records.jsonl"
    out.write_text("previous content\n")
    result = runner.invoke(
        cli, ["collect", "-d", "builtin:nope", "--source", "gold", "-o", str(out)]
    )
    assert_one_line_error(result)
    assert out.read_text() == "previous content\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--grader", "fuzzy"], "unknown grader 'fuzzy'"),
        (["--format", "mc", "-d", "WRONGLESS"], "has no 'wrong_answers'"),
        (["-d", "builtin:arithmetic?n=0"], "needs n >= 1"),
        (["-d", "builtin:easy-qa?x=1"], "takes no options"),
    ],
)
def test_other_user_errors(runner, tmp_path, args, fragment):
    wrongless = write_jsonl(tmp_path / "w.jsonl", [{"id": "a", "question": "Q?", "answers": ["x"]}])
    args = [str(wrongless) if arg == "WRONGLESS" else arg for arg in args]
    if "-d" not in args:
        args = ["-d", "builtin:arithmetic?n=3", *args]
    out = tmp_path / "records.jsonl"
    result = runner.invoke(cli, ["collect", *args, "--source", "gold", "-o", str(out)])
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_debug_lets_the_exception_propagate(runner, tmp_path):
    out = tmp_path / "records.jsonl"
    args = ["--debug", "collect", "-d", "builtin:nope", "--source", "gold", "-o", str(out)]
    with pytest.raises(DatasetError, match="unknown built-in dataset 'nope'"):
        runner.invoke(cli, args, catch_exceptions=False)
    result = runner.invoke(cli, args)
    assert isinstance(result.exception, DatasetError)
    assert PREFIX not in result.stderr


def test_keyboard_interrupt_exits_130(runner, tmp_path, monkeypatch):
    import perturbprobe.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(perturbprobe.data, "load_dataset", interrupted)
    out = tmp_path / "records.jsonl"
    result = runner.invoke(
        cli, ["collect", "-d", "builtin:easy-qa", "--source", "gold", "-o", str(out)]
    )
    assert result.exit_code == 130
    assert result.stderr.strip() == "perturbprobe: interrupted; nothing was written"
    assert not out.exists()


# --------------------------------------------------------------------------- real process


def _executable() -> str | None:
    return shutil.which("perturbprobe", path=str(Path(sys.executable).parent))


def test_process_user_error_and_exit_status(tmp_path):
    """One real run of the console script (it imports torch, so only one): exit status 1, one
    line on stderr, no traceback, nothing written. ``--debug`` is checked in-process above."""
    executable = _executable()
    if executable is None:
        pytest.skip("the perturbprobe console script is not installed in this environment")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "q1", "question": "No answers?"}])
    out = tmp_path / "records.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [executable, "collect", "-d", str(bad), "--source", "gold", "-o", str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(PREFIX)
    assert f"{bad} line 1 (id 'q1'): field 'answers' is missing" in lines[0]
    assert "Traceback" not in done.stderr
    assert not out.exists()
