"""``ccps``: the hidden-state perturbation trajectory of CCPS (Khanmohammadi et al., 2025,
arXiv:2505.21772), computed in closed form from one teacher-forced pass.

For response token t with final hidden state h_t and actual token y_t:

1. ``g_t = ∇_h [−log softmax(head(h))_{y_t}]``. For a linear head ``z = W h + b`` this is
   ``Wᵀ(p_t − e_{y_t})``; a soft-capped head (Gemma-2) multiplies the coefficients by the
   cap's slope 1 − tanh². Closed form either way: no autograd.
2. ``u_t = g_t / ‖g_t‖`` (a token with ‖g_t‖ ≤ 1e-9 is degenerate: u_t = 0, nothing moves).
3. ``h_t^k = h_t + r_k u_t``, r_k = k·R/S, k = 1..S — the direction that increases the NLL.
   For a linear head ``z_t^k = z_t + r_k (W u_t)``: one matrix-vector product for all steps.

76 per-token features (FEATURES.md): 12 of the original state, ``jacobian_norm``,
``epsilon_to_flip``, ``flipped``, ``pei``, and 15 per-step metrics each summarised over the S
steps by ``min, max, mean, std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._numerics import resolved_std
from ..errors import ExtractionError
from ..llm import Head
from .base import FamilyOutput, FeatureFamily, PassBatch
from .distributions import (
    cosine,
    kl_and_js,
    logit_summary,
    nll_logit_gradient,
    rowdot,
    top_two,
)

__all__ = ["CCPS", "CCPSConfig"]

_DEGENERATE_NORM = 1e-9
_TINY = torch.finfo(torch.float32).tiny
# Below this many nats, KL and JS are recomputed in float64 for the rows concerned: their
# float32 formulas are sums of terms up to ~10 nats (entropies, Σ p·logit gaps) whose rounding,
# ~1e-7 absolute, would be more than 1e-4 of a divergence this small (small perturbations of
# confident tokens). Measured on the default LLM: ≲ 2 % of the steps at the default radius.
_PRECISE_DIVERGENCE = 1e-2
# Probability metrics whose spread over the steps is computed from 1 − p when p is mostly near
# 1: for a confident token p ≈ 1 − 1e-5 at every step, and float32 values that close to 1 keep
# only ~2 digits of their differences.
_COMPLEMENTED = ("prob_actual", "prob_argmax")
# The trajectory's vocabulary-wide passes run on blocks of this many tokens: their (rows, V)
# working set then stays in the CPU's cache across the S steps (measured ~30% faster on the
# default LLM than whole chunks). The matrix products still use whole chunks.
_CACHE_ROWS = 16


def _row_blocks(total: int, size: int):
    """Slices of at most ``size`` rows covering ``total`` rows."""
    return (slice(start, min(start + size, total)) for start in range(0, total, size))


ORIGINAL_FEATURES = (
    ("orig_log_prob_actual", "log_prob"),
    ("orig_prob_actual", "prob"),
    ("orig_logit_actual", "logit"),
    ("orig_prob_argmax", "max_prob"),
    ("orig_logit_argmax", "max_logit"),
    ("orig_entropy", "entropy"),
    ("orig_margin_logit_top1_top2", "margin_logit"),
    ("orig_margin_prob_top1_top2", "margin_prob"),
    ("orig_norm_logits_l2", "norm_logits"),
    ("orig_std_logits", "std_logits"),
    ("orig_norm_hidden_l2", None),  # from the hidden state, not the logits
    ("is_actual_token_orig_argmax", "is_argmax"),
)
TRAJECTORY_FEATURES = ("jacobian_norm", "epsilon_to_flip", "flipped", "pei")
STEP_METRICS = (
    "log_prob_actual",
    "prob_actual",
    "logit_actual",
    "delta_log_prob_actual",
    "prob_argmax",
    "logit_argmax",
    "argmax_changed",
    "entropy",
    "margin_logit_top1_top2",
    "norm_logits_l2",
    "kl_div",
    "js_div",
    "cos_sim_logits",
    "cos_sim_hidden",
    "l2_dist_hidden",
)
STEP_STATS = ("min", "max", "mean", "std")


@dataclass(frozen=True)
class CCPSConfig:
    """Hyper-parameters of the ``ccps`` family.

    Attributes
    ----------
    radius : float
        R, the largest perturbation norm (default 20.0, as the CCPS authors).
    steps : int
        S, the number of radii r_k = k·R/S on the trajectory (default 5).
    """

    radius: float = 20.0
    steps: int = 5

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise ExtractionError(f"ccps.radius must be > 0, got {self.radius}")
        if self.steps < 1:
            raise ExtractionError(f"ccps.steps must be >= 1, got {self.steps}")


class CCPS(FeatureFamily):
    """The CCPS perturbation-trajectory features (76 per token)."""

    name = "ccps"
    Config = CCPSConfig

    def token_features(self) -> list[str]:
        names = [name for name, _ in ORIGINAL_FEATURES] + list(TRAJECTORY_FEATURES)
        return names + [f"{metric}_{stat}" for metric in STEP_METRICS for stat in STEP_STATS]

    def compute(self, batch: PassBatch) -> FamilyOutput:
        token_values = self.batch_values(batch)  # (N, 76)
        no_response_columns = token_values.new_zeros((batch.num_pairs, 0))
        return FamilyOutput(self.token_features(), token_values, [], no_response_columns)

    def batch_values(self, batch: PassBatch) -> torch.Tensor:
        """The 76 features (N, 76) of every token of ``batch``, computed once per batch and
        configuration (``sua``'s ``hidden`` source reads the same trajectory)."""

        def compute() -> torch.Tensor:
            return torch.cat(
                [
                    self.token_values(batch.head, batch.final_hidden[rows], batch.token_ids[rows])
                    for rows in batch.head_chunks()
                ]
            )

        return batch.shared(("ccps", self.config), compute)

    def radii(self, device=None) -> torch.Tensor:
        """r_k = k·R/S for k = 1..S, shape (S,)."""
        steps = torch.arange(1, self.config.steps + 1, device=device, dtype=torch.float32)
        return steps * (self.config.radius / self.config.steps)

    def token_values(self, head, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The 76 features of a chunk of n tokens, in :meth:`token_features` order.

        Parameters
        ----------
        head : Head
            With float32 weights.
        hidden : Tensor (n, D), float32
        token_ids : LongTensor (n,)

        Returns
        -------
        Tensor (n, 76)
        """
        z = head(hidden)  # (n, V)
        original = logit_summary(z, token_ids)
        del original["log_probs"]
        p = original.pop("probs")  # (n, V)
        gradient = self.nll_gradient(head, hidden, token_ids, p, original["log_prob"])  # (n, D)
        norm = torch.linalg.vector_norm(gradient, dim=-1)  # (n,)
        degenerate = norm <= _DEGENERATE_NORM
        direction = torch.where(
            degenerate[:, None], 0.0, gradient / norm.clamp_min(_DEGENERATE_NORM)[:, None]
        )  # (n, D), unit or zero
        # W u for all radii at once (linear head): the third and last (n, D) × (D, V) product.
        logit_direction = direction @ head.weight.T if head.is_linear else None  # (n, V)
        radii = self.radii(hidden.device)
        origin = _Origin(head, hidden, token_ids, z, p, direction, logit_direction, original)
        blocks = _row_blocks(hidden.shape[0], _CACHE_ROWS)
        steps = torch.cat([_Trajectory(origin.block(rows)).metrics(radii) for rows in blocks])
        steps, complements = steps[..., : len(STEP_METRICS)], steps[..., len(STEP_METRICS) :]
        changed = steps[:, :, STEP_METRICS.index("argmax_changed")] > 0  # (n, S)
        flipped = changed.any(dim=1)
        first_flip = changed.to(torch.int8).argmax(dim=1)  # index of the first True
        no_flip = self.config.radius * (self.config.steps + 1) / self.config.steps
        epsilon = torch.where(flipped, radii[first_flip], torch.full_like(norm, no_flip))
        loss_rise = steps[:, :, STEP_METRICS.index("delta_log_prob_actual")].clamp_min(0.0)
        f = torch.cat([loss_rise.new_zeros((loss_rise.shape[0], 1)), loss_rise], dim=1)
        pei = ((f[:, :-1] + f[:, 1:]) / 2).mean(dim=1)  # trapezoid rule, (1/S) Σ
        spread = steps.std(dim=1, correction=0)  # (n, 15)
        complemented = [STEP_METRICS.index(metric) for metric in _COMPLEMENTED]
        near_one = steps[:, :, complemented].mean(dim=1) > 0.5  # (n, 2)
        spread[:, complemented] = torch.where(  # std(p) = std(1 − p); take the smaller one
            near_one, complements.std(dim=1, correction=0), spread[:, complemented]
        )
        magnitude = steps.abs().amax(dim=1)
        magnitude[:, complemented] = torch.where(
            near_one, complements.abs().amax(dim=1), magnitude[:, complemented]
        )
        spread = resolved_std(spread, magnitude)
        summaries = torch.stack(
            [steps.amin(dim=1), steps.amax(dim=1), steps.mean(dim=1), spread], dim=2
        )  # (n, 15, 4)
        original["norm_hidden"] = torch.linalg.vector_norm(hidden, dim=-1)
        columns = [original[key or "norm_hidden"] for _, key in ORIGINAL_FEATURES]
        columns += [norm, epsilon, flipped.to(hidden.dtype), pei]
        return torch.cat([torch.stack(columns, dim=1), summaries.flatten(1)], dim=1)

    @staticmethod
    def nll_gradient(head, hidden, token_ids, p, log_prob) -> torch.Tensor:
        """g = ∇_h −log softmax(head(h))_y = Wᵀ((p − e_y) ⊙ s), (n, D), in closed form for
        every head (:meth:`~perturbprobe.llm.Head.pullback`; ``p`` (n, V) the probabilities,
        ``log_prob`` (n,) log p_y). The y-th coefficient is exact for confident tokens
        (:func:`~.distributions.nll_logit_gradient`): g's direction drives every trajectory
        feature.
        """
        return head.pullback(hidden, nll_logit_gradient(p, log_prob, token_ids))


@dataclass
class _Origin:
    """The unperturbed state of n tokens, from which the trajectory is computed.

    With a linear head, z_k = z + r·a (a = W u), so the sums over the vocabulary that are
    linear in z_k — z·z_k, ‖z_k‖², z_k[y] — follow from sums computed once per block; each
    step then makes only the passes that need exp/log of z_k (and Σ p (z_k − max z_k), which
    must be summed after the shift to be exact: see :meth:`_Trajectory.step_metrics`).

    Attributes: ``hidden`` and ``direction`` (n, D); ``z``, ``p`` and ``logit_direction``
    (W u, None for a non-linear head) (n, V); ``token_ids`` (n,); ``original``: the
    :func:`logit_summary` of z, each (n,).
    """

    head: Head
    hidden: torch.Tensor
    token_ids: torch.Tensor
    z: torch.Tensor
    p: torch.Tensor
    direction: torch.Tensor
    logit_direction: torch.Tensor | None
    original: dict[str, torch.Tensor]

    def block(self, rows: slice) -> _Origin:
        """The same state restricted to ``rows``."""
        return _Origin(
            self.head,
            *(x[rows] for x in (self.hidden, self.token_ids, self.z, self.p, self.direction)),
            None if self.logit_direction is None else self.logit_direction[rows],
            {key: value[rows] for key, value in self.original.items()},
        )


class _Trajectory:
    """The S steps h + r_k·u of one block of tokens (a few, so the block's (n, V) arrays stay
    in the CPU cache across the steps)."""

    def __init__(self, origin: _Origin):
        self.origin = origin
        z, p, original = origin.z, origin.p, origin.original
        # Work buffers reused by every step: fresh (n, V) allocations cost more than the
        # arithmetic on CPU (the memory is faulted in anew each time).
        self.logits, self.probs, self.scratch = (torch.empty_like(z) for _ in range(3))
        self.rows = torch.arange(z.shape[0], device=z.device)
        self.zz = original["norm_logits"] ** 2  # (n,)
        # p plus the smallest normal float: t = p + p_k > 0 then, so log t is finite and an
        # underflowed t contributes its limit 0 to Σ t log t (the shift changes no sum).
        self.p_floor = p + _TINY
        self.top_rest = -torch.expm1(original["log_max_prob"])  # 1 − max p, exact
        a = origin.logit_direction
        if a is not None:
            self.za, self.aa = rowdot(z, a, self.scratch), rowdot(a, a, self.scratch)
            self.a_actual = a[self.rows, origin.token_ids]

    def metrics(self, radii: torch.Tensor) -> torch.Tensor:
        """Per-step metrics (n, S, 17) for radii (S,): the 15 ``STEP_METRICS`` and then 1 − p
        of each ``_COMPLEMENTED`` metric."""
        return torch.stack([self.step_metrics(float(radius)) for radius in radii], dim=1)

    def perturbed_logits(self, radius: float, moved: torch.Tensor):
        """z_k (n, V) and its sums (z·z_k, ‖z_k‖², z_k[y]), each (n,)."""
        origin = self.origin
        if origin.logit_direction is not None:
            z_k = torch.add(origin.z, origin.logit_direction, alpha=radius, out=self.logits)
            sums = (
                self.zz + radius * self.za,
                self.zz + 2 * radius * self.za + radius**2 * self.aa,
                origin.original["logit"] + radius * self.a_actual,
            )
            return z_k, sums
        z_k = origin.head(moved)
        sums = tuple(rowdot(x, z_k, self.scratch) for x in (origin.z, z_k))
        return z_k, (*sums, z_k[self.rows, origin.token_ids])

    def step_metrics(self, radius: float) -> torch.Tensor:
        """The 15 per-step metrics at h + radius·u, in ``STEP_METRICS`` order, then 1 − p of
        the ``_COMPLEMENTED`` ones: (n, 17).

        With M = max z_k, e = exp(z_k − M), S0 = Σ e = 1 + R and lse_k = M + log1p(R), where
        R, the non-top terms, is summed apart from the top term (exactly 1), as in
        :func:`~.distributions.log_softmax`:

        - H(p_k) = log1p(R) − Σ e (z_k − M) / S0;
        - KL(p‖p_k) = Σ p log p − Σ p (z_k − M) + log1p(R);
        - JS = H(m) − ½(H(p) + H(p_k)), with H(m) = log 2 − ½ Σ t log t, t = p + p_k = 2m.
          The top term of the original argmax a is taken out of the sum: with
          δ = (1 − p_a) + (1 − p_k,a), log 2 − ½ t_a log t_a = (δ/2) log 2 − (1 − δ/2)
          log1p(−δ/2). The other t are floored at the smallest normal float, so an
          underflowed t contributes its limit 0, never NaN.

        Every sum is then small where the result is small: for a confident token
        (1 − p_a ~ 1e-4) nothing is rounded against log 2, 1 or the logits' size, which is
        where the plain formulas lose 2–3 digits in float32. A divergence below
        ``_PRECISE_DIVERGENCE`` is recomputed in float64 (:meth:`precise_divergences`).
        Rounding can still push KL or JS a hair outside their range; they are clamped to
        [0, ∞) and [0, ln 2].
        """
        origin, original = self.origin, self.origin.original
        moved = origin.hidden + radius * origin.direction  # (n, D)
        z_k, (z_dot_z_k, z_k_sq, logit_actual) = self.perturbed_logits(radius, moved)
        top1, argmax, top2 = top_two(z_k)  # (n,) each
        shifted = z_k.sub_(top1[:, None])  # z_k − M, in place: (n, V)
        e = torch.exp(shifted, out=self.probs)
        e[self.rows, argmax] = 0.0  # the top term, exactly 1, is added back below
        rest = e.sum(dim=-1)  # R = S0 − 1
        s0, log_s0 = 1.0 + rest, torch.log1p(rest)
        entropy_k = log_s0 - rowdot(e, shifted, self.scratch) / s0  # top term: 1·0
        e[self.rows, argmax] = 1.0
        log_prob = shifted[self.rows, origin.token_ids] - log_s0
        log_prob_top = shifted[self.rows, original["argmax"]] - log_s0  # log p_k,a
        neg_entropy = -original["entropy"]  # Σ p log p
        kl = neg_entropy - rowdot(origin.p, shifted, self.scratch) + log_s0
        t = torch.addcmul(self.p_floor, e, s0.reciprocal()[:, None], out=e)  # p + p_k (+tiny)
        t[self.rows, original["argmax"]] = 1.0  # 1·log 1 = 0: the top term is added apart
        log_t = torch.log(t, out=shifted)
        half_delta = 0.5 * (self.top_rest - torch.expm1(log_prob_top))  # δ/2
        entropy_m = (
            half_delta * math.log(2.0)
            - (1.0 - half_delta) * torch.log1p(-half_delta)
            - 0.5 * rowdot(t, log_t, self.scratch)
        )
        js = entropy_m + 0.5 * (neg_entropy - entropy_k)
        small = (kl < _PRECISE_DIVERGENCE) | (js < _PRECISE_DIVERGENCE)
        if small.any():
            kl[small], js[small] = self.precise_divergences(small, radius, moved)
        norm_k = z_k_sq.clamp_min(0.0).sqrt()
        norm_z = original["norm_logits"]
        return torch.stack(
            [
                log_prob,
                log_prob.exp(),
                logit_actual,
                original["log_prob"] - log_prob,
                1.0 / s0,  # p_k at its argmax: exp(M − lse_k)
                top1,
                (argmax != original["argmax"]).to(z_k.dtype),
                entropy_k,
                top1 - top2,
                norm_k,
                kl.clamp_min(0.0),
                js.clamp(0.0, math.log(2.0)),
                z_dot_z_k / (norm_z * norm_k).clamp_min(1e-8),
                cosine(origin.hidden, moved),
                torch.linalg.vector_norm(moved - origin.hidden, dim=-1),
                -torch.expm1(log_prob),  # 1 − prob_actual
                rest / s0,  # 1 − prob_argmax
            ],
            dim=1,
        )

    def precise_divergences(self, rows: torch.Tensor, radius: float, moved: torch.Tensor):
        """KL(p‖p_k) and JS(p, p_k) of the rows selected by ``rows`` (bool (n,)), from float64
        logits; each (k,), float32.

        For a linear head z_k = z + r·a is formed in float64, so the perturbation r·a is not
        rounded against the logits' size (a float32 z_k resolves it only to ~1e-6·|z|, which
        is the whole signal of a small divergence).
        """
        origin = self.origin
        z = origin.z[rows].double()
        if origin.logit_direction is not None:
            z_k = z + radius * origin.logit_direction[rows].double()
        else:
            z_k = origin.head(moved[rows]).double()
        kl, js = kl_and_js(z, z_k)
        return kl.float(), js.float()
