"""Probes: estimators that turn an answer's features into P(correct).

Every probe is a scikit-learn binary classifier with one contract (:mod:`.base`):
:class:`LogisticProbe`, :class:`LogisticCVProbe` (C chosen by grouped cross-validation, for
wide hidden-state blocks), :class:`LightGBMProbe`, :class:`CCPSProbe` (contrastive MLP),
:class:`CCPSSequenceProbe` (contrastive 1-D CNN) and :class:`StackingProbe` (one base probe
per feature family, combined on their logits). :data:`PROBES` is the registry,
:func:`make_probe` builds one by name, :func:`baseline_scores` gives the fit-free baselines.

Fitting a probe into a calibrated bundle is :mod:`perturbprobe.training`; the saved artefact
and the production ``Scorer`` are :mod:`perturbprobe.bundles`.
"""

from .._deprecated import moved_names
from .base import PROBES, Probe, make_probe
from .baselines import baseline_scores
from .ccps import CCPSProbe, CCPSSequenceProbe
from .lightgbm import LightGBMProbe
from .logistic import LogisticProbe
from .logistic_cv import LogisticCVProbe
from .stacking import StackingProbe

__all__ = [
    "PROBES",
    "CCPSProbe",
    "CCPSSequenceProbe",
    "LightGBMProbe",
    "LogisticCVProbe",
    "LogisticProbe",
    "Probe",
    "StackingProbe",
    "baseline_scores",
    "make_probe",
]

__getattr__ = moved_names(__name__)  # names moved in 0.2, with a DeprecationWarning
