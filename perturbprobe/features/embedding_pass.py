"""The teacher-forced pass on input embeddings, with one backward pass, for gradient families.

:class:`EmbeddingPass` runs the decoder on the input embeddings E (B, L, D) of a right-padded
batch with autograd on and back-propagates *once* for every loss the requesting families need.
The losses are per-token weightings of the response log-probabilities,

- ``uniform``: ℓ₁ = Σ_t log p(y_t | E) (``embedding_perturbation``; SemGrad's unweighted
  variants, up to the 1/T the family applies);
- ``entropy``: ℓ_ω = Σ_t ω_t log p(y_t | E) with ω_t = H(p_t) detached (SemGrad, ParaGrad),

and the leaves are E and, on request, the hidden states ``hidden_states[l]`` of a band of
layers (gradients kept at one prompt position, t*). Two losses share the one backward pass:
the backward is a vector–Jacobian product, linear in the loss weights, so both weight vectors
go through it as a batch (``torch.autograd.grad(..., is_grads_batched=True)``, a vmap over
the cotangents): one forward, one batched backward, the same activations. Pairs are
independent, so row b of every gradient is the gradient of pair b's own sum. The head's
part is closed form for a linear head (∂ log p(y)/∂h = W[y] − Wᵀp, no (N × V) autograd
graph); soft-capped heads go through autograd on the head only.

It also scores perturbed copies of the embeddings in batched forward passes without
gradients (:meth:`EmbeddingPass.perturbed`), cached per perturbation so families asking for
the same one share it. Costs, in units of one forward pass over the batch: the pass itself
≈ 1 forward + 1 backward per loss (the backward w.r.t. activations only, ≈ 1 forward each);
each perturbed copy 1 forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ExtractionError
from ..llm import LLM, EncodedPair, Head
from .distributions import kl_and_js, log_softmax, nll_logit_gradient, rowdot

__all__ = ["EmbeddingPass", "GradientRequest", "PerturbedStats"]

# Sequences per perturbed forward pass: copies of a batch are stacked up to this many rows.
_MAX_SEQUENCES = 64


@dataclass(frozen=True)
class GradientRequest:
    """What the families need from the gradient pass; the engine merges their requests.

    Attributes
    ----------
    entropy_weighted : bool
        Also back-propagate ℓ_ω (entropy-weighted), besides ℓ₁.
    semantic_offset : int or None
        t*, as an offset from the end of the prompt (1 = last prompt token); with
        ``hidden_layers``, gradients w.r.t. the hidden states at t* are kept.
    hidden_layers : tuple of int
        ``hidden_states`` indices (0 = embedding output) whose gradient at t* is wanted.
    divergences : bool
        Perturbed passes also compute KL(p_t ‖ p_t') and JS(p_t, p_t') against the original
        distributions (``sua``), not only log p'(y_t).
    keep_hidden_states : bool
        Keep every layer's output of the pass (detached) for ``hidden_states``.
    """

    entropy_weighted: bool = False
    semantic_offset: int | None = None
    hidden_layers: tuple[int, ...] = ()
    divergences: bool = False
    keep_hidden_states: bool = False

    def merge(self, other: GradientRequest) -> GradientRequest:
        """The union of two requests (t* and layers must agree when both set them)."""
        for name in ("semantic_offset", "hidden_layers"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine and theirs and mine != theirs:
                raise ExtractionError(f"two families ask for different {name}: {mine}, {theirs}")
        return GradientRequest(
            self.entropy_weighted or other.entropy_weighted,
            self.semantic_offset or other.semantic_offset,
            self.hidden_layers or other.hidden_layers,
            self.divergences or other.divergences,
            self.keep_hidden_states or other.keep_hidden_states,
        )


@dataclass(frozen=True)
class PerturbedStats:
    """How K perturbed copies of a batch change each response token's distribution.

    Attributes
    ----------
    log_prob_y : Tensor (K, N)
        log p'(y_t) under each copy.
    kl, js : Tensor (K, N) or None
        KL(p_t ‖ p_t') and JS(p_t, p_t') (natural logs, JS in [0, ln 2]); None unless the
        pass was built with ``divergences``.
    """

    log_prob_y: torch.Tensor
    kl: torch.Tensor | None = None
    js: torch.Tensor | None = None


class EmbeddingPass:
    """One batch's input embeddings, the response tokens' log-probabilities and gradients.

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
    log_probs, entropy : Tensor (N,)
        log p(y_t | E) and H(p_t), head dtype.
    gradient : Tensor (B, L, D)
        ∇_E Σ_t log p(y_t | E), head dtype.
    entropy_gradient : Tensor (B, L, D) or None
        ∇_E Σ_t ω_t log p(y_t | E) (``entropy_weighted``).
    semantic_positions : LongTensor (B,) or None
        The position of t* in each sequence.
    hidden_gradients : dict or None
        ``{"uniform": (B, n_layers, D), "entropy": (B, n_layers, D)}``: the gradients of ℓ₁
        and ℓ_ω w.r.t. ``hidden_states[l]`` at t*, for l in ``request.hidden_layers``.
    hidden_states : tuple of Tensor (B, L, D) or None
        Every layer's output (index 0: embeddings), detached, model dtype
        (``request.keep_hidden_states``).
    """

    def __init__(
        self,
        llm: LLM,
        pairs: Sequence[EncodedPair],
        head: Head,
        chunk_tokens: int,
        request: GradientRequest | None = None,
    ):
        self._llm = llm
        self._head = head
        self._chunk_tokens = chunk_tokens
        self.request = request = request or GradientRequest()
        self._cache: dict[tuple, PerturbedStats] = {}
        input_ids, self.attention_mask = llm.pad([pair.input_ids for pair in pairs])
        self._input_ids = input_ids
        prompt = torch.tensor([len(p.prompt_ids) for p in pairs], device=llm.device)
        lengths = torch.tensor([len(p.response_ids) for p in pairs], device=llm.device)
        steps = torch.arange(int(lengths.max()), device=llm.device)  # (T_max,)
        self.response_mask = steps[None, :] < lengths[:, None]  # (B, T_max)
        positions = prompt[:, None] + steps[None, :]
        self.token_positions = positions.clamp(max=input_ids.shape[1] - 1)  # (B, T_max)
        self.token_ids = torch.gather(input_ids, 1, self.token_positions)[self.response_mask]
        self.semantic_positions = None
        if request.semantic_offset is not None:  # a prompt shorter than the offset: its 1st token
            self.semantic_positions = (prompt - request.semantic_offset).clamp(min=0)
        self._backward(llm, head, input_ids)

    def _backward(self, llm: LLM, head: Head, input_ids: torch.Tensor) -> None:
        request = self.request
        leaf = llm.embed(input_ids).detach().requires_grad_(True)  # (B, L, D)
        with torch.enable_grad():
            hidden, layers, states = self._response_hidden(
                leaf,
                self.attention_mask,
                copies=1,
                layers=request.hidden_layers,
                keep_states=request.keep_hidden_states,
            )  # (N, D), n_layers × (B, L, D), None or (L+1) × (B, L, D)
            self.hidden_states = None if states is None else tuple(h.detach() for h in states)
            self.final_hidden = hidden.detach().to(head.weight.dtype)
            self.log_probs, self.entropy, grad_hidden = self._head_pass(
                self.final_hidden, with_gradient=True
            )
            weights = [torch.ones_like(self.entropy)]
            if request.entropy_weighted:
                weights.append(self.entropy)
            cotangents = torch.stack([w[:, None] * grad_hidden for w in weights])  # (K, N, D)
            # Gradients w.r.t. the leaves only: no parameter .grad is computed or touched.
            gradients = torch.autograd.grad(
                hidden,
                [leaf, *layers],
                grad_outputs=cotangents.to(hidden.dtype) if len(weights) > 1 else cotangents[0],
                is_grads_batched=len(weights) > 1,
            )
        if len(weights) == 1:
            gradients = tuple(g[None] for g in gradients)  # (1, B, L, D) each
        dtype = self.final_hidden.dtype
        self.embeddings = leaf.detach()
        self.gradient = gradients[0][0].to(dtype)
        self.entropy_gradient = gradients[0][1].to(dtype) if request.entropy_weighted else None
        self.hidden_gradients = None
        if layers:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            at_t = torch.stack([g[:, rows, self.semantic_positions] for g in gradients[1:]], 2)
            names = ("uniform", "entropy")[: len(weights)]
            self.hidden_gradients = {n: at_t[k].to(dtype) for k, n in enumerate(names)}

    @property
    def num_pairs(self) -> int:
        return int(self.response_mask.shape[0])

    @property
    def input_ids(self) -> torch.Tensor:
        """LongTensor (B, L): the padded token ids (padding where ``attention_mask`` is 0)."""
        return self._input_ids

    def sequences(self) -> list[list[int]]:
        """Each pair's token ids (without padding)."""
        lengths = self.attention_mask.sum(dim=1).tolist()
        return [row[:n] for row, n in zip(self._input_ids.tolist(), lengths, strict=True)]

    # ---- perturbed passes -----------------------------------------------------------------
    def adversarial(self, norm: str, alpha: float) -> PerturbedStats:
        """The perturbation that lowers ℓ₁ most to first order, one copy (K = 1), cached:
        ``norm="linf"``: δ = −α·sign(G); ``norm="l2"``: δ = −α·G (G = :attr:`gradient`)."""
        key = ("adversarial", norm, float(alpha))
        if key not in self._cache:
            if norm == "linf":
                delta = -alpha * self.gradient.sign()
            elif norm == "l2":
                delta = -alpha * self.gradient
            else:
                raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
            self._cache[key] = self.perturbed(delta[None])
        return self._cache[key]

    def gaussian(self, sigma: float, samples: int, seed: int) -> PerturbedStats:
        """r = ``samples`` copies with δ_j ~ N(0, σ²I) (K = r), cached. Each pair's noise comes
        from a generator seeded by ``seed`` and its token ids, so it does not depend on the
        batch the pair is in."""
        key = ("gaussian", float(sigma), int(samples), int(seed))
        if key not in self._cache:
            self._cache[key] = self.perturbed(self.gaussian_noise(sigma, samples, seed))
        return self._cache[key]

    def gaussian_noise(self, sigma: float, samples: int, seed: int) -> torch.Tensor:
        """The δ_j of :meth:`gaussian`, (r, B, L, D) float32 (zero at padding)."""
        batch, length, width = self.gradient.shape
        deltas = torch.zeros(samples, batch, length, width)
        for row, ids in enumerate(self.sequences()):
            generator = torch.Generator().manual_seed(_pair_seed(seed, ids))
            noise = torch.randn((samples, len(ids), width), generator=generator)
            deltas[:, row, : len(ids)] = noise * sigma
        return deltas.to(self.gradient.device)

    def log_prob_y(self, deltas: torch.Tensor) -> torch.Tensor:
        """log p(y_t | E + δ_k) (K, N) for perturbations ``deltas`` (K, B, L, D)."""
        return self.perturbed(deltas, divergences=False).log_prob_y

    def perturbed(self, deltas: torch.Tensor, divergences: bool | None = None) -> PerturbedStats:
        """Statistics of the K copies E + δ_k, ``deltas`` (K, B, L, D).

        The copies are stacked into forward passes of up to ~64 sequences (no gradients).
        ``divergences`` defaults to the request's.
        """
        if divergences is None:
            divergences = self.request.divergences
        n_copies = deltas.shape[0]
        per_pass = max(1, _MAX_SEQUENCES // self.num_pairs)
        hidden = []
        with torch.no_grad():
            for first in range(0, n_copies, per_pass):
                chunk = deltas[first : first + per_pass]  # (k, B, L, D)
                k = chunk.shape[0]
                embeds = (self.embeddings[None] + chunk.to(self.embeddings.dtype)).flatten(0, 1)
                mask = self.attention_mask.repeat(k, 1)  # (k·B, L)
                states, _, _ = self._response_hidden(embeds, mask, copies=k)
                hidden.append(states.to(self.final_hidden.dtype).view(k, -1, states.shape[-1]))
            return self._compare(torch.cat(hidden), divergences)  # (K, N, D) → stats

    def _compare(self, hidden: torch.Tensor, divergences: bool) -> PerturbedStats:
        """Statistics of perturbed final hidden states ``hidden`` (K, N, D) against the
        original distributions, in head-sized chunks of tokens (the original chunk once)."""
        head, n_copies = self._head, hidden.shape[0]
        parts: dict[str, list[torch.Tensor]] = {"log_prob_y": [], "kl": [], "js": []}
        step = max(1, self._chunk_tokens // 2) if divergences else self._chunk_tokens  # float64
        for start in range(0, hidden.shape[1], step):
            rows = slice(start, start + step)
            y = self.token_ids[rows, None]
            if divergences:
                log_p = torch.log_softmax(head(self.final_hidden[rows]), dim=-1)  # (n, V)
            for k in range(n_copies):
                log_q = log_softmax(head(hidden[k, rows]))  # (n, V)
                parts["log_prob_y"].append(log_q.gather(1, y)[:, 0])
                if divergences:
                    kl, js = kl_and_js(log_p, log_q)
                    parts["kl"].append(kl)
                    parts["js"].append(js)

        def stacked(name):  # appended chunk by chunk, copy by copy → (K, N)
            values = parts[name]
            chunks = range(0, len(values), n_copies)
            return torch.cat([torch.stack(values[i : i + n_copies]) for i in chunks], dim=1)

        if not divergences:
            return PerturbedStats(stacked("log_prob_y"))
        return PerturbedStats(stacked("log_prob_y"), stacked("kl"), stacked("js"))

    # ---- the decoder and the head ---------------------------------------------------------
    def _response_hidden(
        self, embeds, attention_mask, copies: int, layers: Sequence[int] = (), keep_states=False
    ):
        """h_t (copies·N, D) at the response positions of ``copies`` stacked batch copies, the
        full ``hidden_states[l]`` (copies·B, L, D) for l in ``layers``, and every layer's
        output when ``keep_states`` (else None)."""
        out = self._llm.model.base_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            output_hidden_states=bool(layers) or keep_states,
            use_cache=False,
        )
        last = out.last_hidden_state  # (copies·B, L, D)
        positions = (self.token_positions - 1).repeat(copies, 1)  # (copies·B, T_max)
        rows = torch.arange(last.shape[0], device=last.device)[:, None]
        hidden = last[rows, positions][self.response_mask.repeat(copies, 1)]
        states = tuple(out.hidden_states) if keep_states else None
        return hidden, [out.hidden_states[layer] for layer in layers], states

    def _head_pass(self, hidden: torch.Tensor, with_gradient=False):
        """log p(y_t) and H(p_t) (n,) and, if asked, ∂ log p(y_t)/∂h_t (n, D), in head-sized
        chunks of ``hidden`` (n, D) (head dtype). Exact for confident tokens too
        (:func:`~.distributions.log_softmax`, :func:`~.distributions.nll_logit_gradient`)."""
        head = self._head
        log_probs, entropies, gradients = [], [], []
        with torch.no_grad():  # closed form: no graph through the head
            for start in range(0, hidden.shape[0], self._chunk_tokens):
                rows = slice(start, start + self._chunk_tokens)
                y, h = self.token_ids[rows], hidden[rows].detach()
                log_p = log_softmax(head(h))  # (n, V)
                picked = log_p.gather(1, y[:, None])[:, 0]  # (n,)
                p = log_p.exp()
                if with_gradient:
                    gradients.append(-head.pullback(h, nll_logit_gradient(p, picked, y)))
                log_probs.append(picked)
                entropies.append(-rowdot(p, log_p))
        gradient = torch.cat(gradients) if gradients else None
        return torch.cat(log_probs), torch.cat(entropies), gradient


def _pair_seed(seed: int, ids: list[int]) -> int:
    digest = hashlib.sha256(repr((seed, ids)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
