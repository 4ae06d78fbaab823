"""``ccps``: the hidden-state perturbation trajectory of CCPS (Khanmohammadi et al., 2025,
arXiv:2505.21772), computed in closed form from one teacher-forced pass.

For response token t with final hidden state h_t and actual token y_t:

1. ``g_t = ∇_h [−log softmax(head(h))_{y_t}]``. For a linear head ``z = W h + b`` this is
   ``Wᵀ(p_t − e_{y_t})``; a non-linear head (Gemma-2 soft-capping) uses autograd on the head
   only.
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

from ..errors import ExtractionError
from .base import FamilyOutput, FeatureFamily, PassBatch
from .distributions import cosine, logit_summary, rowdot

__all__ = ["CCPS", "CCPSConfig"]

_DEGENERATE_NORM = 1e-9

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
        token_values = torch.cat(
            [
                self.token_values(batch.head, batch.final_hidden[rows], batch.token_ids[rows])
                for rows in batch.head_chunks()
            ]
        )  # (N, 76)
        no_response_columns = token_values.new_zeros((batch.num_pairs, 0))
        return FamilyOutput(self.token_features(), token_values, [], no_response_columns)

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
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        z = head(hidden)  # (n, V)
        original = logit_summary(z, token_ids)
        log_p = original.pop("log_probs")  # (n, V)
        p = log_p.exp()
        gradient = self.nll_gradient(head, hidden, token_ids, p)  # (n, D)
        norm = torch.linalg.vector_norm(gradient, dim=-1)  # (n,)
        degenerate = norm <= _DEGENERATE_NORM
        direction = torch.where(
            degenerate[:, None], 0.0, gradient / norm.clamp_min(_DEGENERATE_NORM)[:, None]
        )  # (n, D), unit or zero
        logit_direction = direction @ head.weight.T if head.is_linear else None  # (n, V): W u
        neg_entropy = -original["entropy"]  # Σ p log p
        norm_z = original["norm_logits"]
        radii = self.radii(hidden.device)
        per_step = []
        for radius in radii:
            moved = hidden + radius * direction  # (n, D)
            if logit_direction is not None:
                z_k = torch.add(z, logit_direction, alpha=float(radius))  # (n, V)
            else:
                z_k = head(moved)
            per_step.append(
                self._step_metrics(
                    z, log_p, p, neg_entropy, norm_z, z_k, hidden, moved, rows, token_ids, original
                )
            )
        steps = torch.stack(per_step, dim=1)  # (n, S, 15)
        changed = steps[:, :, STEP_METRICS.index("argmax_changed")] > 0  # (n, S)
        flipped = changed.any(dim=1)
        first_flip = changed.to(torch.int8).argmax(dim=1)  # index of the first True
        no_flip = self.config.radius * (self.config.steps + 1) / self.config.steps
        epsilon = torch.where(flipped, radii[first_flip], torch.full_like(norm, no_flip))
        loss_rise = steps[:, :, STEP_METRICS.index("delta_log_prob_actual")].clamp_min(0.0)
        f = torch.cat([loss_rise.new_zeros((loss_rise.shape[0], 1)), loss_rise], dim=1)
        pei = ((f[:, :-1] + f[:, 1:]) / 2).mean(dim=1)  # trapezoid rule, (1/S) Σ
        summaries = torch.stack(
            [
                steps.amin(dim=1),
                steps.amax(dim=1),
                steps.mean(dim=1),
                steps.std(dim=1, correction=0),
            ],
            dim=2,
        )  # (n, 15, 4)
        original["norm_hidden"] = torch.linalg.vector_norm(hidden, dim=-1)
        columns = [original[key or "norm_hidden"] for _, key in ORIGINAL_FEATURES]
        columns += [norm, epsilon, flipped.to(hidden.dtype), pei]
        return torch.cat([torch.stack(columns, dim=1), summaries.flatten(1)], dim=1)

    @staticmethod
    def _step_metrics(
        z, log_p, p, neg_entropy, norm_z, z_k, hidden, moved, rows, token_ids, original
    ) -> torch.Tensor:
        """The 15 per-step metrics (n, 15) of the perturbed logits ``z_k`` (n, V).

        Sums over the vocabulary are fused row-wise dot products (:func:`rowdot`): with
        Σ p log p known, KL(p‖p_k) = Σ p log p − Σ p log p_k and
        JS = ½(Σ p log p + Σ p_k log p_k) − Σ m log m need one pass each.
        Float rounding can push them a hair below 0; they are clamped.
        """
        log_p_k = torch.log_softmax(z_k, dim=-1)  # (n, V)
        p_k = log_p_k.exp()
        neg_entropy_k = rowdot(p_k, log_p_k)  # Σ p_k log p_k
        log_m = torch.logaddexp(log_p, log_p_k).sub_(math.log(2.0))  # (n, V)
        m_log_m = 0.5 * (rowdot(p, log_m) + rowdot(p_k, log_m))
        kl = neg_entropy - rowdot(p, log_p_k)
        js = 0.5 * (neg_entropy + neg_entropy_k) - m_log_m
        top_logits, top_ids = torch.topk(z_k, k=2, dim=-1)  # (n, 2)
        norm_k = torch.linalg.vector_norm(z_k, dim=-1)
        log_prob = log_p_k[rows, token_ids]
        return torch.stack(
            [
                log_prob,
                log_prob.exp(),
                z_k[rows, token_ids],
                original["log_prob"] - log_prob,
                (top_logits[:, 0] - torch.logsumexp(z_k, dim=-1)).exp(),
                top_logits[:, 0],
                (top_ids[:, 0] != original["argmax"]).to(z.dtype),
                -neg_entropy_k,
                top_logits[:, 0] - top_logits[:, 1],
                norm_k,
                kl.clamp_min(0.0),
                js.clamp(0.0, math.log(2.0)),
                rowdot(z, z_k) / (norm_z * norm_k).clamp_min(1e-8),
                cosine(hidden, moved),
                torch.linalg.vector_norm(moved - hidden, dim=-1),
            ],
            dim=1,
        )

    @staticmethod
    def nll_gradient(head, hidden, token_ids, p) -> torch.Tensor:
        """g = ∇_h −log softmax(head(h))_y, (n, D): closed form ``Wᵀ(p − e_y)`` for a linear
        head (``p`` (n, V) are the probabilities), autograd through the head otherwise."""
        if head.is_linear:
            residual = p.clone()  # (n, V): p − e_y after the next line
            residual[torch.arange(hidden.shape[0]), token_ids] -= 1.0
            return residual @ head.weight
        with torch.enable_grad():
            leaf = hidden.detach().requires_grad_(True)
            nll = -torch.log_softmax(head(leaf), dim=-1)
            total = nll[torch.arange(hidden.shape[0]), token_ids].sum()
            (gradient,) = torch.autograd.grad(total, leaf)
        return gradient
