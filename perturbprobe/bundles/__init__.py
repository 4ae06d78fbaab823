"""The production artefact: a fitted probe, its calibrator and provenance, saved as files.

- :class:`ProbeBundle`: the bundle (what the probe reads, calibrated confidence, abstention,
  shift check) and its on-disk format — ``manifest.json`` with every file's SHA-256,
  safetensors / JSON / LightGBM text, never a pickle (:mod:`.verification` checks it on load);
- :class:`Scorer`: load a bundle and its LLM, score (prompt, response) pairs in production;
- :func:`recalibrate`: refit a bundle's calibrator on labelled answers of a new domain.

Bundles are made by :func:`perturbprobe.training.fit_bundle`.
"""

from .bundle import BUNDLE_FORMAT_VERSION, ProbeBundle, llm_slug
from .recalibration import MIN_RECALIBRATION_ANSWERS, recalibrate
from .scorer import Scorer, Scores, score_file

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MIN_RECALIBRATION_ANSWERS",
    "ProbeBundle",
    "Scorer",
    "Scores",
    "llm_slug",
    "recalibrate",
    "score_file",
]
