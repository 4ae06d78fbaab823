"""Choice lists of the command line, read from the library's registries, never repeated here.

A :class:`RegistryChoice` asks its registry for the names each time click needs them (the help
of the one command that has the option, or parsing its value), so a name added to a registry
shows up in the CLI, and ``perturbprobe --help`` does not import the probes (scikit-learn,
LightGBM) to list them.
"""

from __future__ import annotations

import importlib

import click


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` over the keys of ``attribute`` of ``module`` (a module path
    relative to this package, as in the commands' lazy imports), after the names ``first``.

    The registry is imported and read each time click needs the choices, not before.
    """

    def __init__(
        self, module: str, attribute: str, first: tuple[str, ...] = (), case_sensitive=True
    ) -> None:
        self.module, self.attribute, self.first = module, attribute, first
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        registry = getattr(importlib.import_module(self.module, __package__), self.attribute)
        return (*self.first, *registry)


# The registries the choices come from (with the lazy imports of the commands, these are the
# library paths to retarget when a registry moves).
PROBES = RegistryChoice("..probes", "PROBES", first=("auto",))  # auto: `fit` selects by CV
CALIBRATORS = RegistryChoice("..calibration", "CALIBRATORS")
SELECT_BY = RegistryChoice("..training.fitting", "SELECT_BY")
DATASET_FORMATS = RegistryChoice("..data", "FORMATS")
COLLECT_SOURCES = RegistryChoice("..decoding", "COLLECT_SOURCES")
BRANCH_MODES = RegistryChoice("..decoding", "BRANCH_MODES")
LOCALIZATION_SCORES = RegistryChoice("..features.embedding_perturbation", "SCORES")

#: Not a library registry: the names ``load_llm`` documents for its ``dtype``.
DTYPES = ("float32", "bfloat16", "float16")
#: Not a library registry: the names ``load_llm`` documents for its ``device_map``.
DEVICE_MAPS = ("auto", "balanced")


def grader_help() -> str:
    """--grader's help (a free name, not a choice: an unknown one is the library's error)."""
    from ..data import GRADERS

    return f"Override every question's grader ({', '.join(GRADERS)})."


def families_help() -> str:
    """extract --families' help, from the registered families and the extraction defaults."""
    from ..features import FAMILIES
    from ..features.config import DEFAULT_FAMILIES, DEFAULT_OPTIONS

    keys = [option.partition("=")[0] for option in DEFAULT_OPTIONS]
    defaults = [
        name + "".join(f" ({o})" for o in DEFAULT_OPTIONS if o.startswith(f"{name}."))
        for name in DEFAULT_FAMILIES
    ]
    opt_in = [name for name in FAMILIES if name not in DEFAULT_FAMILIES]
    return (
        "Comma-separated feature families, or 'all'  [default: the cheap ones, about 1.5x a "
        f"forward pass: {', '.join(defaults)}; opt in to {', '.join(opt_in)}, and to other "
        f"values of {', '.join(keys)} with --set]"
    )
