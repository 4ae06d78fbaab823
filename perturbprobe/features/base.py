"""The family protocol: what a feature family declares and what the engine hands it.

A family is a small class with

- ``name``: its column prefix (``baseline`` → ``baseline/log_prob``);
- ``Config``: a dataclass of hyper-parameters, every one with a default;
- ``needs``: what it needs from the pass: ``"final_hidden"``, ``"hidden_states"`` (every
  layer's output, kept from the same pass), or ``"input_gradient"`` (the
  :class:`EmbeddingPass`: input embeddings, gradients and perturbed forwards), in which case
  ``gradient_request()`` says which gradients (the engine merges the families' requests
  into one backward pass);
- ``prepare(llm)``: settings that depend on the model (SemGrad's t* and layer band), resolved
  once before extraction; most families have none;
- ``token_features()`` / ``response_features()``: its column names, known without data;
- ``block_layout()``: for a family that returns one wide block of values per response
  instead of named columns (``hidden_states``), what the block's columns are; None otherwise;
- ``compute(batch) -> FamilyOutput``: the values for one batch.

Per-token features are aggregated over each response by the engine (``mean, std, min,
max, first, last``, population std) unless the family sets ``aggregate = False``. Work two
families need (the CCPS trajectory, a perturbed pass) is computed once per batch through
:meth:`PassBatch.shared` or the :class:`EmbeddingPass` cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._numerics import resolved_std
from ..llm import Head
from .distributions import logit_summary

if TYPE_CHECKING:
    from ..llm import LLM
    from .embedding_pass import EmbeddingPass, GradientRequest
    from .paraphrase_pass import ParaphrasePass

__all__ = ["AGGREGATES", "FamilyOutput", "FeatureFamily", "PassBatch", "tokens_per_chunk"]

AGGREGATES = ("mean", "std", "min", "max", "first", "last")

# Float32 (tokens × vocabulary) arrays alive at once in the head arithmetic, per token of a
# chunk: measured peak ≈ 6.5 (benchmarks/extract_memory.py), rounded up.
_VOCAB_ARRAYS_PER_TOKEN = 7


def tokens_per_chunk(memory_mb: float, vocab_size: int) -> int:
    """How many tokens go through the head at once so its arithmetic fits ``memory_mb``."""
    return max(1, int(memory_mb * 2**20 // (vocab_size * 4 * _VOCAB_ARRAYS_PER_TOKEN)))


@dataclass
class PassBatch:
    """One batch of B pairs after the teacher-forced pass, as families see it.

    Response tokens of all pairs are *flattened* to N = Σ T_i rows in pair order, so families
    never deal with padding; :meth:`padded` rebuilds (B, T_max, ...) when a family needs
    whole sequences.

    Attributes
    ----------
    head : Head
        The LLM's head with float32 weights (features are computed in float32).
    final_hidden : Tensor (N, D), float32
        h_t for every response token.
    token_ids : LongTensor (N,)
        y_t.
    lengths : LongTensor (B,)
        T_i, the response length of each pair.
    chunk_tokens : int
        How many tokens a family may push through the head at once (memory budget).
    embedding_pass : EmbeddingPass or None
        The pass on input embeddings with its gradient, when a family needs it.
    paraphrases : ParaphrasePass or None
        The responses under paraphrased prompts, when a family needs them.
    prompt_lengths : LongTensor (B,) or None
        I_i, the prompt length of each pair (response token t sits at position I_i + t).
    hidden_states : tuple of Tensor (B, L_max, D) or None
        Every layer's output over the whole right-padded sequences (index 0: embeddings),
        model dtype, when a family needs them (``"hidden_states"``).
    """

    head: Head
    final_hidden: torch.Tensor
    token_ids: torch.Tensor
    lengths: torch.Tensor
    chunk_tokens: int
    embedding_pass: EmbeddingPass | None = None
    paraphrases: ParaphrasePass | None = None
    prompt_lengths: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    _shared: dict = field(default_factory=dict, repr=False)

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, run once per batch for a given ``key`` and shared by every family
        that asks with the same key (e.g. the CCPS trajectory for ``ccps`` and ``sua``)."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    @property
    def num_pairs(self) -> int:
        return int(self.lengths.shape[0])

    @cached_property
    def mask(self) -> torch.Tensor:
        """BoolTensor (B, T_max): True at real response tokens."""
        steps = torch.arange(int(self.lengths.max()), device=self.lengths.device)
        return steps[None, :] < self.lengths[:, None]

    def padded(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(N, ...) flat per-token values → (B, T_max, ...) with ``fill`` at padding."""
        out = values.new_full((*self.mask.shape, *values.shape[1:]), fill)
        out[self.mask] = values
        return out

    def response_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values (N,) or (N, F) → their mean over each response, (B,) or (B, F)."""
        lengths = self.lengths.to(values.dtype)
        return self.padded(values).sum(dim=1) / (lengths if values.ndim == 1 else lengths[:, None])

    @cached_property
    def entropy(self) -> torch.Tensor:
        """H(p_t) (N,): from the gradient pass when there is one, else :attr:`token_stats`."""
        if self.embedding_pass is not None:
            return self.embedding_pass.entropy
        return self.token_stats["entropy"]

    def head_chunks(self):
        """Slices of at most ``chunk_tokens`` rows covering the N tokens."""
        total = int(self.token_ids.shape[0])
        for start in range(0, total, self.chunk_tokens):
            yield slice(start, min(start + self.chunk_tokens, total))

    @cached_property
    def token_stats(self) -> dict[str, torch.Tensor]:
        """Statistics (N,) of the original next-token distributions (see
        :func:`~perturbprobe.features.distributions.logit_summary`), computed once per batch
        in head-sized chunks and shared by every family that needs them."""
        parts: list[dict[str, torch.Tensor]] = []
        head = self.head
        for rows in self.head_chunks():
            summary = logit_summary(head(self.final_hidden[rows]), self.token_ids[rows])
            del summary["log_probs"], summary["probs"]  # (chunk, V): not kept across chunks
            parts.append(summary)
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


@dataclass
class FamilyOutput:
    """Named values one family computed for a batch; shapes are checked on construction.

    Attributes
    ----------
    token_values : Tensor (N, F)
        Per-token features, columns ``token_names``.
    response_values : Tensor (B, G)
        Response-level features that are not aggregates, columns ``response_names``.
    block_values : Tensor (B, K) or None
        The family's wide block (see :meth:`FeatureFamily.block_layout`).
    """

    token_names: list[str]
    token_values: torch.Tensor
    response_names: list[str]
    response_values: torch.Tensor
    block_values: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for kind, names, values in (
            ("token", self.token_names, self.token_values),
            ("response", self.response_names, self.response_values),
        ):
            if values.ndim != 2 or values.shape[1] != len(names):
                raise ValueError(
                    f"{kind}_values must have shape (rows, {len(names)}) for {len(names)} "
                    f"names; got {tuple(values.shape)}"
                )


class FeatureFamily:
    """Base class of feature families; see the module docstring for the protocol."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs: ClassVar[frozenset[str]] = frozenset({"final_hidden"})
    aggregate: ClassVar[bool] = True

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name} expects a {self.Config.__name__}, got {config!r}")

    def prepare(self, llm: LLM) -> None:
        """Resolve settings that depend on the model, before :meth:`columns` (default: none)."""

    def gradient_request(self) -> GradientRequest:
        """Which gradients a family that needs ``"input_gradient"`` wants (default: ℓ₁ only)."""
        from .embedding_pass import GradientRequest

        return GradientRequest()

    def token_features(self) -> list[str]:
        """Names of the per-token features, in column order (without the family prefix)."""
        raise NotImplementedError

    def response_features(self) -> list[str]:
        """Names of the response-level features that are not aggregates."""
        return []

    def block_layout(self) -> dict | None:
        """``{"columns": K, ...}`` describing the wide block this family returns, or None."""
        return None

    def compute(self, batch: PassBatch) -> FamilyOutput:
        """Features of one batch."""
        raise NotImplementedError

    def columns(self) -> tuple[list[str], list[str]]:
        """(per-token column names, response-level column names) with the family prefix."""
        tokens = [f"{self.name}/{feature}" for feature in self.token_features()]
        response = [f"{column}:{agg}" for column in tokens for agg in AGGREGATES]
        if not self.aggregate:
            response = []
        response += [f"{self.name}/{feature}" for feature in self.response_features()]
        return tokens, response

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)
        )
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True)
class NoConfig:
    """A family without hyper-parameters."""


def aggregate_tokens(batch: PassBatch, values: torch.Tensor) -> torch.Tensor:
    """Aggregate per-token features over each response.

    Parameters
    ----------
    values : Tensor (N, F)

    Returns
    -------
    Tensor (B, F · 6)
        For each feature in order, its ``mean, std, min, max, first, last`` (population std;
        a spread float32 cannot resolve is 0, see :func:`perturbprobe._numerics.resolved_std`).
    """
    mask = batch.mask[..., None]  # (B, T, 1)
    padded = batch.padded(values)  # (B, T, F)
    count = batch.lengths[:, None].to(values.dtype)  # (B, 1)
    mean = padded.sum(dim=1) / count
    std = (((padded - mean[:, None]) ** 2) * mask).sum(dim=1).div(count).sqrt()
    low = padded.masked_fill(~mask, torch.inf).amin(dim=1)
    high = padded.masked_fill(~mask, -torch.inf).amax(dim=1)
    std = resolved_std(std, torch.maximum(low.abs(), high.abs()))
    first = padded[:, 0]
    last = padded[torch.arange(batch.num_pairs), batch.lengths - 1]
    stacked = torch.stack([mean, std, low, high, first, last], dim=-1)  # (B, F, 6)
    return stacked.flatten(1)
