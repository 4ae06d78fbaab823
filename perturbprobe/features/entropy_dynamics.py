"""``entropy_dynamics``: entropy spikes and early transition points (GUARD).

From the per-token entropy sequence H_1..H_T (1-based positions):

- ``max_entropy``; ``argmax_rel_pos`` = (position of the maximum) / T;
- spikes: tokens with H_t > median + z·MAD (the usual median; MAD scaled to σ by ×1.4826);
  ``n_spikes``;
- ``first_spike_pos`` and ``first_spike_rel_pos`` = pos / T; without a spike T+1 and 1 + 1/T;
- ``early_max_entropy``: max over the first ⌈T/4⌉ tokens;
- ``pre_spike_mean_entropy``: mean before the first spike, ``post_spike_mean_entropy``: mean
  from the first spike on; an empty side (no spike, or a spike at t = 1) takes the mean of
  the whole response, so both are always finite;
- ``entropy_slope``: least-squares slope of H_t against t (0 for T = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ExtractionError
from .base import FamilyOutput, FeatureFamily, PassBatch

__all__ = ["EntropyDynamics", "EntropyDynamicsConfig", "spike_threshold"]

_MAD_TO_SIGMA = 1.4826


def spike_threshold(entropy: torch.Tensor, z: float) -> torch.Tensor:
    """median + z·MAD of an entropy sequence (T,) → scalar; a token above it is a spike.

    The median is the usual one (mean of the middle two for even T); the MAD is scaled by
    1.4826 to estimate σ. Also used online while decoding (:mod:`perturbprobe.decoding`).
    """
    median = entropy.quantile(0.5)
    mad = (entropy - median).abs().quantile(0.5) * _MAD_TO_SIGMA
    return median + z * mad


@dataclass(frozen=True)
class EntropyDynamicsConfig:
    """Attributes
    ----------
    z : float
        Spike threshold in robust standard deviations above the median (default 3.0).
    """

    z: float = 3.0

    def __post_init__(self) -> None:
        if not self.z >= 0:
            raise ExtractionError(f"entropy_dynamics.z must be >= 0, got {self.z}")


class EntropyDynamics(FeatureFamily):
    """Response-level entropy-spike features (no per-token columns)."""

    name = "entropy_dynamics"
    Config = EntropyDynamicsConfig
    aggregate = False

    def token_features(self) -> list[str]:
        return []

    def response_features(self) -> list[str]:
        return [
            "max_entropy",
            "argmax_rel_pos",
            "n_spikes",
            "first_spike_pos",
            "first_spike_rel_pos",
            "early_max_entropy",
            "pre_spike_mean_entropy",
            "post_spike_mean_entropy",
            "entropy_slope",
        ]

    def compute(self, batch: PassBatch) -> FamilyOutput:
        entropy = batch.token_stats["entropy"]  # (N,)
        rows = [
            self.sequence_features(sequence)
            for sequence in torch.split(entropy, batch.lengths.tolist())
        ]
        return FamilyOutput(
            [],
            entropy.new_zeros((entropy.shape[0], 0)),
            self.response_features(),
            torch.stack(rows),
        )

    def sequence_features(self, entropy: torch.Tensor) -> torch.Tensor:
        """The 9 features of one response's entropy sequence (T,) → (9,)."""
        length = entropy.shape[0]
        positions = torch.arange(1, length + 1, dtype=entropy.dtype, device=entropy.device)
        spikes = entropy > spike_threshold(entropy, self.config.z)  # (T,)
        n_spikes = spikes.sum()
        overall = entropy.mean()
        if n_spikes > 0:
            first = int(spikes.to(torch.int8).argmax()) + 1  # 1-based
            before, after = entropy[: first - 1], entropy[first - 1 :]
            pre = before.mean() if before.numel() else overall
            post = after.mean()
        else:
            first, pre, post = length + 1, overall, overall
        early = entropy[: max(1, -(-length // 4))].max()
        centred = positions - positions.mean()
        denominator = (centred**2).sum()
        slope = (centred * (entropy - overall)).sum() / denominator if length > 1 else overall * 0
        return torch.stack(
            [
                entropy.max(),
                (entropy.argmax() + 1).to(entropy.dtype) / length,
                n_spikes.to(entropy.dtype),
                torch.tensor(float(first), dtype=entropy.dtype),
                torch.tensor(first / length, dtype=entropy.dtype),
                early,
                pre,
                post,
                slope,
            ]
        )
