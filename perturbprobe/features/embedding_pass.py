"""The teacher-forced pass on input embeddings, with one backward pass, for gradient families.

:class:`EmbeddingPass` runs the decoder on the input embeddings E (B, L, D) of a right-padded
batch with autograd on, computes ℓ = Σ_t log p(y_t | E) over every response token of every
pair, and back-propagates once: ``gradient`` is ∇_E ℓ (B, L, D). Pairs are independent, so
row b of the gradient is the gradient of pair b's own sum. The head's part of the gradient
is closed form for a linear head (∂ log p(y)/∂h = W[y] − Wᵀp, no (N × V) autograd graph);
soft-capped heads go through autograd on the head only.

It also scores perturbed copies of the embeddings (:meth:`EmbeddingPass.log_prob_y`) in
batched forward passes without gradients. Costs, in units of one forward pass over the batch:
the pass itself ≈ 1 forward + 1 backward (≈ 2 forwards); each perturbed copy 1 forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..llm import LLM, EncodedPair, Head

__all__ = ["EmbeddingPass"]

# Sequences per perturbed forward pass: copies of a batch are stacked up to this many rows.
_MAX_SEQUENCES = 64


class EmbeddingPass:
    """One batch's input embeddings, the response tokens' log-probabilities and ∇_E ℓ.

    Attributes
    ----------
    embeddings : Tensor (B, L, D)
        E, in the model's dtype (detached).
    attention_mask : LongTensor (B, L)
    response_mask : BoolTensor (B, T_max)
    token_positions : LongTensor (B, T_max)
        p_t: the position of response token t in the sequence (it is predicted from p_t − 1).
    token_ids : LongTensor (N,)
        y_t of every response token, flattened in pair order.
    final_hidden : Tensor (N, D)
        h_t (the head's input), detached, in the head's dtype (float32 in the engine).
    log_probs : Tensor (N,)
        log p(y_t | E), head dtype.
    gradient : Tensor (B, L, D)
        ∇_E Σ_t log p(y_t | E), head dtype.
    """

    def __init__(self, llm: LLM, pairs: Sequence[EncodedPair], head: Head, chunk_tokens: int):
        self._llm = llm
        self._head = head
        self._chunk_tokens = chunk_tokens
        input_ids, self.attention_mask = llm.pad([pair.input_ids for pair in pairs])
        self._input_ids = input_ids
        prompt = torch.tensor([len(p.prompt_ids) for p in pairs], device=llm.device)
        lengths = torch.tensor([len(p.response_ids) for p in pairs], device=llm.device)
        steps = torch.arange(int(lengths.max()), device=llm.device)  # (T_max,)
        self.response_mask = steps[None, :] < lengths[:, None]  # (B, T_max)
        positions = prompt[:, None] + steps[None, :]
        self.token_positions = positions.clamp(max=input_ids.shape[1] - 1)  # (B, T_max)
        self.token_ids = torch.gather(input_ids, 1, self.token_positions)[self.response_mask]

        leaf = llm.embed(input_ids).detach().requires_grad_(True)  # (B, L, D)
        with torch.enable_grad():
            hidden = self._response_hidden(leaf, self.attention_mask, copies=1)  # (N, D)
            self.final_hidden = hidden.detach().to(head.weight.dtype)
            self.log_probs, grad_hidden = self._log_prob_and_gradient(
                self.final_hidden, with_gradient=True
            )
            # Gradients w.r.t. the embeddings only: no parameter .grad is computed or touched.
            (gradient,) = torch.autograd.grad(
                hidden, leaf, grad_outputs=grad_hidden.to(hidden.dtype)
            )
        self.embeddings = leaf.detach()
        self.gradient = gradient.to(self.final_hidden.dtype)

    @property
    def num_pairs(self) -> int:
        return int(self.response_mask.shape[0])

    def sequences(self) -> list[list[int]]:
        """Each pair's token ids (without padding)."""
        lengths = self.attention_mask.sum(dim=1).tolist()
        return [row[:n] for row, n in zip(self._input_ids.tolist(), lengths, strict=True)]

    def log_prob_y(self, deltas: torch.Tensor) -> torch.Tensor:
        """log p(y_t | E + δ_k) (K, N) for perturbations ``deltas`` (K, B, L, D).

        The K perturbed copies of the batch are stacked into forward passes of up to
        ~64 sequences (no gradients).
        """
        n_copies = deltas.shape[0]
        per_pass = max(1, _MAX_SEQUENCES // self.num_pairs)
        results = []
        with torch.no_grad():
            for first in range(0, n_copies, per_pass):
                chunk = deltas[first : first + per_pass]  # (k, B, L, D)
                k = chunk.shape[0]
                embeds = (self.embeddings[None] + chunk.to(self.embeddings.dtype)).flatten(0, 1)
                mask = self.attention_mask.repeat(k, 1)  # (k·B, L)
                hidden = self._response_hidden(embeds, mask, copies=k).to(self.final_hidden.dtype)
                log_probs, _ = self._log_prob_and_gradient(hidden, self.token_ids.repeat(k))
                results.append(log_probs.view(k, -1))
        return torch.cat(results)  # (K, N)

    def _response_hidden(self, embeds, attention_mask, copies: int) -> torch.Tensor:
        """h_t (copies·N, D) at the response positions of ``copies`` stacked batch copies."""
        out = self._llm.model.base_model(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        )
        last = out.last_hidden_state  # (copies·B, L, D)
        positions = (self.token_positions - 1).repeat(copies, 1)  # (copies·B, T_max)
        rows = torch.arange(last.shape[0], device=last.device)[:, None]
        return last[rows, positions][self.response_mask.repeat(copies, 1)]

    def _log_prob_and_gradient(
        self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None, with_gradient=False
    ):
        """log p(y_t) (n,) and, if asked, ∂ log p(y_t)/∂h_t (n, D), in head-sized chunks of
        ``hidden`` (n, D) (head dtype)."""
        head = self._head
        token_ids = self.token_ids if token_ids is None else token_ids
        log_probs, gradients = [], []
        for start in range(0, hidden.shape[0], self._chunk_tokens):
            rows = slice(start, start + self._chunk_tokens)
            y = token_ids[rows]
            autograd_head = with_gradient and not head.is_linear
            with torch.set_grad_enabled(autograd_head):
                h = hidden[rows].detach().requires_grad_(autograd_head)
                log_p = torch.log_softmax(head(h), dim=-1)  # (n, V)
                picked = log_p.gather(1, y[:, None])[:, 0]  # (n,)
                if autograd_head:
                    gradients.append(torch.autograd.grad(picked.sum(), h)[0])
                elif with_gradient:
                    gradients.append(head.weight[y] - log_p.exp() @ head.weight)
            log_probs.append(picked.detach())
        gradient = torch.cat(gradients) if gradients else None
        return torch.cat(log_probs), gradient
