"""How a probe's fitted state is saved: safetensors and JSON files, never a pickle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import ProbeError

__all__ = ["check_shapes", "json_labels", "read_arrays", "read_json", "write_arrays"]


def json_labels(classes: np.ndarray) -> list[Any]:
    """The classes as JSON values (bool, int, float or str); ProbeError for other labels."""
    labels = classes.tolist()
    if not all(isinstance(label, (bool, int, float, str)) for label in labels):
        kinds = sorted({type(label).__name__ for label in labels})
        raise ProbeError(
            "a probe's class labels must be ints, floats, strings or bools to be saved; got "
            + ", ".join(kinds)
        )
    return labels


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save named arrays as float64 tensors of a safetensors file."""
    save_file(
        {name: np.ascontiguousarray(a, dtype=np.float64) for name, a in arrays.items()},
        str(path),
    )


def read_arrays(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The float64 arrays of a safetensors file written by :func:`write_arrays`.

    Raises
    ------
    FileNotFoundError, ValueError
        The file is missing or does not hold exactly ``names``, as float64.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    arrays = load_file(str(path))
    if set(arrays) != names:
        raise ValueError(f"{path.name} holds {sorted(arrays)}, expected {sorted(names)}")
    if any(a.dtype != np.float64 for a in arrays.values()):
        raise ValueError(f"{path.name} must hold float64 arrays")
    return arrays


def check_shapes(
    arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], file: str, F: int
) -> None:
    """ValueError unless every array of ``shapes`` has its shape (F: the fitted width)."""
    wrong = [
        f"{k} {arrays[k].shape} (expected {s})" for k, s in shapes.items() if arrays[k].shape != s
    ]
    if wrong:
        raise ValueError(f"{file} does not match {F} features: {'; '.join(wrong)}")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a state file (ValueError if it is not an object)."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} does not hold an object")
    return value
