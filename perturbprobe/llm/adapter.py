"""The LLM adapter: one object holding a causal LM and its tokenizer, with the operations
every feature family needs — pair encoding, the batched teacher-forced pass, the head as a
function, input embeddings and per-layer hidden states."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from .architectures import Head, end_of_turn_ids, head_of, run_decoder
from .pairs import EncodedPair, encode_pair, render_prompt_ids

__all__ = ["LLM", "TeacherForcedOutput"]


@dataclass
class TeacherForcedOutput:
    """Results of one teacher-forced pass over a batch of B pairs, for response positions only.

    Batches are right-padded; ``response_mask`` marks real response tokens.

    Attributes
    ----------
    response_ids : LongTensor (B, T_max)
        y_t, the response token ids (0 where padded).
    response_mask : BoolTensor (B, T_max)
    final_hidden : Tensor (B, T_max, D)
        h_t, the head's input at the position that predicts y_t (zeros where padded).
    logits : Tensor (B, T_max, V) or None
        head(h_t); None when not requested.
    hidden_states : tuple of Tensor (B, L_max, D) or None
        Every layer's output over the whole sequence (index 0: embeddings), when requested.
    input_ids, attention_mask : Tensor (B, L_max)
        The padded input.
    prompt_lengths, response_lengths : LongTensor (B,)
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    final_hidden: torch.Tensor
    logits: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor

    def pair(self, index: int) -> dict[str, torch.Tensor]:
        """Unpadded results of pair ``index``: ``final_hidden`` (T, D), ``logits`` (T, V), ids."""
        length = int(self.response_lengths[index])
        out = {
            "response_ids": self.response_ids[index, :length],
            "final_hidden": self.final_hidden[index, :length],
        }
        if self.logits is not None:
            out["logits"] = self.logits[index, :length]
        return out


class LLM:
    """A causal language model with the operations perturbprobe needs.

    Build one with :func:`perturbprobe.load_llm`, or wrap a transformers model and tokenizer
    you already have: ``LLM(model, tokenizer, name="my-model")``.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A causal LM (``...ForCausalLM``); it is put in eval mode.
    tokenizer : transformers tokenizer
    name : str
        How the model was named when loaded (used in identities and reports).
    """

    def __init__(self, model: nn.Module, tokenizer, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.head: Head = head_of(model)
        self.end_of_turn_ids: list[int] = end_of_turn_ids(tokenizer)
        self.pad_id: int = next(
            token
            for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
            if token is not None
        )

    # ---- identity ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def config(self):
        return self.model.config

    @property
    def max_length(self) -> int | None:
        """The context size from the config, if the config states one."""
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.config, key, None)
            if value:
                return int(value)
        return None

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the tokenizer vocabulary and a sample of head rows (rounded to bf16).

        Rounding to bfloat16 makes float32 and bfloat16 loads of the same weights agree.
        """
        digest = hashlib.sha256()
        vocab = sorted(self.tokenizer.get_vocab().items())
        digest.update(repr(vocab).encode())
        weight = self.head.weight.detach()
        step = max(1, weight.shape[0] // 1024)
        rows = weight[::step].to(torch.bfloat16).to(torch.float32).cpu().contiguous()
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(rows.numpy().tobytes())
        return digest.hexdigest()

    def identity(self) -> dict:
        """What a saved probe records about the LLM it was fitted on."""
        return {
            "name": self.name,
            "model_type": getattr(self.config, "model_type", None),
            "architecture": type(self.model).__name__,
            "vocab_size": int(self.head.weight.shape[0]),
            "hidden_size": int(self.head.weight.shape[1]),
            "num_layers": self.num_layers,
            "head_is_linear": self.head.is_linear,
            "fingerprint": self.fingerprint,
        }

    def __repr__(self) -> str:
        return f"LLM({self.name!r}, {type(self.model).__name__}, {self.device}, {self.dtype})"

    # ---- encoding ---------------------------------------------------------------------------
    def prompt_ids(self, messages, *, what: str = "prompt") -> list[int]:
        """Prompt ids (I,) rendered for generation."""
        return render_prompt_ids(self.tokenizer, messages, what=what)

    def encode_pair(
        self, messages, response: str, *, response_end: str = "template", what: str = "pair"
    ) -> EncodedPair:
        """Encode one pair; see :func:`perturbprobe.llm.pairs.encode_pair`."""
        return encode_pair(
            self.tokenizer,
            messages,
            response,
            end_of_turn_ids=self.end_of_turn_ids,
            response_end=response_end,
            max_length=self.max_length,
            what=what,
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, L, D) of ``input_ids`` (B, L): what ``inputs_embeds`` takes."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    # ---- the teacher-forced pass ------------------------------------------------------------
    def pad(
        self, sequences: Sequence[Sequence[int]], side: str = "right"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad token id sequences into ``input_ids`` and ``attention_mask`` (B, L_max).

        Right padding for teacher forcing (positions need no adjustment); left padding for
        generation (every row's next token is in the last column).
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, ids in enumerate(sequences):
            columns = slice(0, len(ids)) if side == "right" else slice(length - len(ids), length)
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, columns] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def teacher_forced(
        self,
        pairs: Sequence[EncodedPair],
        *,
        logits: bool = True,
        hidden_states: bool = False,
    ) -> TeacherForcedOutput:
        """One teacher-forced forward pass over a batch of encoded pairs (no gradients).

        Logits are computed only at the response positions; prompt logits are never built.
        """
        if not pairs:
            raise ValueError("teacher_forced needs at least one pair")
        input_ids, attention_mask = self.pad([pair.input_ids for pair in pairs])
        prompt_lengths = torch.tensor([len(p.prompt_ids) for p in pairs], device=self.device)
        response_lengths = torch.tensor([len(p.response_ids) for p in pairs], device=self.device)
        t_max = int(response_lengths.max())
        steps = torch.arange(t_max, device=self.device)  # (T_max,)
        response_mask = steps[None, :] < response_lengths[:, None]  # (B, T_max)
        # Response token t (0-based) is at position I + t and is predicted from position I + t - 1.
        token_pos = (prompt_lengths[:, None] + steps[None, :]).clamp(max=input_ids.shape[1] - 1)
        with torch.no_grad():
            out = run_decoder(self.model, input_ids, attention_mask, hidden_states)
            last = out.last_hidden_state  # (B, L_max, D)
            batch = torch.arange(len(pairs), device=self.device)[:, None]
            final_hidden = last[batch, token_pos - 1]  # (B, T_max, D)
            final_hidden = final_hidden * response_mask[..., None]
            response_ids = torch.gather(input_ids, 1, token_pos) * response_mask
            response_logits = self.head(final_hidden) if logits else None
        return TeacherForcedOutput(
            response_ids=response_ids,
            response_mask=response_mask,
            final_hidden=final_hidden,
            logits=response_logits,
            hidden_states=tuple(out.hidden_states) if hidden_states else None,
            input_ids=input_ids,
            attention_mask=attention_mask,
            prompt_lengths=prompt_lengths,
            response_lengths=response_lengths,
        )
