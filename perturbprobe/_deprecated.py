"""Old import paths that keep working for one release, with a :class:`DeprecationWarning`.

Version 0.2 moved the bundle format, the ``Scorer`` and recalibration to
:mod:`perturbprobe.bundles`, fitting and model selection to :mod:`perturbprobe.training`,
question splits to :mod:`perturbprobe.data.splits`, and answer collection and
self-consistency to :mod:`perturbprobe.decoding`. This module is the one list of what moved:

- old names in a package (``from perturbprobe.probes import Scorer``) resolve through the
  package's ``__getattr__ = moved_names(__name__)``;
- old module paths (``import perturbprobe.probes.bundle``) resolve through a finder on
  ``sys.meta_path`` (:func:`install`), so the old folders hold no stub files.

Both import the new place by name, lazily, so no room imports a room above it; both warn, and
both go in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "moved_names"]

REMOVED_IN = "0.3"

#: old module path → new module path
MOVED_MODULES: dict[str, str] = {
    "perturbprobe.probes.bundle": "perturbprobe.bundles.bundle",
    "perturbprobe.probes.scorer": "perturbprobe.bundles.scorer",
    "perturbprobe.probes.recalibration": "perturbprobe.bundles.recalibration",
    "perturbprobe.probes.fitting": "perturbprobe.training.fitting",
    "perturbprobe.probes.selection": "perturbprobe.training.selection",
    "perturbprobe.probes.evaluation": "perturbprobe.training.evaluation",
    "perturbprobe.probes.ablation": "perturbprobe.training.ablation",
    "perturbprobe.probes.splits": "perturbprobe.data.splits",
    "perturbprobe.data.collect": "perturbprobe.decoding.collect",
    "perturbprobe.data.generation": "perturbprobe.decoding.responses",
    "perturbprobe.data.self_consistency": "perturbprobe.decoding.self_consistency",
}

#: old package → the modules its moved names now live in (each name: its module's ``__all__``)
MOVED_NAMES: dict[str, tuple[str, ...]] = {
    "perturbprobe.probes": (
        "perturbprobe.bundles",
        "perturbprobe.training",
        "perturbprobe.data.splits",
    ),
    "perturbprobe.data": (
        "perturbprobe.decoding.collect",
        "perturbprobe.decoding.responses",
        "perturbprobe.decoding.self_consistency",
    ),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path goes in perturbprobe {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=3,
    )


def moved_names(package: str) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: its moved names, resolved with a warning."""

    def __getattr__(name: str) -> Any:
        for home in MOVED_NAMES[package]:
            module = importlib.import_module(home)
            if name in module.__all__:
                _warn(f"{package}.{name}", f"{home}.{name}")
                value = getattr(module, name)
                setattr(sys.modules[package], name, value)  # warned once; later uses find it
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: Any, target: Any = None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        _warn(spec.name, MOVED_MODULES[spec.name])
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The new module has run already."""


def install() -> None:
    """Put the finder of old module paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModule())
