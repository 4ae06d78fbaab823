"""Post-hoc calibrators: maps from a score's P(correct) to a calibrated P(correct).

A probe's output ``p`` (n,) in [0, 1] ranks answers well but is often over- or under-confident.
A calibrator is fitted on held-out ``(p, y)`` pairs (``y`` = 1 where the LLM's answer is
correct) and maps ``p`` to ``p'`` whose value matches the observed accuracy: among answers with
``p' ≈ 0.8``, about 80 % are correct.

Every calibrator takes *probabilities* (not logits) and returns probabilities, follows the
scikit-learn contract (hyper-parameters keyword-only in the constructor, ``fit(p, y)`` returns
``self``, fitted attributes end in ``_``) and persists as plain numbers:
``to_dict()`` gives ``{"name", "params", "state"}`` ready for ``json.dumps`` and
:meth:`Calibrator.from_dict` (or :func:`calibrator_from_dict`) rebuilds it after checking every
field, so a corrupt or hand-edited file raises :class:`~perturbprobe.errors.CalibrationError`
instead of producing wrong probabilities. No pickle is involved.

Methods whose map is parametric in ``logit(p)`` clip ``p`` to ``[LOGIT_EPS, 1 − LOGIT_EPS]``
first (``LOGIT_EPS = 1e-7``), so scores of exactly 0 or 1 get finite logits (±16.1).
Fitting any learned calibrator needs both correct and incorrect answers; fewer than
``MIN_ROWS_WARN`` (20) rows gives a :class:`~perturbprobe.errors.PerturbprobeWarning`
because the fitted map is then mostly noise.

Temperature, Platt and isotonic maps are non-decreasing: a calibrator never reverses the
ranking of the score it calibrates (Platt's slope is constrained to ``a ≥ 0``, ``T`` to
[0.01, 100]). Platt and temperature scaling also accept a prior on their scale parameter
(``fit(p, y, prior_slope=...)``, ``fit(p, y, prior_temperature=...)``), which
:func:`perturbprobe.probes.recalibrate` uses to shrink a refit toward the parent bundle's map.

The contract and registry are in :mod:`~perturbprobe.calibration.calibrator_base`, the maps in
:mod:`~perturbprobe.calibration.parametric` (temperature, Platt) and
:mod:`~perturbprobe.calibration.piecewise` (isotonic, histogram); this module builds them.

References
----------
Guo, Pleiss, Sun, Weinberger (2017). On Calibration of Modern Neural Networks. ICML.
Platt (1999). Probabilistic Outputs for Support Vector Machines.
Zadrozny, Elkan (2001, 2002). Histogram binning; isotonic regression for calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .calibrator_base import (
    CALIBRATORS,
    MIN_ROWS_WARN,
    Calibrator,
    IdentityCalibrator,
    calibrator_class,
    construct_calibrator,
)
from .logistic import LOGIT_EPS, logit, platt_mle
from .parametric import SLOPE_PRIOR_SD, PlattCalibrator, TemperatureCalibrator
from .piecewise import HistogramCalibrator, IsotonicCalibrator
from .validation import check_scores

__all__ = [
    "CALIBRATORS",
    "LOGIT_EPS",
    "MIN_ROWS_WARN",
    "SLOPE_PRIOR_SD",
    "Calibrator",
    "HistogramCalibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "calibrator_from_dict",
    "logit_slope",
    "make_calibrator",
]


def make_calibrator(name: str, **params: Any) -> Calibrator:
    """An unfitted calibrator by registry name.

    Parameters
    ----------
    name : {"none", "temperature", "platt", "isotonic", "histogram"}
    **params
        Hyper-parameters of that calibrator (``n_bins`` for ``"histogram"``).

    Raises
    ------
    CalibrationError
        Unknown name, unknown parameter, or a bad parameter value.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.linspace(0.05, 0.95, 40)  # a score that ignores how often the LLM is right
    >>> y = (np.arange(40) % 4 != 0).astype(int)  # 75 % correct everywhere
    >>> make_calibrator("platt").fit(p, y).transform([0.2, 0.9]).round(2)
    array([0.71, 0.81])
    """
    calibrator = construct_calibrator(calibrator_class(name), params)
    calibrator._check_params()
    return calibrator


def calibrator_from_dict(data: Mapping[str, Any]) -> Calibrator:
    """Rebuild any calibrator from its :meth:`Calibrator.to_dict`, dispatching on ``"name"``.

    Raises :class:`CalibrationError` as :meth:`Calibrator.from_dict` does.
    """
    return Calibrator.from_dict(data)


def logit_slope(calibrator: Calibrator, p: Any) -> float:
    """The slope in ``logit(p)`` of a fitted calibrator's map, as a Platt map ``σ(a·logit(p) + b)``.

    Exact for the maps of that form: Platt (``coef_``), temperature (``1 / T``) and none (1).
    For the others (isotonic, histogram) the slope of the Platt map closest to the
    calibrator's, in cross-entropy over the scores ``p`` (n,) (a logistic fit with the
    calibrator's outputs as soft labels), unconstrained: ≤ 0 for a flat or decreasing map.
    """
    if isinstance(calibrator, PlattCalibrator):
        calibrator._check_fitted()
        return float(calibrator.coef_)
    if isinstance(calibrator, TemperatureCalibrator):
        calibrator._check_fitted()
        return 1.0 / calibrator.temperature_
    if isinstance(calibrator, IdentityCalibrator):
        return 1.0
    target = calibrator.transform(p)
    return platt_mle(logit(check_scores(p)), target)[0]
