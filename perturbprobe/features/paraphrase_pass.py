"""The same responses teacher-forced under paraphrased prompts (``sua``'s ``paraphrase`` source).

For each record with paraphrases of its question, the last user message's text is replaced by
each paraphrase, the prompt re-rendered, and the record's *own response token ids* appended,
so response token t is the same token under every prompt and its next-token distributions can
be compared one to one. Costs one forward pass (no gradients) per paraphrase, batched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.records import Record
from ..errors import PairEncodingError
from ..llm import LLM, EncodedPair
from .distributions import kl_and_js

__all__ = ["ParaphrasePass", "paraphrased_pairs"]

logger = logging.getLogger(__name__)


def paraphrased_pairs(llm: LLM, record: Record, pair: EncodedPair) -> list[EncodedPair]:
    """``pair``'s response ids after the prompt of each of ``record``'s paraphrases.

    A paraphrase whose prompt cannot be rendered or makes the pair longer than the model's
    context is left out (logged).
    """
    user = max((i for i, m in enumerate(record.messages) if m["role"] == "user"), default=None)
    pairs = []
    for k, text in enumerate(record.paraphrases if user is not None else ()):
        messages = [dict(m) for m in record.messages]
        messages[user]["content"] = text
        try:
            prompt = llm.prompt_ids(messages, what=f"record {record.id!r} paraphrase {k}")
        except PairEncodingError as exc:
            logger.warning("leaving out a paraphrase: %s", exc)
            continue
        if llm.max_length is not None and len(prompt) + len(pair.response_ids) > llm.max_length:
            logger.warning("leaving out paraphrase %d of %r: too long", k, record.id)
            continue
        pairs.append(EncodedPair(tuple(prompt), pair.response_ids))
    return pairs


@dataclass
class ParaphrasePass:
    """Final hidden states of a batch's responses under their paraphrased prompts.

    Attributes
    ----------
    hidden : Tensor (M, D), float32
        h_t' for every (paraphrase, response token) of the batch.
    token_index : LongTensor (M,)
        The row of the same token in the batch's flat (N,) order.
    counts : LongTensor (B,)
        K_b, the paraphrases of each pair.
    """

    hidden: torch.Tensor
    token_index: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def run(
        cls,
        llm: LLM,
        paraphrases: Sequence[Sequence[EncodedPair]],
        lengths: torch.Tensor,
        batch_size: int = 16,
    ) -> ParaphrasePass:
        """Teacher-force every paraphrased pair; ``paraphrases[b]`` are pair b's (may be
        empty), ``lengths`` (B,) the response lengths."""
        starts = (torch.cumsum(lengths, 0) - lengths).tolist()
        flat = [(b, p) for b, group in enumerate(paraphrases) for p in group]
        hidden, index = [], []
        for first in range(0, len(flat), batch_size):
            chunk = flat[first : first + batch_size]
            out = llm.teacher_forced([p for _, p in chunk], logits=False)
            hidden.append(out.final_hidden[out.response_mask].to(torch.float32))
            for b, p in chunk:
                index.append(torch.arange(len(p.response_ids), device=llm.device) + starts[b])
        width = llm.model.config.hidden_size
        return cls(
            hidden=torch.cat(hidden) if hidden else torch.zeros((0, width), device=llm.device),
            token_index=torch.cat(index)
            if index
            else torch.zeros(0, dtype=torch.long, device=llm.device),
            counts=torch.tensor([len(group) for group in paraphrases], device=llm.device),
        )

    def mean_divergence(self, batch, divergence: str) -> torch.Tensor:
        """s_t (N,): the mean over pair b's paraphrases of D(p_t ‖ p_t'), 0 without any.

        ``batch`` is the :class:`~perturbprobe.features.base.PassBatch` (original h_t, head);
        ``divergence`` is ``"js"`` or ``"kl"``.
        """
        total = batch.final_hidden.new_zeros(batch.final_hidden.shape[0])
        step = max(1, batch.chunk_tokens // 2)  # the divergences work in float64
        for start in range(0, self.hidden.shape[0], step):
            rows = slice(start, start + step)
            tokens = self.token_index[rows]
            log_p = torch.log_softmax(batch.head(batch.final_hidden[tokens]), dim=-1)
            log_q = torch.log_softmax(batch.head(self.hidden[rows]), dim=-1)
            kl, js = kl_and_js(log_p, log_q)
            total.index_add_(0, tokens, js if divergence == "js" else kl)
        per_token = torch.repeat_interleave(self.counts, batch.lengths)  # (N,)
        return total / per_token.clamp_min(1).to(total.dtype)
