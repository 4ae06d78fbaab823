"""Feature families and the extraction engine.

>>> fs = perturbprobe.features.extract(llm, records, families="baseline,ccps")  # doctest: +SKIP
>>> fs.X.shape, fs.y.mean()                                                     # doctest: +SKIP
"""

from .base import AGGREGATES, FamilyOutput, FeatureFamily, PassBatch
from .baseline import Baseline
from .ccps import CCPS, CCPSConfig
from .config import ExtractorConfig
from .embedding_perturbation import EmbeddingPerturbation, EmbeddingPerturbationConfig
from .engine import extract
from .entropy_dynamics import EntropyDynamics, EntropyDynamicsConfig
from .featureset import FeatureSet
from .hidden_states import HiddenStates, HiddenStatesConfig
from .localization import Localization, detection_rate, localize
from .semantic_gradient import SemanticGradient, SemanticGradientConfig
from .semantic_token import (
    SemanticTokenChoice,
    default_semantic_offset,
    plot_sps,
    select_semantic_token,
    sps_grid,
)
from .sua import SUA, SUAConfig

#: Registered families, in default column order.
FAMILIES: dict[str, type[FeatureFamily]] = {
    family.name: family
    for family in (
        Baseline,
        CCPS,
        EntropyDynamics,
        EmbeddingPerturbation,
        SemanticGradient,
        SUA,
        HiddenStates,
    )
}

__all__ = [
    "AGGREGATES",
    "CCPS",
    "FAMILIES",
    "SUA",
    "Baseline",
    "CCPSConfig",
    "EmbeddingPerturbation",
    "EmbeddingPerturbationConfig",
    "EntropyDynamics",
    "EntropyDynamicsConfig",
    "ExtractorConfig",
    "FamilyOutput",
    "FeatureFamily",
    "FeatureSet",
    "HiddenStates",
    "HiddenStatesConfig",
    "Localization",
    "PassBatch",
    "SUAConfig",
    "SemanticGradient",
    "SemanticGradientConfig",
    "SemanticTokenChoice",
    "default_semantic_offset",
    "detection_rate",
    "extract",
    "localize",
    "plot_sps",
    "select_semantic_token",
    "sps_grid",
]
