"""The baseline confidence scores every probe is compared with.

Each turns ``baseline`` family columns into a score in [0, 1] that grows with confidence, so
the same calibrator can be fitted on it as on a probe's output:

- ``mean token prob``: the mean of p_t(y_t) over the response (``baseline/prob:mean``);
- ``sequence prob``: Π p_t(y_t) = exp(``baseline/seq_log_prob``);
- ``mean entropy``: exp(−mean H(p_t)) (``baseline/entropy:mean``), high when the LLM's
  next-token distributions are peaked.

A baseline whose column holds missing or infinite values is left out, with a warning naming
the column: baselines are reference points of the report, not worth failing a fit for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..errors import PerturbprobeWarning

__all__ = ["BASELINES", "baseline_scores"]

# name -> (column it needs, column values (n,) -> score (n,) in [0, 1])
BASELINES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "mean token prob": ("baseline/prob:mean", lambda values: values),
    "sequence prob": ("baseline/seq_log_prob", np.exp),
    "mean entropy": ("baseline/entropy:mean", lambda values: np.exp(-values)),
}


def baseline_scores(features: pd.DataFrame) -> dict[str, np.ndarray]:
    """Uncalibrated baseline scores (n,) in [0, 1], for each baseline whose column exists.

    Parameters
    ----------
    features : DataFrame (n, ...)
        Response-level features, e.g. ``FeatureSet.features``.
    """
    scores = {}
    for name, (column, transform) in BASELINES.items():
        if column in features:
            values = features[column].to_numpy(dtype=np.float64)
            bad = int((~np.isfinite(values)).sum())
            if bad:
                warnings.warn(
                    f"the {name!r} baseline is left out of the comparison: column {column!r} "
                    f"holds {bad} missing or infinite values",
                    PerturbprobeWarning,
                    stacklevel=2,
                )
                continue
            scores[name] = np.clip(transform(values), 0.0, 1.0)
    return scores
