"""``hidden_states``: residual-stream activations of the teacher-forced pass (SAPLMA-style).

A linear probe on the residual stream in the middle of the network is one of the strongest
correctness signals there is (Azaria & Mitchell 2023, "The internal state of an LLM knows when
it's lying"; measured on the default LLM in the README). The pass every family shares already
computes these states, so this family costs no extra forward: it only pools them.

For every layer l of ``layers`` (``hidden_states[l]`` in transformers' indexing: 0 is the
embedding output, l the output of decoder layer l, L the final-normed last layer) and every
pool of ``pools``:

- ``mean``: the mean of hidden_states[l] over the positions of the response tokens
  (I … I+T−1, with I the prompt length; with ``response_end=template`` they end with what the
  chat template appends, for ChatML ``<|im_end|>`` and a newline);
- ``last``: hidden_states[l] at the last response token (I+T−1): the state that has read the
  whole answer;
- ``prompt_last``: hidden_states[l] at the last prompt token (I−1): what the model "knew"
  before answering (independent of the answer).

The result is one wide block of P × n_layers × D values per record (pool-major, then layer,
then dimension), stored compactly in the FeatureSet as a float16 array
(``hidden_states.npy``), not as Parquet columns: 10,000 records × 5 layers × D = 4,096 take
410 MB. ``dtype=float32`` keeps full precision (twice the size); float16 overflows above
65,504, which the engine reports.

Default band (``layers=auto``): 5 layers evenly spread over 50–70 % of the depth, where the
correctness signal peaked on the default LLM (layers 15…21 of 30).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ExtractionError
from .base import FamilyOutput, FeatureFamily, PassBatch

__all__ = ["POOLS", "HiddenStates", "HiddenStatesConfig", "auto_layers"]

POOLS = ("mean", "last", "prompt_last")
_DTYPES = ("float16", "float32")
_AUTO_BAND = (0.5, 0.7)
_AUTO_COUNT = 5


def auto_layers(num_layers: int) -> tuple[int, ...]:
    """The default band: up to 5 distinct layers evenly spread over 50–70 % of the depth."""
    low, high = (fraction * num_layers for fraction in _AUTO_BAND)
    picked = np.rint(np.linspace(low, high, _AUTO_COUNT)).astype(int).clip(1, num_layers)
    return tuple(dict.fromkeys(int(layer) for layer in picked))


def _split(text: str) -> list[str]:
    return [item.strip() for item in str(text).split(",") if item.strip()]


@dataclass(frozen=True)
class HiddenStatesConfig:
    """Attributes
    ----------
    layers : str
        ``auto`` (5 layers over 50–70 % of the depth) or comma-separated ``hidden_states``
        indices, e.g. ``"12,16,20"`` (1 … L; 0, the embeddings, is allowed too).
    pools : str
        Comma-separated pools, from ``mean``, ``last``, ``prompt_last`` (default ``mean``:
        the best single pool on the default LLM).
    dtype : str
        Storage dtype of the block: ``float16`` (default) or ``float32``.
    """

    layers: str = "auto"
    pools: str = "mean"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        pools = _split(self.pools)
        unknown = [pool for pool in pools if pool not in POOLS]
        if not pools or unknown:
            raise ExtractionError(
                f"hidden_states.pools must be a comma-separated subset of {', '.join(POOLS)}; "
                f"got {self.pools!r}"
            )
        if len(set(pools)) != len(pools):
            raise ExtractionError(f"hidden_states.pools repeats a pool: {self.pools!r}")
        if self.dtype not in _DTYPES:
            raise ExtractionError(
                f"hidden_states.dtype must be one of {', '.join(_DTYPES)}; got {self.dtype!r}"
            )
        if self.layers != "auto":
            try:
                layers = [int(item) for item in _split(self.layers)]
            except ValueError:
                layers = []
            if not layers or len(set(layers)) != len(layers):
                raise ExtractionError(
                    "hidden_states.layers must be 'auto' or distinct comma-separated layer "
                    f"indices such as '12,16,20'; got {self.layers!r}"
                )

    @property
    def pool_list(self) -> list[str]:
        return _split(self.pools)

    def layer_list(self, num_layers: int) -> tuple[int, ...]:
        """The ``hidden_states`` indices for a model with ``num_layers`` decoder layers."""
        if self.layers == "auto":
            return auto_layers(num_layers)
        layers = tuple(int(item) for item in _split(self.layers))
        bad = [layer for layer in layers if not 0 <= layer <= num_layers]
        if bad:
            raise ExtractionError(
                f"hidden_states.layers: layer {bad[0]} does not exist; the model has "
                f"{num_layers} layers (valid indices 0..{num_layers}, 0 = embeddings)"
            )
        return layers


class HiddenStates(FeatureFamily):
    """Pooled residual-stream activations: one wide block (no scalar columns)."""

    name = "hidden_states"
    Config = HiddenStatesConfig
    needs = frozenset({"hidden_states"})
    aggregate = False

    def __init__(self, config=None):
        super().__init__(config)
        self.layers: tuple[int, ...] | None = None
        self.hidden_size: int | None = None

    def prepare(self, llm) -> None:
        """Resolve the layer band for ``llm`` (raises for a layer it does not have)."""
        self.layers = self.config.layer_list(llm.num_layers)
        self.hidden_size = int(llm.head.weight.shape[1])

    def token_features(self) -> list[str]:
        return []

    def block_layout(self) -> dict:
        """What the block's columns are: pools × layers × hidden size, in that order."""
        if self.layers is None:
            raise ExtractionError("hidden_states: call prepare(llm) first (the engine does)")
        pools = self.config.pool_list
        return {
            "pools": pools,
            "layers": list(self.layers),
            "hidden_size": self.hidden_size,
            "columns": len(pools) * len(self.layers) * self.hidden_size,
            "dtype": self.config.dtype,
            "order": "pool, layer, dimension",
        }

    def compute(self, batch: PassBatch) -> FamilyOutput:
        states = batch.hidden_states  # L+1 × (B, L_max, D)
        if states is None:
            raise ExtractionError("hidden_states: the pass did not keep the hidden states")
        prompt = batch.prompt_lengths  # (B,)
        rows = torch.arange(batch.num_pairs, device=prompt.device)
        steps = torch.arange(batch.mask.shape[1], device=prompt.device)
        positions = (prompt[:, None] + steps[None, :]).clamp(max=states[0].shape[1] - 1)
        weights = batch.mask.to(torch.float32) / batch.lengths[:, None].to(torch.float32)
        pooled = []
        for pool in self.config.pool_list:
            for layer in self.layers:
                h = states[layer].to(torch.float32)  # (B, L_max, D)
                if pool == "mean":
                    at_response = h[rows[:, None], positions]  # (B, T_max, D)
                    pooled.append(torch.einsum("bt,btd->bd", weights, at_response))
                elif pool == "last":
                    pooled.append(h[rows, prompt + batch.lengths - 1])
                else:  # prompt_last
                    pooled.append(h[rows, prompt - 1])
        block = torch.cat(pooled, dim=1)  # (B, P·n_layers·D)
        no_tokens = block.new_zeros((int(batch.token_ids.shape[0]), 0))
        no_responses = block.new_zeros((batch.num_pairs, 0))
        return FamilyOutput([], no_tokens, [], no_responses, block_values=block)
