"""``baseline``: classic logit statistics, the yardstick every probe is compared with."""

from __future__ import annotations

import torch

from .base import FamilyOutput, FeatureFamily, NoConfig, PassBatch

__all__ = ["Baseline"]


class Baseline(FeatureFamily):
    """Per token: ``log_prob`` (log p_t(y_t)), ``prob``, ``entropy`` H(p_t), ``max_prob``,
    ``is_argmax``. Response level, besides the aggregates: ``seq_log_prob`` (Σ log p),
    ``mean_log_prob`` (length-normalised, = −LN-NLL), ``min_log_prob``, ``n_tokens``."""

    name = "baseline"
    Config = NoConfig

    def token_features(self) -> list[str]:
        return ["log_prob", "prob", "entropy", "max_prob", "is_argmax"]

    def response_features(self) -> list[str]:
        return ["seq_log_prob", "mean_log_prob", "min_log_prob", "n_tokens"]

    def compute(self, batch: PassBatch) -> FamilyOutput:
        stats = batch.token_stats
        keys = ("log_prob", "prob", "entropy", "max_prob", "is_argmax")
        token_values = torch.stack([stats[key] for key in keys], dim=1)  # (N, 5)
        log_prob = batch.padded(stats["log_prob"])  # (B, T), 0 at padding
        lengths = batch.lengths.to(log_prob.dtype)
        seq = log_prob.sum(dim=1)
        lowest = log_prob.masked_fill(~batch.mask, torch.inf).amin(dim=1)
        response_values = torch.stack([seq, seq / lengths, lowest, lengths], dim=1)  # (B, 4)
        return FamilyOutput(
            self.token_features(), token_values, self.response_features(), response_values
        )
