"""Exceptions raised for user errors.

Every error a user can cause (a bad file, an unknown name, a corrupt cache) is a
:class:`PerturbprobeError`. The command line prints its message on one line and exits
non-zero without a traceback; library callers can catch the base class or a subclass.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CalibrationError",
    "DatasetError",
    "ExtractionError",
    "GenerationError",
    "ModelLoadError",
    "PairEncodingError",
    "PerturbprobeError",
    "PerturbprobeWarning",
    "ProbeError",
]


class PerturbprobeError(Exception):
    """Base class of errors caused by user input: the message says what and what to do."""


class DatasetError(PerturbprobeError, ValueError):
    """A dataset or records file is missing, unreadable or does not follow the schema."""


class ModelLoadError(PerturbprobeError):
    """An LLM could not be loaded (unknown name, no hub access, bad cache, hash mismatch)."""


class PairEncodingError(PerturbprobeError, ValueError):
    """A (prompt, response) pair cannot be encoded (empty response, too long, bad messages)."""


class ExtractionError(PerturbprobeError, ValueError):
    """Feature extraction cannot run: a bad family name or option, or an unusable FeatureSet."""


class GenerationError(PerturbprobeError, ValueError):
    """Generation cannot run: a bad guard option, or a prompt too long for the context."""


class ProbeError(PerturbprobeError, ValueError):
    """A probe cannot be fitted or applied: bad features or labels, an unknown probe name."""


class CalibrationError(PerturbprobeError, ValueError):
    """A calibrator, metric or risk-control threshold got unusable input (one class, bad range)."""


class BundleError(PerturbprobeError):
    """A probe bundle is missing, corrupt, edited, or does not match the LLM or features."""


class PerturbprobeWarning(UserWarning):
    """Something was off but continuing is sound (e.g. few rows per class, imputed values)."""
