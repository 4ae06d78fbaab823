"""``embedding_perturbation``: how each response token's probability reacts when the input
embeddings are perturbed (embedding-perturbation UQ, arXiv 2602.02427; FEATURES.md).

With ℓ(E) = Σ_t log p(y_t | E) and G = ∇_E ℓ (one backward pass, :class:`EmbeddingPass`):

- ``linf_adv``: δ = −α∞·sign(G); s_t = log p(y_t | E) − log p(y_t | E + δ);
- ``l2_adv``: δ = −α₂·G (the raw gradient, so its size follows the model's gradient scale);
- ``random``: r perturbations δ_j ~ N(0, σ²I); s_t = the variance over j of p(y_t | E + δ_j)
  (population variance). Each pair's noise is drawn from a generator seeded by the config's
  ``seed`` and the pair's token ids, so it does not depend on the batch the pair is in.

E covers the whole sequence (prompt and response); by causality token t only sees the
perturbation at positions before p_t, so one perturbed pass scores every token at once.
Per token: the three scores. Response level: the usual aggregates plus, for each score,
``top3_mean``, ``top5_mean`` (means of the k largest, all tokens when T < k) and
``argmax_rel_pos`` (1-based position of the largest / T).

Cost per batch: one forward + one backward (shared), one forward per adversarial variant,
r forwards for ``random`` (stacked into passes of up to ~64 sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ExtractionError
from .base import FamilyOutput, FeatureFamily, PassBatch
from .embedding_pass import EmbeddingPass

__all__ = ["EmbeddingPerturbation", "EmbeddingPerturbationConfig"]

SCORES = ("linf_adv", "l2_adv", "random")
_TOP = (3, 5)


@dataclass(frozen=True)
class EmbeddingPerturbationConfig:
    """α∞ and α₂ (adversarial step sizes), σ and r (random noise scale and samples), seed."""

    linf_alpha: float = 1e-4
    l2_alpha: float = 1e-4
    sigma: float = 1e-3
    samples: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("linf_alpha", "l2_alpha", "sigma"):
            if not getattr(self, name) > 0:
                raise ExtractionError(f"embedding_perturbation.{name} must be > 0")
        if self.samples < 2:
            raise ExtractionError("embedding_perturbation.samples must be >= 2 (a variance)")


class EmbeddingPerturbation(FeatureFamily):
    """Sensitivity of each response token to perturbed input embeddings (see module doc)."""

    name = "embedding_perturbation"
    Config = EmbeddingPerturbationConfig
    needs = frozenset({"input_gradient"})

    def token_features(self) -> list[str]:
        return list(SCORES)

    def response_features(self) -> list[str]:
        names = [f"top{k}_mean" for k in _TOP] + ["argmax_rel_pos"]
        return [f"{score}:{name}" for score in SCORES for name in names]

    def compute(self, batch: PassBatch) -> FamilyOutput:
        scores = self.token_scores(batch.embedding_pass)  # (N, 3)
        return FamilyOutput(
            self.token_features(),
            scores,
            self.response_features(),
            torch.cat([_peaks(batch, scores[:, k]) for k in range(len(SCORES))], dim=1),
        )

    def token_scores(self, embedding_pass: EmbeddingPass) -> torch.Tensor:
        """(N, 3): ``linf_adv``, ``l2_adv``, ``random`` for every response token."""
        config = self.config
        original = embedding_pass.log_probs  # (N,)
        linf = embedding_pass.adversarial("linf", config.linf_alpha).log_prob_y[0]
        l2 = embedding_pass.adversarial("l2", config.l2_alpha).log_prob_y[0]
        noisy = embedding_pass.gaussian(config.sigma, config.samples, config.seed).log_prob_y
        variance = noisy.exp().var(dim=0, correction=0)  # (N,) over the r samples
        return torch.stack([original - linf, original - l2, variance], dim=1)


def _peaks(batch: PassBatch, values: torch.Tensor) -> torch.Tensor:
    """(B, 3): mean of the top 3 and top 5 values and the relative position of the largest,
    per response, from flat per-token ``values`` (N,)."""
    padded = batch.padded(values, fill=-torch.inf)  # (B, T_max)
    ranked = padded.sort(dim=1, descending=True).values
    lengths = batch.lengths.to(values.dtype)
    columns = []
    for k in _TOP:
        top = ranked[:, :k]
        count = torch.minimum(lengths, torch.tensor(float(k)))  # (B,)
        valid = torch.arange(top.shape[1], device=top.device)[None, :] < count[:, None]
        columns.append(torch.where(valid, top, 0.0).sum(dim=1) / count)
    columns.append((padded.argmax(dim=1) + 1).to(values.dtype) / lengths)
    return torch.stack(columns, dim=1)
