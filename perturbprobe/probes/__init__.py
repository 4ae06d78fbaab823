"""Probes that turn features into P(correct), the bundle format and the production Scorer.

- estimators (scikit-learn compatible): :class:`LogisticProbe`, :class:`LightGBMProbe`,
  :class:`CCPSProbe` (contrastive MLP), :class:`CCPSSequenceProbe` (contrastive 1-D CNN);
- :func:`fit_bundle`: split by question, fit, calibrate, evaluate → :class:`ProbeBundle`;
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
from .scorer import Scorer, Scores, score_file
from .splits import QuestionSplit, split_by_question

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "PROBES",
    "CCPSProbe",
    "CCPSSequenceProbe",
    "LightGBMProbe",
    "LogisticProbe",
    "Probe",
    "ProbeBundle",
    "QuestionSplit",
    "Scorer",
    "Scores",
    "bundle_split",
    "evaluate_bundles",
    "family_ablation",
    "fit_bundle",
    "heldout_rows",
    "llm_slug",
    "make_probe",
    "score_file",
    "split_by_question",
]
