"""``semantic_gradient``: SemGrad, ParaGrad and HybridGrad (arXiv 2605.04638; FEATURES.md).

Following the authors' code, with weights ω_t = H(p_t) (detached) and the loss

    Λ = (1/T) Σ_t ω_t log p(y_t)      (the *unweighted* variants use ω_t ≡ 1: ExGrad),

for one response of T tokens:

- ``semgrad``: the mean absolute value of ∇Λ w.r.t. the hidden states at the semantic
  preserving token t*, over the layer band (``hidden_states`` indices L−⌊L/2⌋ … L−1 by
  default), concatenated; ``semgrad_l2`` its l2 norm; ``semgrad_layer_<l>`` the mean absolute
  value per layer l of the band; ``semgrad_unweighted`` with ω ≡ 1.
- ``paragrad``: the mean absolute value of ∇Λ w.r.t. the LM-head weight *parameter* W (V × D);
  ``paragrad_l2`` its l2 (Frobenius) norm; ``paragrad_unweighted`` with ω ≡ 1. The head's part
  is closed form, never autograd on a V × D parameter:
  ∂Λ/∂W = (1/T) Σ_t ω_t ((e_{y_t} − p_t) ⊙ s_t) h_tᵀ, with s_t = 1 for a linear head and
  s_t = 1 − tanh²(u_t/c) for a soft-capped one (z = c·tanh(u/c), u = W h + b).
  **Tied embeddings**: when W is also the input embedding table, the parameter's gradient also
  has the embedding-lookup part (what autograd gives the authors' code): row v gains
  Σ_{i: x_i = v} ∂Λ/∂E_i (times the embedding scale, e.g. Gemma's √D; rows of the module's
  ``padding_idx`` get nothing, as in ``nn.Embedding``). It is a scatter-add of ∇_E Λ, which
  the shared backward pass already yields. ``paragrad_head`` is the head-only part
  (= ``paragrad`` for an untied model).
- ``hybridgrad`` = (1 − e^{−ω̄})·semgrad + e^{−ω̄}·paragrad, ω̄ = ``mean_entropy`` = mean_t ω_t.

t* is an offset from the end of the prompt (``semantic_offset``, 0 = the model's default, see
:mod:`perturbprobe.features.semantic_token` for the per-architecture table; measure one with
``perturbprobe sps``). Response-level features only.

Cost: nothing beyond the shared gradient pass (one forward, one backward batched over the two
losses ℓ₁ and ℓ_ω), plus head-sized arithmetic: per response about three (T × V × D) products
for ParaGrad (logits, the (V × D) gradient in vocabulary chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ExtractionError
from ..llm import LLM, Head
from .base import FamilyOutput, FeatureFamily, PassBatch
from .embedding_pass import EmbeddingPass, GradientRequest
from .semantic_token import default_semantic_offset

__all__ = ["SemanticGradient", "SemanticGradientConfig"]

SCALARS = (
    "semgrad",
    "semgrad_unweighted",
    "semgrad_l2",
    "paragrad",
    "paragrad_head",
    "paragrad_unweighted",
    "paragrad_l2",
    "hybridgrad",
    "mean_entropy",
)


@dataclass(frozen=True)
class SemanticGradientConfig:
    """t* and the layer band.

    Attributes
    ----------
    semantic_offset : int
        t* as an offset from the end of the prompt (1 = last prompt token); 0 (default) = the
        model's default t* (the token that opens the assistant turn).
    layer_band : str
        ``"auto"`` (L−⌊L/2⌋ … L−1) or ``"first-last"``, inclusive ``hidden_states`` indices
        (0 = embedding output, L = final-norm output), e.g. ``"15-29"``.
    """

    semantic_offset: int = 0
    layer_band: str = "auto"

    def __post_init__(self) -> None:
        if self.semantic_offset < 0:
            raise ExtractionError("semantic_gradient.semantic_offset must be >= 0 (0 = default)")
        if self.layer_band != "auto":
            _parse_band(self.layer_band, num_layers=None)

    def to_band(self, num_layers: int) -> tuple[int, ...]:
        """The ``hidden_states`` indices of the band for a model with ``num_layers`` layers."""
        if self.layer_band == "auto":
            first, last = num_layers - num_layers // 2, num_layers - 1
        else:
            first, last = _parse_band(self.layer_band, num_layers)
        return tuple(range(first, last + 1))


def _parse_band(text: str, num_layers: int | None) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    try:
        band = int(first), int(last)
    except ValueError:
        band = None
    if not dash or band is None or not 0 <= band[0] <= band[1]:
        raise ExtractionError(
            f"semantic_gradient.layer_band must be 'auto' or 'first-last' with "
            f"0 <= first <= last, got {text!r}"
        )
    if num_layers is not None and band[1] > num_layers:
        raise ExtractionError(
            f"semantic_gradient.layer_band {text!r} exceeds the model's hidden_states "
            f"indices 0…{num_layers}"
        )
    return band


class SemanticGradient(FeatureFamily):
    """SemGrad, ParaGrad, HybridGrad and their variants (see the module docstring)."""

    name = "semantic_gradient"
    Config = SemanticGradientConfig
    needs = frozenset({"input_gradient"})
    aggregate = False

    def __init__(self, config=None):
        super().__init__(config)
        self.offset: int | None = None
        self.layers: tuple[int, ...] = ()
        self.lookup_scale: float | None = None  # None: the head is not tied to the embeddings
        self.padding_idx: int | None = None

    def prepare(self, llm: LLM) -> None:
        """Resolve t*, the band and whether the head weight is the embedding table."""
        if llm.num_layers < 2:
            raise ExtractionError(f"SemGrad needs at least 2 layers; {llm.name!r} has 1")
        self.offset = self.config.semantic_offset or default_semantic_offset(llm)
        self.layers = self.config.to_band(llm.num_layers)
        embedding = llm.model.get_input_embeddings()
        output = llm.model.get_output_embeddings()
        tied = output is not None and output.weight.data_ptr() == embedding.weight.data_ptr()
        self.lookup_scale = float(getattr(embedding, "embed_scale", 1.0)) if tied else None
        self.padding_idx = getattr(embedding, "padding_idx", None)

    def gradient_request(self) -> GradientRequest:
        self._check_prepared()
        return GradientRequest(
            entropy_weighted=True, semantic_offset=self.offset, hidden_layers=self.layers
        )

    def token_features(self) -> list[str]:
        return []

    def response_features(self) -> list[str]:
        self._check_prepared()
        return list(SCALARS) + [f"semgrad_layer_{layer}" for layer in self.layers]

    def _check_prepared(self) -> None:
        if self.offset is None:
            raise ExtractionError("semantic_gradient: call prepare(llm) first (the engine does)")

    def compute(self, batch: PassBatch) -> FamilyOutput:
        ep = batch.embedding_pass
        lengths = batch.lengths.to(ep.entropy.dtype)  # (B,)
        weighted = ep.hidden_gradients["entropy"] / lengths[:, None, None]  # (B, n_layers, D)
        uniform = ep.hidden_gradients["uniform"] / lengths[:, None, None]
        mean_entropy = batch.response_mean(ep.entropy)  # ω̄ (B,)
        para = self.paragrad(batch)  # (B, 4)
        semgrad = weighted.abs().mean(dim=(1, 2))
        share = torch.exp(-mean_entropy)
        values = torch.stack(
            [
                semgrad,
                uniform.abs().mean(dim=(1, 2)),
                torch.linalg.vector_norm(weighted.flatten(1), dim=1),
                *para.unbind(dim=1),
                (1 - share) * semgrad + share * para[:, 0],
                mean_entropy,
            ],
            dim=1,
        )
        values = torch.cat([values, weighted.abs().mean(dim=2)], dim=1)
        no_tokens = values.new_zeros((ep.token_ids.shape[0], 0))
        return FamilyOutput([], no_tokens, self.response_features(), values)

    def paragrad(self, batch: PassBatch) -> torch.Tensor:
        """(B, 4): ``paragrad``, ``paragrad_head``, ``paragrad_unweighted``, ``paragrad_l2``."""
        ep = batch.embedding_pass
        head = batch.head
        starts = torch.cumsum(batch.lengths, 0) - batch.lengths
        rows = []
        for b, (start, length) in enumerate(
            zip(starts.tolist(), batch.lengths.tolist(), strict=True)
        ):
            tokens = slice(start, start + length)
            entropy = ep.entropy[tokens]
            weights = torch.stack([entropy, torch.ones_like(entropy)]) / length  # (2, T)
            lookup = self._lookup(ep, b, 1.0 / length)
            rows.append(
                _head_gradient_norms(
                    head,
                    ep.final_hidden[tokens],
                    ep.token_ids[tokens],
                    ep.log_probs[tokens],
                    weights,
                    lookup,
                    budget=batch.chunk_tokens * head.weight.shape[0],
                )
            )
        return torch.stack(rows)

    def _lookup(self, ep: EmbeddingPass, row: int, scale: float):
        """The embedding-lookup part of pair ``row``'s gradient for a tied head: (ids (U,),
        rows (2, U, D)) for Λ_ω and Λ₁ (``scale`` = 1/T), or None when the head is untied."""
        if self.lookup_scale is None:
            return None
        length = int(ep.attention_mask[row].sum())
        ids = ep.input_ids[row, :length]
        gradients = torch.stack([ep.entropy_gradient[row, :length], ep.gradient[row, :length]])
        if self.padding_idx is not None:
            gradients = gradients * (ids != self.padding_idx)[None, :, None]
        unique, inverse = torch.unique(ids, return_inverse=True)
        summed = gradients.new_zeros((2, len(unique), gradients.shape[-1]))
        summed.index_add_(1, inverse, gradients)
        return unique, summed * (scale * self.lookup_scale)


def _head_gradient_norms(head: Head, hidden, token_ids, log_probs, weights, lookup, budget):
    """Norms of ∂Λ/∂W (V × D) for one response, built in vocabulary chunks.

    Parameters
    ----------
    hidden : Tensor (T, D)
    token_ids, log_probs : Tensor (T,)
        y_t and log p(y_t) (to recover each row's log-normaliser without a second pass).
    weights : Tensor (2, T)
        ω_t/T and 1/T.
    lookup : (ids (U,), rows (2, U, D)) or None
        The tied embedding-lookup part for the two losses.
    budget : int
        Float elements allowed per chunk array.

    Returns
    -------
    Tensor (4,): mean |∂Λ_ω/∂W|, the same for the head part only, mean |∂Λ₁/∂W|, ‖∂Λ_ω/∂W‖₂.
    """
    vocab, width = head.weight.shape
    length = hidden.shape[0]
    picked = _picked_logits(head, hidden, token_ids)  # z_t[y_t] (T,)
    log_normalizer = picked - log_probs  # (T,)
    weighted_hidden = torch.cat([hidden * w[:, None] for w in weights], dim=1)  # (T, 2D)
    chunk = max(1, min(vocab, budget // max(length, 2 * width)))
    total = hidden.new_zeros(4)
    for first in range(0, vocab, chunk):
        columns = slice(first, min(first + chunk, vocab))
        raw = hidden @ head.weight[columns].T  # (T, c)
        if head.bias is not None:
            raw = raw + head.bias[columns]
        if head.softcap is None:
            logits, slope = raw, None
        else:
            squashed = torch.tanh(raw / head.softcap)
            logits, slope = head.softcap * squashed, 1 - squashed**2
        coefficient = -torch.exp(logits - log_normalizer[:, None])  # −p (T, c)
        inside = (token_ids >= columns.start) & (token_ids < columns.stop)
        rows = torch.nonzero(inside)[:, 0]
        # e_y − p: 1 − p_y = −expm1(log p_y), exact where 1 − p_y ~ 1e-4 (not 1 + (−p_y))
        coefficient[rows, token_ids[rows] - columns.start] = -torch.expm1(log_probs[rows])
        if slope is not None:
            coefficient = coefficient * slope
        gradient = coefficient.T @ weighted_hidden  # (c, 2D): [Λ_ω | Λ₁]
        sums = gradient.abs().view(-1, 2, width).sum(dim=(0, 2))  # (2,): one vocabulary pass
        squares = torch.linalg.vector_norm(gradient[:, :width]) ** 2
        total += torch.stack([sums[0], sums[0], sums[1], squares])
        if lookup is not None:  # tied: only the rows of the sequence's ids change
            ids, parts = lookup
            here = (ids >= columns.start) & (ids < columns.stop)
            before = gradient[ids[here] - columns.start].view(-1, 2, width)  # (k, 2, D)
            after = before + parts[:, here].transpose(0, 1)
            change = after.abs().sum(dim=(0, 2)) - before.abs().sum(dim=(0, 2))
            change_squares = (after[:, 0].square() - before[:, 0].square()).sum()
            total += torch.stack([change[0], change.new_zeros(()), change[1], change_squares])
    size = vocab * width
    return torch.stack([total[0] / size, total[1] / size, total[2] / size, total[3].sqrt()])


def _picked_logits(head: Head, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """z_t[y_t] (T,) from the rows of W for y_t only."""
    raw = (hidden * head.weight[token_ids]).sum(dim=-1)
    if head.bias is not None:
        raw = raw + head.bias[token_ids]
    return raw if head.softcap is None else head.softcap * torch.tanh(raw / head.softcap)
