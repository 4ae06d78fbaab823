"""Batched KV-cache decoding that can split a continuation into branches mid-answer.

Every live continuation (a *branch*) is one row of the batch. Prompts are left-padded, so
after t decoding steps every row's cache holds exactly ``prompt width + t - 1`` columns: a
branch forked at step t starts from the same cache columns as its parent and can join the
batch at once. Forking is therefore ``cache.reorder_cache(rows)`` with the parent's row
repeated K times — no recomputation — and a finished branch simply leaves the batch.

Greedy decoding reproduces ``model.generate(do_sample=False)``: the same left padding, the
same position ids (``cumsum(mask) - 1``) and the first maximum of the logits.

Sampling (:class:`SamplingConfig`) uses the same machinery: after the prompt pass each prompt
forks into its n samples (the prompt is encoded once), and every sample draws its tokens from
its own ``torch.Generator`` seeded from (seed, the prompt's token ids, sample number) — so a
sample does not depend on the other prompts of its batch, nor on n (sample k is the same for
any n > k).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError
from ..features.distributions import entropy_from_log_probs, log_softmax
from ..features.entropy_dynamics import spike_threshold
from ..llm import LLM
from .config import GuardConfig, SamplingConfig

__all__ = ["Branch", "Decoded", "Fork", "decode"]


@dataclass
class Fork:
    """One intervention: where a continuation was split into K branches.

    Attributes
    ----------
    prompt : int
        Index of the prompt in the decoded batch.
    position : int
        1-based position, in the response, of the token that was replaced by K alternatives.
    entropy : float
        Entropy (nats) of the next-token distribution there.
    threshold : float or None
        The spike threshold it exceeded (None when the fork was forced by ``fork_at``).
    token_ids : list of int (K,)
        The first token of each branch (top-K: most likely first, so branch 0 is greedy).
    probs : list of float (K,)
        Their probabilities.
    """

    prompt: int
    position: int
    entropy: float
    threshold: float | None
    token_ids: list[int]
    probs: list[float]


@dataclass
class Branch:
    """One continuation of a prompt.

    ``token_ids`` include the end-of-turn token when the branch stopped on one; ``path``
    lists ``(fork index, branch number)`` for every fork on the way from the root; ``sample``
    is the sample number (0..n-1) of plain sampling's n continuations. ``log_probs`` are the
    model's own log-probabilities (temperature 1, no nucleus) of the chosen tokens.
    """

    prompt: int
    sample: int = 0
    token_ids: list[int] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    path: tuple[tuple[int, int], ...] = ()
    sampler: torch.Generator | None = None
    seed: int = 0

    def child(self, fork: int, number: int, sampled: bool) -> Branch:
        """Branch ``number`` of fork ``fork``, made at this branch's current step."""
        seed = _derive_seed(self.seed, len(self.entropies), number)
        return Branch(
            prompt=self.prompt,
            sample=self.sample,
            token_ids=list(self.token_ids),
            entropies=list(self.entropies),
            log_probs=list(self.log_probs),
            path=(*self.path, (fork, number)),
            sampler=_sampler(seed) if sampled else None,
            seed=seed,
        )


@dataclass
class Decoded:
    """What :func:`decode` returns for a batch of B prompts.

    Attributes
    ----------
    branches : list of Branch
        Every finished branch, in the order they finished.
    forks : list of Fork
        In the order they happened; ``Branch.path`` indexes into it.
    generated : list of int (B,)
        Tokens decoded per prompt over all its branches (shared prefixes counted once) and
        samples.
    """

    branches: list[Branch]
    forks: list[Fork]
    generated: list[int]


