"""The command line's shared options and choice lists: every shared option is declared once
(in :mod:`perturbprobe.cli.options`) and every choice list is read from a library registry, so
a name added to a registry shows up in the CLI.

Nothing here loads an LLM or runs a command body: only --help and option parsing.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import perturbprobe.probes
from perturbprobe.calibration import CALIBRATORS
from perturbprobe.cli import cli, options
from perturbprobe.cli.choices import RegistryChoice
from perturbprobe.data import FORMATS, GRADERS
from perturbprobe.decoding import BRANCH_MODES, COLLECT_SOURCES
from perturbprobe.features import FAMILIES
from perturbprobe.features.embedding_perturbation import SCORES
from perturbprobe.probes import PROBES
from perturbprobe.training.fitting import SELECT_BY

#: each command's --batch-size default (generation and feature extraction differ on purpose)
BATCH_SIZES = {
    "collect": 16,
    "demo": 32,
    "extract": 8,
    "generate": 16,
    "localize": 8,
    "recalibrate": 8,
    "score": 8,
    "serve": 8,
    "sps": 8,
}


def parameter(command: str, name: str) -> click.Parameter:
    return next(p for p in cli.commands[command].params if p.name == name)


def having(name: str) -> list[tuple[str, click.Parameter]]:
    """(command, parameter) for every command with a parameter called ``name``."""
    return [
        (command, p)
        for command, group_command in sorted(cli.commands.items())
        for p in group_command.params
        if p.name == name
    ]


def declared(decorator) -> list[click.Parameter]:
    """The parameters a decorator of :mod:`perturbprobe.cli.options` declares, in help order."""

    def function():
        pass

    decorator(function)
    return list(reversed(function.__click_params__))


def info(p: click.Parameter) -> dict:
    return p.to_info_dict()


def help_of(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    ("command", "name", "registry"),
    [
        ("fit", "probe", ("auto", *PROBES)),
        ("fit", "calibrator", tuple(CALIBRATORS)),
        ("recalibrate", "calibrator", tuple(CALIBRATORS)),
        ("fit", "select_by", tuple(SELECT_BY)),
        ("collect", "fmt", tuple(FORMATS)),
        ("collect", "source", tuple(COLLECT_SOURCES)),
        ("generate", "branch_mode", tuple(BRANCH_MODES)),
        ("localize", "score", tuple(SCORES)),
    ],
)
def test_choices_are_the_registry_keys(command, name, registry):
    p = parameter(command, name)
    assert isinstance(p.type, RegistryChoice)
    assert p.type.choices == registry
    assert "|".join(registry) in help_of(command).replace("\n", "").replace(" ", "")


def test_every_choice_list_comes_from_a_registry():
    """No command declares a literal choice list; --dtype and --device-map (the names load_llm
    documents, no registry) are declared once, in the shared model options."""
    model = {p.name for p in declared(options.model_options())}
    literal = [
        (command, p.name)
        for command, group_command in sorted(cli.commands.items())
        for p in group_command.params
        if isinstance(p.type, click.Choice) and not isinstance(p.type, RegistryChoice)
    ]
    assert {name for _, name in literal} <= model, literal


def test_a_probe_added_to_the_registry_shows_up(monkeypatch):
    monkeypatch.setattr(perturbprobe.probes, "PROBES", {**dict.fromkeys(PROBES), "my-probe": None})
    assert "my-probe" in parameter("fit", "probe").type.choices
    assert "my-probe" in help_of("fit")
    result = CliRunner().invoke(cli, ["fit", "-f", "features", "--probe", "nope"])
    assert result.exit_code == 2
    assert "my-probe" in result.output


def test_a_calibrator_added_to_the_registry_shows_up(monkeypatch):
    monkeypatch.setitem(CALIBRATORS, "my-calibrator", None)
    for command in ("fit", "recalibrate"):
        assert "my-calibrator" in parameter(command, "calibrator").type.choices


def test_root_help_reads_no_registry(monkeypatch):
    """`perturbprobe --help` lists the commands without resolving any choice list."""

    def refuse(self):
        raise AssertionError(f"{self.module}:{self.attribute} was read")

    monkeypatch.setattr(RegistryChoice, "choices", property(refuse))
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output


def test_grader_help_lists_every_grader():
    text = parameter("collect", "grader").help
    assert all(name in text for name in GRADERS), text


def test_families_help_lists_every_family():
    text = parameter("extract", "families").help
    assert all(name in text for name in FAMILIES), text


# --------------------------------------------------------------------------- shared options


def test_batch_size_is_the_shared_option_with_each_commands_default():
    found = having("batch_size")
    assert {command: p.default for command, p in found} == BATCH_SIZES
    for command, p in found:
        (reference,) = declared(options.batch_size_option(p.default))
        assert info(p) == info(reference), command


def test_model_options_are_the_shared_ones():
    reference = [info(p) for p in declared(options.model_options())]
    names = [p["name"] for p in reference]
    commands = [command for command, _ in having("model")]
    assert len(commands) == 9
    for command in commands:
        params = [info(p) for p in cli.commands[command].params if p.name in names]
        assert params == reference, command


def test_overwrite_is_the_shared_option():
    (reference,) = declared(options.overwrite_option())
    found = having("overwrite")
    assert [command for command, _ in found] == ["extract", "fit", "recalibrate"]
    for command, p in found:
        assert info(p) == info(reference), command


def test_out_is_the_shared_option():
    found = having("out")
    assert len(found) == 9
    for command, p in found:
        (reference,) = declared(
            options.out_option(
                p.help,
                directory=not p.type.file_okay,
                required=p.required,
                default=p.default,
            )
        )
        assert p.opts == ["--out", "-o"], command
        assert info(p) == info(reference), command


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("allow_llm_mismatch", lambda p: options.allow_llm_mismatch_option(p.help)),
        ("bundle", lambda p: options.bundle_option(p.required, p.help)),
        ("calibrator", lambda p: options.calibrator_option(p.default, p.help)),
        ("features", lambda p: options.features_option(p.help, p.required)),
        ("records", lambda p: options.records_option(p.help, p.required)),
        ("limit", lambda p: options.limit_option(p.help, p.type.min)),
        ("per_domain", lambda p: options.per_domain_option(p.help)),
        ("input_path", lambda p: options.input_option(p.help)),
        ("overrides", lambda p: options.overrides_option()),
        ("target_accuracy", lambda p: options.target_accuracy_option(p.help)),
        ("max_new_tokens", lambda p: options.max_new_tokens_option()),
        ("seed", lambda p: options.seed_option(p.help)),
    ],
)
def test_other_shared_options(name, factory):
    found = having(name)
    assert len(found) >= 2, found
    for command, p in found:
        (reference,) = declared(factory(p))
        assert info(p) == info(reference), command
