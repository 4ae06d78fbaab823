"""perturbprobe: calibrated answer-correctness probes from the stability of an LLM's states.

>>> import perturbprobe
>>> llm = perturbprobe.load_llm("default")               # doctest: +SKIP
>>> ds = perturbprobe.data.load_dataset("builtin:easy-qa")  # doctest: +SKIP
>>> records = perturbprobe.collect(llm, ds)               # doctest: +SKIP
>>> fs = perturbprobe.extract(llm, records)                # doctest: +SKIP
>>> bundle = perturbprobe.fit_bundle(fs, probe="auto")    # doctest: +SKIP
>>> scorer = perturbprobe.Scorer(bundle, llm)             # doctest: +SKIP
"""

from . import _deprecated, bundles, calibration, data, decoding, features, llm, probes, training
from ._version import __version__
from .bundles import ProbeBundle, Scorer
from .decoding import GuardConfig, collect, generate
from .errors import PerturbprobeError
from .features import FeatureSet, extract
from .llm import LLM, load_llm
from .training import fit_bundle

_deprecated.install()  # old module paths of 0.1, with a DeprecationWarning

__all__ = [
    "LLM",
    "FeatureSet",
    "GuardConfig",
    "PerturbprobeError",
    "ProbeBundle",
    "Scorer",
    "__version__",
    "bundles",
    "calibration",
    "collect",
    "data",
    "decoding",
    "extract",
    "features",
    "fit_bundle",
    "generate",
    "llm",
    "load_llm",
    "probes",
    "training",
]
