"""Statistics of next-token distributions, computed from logits in float32.

All functions take logits ``z`` of shape (N, V) for N tokens and return per-token tensors of
shape (N,). Entropy is exact (``-Σ p log p`` from the log-softmax, ``0·log 0 = 0``); the
Jensen–Shannon divergence uses ``log m = logaddexp(log p, log q) − log 2`` so it stays within
[0, ln 2] even where ``m`` would underflow.

Confident tokens (p_top = 1 − ε, ε ~ 1e-4) are where float32 cancels: the normaliser
Σ exp(z − max) = 1 + ε is rounded to 1 ± 6e-8, so ``log`` of it — and every log-probability —
carries an error of ~1e-3 relative to ε. :func:`log_softmax` therefore sums the non-top terms
apart and takes ``log1p`` of that rest.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cosine",
    "entropy_from_log_probs",
    "js_divergence",
    "kl_and_js",
    "kl_divergence",
    "log_softmax",
    "logit_summary",
    "nll_logit_gradient",
    "rowdot",
    "top_two",
]


def rowdot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise dot products Σ_v a[n, v]·b[n, v], (N, V) × (N, V) → (N,).

    ``scratch`` (N, V), if given, receives the products: on CPU, allocating a fresh (N, V)
    temporary costs more than the arithmetic, so hot loops pass a buffer they reuse.
    """
    return torch.mul(a, b, out=scratch).sum(dim=-1)


