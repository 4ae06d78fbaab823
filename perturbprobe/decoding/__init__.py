"""Where the LLM writes: batched greedy or sampled decoding, probe-guided decoding (GUARD)
that branches at an early entropy spike and keeps the continuation the probe trusts most,
answering a dataset into graded records (:func:`collect`), and the self-consistency baseline.

>>> answer = perturbprobe.generate(llm, "What is 7 x 8?", scorer=scorer,
...                                guard=perturbprobe.GuardConfig(branches=3))  # doctest: +SKIP
>>> records = perturbprobe.collect(llm, dataset)                            # doctest: +SKIP
"""

from .collect import COLLECT_SOURCES, collect
from .config import BRANCH_MODES, GuardConfig
from .guided import Alternative, GuidedAnswer, Intervention, generate
from .responses import generate_responses
from .self_consistency import SelfConsistency, self_consistency, self_consistency_confidence

__all__ = [
    "BRANCH_MODES",
    "COLLECT_SOURCES",
    "Alternative",
    "GuardConfig",
    "GuidedAnswer",
    "Intervention",
    "SelfConsistency",
    "collect",
    "generate",
    "generate_responses",
    "self_consistency",
    "self_consistency_confidence",
]
