"""Loading LLMs and the adapter every feature family works through."""

from .adapter import LLM, TeacherForcedOutput
from .architectures import TESTED_MODEL_TYPES, Head, UntestedArchitectureWarning
from .loading import load_llm
from .pairs import EncodedPair, encode_pair

__all__ = [
    "LLM",
    "TESTED_MODEL_TYPES",
    "EncodedPair",
    "Head",
    "TeacherForcedOutput",
    "UntestedArchitectureWarning",
    "encode_pair",
    "load_llm",
]
