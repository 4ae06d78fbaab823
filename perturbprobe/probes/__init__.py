"""Probes that turn features into P(correct), the bundle format and the production Scorer.

- estimators (scikit-learn compatible): :class:`LogisticProbe`, :class:`LogisticCVProbe`
  (C chosen by grouped cross-validation, for wide hidden-state blocks), :class:`LightGBMProbe`,
  :class:`CCPSProbe` (contrastive MLP), :class:`CCPSSequenceProbe` (contrastive 1-D CNN),
  :class:`StackingProbe` (one base probe per feature family, combined on their logits);
- :func:`fit_bundle`: split by question, (select by grouped CV,) fit, calibrate, evaluate →
  :class:`ProbeBundle`;
- :func:`recalibrate`: refit a bundle's calibrator on labelled answers of a new domain;
- :func:`evaluate_bundles`: probes next to calibrated baselines on labelled features;
- :func:`family_ablation`: the same probe on each feature family alone and on all;
- :class:`Scorer`: load a bundle and score (prompt, response) pairs in production.
"""

from .ablation import bundle_split, family_ablation
from .base import PROBES, Probe, make_probe
from .bundle import BUNDLE_FORMAT_VERSION, ProbeBundle, llm_slug
from .ccps import CCPSProbe, CCPSSequenceProbe
from .evaluation import evaluate_bundles, heldout_rows
from .fitting import fit_bundle
from .lightgbm import LightGBMProbe
from .logistic import LogisticProbe
from .logistic_cv import LogisticCVProbe
from .recalibration import MIN_RECALIBRATION_ANSWERS, recalibrate
from .scorer import Scorer, Scores, score_file
from .selection import Candidate, Selection, default_candidates, select_probe
from .splits import QuestionSplit, split_by_question
from .stacking import StackingProbe

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MIN_RECALIBRATION_ANSWERS",
    "PROBES",
    "CCPSProbe",
    "CCPSSequenceProbe",
    "Candidate",
    "LightGBMProbe",
    "LogisticCVProbe",
    "LogisticProbe",
    "Probe",
    "ProbeBundle",
    "QuestionSplit",
    "Scorer",
    "Scores",
    "Selection",
    "StackingProbe",
    "bundle_split",
    "default_candidates",
    "evaluate_bundles",
    "family_ablation",
    "fit_bundle",
    "heldout_rows",
    "llm_slug",
    "make_probe",
    "recalibrate",
    "score_file",
    "select_probe",
    "split_by_question",
]
