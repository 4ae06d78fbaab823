"""Options that several commands share, each declared once.

Each factory returns a decorator; where commands differ for a reason (a generation batch is
not a feature-extraction batch; `--out` is a file for some commands, a directory for others),
the difference is the factory's parameter, everything else is the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import ProbeError
from .choices import CALIBRATORS, DEVICE_MAPS, DTYPES

Decorator = Callable[[Callable], Callable]

FILE = click.Path(dir_okay=False, path_type=Path)
DIRECTORY = click.Path(file_okay=False, path_type=Path)

MODEL_HELP = (
    "LLM: 'default' (embedded SmolLM2-135M-Instruct), a local directory, a .gguf file or a hub id."
)
BUNDLE_HELP = "Bundle directory written by `fit`."
BATCH_SIZE_HELP = "Questions, prompts or pairs per pass through the LLM (memory)."
OVERWRITE_HELP = "Replace an existing --out directory."
SET_HELP = "Override an extractor option, e.g. --set ccps.radius=10 --set response_end=eot."


def _stack(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` so that their options show in the order given."""

    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def model_options() -> Decorator:
    """--model, --device, --device-map (kept in ``ctx.obj`` for the loader) and --dtype."""
    return _stack(
        click.option("--model", "-m", default="default", show_default=True, help=MODEL_HELP),
        click.option(
            "--device",
            default=None,
            help="cpu, cuda or cuda:N  [default: cuda when present, else cpu]",
        ),
        click.option(
            "--device-map",
            type=click.Choice(DEVICE_MAPS),
            default=None,
            expose_value=False,
            callback=lambda ctx, _, value: ctx.obj.__setitem__("device_map", value),
            help="Split the model over the visible GPUs (accelerate); instead of --device.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default="float32",
            show_default=True,
            help="Weights dtype (features are computed in float32 regardless).",
        ),
    )


def batch_size_option(default: int) -> Decorator:
    """--batch-size; the default is the command's (generation and extraction differ)."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help=BATCH_SIZE_HELP,
    )


def out_option(
    help: str, *, directory: bool = False, required: bool = True, default: Path | None = None
) -> Decorator:
    """--out/-o: a file (or a directory with ``directory=True``) the command writes."""
    # no default=None when there is none: click would count it as a value of a required option
    defaults = {} if default is None else {"default": default, "show_default": True}
    return click.option(
        "--out",
        "-o",
        required=required,
        type=DIRECTORY if directory else FILE,
        help=help,
        **defaults,
    )


def overwrite_option() -> Decorator:
    return click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)


def bundle_option(required: bool = True, help: str = BUNDLE_HELP) -> Decorator:
    return click.option("--bundle", "-b", required=required, type=DIRECTORY, help=help)


def features_option(help: str, required: bool = False) -> Decorator:
    """--features/-f: a FeatureSet directory written by `extract`."""
    return click.option("--features", "-f", required=required, type=DIRECTORY, help=help)


def records_option(help: str, required: bool = False) -> Decorator:
    """--records/-r: a records JSONL written by `collect`."""
    return click.option("--records", "-r", required=required, type=FILE, help=help)


def input_option(help: str) -> Decorator:
    """--input/-i, a JSONL of prompts or pairs, passed as ``input_path``."""
    return click.option("--input", "-i", "input_path", required=True, type=FILE, help=help)


def overrides_option() -> Decorator:
    """--set KEY=VALUE (repeatable), passed as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)


def allow_llm_mismatch_option(help: str) -> Decorator:
    return click.option("--allow-llm-mismatch", is_flag=True, help=help)


def target_accuracy_option(help: str) -> Decorator:
    return click.option("--target-accuracy", type=float, default=None, help=help)


def choice_option(*names: str, choices: click.Choice, default: str | None, help=None):
    """An option whose values are ``choices`` (see :mod:`.choices`); a default is shown."""
    return click.option(
        *names, type=choices, default=default, show_default=default is not None, help=help
    )


def calibrator_option(default: str | None = "platt", help: str | None = None) -> Decorator:
    return choice_option("--calibrator", "-c", choices=CALIBRATORS, default=default, help=help)


def max_new_tokens_option() -> Decorator:
    return click.option(
        "--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True
    )


def seed_option(help: str) -> Decorator:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def limit_option(help: str, minimum: int = 1) -> Decorator:
    return click.option("--limit", type=click.IntRange(min=minimum), help=help)


def per_domain_option(help: str) -> Decorator:
    return click.option("--per-domain", type=click.IntRange(min=1), default=None, help=help)


def parse_params(items) -> dict:
    """``--param KEY=VALUE`` values as a dict, each value parsed as JSON when it is JSON."""
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ProbeError(f"--param {item!r} is not of the form KEY=VALUE")
        try:
            params[key.strip()] = json.loads(raw)
        except ValueError:
            params[key.strip()] = raw
    return params
