"""perturbprobe: calibrated answer-correctness probes from the stability of an LLM's states.

>>> import perturbprobe
>>> llm = perturbprobe.load_llm("default")               # doctest: +SKIP
>>> ds = perturbprobe.data.load_dataset("builtin:easy-qa")  # doctest: +SKIP
>>> records = perturbprobe.data.collect(llm, ds)          # doctest: +SKIP
>>> fs = perturbprobe.extract(llm, records)                # doctest: +SKIP
"""

from . import data, features, llm
from ._version import __version__
from .decoding import GuardConfig, generate
from .errors import PerturbprobeError
from .features import FeatureSet, extract
from .llm import LLM, load_llm

__all__ = [
    "LLM",
    "FeatureSet",
    "GuardConfig",
    "PerturbprobeError",
    "__version__",
    "data",
    "extract",
    "features",
    "generate",
    "llm",
    "load_llm",
]
