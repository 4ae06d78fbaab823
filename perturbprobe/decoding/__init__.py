"""Generation: batched greedy decoding, and probe-guided decoding (GUARD) that branches at an
early entropy spike and keeps the continuation the probe trusts most.

>>> answer = perturbprobe.generate(llm, "What is 7 x 8?", scorer=scorer,
...                                guard=perturbprobe.GuardConfig(branches=3))  # doctest: +SKIP
"""

from .config import BRANCH_MODES, GuardConfig
from .guided import Alternative, GuidedAnswer, Intervention, generate

__all__ = ["BRANCH_MODES", "Alternative", "GuardConfig", "GuidedAnswer", "Intervention", "generate"]
