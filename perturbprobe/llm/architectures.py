"""Architecture quirks, in one place: the LM head, logit soft-capping, end-of-turn tokens.

Everything that depends on the model family or on the transformers version lives here so the
rest of the package can treat every causal LM the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError

__all__ = [
    "TESTED_MODEL_TYPES",
    "Head",
    "UntestedArchitectureWarning",
    "end_of_turn_ids",
    "head_of",
    "run_decoder",
]

# Model types covered by the adapter tests (tiny random models of each).
TESTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma2", "gpt2", "phi3")

# Tokens that close an assistant turn, in order of preference, for the chat formats we know:
# ChatML, Llama-3, Gemma, Phi-3; the tokenizer's EOS is appended when it is not among them.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


class UntestedArchitectureWarning(UserWarning):
    """The model type is not among :data:`TESTED_MODEL_TYPES`; results are not verified."""


@dataclass(frozen=True)
class Head:
    """The LM head as a function of the final hidden state: ``z = cap·tanh((W h + b)/cap)``.

    Attributes
    ----------
    weight : Tensor (V, D)
        The output projection (shared with the input embeddings in tied models).
    bias : Tensor (V,) or None
    softcap : float or None
        Final-logit soft-capping constant (Gemma-2); ``None`` for a linear head.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None

    @property
    def is_linear(self) -> bool:
        """True when ``head(h) = W h + b`` exactly (closed-form Jacobians apply)."""
        return self.softcap is None

    def to(self, dtype: torch.dtype) -> Head:
        """The same head with weight and bias cast to ``dtype`` (no copy if already so)."""
        bias = None if self.bias is None else self.bias.detach().to(dtype)
        return Head(weight=self.weight.detach().to(dtype), bias=bias, softcap=self.softcap)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., V)`` from final hidden states ``(..., D)``, in ``hidden``'s dtype."""
        bias = None if self.bias is None else self.bias.to(hidden.dtype)
        logits = F.linear(hidden, self.weight.to(hidden.dtype), bias)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def pullback(self, hidden: torch.Tensor, logit_gradient: torch.Tensor) -> torch.Tensor:
        """∇_h of Σ_v c_v z_v(h), the vector-Jacobian product of the head, in closed form.

        ``Wᵀ(c ⊙ s)`` with s = 1 for a linear head and s = 1 − tanh²((W h + b)/cap) for a
        soft-capped one (which costs one more (n, D) × (D, V) product for the raw logits).

        Parameters
        ----------
        hidden : Tensor (n, D)
        logit_gradient : Tensor (n, V)
            c, e.g. p − e_y for the gradient of −log p_y.

        Returns
        -------
        Tensor (n, D)
        """
        weight = self.weight.to(hidden.dtype)
        if self.softcap is not None:
            bias = None if self.bias is None else self.bias.to(hidden.dtype)
            squashed = torch.tanh(F.linear(hidden, weight, bias) / self.softcap)
            logit_gradient = logit_gradient * (1.0 - squashed.square())
        return logit_gradient @ weight


def head_of(model: nn.Module) -> Head:
    """Extract the :class:`Head` of a transformers causal LM.

    Raises
    ------
    ModelLoadError
        If the output embedding is not a plain linear layer.
    """
    config = model.config
    model_type = getattr(config, "model_type", "unknown")
    projection = model.get_output_embeddings()
    if not isinstance(projection, nn.Linear):
        raise ModelLoadError(
            f"model type {model_type!r} has an output layer of type "
            f"{type(projection).__name__}, not a linear LM head; supported model types: "
            f"{', '.join(TESTED_MODEL_TYPES)} and others with a linear head"
        )
    if model_type not in TESTED_MODEL_TYPES:
        warnings.warn(
            f"model type {model_type!r} is not among the tested types "
            f"({', '.join(TESTED_MODEL_TYPES)}); check that head(final hidden) matches its logits",
            UntestedArchitectureWarning,
            stacklevel=3,
        )
    text_config = getattr(config, "text_config", config)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return Head(
        weight=projection.weight, bias=projection.bias, softcap=float(softcap) if softcap else None
    )


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids of the tokens that end an assistant turn (known chat markers present, then EOS)."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def run_decoder(model: nn.Module, input_ids, attention_mask, output_hidden_states: bool):
    """Run the decoder stack (without the LM head) and return its output.

    ``last_hidden_state`` is the input of the LM head (after the final norm) for every tested
    architecture; ``hidden_states`` (when requested) has L+1 entries, index 0 being the
    embedding output.
    """
    return model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=output_hidden_states,
        use_cache=False,
    )
