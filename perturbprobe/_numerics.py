"""Float32 resolution, shared by the feature families and the probes.

Features are computed in float32; the same answer scored in another batch (other padding,
another BLAS kernel) moves each value by a few units in the last place. A spread smaller than
``FLOAT32_NOISE`` of the values' magnitude cannot be told from that noise.
"""

from __future__ import annotations

import torch

__all__ = ["FLOAT32_NOISE", "resolved_std"]

FLOAT32_NOISE = 2.0**-20
"""Relative spread below which values count as equal (float32 resolution is 2^-23; batched
reductions differ by a few units in the last place; 2^-20 is 8 to 16 of them)."""


def resolved_std(std: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``std`` with every entry at most ``FLOAT32_NOISE`` × ``magnitude`` (the largest |value|
    it was computed from; same shape) set to 0: a spread float32 cannot resolve is reported
    as none, so it does not depend on the batch an answer was scored in."""
    return torch.where(std <= FLOAT32_NOISE * magnitude, torch.zeros_like(std), std)
