"""The ``perturbprobe`` command: thin wrappers over the library's public functions.

- :mod:`.group`: the ``cli`` group (--version, --quiet, --debug, error handling) and ``main``;
- :mod:`.options`, :mod:`.choices`: the options several commands share, and the choice lists,
  read from the library's registries;
- :mod:`.runtime`, :mod:`.output`: loading the LLM (torchrun aware), reading inputs, printing
  tables and metrics;
- one module per command group: :mod:`.data` (collect, datasets), :mod:`.features` (extract,
  localize, sps), :mod:`.training` (fit, evaluate, recalibrate), :mod:`.production` (score,
  generate, serve) and :mod:`.demo`.

Library imports happen inside the commands, so ``perturbprobe --help`` stays fast.
"""

from __future__ import annotations

from . import data, demo, features, production, training  # noqa: F401  (register the commands)
from .group import cli, main

__all__ = ["cli", "main"]
