"""Fitting and choosing probes: labelled features in, a calibrated :class:`ProbeBundle` out.

- :func:`fit_bundle`: hold out test questions, (choose a probe by grouped cross-validation,)
  fit it, calibrate it on out-of-fold scores, evaluate it beside the baselines;
- :func:`select_probe`, :func:`default_candidates`: the cross-validated choice of
  ``--probe auto``, by question or leave-one-domain-out;
- :func:`evaluate_bundles`: bundles next to calibrated baselines on labelled features;
- :func:`family_ablation`: the same probe on each feature family alone and on all.
"""

from .ablation import bundle_split, family_ablation
from .evaluation import evaluate_bundles, heldout_rows
from .fitting import fit_bundle
from .selection import Candidate, Selection, default_candidates, select_probe

__all__ = [
    "Candidate",
    "Selection",
    "bundle_split",
    "default_candidates",
    "evaluate_bundles",
    "family_ablation",
    "fit_bundle",
    "heldout_rows",
    "select_probe",
]
