"""perturbprobe: calibrated answer-correctness probes from the stability of an LLM's states.

>>> import perturbprobe
>>> llm = perturbprobe.load_llm("default")               # doctest: +SKIP
>>> ds = perturbprobe.data.load_dataset("builtin:easy-qa")  # doctest: +SKIP
>>> records = perturbprobe.data.collect(llm, ds)          # doctest: +SKIP
"""

from . import data, llm
from ._version import __version__
from .errors import PerturbprobeError
from .llm import LLM, load_llm

__all__ = ["LLM", "PerturbprobeError", "__version__", "data", "llm", "load_llm"]