def top_two(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest value, its index (the first one on ties) and the second largest, each (N,).

    Exact, and several times faster on CPU than ``topk(z, 2)`` or ``max(dim)`` (whose index
    tracking is slow): the V entries of a row are split into groups of ⌈√V⌉; one ``amax``
    pass gives every group's maximum, and only the winning group is searched for the index.

    Parameters
    ----------
    z : Tensor (N, V), V >= 2
    """
    n, vocab = z.shape
    width = math.isqrt(vocab - 1) + 1  # ⌈√V⌉ entries per group
    full = vocab // width
    group_max = z[:, : full * width].view(n, full, width).amax(dim=-1)  # (N, G)
    if full * width < vocab:  # the last, shorter group
        group_max = torch.cat([group_max, z[:, full * width :].amax(dim=-1, keepdim=True)], 1)
    rows = torch.arange(n, device=z.device)
    best, best_group = group_max.max(dim=-1)  # first group holding the maximum
    columns = best_group[:, None] * width + torch.arange(width, device=z.device)  # (N, width)
    members = z.gather(1, columns.clamp(max=vocab - 1))
    members = members.masked_fill(columns >= vocab, -torch.inf)  # past the end of the row
    position = members.argmax(dim=-1)  # first position of the maximum in its group
    members[rows, position] = -torch.inf
    group_max[rows, best_group] = -torch.inf
    second = torch.maximum(members.amax(dim=-1), group_max.amax(dim=-1))
    return best, best_group * width + position, second


def log_softmax(
    z: torch.Tensor, top: torch.Tensor | None = None, argmax: torch.Tensor | None = None
) -> torch.Tensor:
    """log softmax(z), (N, V) → (N, V), exact for near-one-hot rows too.

    With M = max z and R = Σ_{v ≠ argmax} exp(z_v − M), log p = (z − M) − log1p(R): R is
    summed without the top term (which is exactly 1), so for p_top = 1 − ε the rest ε is
    resolved to float32's relative precision instead of being rounded against 1, and
    ``expm1(log p_top)`` = −ε is exact. Pass ``top`` and ``argmax`` (N,) from :func:`top_two`
    when already computed.
    """
    if top is None or argmax is None:
        top, argmax, _ = top_two(z)
    rows = torch.arange(z.shape[0], device=z.device)
    shifted = z - top[:, None]
    rest = torch.exp(shifted)
    rest[rows, argmax] = 0.0
    return shifted.sub_(torch.log1p(rest.sum(dim=-1))[:, None])


def nll_logit_gradient(
    p: torch.Tensor, log_prob: torch.Tensor, token_ids: torch.Tensor
) -> torch.Tensor:
    """∂(−log p_y)/∂z = p − e_y, (N, V), with the y-th entry computed as ``expm1(log p_y)``.

    For a confident token (1 − p_y ~ 1e-4) the subtraction p_y − 1 cancels in float32 to
    ~1e-3 relative error, which is then the error of the whole gradient ``Wᵀ(p − e_y)`` (the
    other entries are of size 1 − p_y too). ``log_prob`` (N,) must come from
    :func:`log_softmax` to carry that precision.
    """
    rows = torch.arange(token_ids.shape[0], device=token_ids.device)
    gradient = p.clone()
    gradient[rows, token_ids] = torch.expm1(log_prob)
    return gradient


def entropy_from_log_probs(log_p: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) = −Σ p log p, (N, V) → (N,). Exact: p = exp(log p) is 0 only where it underflows.

    Pass ``p`` = ``log_p.exp()`` when you already have it.
    """
    return -rowdot(log_p.exp() if p is None else p, log_p)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q), (N, V) × (N, V) → (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = ½(p + q); (N,), in [0, ln 2]."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m))


def kl_and_js(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p ‖ q) and JS(p, q), (N, V) × (N, V) → (N,) each, in ``log_p``'s dtype.

    Computed in float64 from log-probabilities renormalised in float64: for the tiny
    perturbations of ``sua``'s embedding sources the divergences are ~1e-9…1e-6, far below
    float32's cancellation error on sums over the vocabulary (a float32 JS of two distributions
    ~1e-7 apart comes out as exactly 0). JS = log 2 − ½ Σ t log t − ½ (H(p) + H(q)) with
    t = p + q (floored at the smallest normal float: an underflowed t contributes its limit 0);
    rounding can push either a hair outside its range, so they are clamped to [0, ∞) and
    [0, ln 2].
    """
    dtype = log_p.dtype
    log_p = torch.log_softmax(log_p.double(), dim=-1)
    log_q = torch.log_softmax(log_q.double(), dim=-1)
    p, q = log_p.exp(), log_q.exp()
    neg_entropy_p = rowdot(p, log_p)  # Σ p log p
    kl = neg_entropy_p - rowdot(p, log_q)
    entropy_q = -rowdot(q, log_q)
    t = q.add_(p).clamp_min_(torch.finfo(q.dtype).tiny)
    js = math.log(2.0) - 0.5 * rowdot(t, t.log()) + 0.5 * (neg_entropy_p - entropy_q)
    return kl.clamp_min(0.0).to(dtype), js.clamp(0.0, math.log(2.0)).to(dtype)


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
        ``log_max_prob``, ``max_logit`` and ``argmax`` (long) of the top token; ``margin_logit`` and
        ``margin_prob`` between the top two; ``norm_logits`` (L2); ``std_logits`` (ddof=1);
        ``is_argmax`` (1.0 when y is the top token); and the distribution itself,
        ``log_probs`` and ``probs`` (N, V).
    """
    top1, argmax, top2 = top_two(z)
    log_p = log_softmax(z, top1, argmax)  # (N, V)
    p = log_p.exp()
    rows = torch.arange(z.shape[0], device=z.device)
    log_top1_prob = log_p[rows, argmax]
    log_normalizer = top1 - log_top1_prob  # logsumexp(z)
    top1_prob, top2_prob = log_top1_prob.exp(), (top2 - log_normalizer).exp()
    log_prob = log_p[rows, y]
    return {
        "log_probs": log_p,
        "probs": p,
        "log_prob": log_prob,
        "log_max_prob": log_top1_prob,
        "prob": log_prob.exp(),
        "logit": z[rows, y],
        "entropy": entropy_from_log_probs(log_p, p),
        "max_prob": top1_prob,
        "max_logit": top1,
        "argmax": argmax,
        "margin_logit": top1 - top2,
        "margin_prob": top1_prob - top2_prob,
        "norm_logits": torch.linalg.vector_norm(z, dim=-1),
        # ddof=1, as the CCPS reference; one norm pass is ~4x faster than Tensor.std on CPU
        "std_logits": torch.linalg.vector_norm(z - z.mean(dim=-1, keepdim=True), dim=-1)
        / math.sqrt(z.shape[-1] - 1),
        "is_argmax": (argmax == y).to(z.dtype),
    }
