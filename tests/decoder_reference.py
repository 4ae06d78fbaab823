"""Independent checks of the decoder's output, shared by the greedy and the sampling tests."""

from __future__ import annotations

import torch


def assert_branches_match_a_fresh_pass(llm, encoded, branches) -> None:
    """Every branch's per-token log-probs and entropies equal those of one fresh, uncached
    forward pass of the model over prompt + branch tokens (float64 softmax, atol 2e-5).

    ``encoded`` holds the prompts' token ids, indexed by each branch's ``prompt``."""
    for branch in branches:
        prompt = encoded[branch.prompt]
        ids = torch.tensor([prompt + branch.token_ids[:-1]])
        with torch.no_grad():
            logits = llm.model(input_ids=ids).logits[0, len(prompt) - 1 :].double()
        log_p = torch.log_softmax(logits, -1)
        expected = log_p[torch.arange(len(branch.token_ids)), branch.token_ids]
        torch.testing.assert_close(
            torch.tensor(branch.log_probs, dtype=torch.float64), expected, atol=2e-5, rtol=0
        )
        entropy = -(log_p.exp() * log_p).sum(-1)
        torch.testing.assert_close(
            torch.tensor(branch.entropies, dtype=torch.float64), entropy, atol=2e-5, rtol=0
        )