def decode(
    llm: LLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    guard: GuardConfig | None = None,
    fork_at: Sequence[int | None] | None = None,
    sampling: SamplingConfig | None = None,
) -> Decoded:
    """Decode a batch of prompts (token ids) greedily or by sampling, forking where ``guard``
    says.

    Parameters
    ----------
    llm : LLM
    prompts : sequence of token id sequences (B,)
    max_new_tokens : int
        Tokens per branch at most (the end-of-turn token included).
    guard : GuardConfig, optional
        Without it: plain greedy decoding, one branch per prompt.
    fork_at : sequence of int or None (B,), optional
        Fork each prompt at this 1-based response position instead of at entropy spikes
        (None: never) — the random-position control of the benchmark.
    sampling : SamplingConfig, optional
        n continuations per prompt (``Branch.sample``), sampled at a temperature > 0 with
        an optional nucleus; without it (or with n = 1 and no temperature) one greedy branch
        per prompt. Not with ``guard``.

    Returns
    -------
    Decoded
    """
    if guard is not None and sampling is not None:
        raise GenerationError("decode: give guard or sampling, not both")
    stop = set(llm.end_of_turn_ids)
    sampled = guard is not None and guard.branch_mode == "sample"
    if guard is not None:
        temperature, top_p = guard.temperature, 1.0
    elif sampling is not None:
        temperature, top_p = sampling.temperature, sampling.top_p
    else:
        temperature, top_p = None, 1.0
    input_ids, mask = llm.pad(prompts, side="left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    branches = [Branch(prompt=i, seed=_prompt_seed(guard, ids)) for i, ids in enumerate(prompts)]
    finished: list[Branch] = []
    forks: list[Fork] = []
    generated = [0] * len(prompts)
    cache = None
    cache_name, keep_logits = _forward_names(llm.model)
    with torch.no_grad():
        while True:
            extra = {"logits_to_keep": 1} if keep_logits else {}
            out = llm.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_name: cache},
                **extra,
            )
            cache = getattr(out, cache_name)
            logits = out.logits[:, -1, :].float()  # (R, V)
            log_p = log_softmax(logits)
            entropy = entropy_from_log_probs(log_p).tolist()
            greedy = logits.argmax(dim=-1).tolist()  # the first maximum, as generate()
            rows, tokens, live = [], [], []
            for row, branch in enumerate(branches):
                branch.entropies.append(entropy[row])
                split = _fork(branch, guard, fork_at)
                if sampling is not None and len(branch.entropies) == 1:
                    children = _samples(branch, prompts[branch.prompt], sampling)
                    choices = [
                        _next_token(child, logits[row], greedy[row], temperature, top_p)
                        for child in children
                    ]
                elif split is None:
                    children = [branch]
                    choices = [_next_token(branch, logits[row], greedy[row], temperature, top_p)]
                else:
                    threshold = None if split is True else split
                    choices = _alternatives(branch, logits[row], log_p[row], guard)
                    fork_index = len(forks)
                    forks.append(
                        Fork(
                            prompt=branch.prompt,
                            position=len(branch.entropies),
                            entropy=entropy[row],
                            threshold=threshold,
                            token_ids=choices,
                            probs=log_p[row, choices].exp().tolist(),
                        )
                    )
                    children = [branch.child(fork_index, k, sampled) for k in range(len(choices))]
                chosen_log_p = log_p[row, choices].tolist()
                for child, token, token_log_p in zip(children, choices, chosen_log_p, strict=True):
                    child.token_ids.append(token)
                    child.log_probs.append(token_log_p)
                    generated[child.prompt] += 1
                    if token in stop or len(child.token_ids) >= max_new_tokens:
                        finished.append(child)
                    else:
                        rows.append(row)
                        tokens.append(token)
                        live.append(child)
            if not live:
                return Decoded(finished, forks, generated)
            if rows != list(range(len(branches))):
                index = torch.tensor(rows, device=mask.device)
                cache.reorder_cache(index)
                mask, positions = mask[index], positions[index]
            branches = live
            input_ids = torch.tensor(tokens, device=mask.device)[:, None]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1


def _fork(branch: Branch, guard: GuardConfig | None, fork_at) -> float | bool | None:
    """Whether ``branch`` forks at its current step: the spike threshold exceeded (a float),
    True for a forced fork, or None."""
    if guard is None or len(branch.path) >= guard.max_interventions:
        return None
    position = len(branch.entropies)
    if fork_at is not None:
        wanted = fork_at[branch.prompt]
        return True if not branch.path and wanted == position else None
    if position > guard.window:
        return None
    history = torch.tensor(branch.entropies, dtype=torch.float64)
    threshold = float(spike_threshold(history, guard.z))
    current = branch.entropies[-1]
    if current > threshold and current >= guard.min_entropy:
        return threshold
    return None


def _samples(root: Branch, prompt_ids: Sequence[int], sampling: SamplingConfig) -> list[Branch]:
    """The n sample branches of a prompt, made right after its prompt pass; each has its own
    generator (none when greedy)."""
    children = []
    for number in range(sampling.n):
        seed = _sample_seed(sampling.seed, prompt_ids, number)
        children.append(
            Branch(
                prompt=root.prompt,
                sample=number,
                entropies=list(root.entropies),
                sampler=_sampler(seed) if sampling.sampled else None,
                seed=seed,
            )
        )
    return children


def _next_token(branch: Branch, logits: torch.Tensor, greedy: int, temperature, top_p) -> int:
    """The greedy token, or one drawn with the branch's own generator from
    softmax(logits / temperature) restricted to the ``top_p`` nucleus."""
    if branch.sampler is None:
        return greedy
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=branch.sampler))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (V,) with every token outside the nucleus set to 0: the smallest set of most
    likely tokens (ties in index order) whose probability reaches ``top_p``; the most likely
    token is always kept. ``torch.multinomial`` renormalises."""
    sorted_probs, order = probs.sort(descending=True, stable=True)
    before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
    kept = order[before < top_p]
    nucleus = torch.zeros_like(probs)
    nucleus[kept] = probs[kept]
    return nucleus


def _alternatives(branch: Branch, logits, log_p, guard: GuardConfig) -> list[int]:
    """The K first tokens of a fork: the top K (most likely first) or K samples."""
    k = min(guard.branches, logits.shape[-1])
    if guard.branch_mode == "top-k":
        return log_p.topk(k).indices.tolist()
    sampler = _sampler(_derive_seed(branch.seed, -1, len(branch.entropies)))
    probs = torch.softmax(logits / guard.temperature, dim=-1).cpu()
    return torch.multinomial(probs, k, replacement=True, generator=sampler).tolist()


def _prompt_seed(guard: GuardConfig | None, prompt_ids: Sequence[int]) -> int:
    """A seed from the guard's seed and the prompt itself, so a prompt's sampled branches do
    not depend on which other prompts share its batch."""
    seed = 0 if guard is None else guard.seed
    digest = hashlib.sha256(repr((seed, tuple(prompt_ids))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _sample_seed(seed: int, prompt_ids: Sequence[int], number: int) -> int:
    """The seed of sample ``number`` of a prompt: from the prompt itself, not its batch row."""
    digest = hashlib.sha256(repr(("sample", seed, tuple(prompt_ids), number)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _derive_seed(seed: int, position: int, number: int) -> int:
    digest = hashlib.sha256(repr((seed, position, number)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _sampler(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _forward_names(model) -> tuple[str, bool]:
    """The forward's name of the KV cache (``cache`` in transformers ≥ 5.2x, else
    ``past_key_values``) and whether it takes ``logits_to_keep``."""
    parameters = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters
