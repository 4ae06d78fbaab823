"""``sua``: sensitivity–uncertainty alignment (FEATURES.md; seed paper ``sua.md``).

For a perturbation source Q and response token t: sensitivity s_t = the mean over Q's
perturbations of a divergence D(p_t ‖ p_t') between the original and the perturbed next-token
distributions (``divergence``: Jensen–Shannon by default, or KL), uncertainty H_t = H(p_t).
Per response: S = mean_t s_t, H = mean_t H_t, ``sua`` = S − λ·H, ``sua_pos`` = max(0, sua) and
``S_over_H`` = S / (H + 1e-6).

Sources (``sources``, comma-separated), each reusing what another family computes in the same
batch — no source adds a forward pass when its family runs with the same settings:

- ``hidden``: the CCPS trajectory h_t + r_k u_t (``hidden_radius``, ``hidden_steps``; the head
  only, no forward pass), s_t = the mean over the S steps — CCPS's ``js_div_mean`` /
  ``kl_div_mean``, shared with the ``ccps`` family through the batch;
- ``embed_random``: the r Gaussian embedding perturbations of ``embedding_perturbation``
  (``embed_sigma``, ``embed_samples``, ``seed``), s_t = the mean over the r samples;
- ``embed_adv``: the l∞-adversarial embedding perturbation δ = −α·sign(∇_E ℓ) (``embed_alpha``);
- ``paraphrase`` (opt-in): the same response token ids teacher-forced under each paraphrase of
  the record's question (the last user message's text replaced); s_t = the mean over the K
  paraphrases. K extra forward passes per record (batched). A record without paraphrases
  (and every pair scored in production without them) gets s_t = 0, hence S = 0 and
  sua = −λH; ``paraphrase:count`` = K tells a probe which rows have them.

The embedding sources share the perturbed passes of ``embedding_perturbation`` only when the
settings are equal (the defaults are); otherwise they cost their own passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ExtractionError
from .base import FamilyOutput, FeatureFamily, PassBatch
from .ccps import CCPS, CCPSConfig
from .embedding_pass import GradientRequest, PerturbedStats

__all__ = ["SOURCES", "SUA", "SUAConfig"]

SOURCES = ("hidden", "embed_random", "embed_adv", "paraphrase")
_DIVERGENCES = ("js", "kl")
_RATIO_EPS = 1e-6


@dataclass(frozen=True)
class SUAConfig:
    """Sources, divergence, λ and the perturbations' settings (defaults = the ``ccps`` and
    ``embedding_perturbation`` defaults, so their passes are shared)."""

    sources: str = "hidden,embed_random,embed_adv"
    divergence: str = "js"
    lam: float = 1.0
    hidden_radius: float = 20.0
    hidden_steps: int = 5
    embed_sigma: float = 1e-3
    embed_samples: int = 20
    embed_alpha: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.source_list if s not in SOURCES]
        if unknown or not self.source_list:
            raise ExtractionError(
                f"sua.sources must be a comma-separated subset of {', '.join(SOURCES)}; "
                f"got {self.sources!r}"
            )
        if self.divergence not in _DIVERGENCES:
            raise ExtractionError(f"sua.divergence must be js or kl, got {self.divergence!r}")
        for name in ("hidden_radius", "embed_sigma", "embed_alpha"):
            if not getattr(self, name) > 0:
                raise ExtractionError(f"sua.{name} must be > 0")
        if self.hidden_steps < 1 or self.embed_samples < 1:
            raise ExtractionError("sua.hidden_steps and sua.embed_samples must be >= 1")

    @property
    def source_list(self) -> list[str]:
        return [s.strip() for s in self.sources.split(",") if s.strip()]


class SUA(FeatureFamily):
    """Sensitivity–uncertainty alignment per perturbation source (see the module docstring)."""

    name = "sua"
    Config = SUAConfig
    aggregate = False

    def __init__(self, config=None):
        super().__init__(config)
        sources = set(self.config.source_list)
        needs = {"final_hidden"}
        if sources & {"embed_random", "embed_adv"}:
            needs.add("input_gradient")
        if "paraphrase" in sources:
            needs.add("paraphrases")
        self.needs = frozenset(needs)

    def gradient_request(self) -> GradientRequest:
        return GradientRequest(divergences=True)

    def token_features(self) -> list[str]:
        return [f"{source}_sensitivity" for source in self.config.source_list]

    def response_features(self) -> list[str]:
        names = ["H"]
        for source in self.config.source_list:
            names += [f"{source}:{stat}" for stat in ("S", "sua", "sua_pos", "S_over_H")]
        if "paraphrase" in self.config.source_list:
            names.append("paraphrase:count")
        return names

    def compute(self, batch: PassBatch) -> FamilyOutput:
        sensitivity = torch.stack(
            [self.sensitivity(batch, source) for source in self.config.source_list], dim=1
        )  # (N, n_sources)
        entropy = batch.entropy  # (N,)
        means = batch.response_mean(torch.cat([entropy[:, None], sensitivity], dim=1))
        mean_entropy = means[:, 0]
        columns = [mean_entropy]
        for k in range(sensitivity.shape[1]):
            s = means[:, 1 + k]
            alignment = s - self.config.lam * mean_entropy
            ratio = s / (mean_entropy + _RATIO_EPS)
            columns += [s, alignment, alignment.clamp_min(0.0), ratio]
        if "paraphrase" in self.config.source_list:
            columns.append(batch.paraphrases.counts.to(entropy.dtype))
        values = torch.stack(columns, dim=1)
        return FamilyOutput(self.token_features(), sensitivity, self.response_features(), values)

    def sensitivity(self, batch: PassBatch, source: str) -> torch.Tensor:
        """s_t (N,) of one source."""
        config = self.config
        if source == "hidden":
            ccps = CCPS(CCPSConfig(radius=config.hidden_radius, steps=config.hidden_steps))
            column = ccps.token_features().index(f"{config.divergence}_div_mean")
            return ccps.batch_values(batch)[:, column]
        if source == "embed_random":
            stats = batch.embedding_pass.gaussian(
                config.embed_sigma, config.embed_samples, config.seed
            )
            return self._divergence(stats).mean(dim=0)
        if source == "embed_adv":
            return self._divergence(batch.embedding_pass.adversarial("linf", config.embed_alpha))[0]
        return batch.paraphrases.mean_divergence(batch, config.divergence)

    def _divergence(self, stats: PerturbedStats) -> torch.Tensor:
        return stats.js if self.config.divergence == "js" else stats.kl
