"""Known-prior correction: move calibrated P(correct) to a different base rate (label shift).

A calibrator fitted on held-out answers whose accuracy (base rate of correct answers) is
``π_s`` gives ``p = P(correct | s)`` *at that base rate*. On traffic where the LLM is right
with a different rate ``π_t`` — a harder domain, a new question mix — the same ``p`` is
miscalibrated even when the score ``s`` behaves exactly as before for correct and for
incorrect answers. If the class-conditional score distributions ``P(s | correct)`` and
``P(s | incorrect)`` are unchanged (label shift), Bayes' rule gives the posterior at the new
base rate in closed form (Saerens, Latinne & Decaestecker 2002, the known-prior case):

    p' = (π_t/π_s)·p / ((π_t/π_s)·p + ((1 − π_t)/(1 − π_s))·(1 − p)),

which is a shift of the log-odds, ``logit p' = logit p + logit π_t − logit π_s``. It is
computed in that form, so probabilities near 0 or 1 keep full precision; ``p`` of exactly 0
or 1 (certainty, e.g. from an isotonic calibrator) stays 0 or 1. The map is strictly
increasing, so it never changes how answers are ranked, only how confident they look.

When only the base rate changed this is exact; when the score distributions themselves moved
(see :mod:`perturbprobe.calibration.shift`), recalibrate on labelled answers instead.

References
----------
Saerens, Latinne, Decaestecker (2002). Adjusting the Outputs of a Classifier to New a Priori
Probabilities: A Simple Procedure. Neural Computation 14(1):21–41.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .logistic import rate_logit, sigmoid
from .validation import check_fraction, check_scores

__all__ = ["adjust_to_prior"]


def adjust_to_prior(confidence: Any, *, source_rate: float, target_rate: float) -> np.ndarray:
    """Calibrated P(correct) at base rate ``source_rate`` moved to base rate ``target_rate``.

    ``logit p' = logit p + logit(target_rate) − logit(source_rate)``: Bayes' rule with the
    class-conditional score distributions held fixed (see the module docstring).

    Parameters
    ----------
    confidence : array-like of float, shape (n,)
        Calibrated P(correct) in [0, 1] (calibrated on data with accuracy ``source_rate``).
    source_rate : float
        Accuracy (fraction of correct answers) of the data the confidences are calibrated on,
        in (0, 1).
    target_rate : float
        Accuracy expected on the new traffic, in (0, 1).

    Returns
    -------
    ndarray of float64, shape (n,)
        Adjusted confidences in [0, 1]; entries exactly 0 or 1 are unchanged, and equal
        rates return a copy of ``confidence``.

    Raises
    ------
    CalibrationError
        Confidences not 1-D, not finite or outside [0, 1]; a rate outside (0, 1).

    Examples
    --------
    >>> adjust_to_prior([0.5, 0.9, 1.0], source_rate=0.5, target_rate=0.2).round(4)
    array([0.2   , 0.6923, 1.    ])
    """
    p = check_scores(confidence, name="confidence", allow_empty=True)
    shift = rate_logit(check_fraction(target_rate, "target_rate")) - rate_logit(
        check_fraction(source_rate, "source_rate")
    )
    out = p.copy()
    if shift == 0:  # equal rates: exactly the identity (no logit round trip)
        return out
    inner = (p > 0) & (p < 1)
    q = p[inner]
    out[inner] = sigmoid(np.log(q) - np.log1p(-q) + shift)
    return out
