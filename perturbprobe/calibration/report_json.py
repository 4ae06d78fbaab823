"""Plain JSON types from the values a calibration report holds (for ``metrics.json``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["group_table_json", "jsonable"]


def group_table_json(table: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """A (score, group) table as score → group → column → value."""
    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for (score, group), row in table.iterrows():
        nested.setdefault(str(score), {})[str(group)] = {
            column: (int(value) if column == "n" else float(value)) for column, value in row.items()
        }
    return nested


def jsonable(value: Any) -> Any:
    """``value`` with only JSON types: numpy scalars and arrays unpacked, nan as None,
    paths and other objects as their text."""
    if isinstance(value, pd.Series):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
