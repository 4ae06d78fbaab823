"""Statistics of next-token distributions, computed from logits in float32.

All functions take logits ``z`` of shape (N, V) for N tokens and return per-token tensors of
shape (N,). Entropy is exact (``-Σ p log p`` from the log-softmax, ``0·log 0 = 0``); the
Jensen–Shannon divergence uses ``log m = logaddexp(log p, log q) − log 2`` so it stays within
[0, ln 2] even where ``m`` would underflow.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cosine",
    "entropy_from_log_probs",
    "js_divergence",
    "kl_divergence",
    "logit_summary",
    "rowdot",
]


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products Σ_v a[n, v]·b[n, v], (N, V) × (N, V) → (N,).

    A batched matrix product: one fused pass, no (N, V) temporary (unlike ``(a * b).sum``).
    """
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])


def entropy_from_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p, (N, V) → (N,). Exact: p = exp(log p) is 0 only where it underflows."""
    return -rowdot(log_p.exp(), log_p)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q), (N, V) × (N, V) → (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = ½(p + q); (N,), in [0, ln 2]."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m))


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last dimension (norms clamped at ``eps``, as torch does)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=eps)


def logit_summary(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the features need from one distribution over the vocabulary.

    Parameters
    ----------
    z : Tensor (N, V)
        Logits.
    y : LongTensor (N,)
        The actual (teacher-forced) token of each row.

    Returns
    -------
    dict of Tensor (N,)
        ``log_prob``, ``prob`` and ``logit`` of the actual token; ``entropy``; ``max_prob``,
        ``max_logit`` and ``argmax`` (long) of the top token; ``margin_logit`` and
        ``margin_prob`` between the top two; ``norm_logits`` (L2); ``std_logits`` (ddof=1);
        ``is_argmax`` (1.0 when y is the top token); and ``log_probs`` (N, V) itself.
    """
    log_p = torch.log_softmax(z, dim=-1)  # (N, V)
    rows = torch.arange(z.shape[0], device=z.device)
    top_logits, top_ids = torch.topk(z, k=2, dim=-1)  # (N, 2)
    top_log_p = log_p.gather(1, top_ids)  # (N, 2)
    log_prob = log_p[rows, y]
    return {
        "log_probs": log_p,
        "log_prob": log_prob,
        "prob": log_prob.exp(),
        "logit": z[rows, y],
        "entropy": entropy_from_log_probs(log_p),
        "max_prob": top_log_p[:, 0].exp(),
        "max_logit": top_logits[:, 0],
        "argmax": top_ids[:, 0],
        "margin_logit": top_logits[:, 0] - top_logits[:, 1],
        "margin_prob": top_log_p[:, 0].exp() - top_log_p[:, 1].exp(),
        "norm_logits": torch.linalg.vector_norm(z, dim=-1),
        "std_logits": z.std(dim=-1, correction=1),
        "is_argmax": (top_ids[:, 0] == y).to(z.dtype),
    }
