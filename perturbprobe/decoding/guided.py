"""``perturbprobe.generate``: batched greedy or sampled answers, optionally guarded (GUARD).

Without a guard, ``n``, ``temperature``, ``top_p`` and ``seed`` (OpenAI's names) ask for n
sampled answers per prompt (:class:`SamplingConfig`); the default is one greedy answer.
With a :class:`GuardConfig`, an early entropy spike splits the answer into K branches
(:mod:`perturbprobe.decoding.decoder`); every branch is completed, scored — by the bundle's
:class:`Scorer` when one is given, else by its mean token log-probability — and the best is
returned with a record of the intervention.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..errors import GenerationError, PairEncodingError
from ..llm import LLM
from .config import GuardConfig, SamplingConfig
from .decoder import Branch, Decoded, Fork, decode

if TYPE_CHECKING:
    from ..bundles.scorer import Scorer
    from ..distributed import ProcessGroup

__all__ = ["Alternative", "GuidedAnswer", "Intervention", "generate"]

logger = logging.getLogger(__name__)


@dataclass
class Alternative:
    """One branch of an intervention: its first token and where it led."""

    token: str
    token_id: int
    prob: float
    response: str  # the best finished answer down this branch
    mean_log_prob: float
    confidence: float | None  # the probe's, when a scorer was given
    chosen: bool


@dataclass
class Intervention:
    """A fork on the way to the returned answer."""

    position: int  # 1-based response position of the token that was branched
    entropy: float
    threshold: float | None  # None when forced (``fork_at``)
    alternatives: list[Alternative]


@dataclass
class GuidedAnswer:
    """The answer to one prompt.

    Attributes
    ----------
    response : str
        Decoded without special tokens, stripped (what ``collect`` records).
    token_ids : list of int
        The response tokens, without the end-of-turn token.
    mean_log_prob : float
        Mean log-probability of the generated tokens (end-of-turn token included).
    confidence : float or None
        The probe's confidence in ``response`` when branches were scored by a scorer.
    generated_tokens : int
        Tokens decoded for this answer over all its branches (the cost; the end-of-turn token
        included). With n samples, each sample counts its own tokens.
    interventions : list of Intervention
        Empty for an answer decoded without a fork.
    """

    response: str
    token_ids: list[int]
    mean_log_prob: float
    confidence: float | None = None
    generated_tokens: int = 0
    interventions: list[Intervention] = field(default_factory=list)

    def guard_record(self) -> dict:
        """The JSON-ready record ``perturbprobe generate --guard`` writes under ``guard``."""
        return {
            "generated_tokens": self.generated_tokens,
            "confidence": self.confidence,
            "mean_log_prob": self.mean_log_prob,
            "interventions": [
                {
                    "position": item.position,
                    "entropy": item.entropy,
                    "threshold": item.threshold,
                    "alternatives": [vars(alt) for alt in item.alternatives],
                }
                for item in self.interventions
            ],
        }


def generate(
    llm: LLM,
    messages,
    *,
    scorer: Scorer | None = None,
    guard: GuardConfig | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    names: Sequence[str] | None = None,
    group: ProcessGroup | None = None,
    fork_at: Sequence[int | None] | None = None,
    n: int = 1,
    temperature: float | None = None,
    top_p: float = 1.0,
    seed: int = 0,
) -> GuidedAnswer | list[GuidedAnswer] | list[list[GuidedAnswer]]:
    """Answer chat prompts greedily or by sampling, guarded by entropy spikes when ``guard``
    is given.

    Parameters
    ----------
    llm : LLM
    messages : str, message list, or a list of them
        One prompt (a question string or ``[{"role", "content"}, ...]``) → one answer; a list
        of prompts → a list of answers in the same order.
    scorer : Scorer, optional
        Scores the branches of a fork (the probe's confidence); without it the branch with
        the highest mean token log-probability is kept. Must not hold a process group.
    guard : GuardConfig, optional
        Without it: plain batched greedy decoding (``collect``'s answers).
    max_new_tokens : int
        Tokens per branch at most.
    batch_size : int
        Prompts decoded together; a fork adds K − 1 rows to the batch while it runs.
    progress : bool
        Show a progress bar over prompts.
    names : sequence of str, optional
        Names of the prompts for error messages.
    group : ProcessGroup, optional
        Under torchrun: each rank decodes its share of the batches; every rank gets all
        the answers.
    fork_at : sequence of int or None, optional
        A controlled experiment: fork prompt i once at response position ``fork_at[i]``
        instead of at spikes (None: no fork). Needs ``guard`` (K, branch mode).
    n : int
        Answers per prompt (default 1). Not with ``guard``.
    temperature : float, optional
        > 0: sample each token from softmax(logits / temperature); 0 or None (default):
        greedy. Not with ``guard`` (it has its own ``branch_mode="sample"``).
    top_p : float
        Nucleus sampling in (0, 1] (default 1): sample only among the most likely tokens
        whose probability reaches ``top_p``. Ignored when greedy.
    seed : int
        Seed of the samples (default 0). Sample k of a prompt depends only on the seed, the
        prompt's tokens and k: not on the batch, ``batch_size``, the other prompts or n.

    Returns
    -------
    GuidedAnswer or list of GuidedAnswer
        One answer per prompt; with n > 1 a list of n answers per prompt instead (one prompt
        → a list of n answers, a list of prompts → a list of such lists).

    Raises
    ------
    GenerationError
        Bad settings.
    PairEncodingError
        A prompt that leaves no room for ``max_new_tokens`` in the context, or bad messages.
    """
    single = isinstance(messages, str) or (
        isinstance(messages, Sequence) and bool(messages) and isinstance(messages[0], dict)
    )
    prompts = [messages] if single else list(messages)
    _check_settings(len(prompts), max_new_tokens, batch_size, guard, scorer, fork_at)
    sampling = _sampling(guard, n, temperature, top_p, seed)
    names = list(names) if names is not None else [f"prompt {i}" for i in range(len(prompts))]
    conversations = [_conversation(p) for p in prompts]
    encoded = [
        llm.prompt_ids(conversation, what=name)
        for conversation, name in zip(conversations, names, strict=True)
    ]
    if llm.max_length is not None:
        for ids, name in zip(encoded, names, strict=True):
            if len(ids) + max_new_tokens > llm.max_length:
                raise PairEncodingError(
                    f"{name}: {len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the "
                    f"model's context of {llm.max_length}; shorten the prompt or lower "
                    "max_new_tokens"
                )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if group is not None:  # whole batches per rank: every answer generated as in one process
        batches = group.shard(batches, cost=lambda index: len(encoded[index]) + max_new_tokens)
    answers: dict[int, list[GuidedAnswer]] = {}
    shift_values: list[dict[str, np.ndarray]] = []  # per scored batch of branches

    def run_batches() -> None:
        bar = tqdm(total=sum(map(len, batches)), desc="generating", unit="q", disable=not progress)
        with bar:
            for rows in batches:
                decoded = decode(
                    llm,
                    [encoded[i] for i in rows],
                    max_new_tokens=max_new_tokens,
                    guard=guard,
                    fork_at=None if fork_at is None else [fork_at[i] for i in rows],
                    sampling=sampling,
                )
                batch_answers = _choose(
                    llm, decoded, [conversations[i] for i in rows], scorer, shift_values
                )
                answers.update(zip(rows, batch_answers, strict=True))
                bar.update(len(rows))
        if shift_values:
            _warn_if_shifted(scorer, shift_values)

    if group is None:
        run_batches()
    else:
        group.run(run_batches)
        answers = group.all_gather(answers)
    result = [answers[index] if n > 1 else answers[index][0] for index in range(len(encoded))]
    return result[0] if single else result


def _check_settings(n, max_new_tokens, batch_size, guard, scorer, fork_at) -> None:
    if max_new_tokens < 1 or batch_size < 1:
        raise GenerationError(
            f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}"
        )
    if guard is not None and not isinstance(guard, GuardConfig):
        raise GenerationError(f"guard must be a GuardConfig, got {type(guard).__name__}")
    if scorer is not None and getattr(scorer, "group", None) is not None:
        raise GenerationError(
            "the scorer must not hold a process group: each rank scores its own branches"
        )
    if fork_at is not None:
        if guard is None:
            raise GenerationError("fork_at needs a guard (it sets K and the branch mode)")
        if len(fork_at) != n:
            raise GenerationError(f"fork_at has {len(fork_at)} entries for {n} prompts")
        if any(p is not None and (not isinstance(p, int) or p < 1) for p in fork_at):
            raise GenerationError("fork_at positions must be integers >= 1 or None")


def _sampling(guard, n, temperature, top_p, seed) -> SamplingConfig | None:
    """The decoder's sampling settings; None for one greedy answer per prompt (the decoder's
    plain path, unchanged)."""
    sampling = SamplingConfig(n=n, temperature=temperature, top_p=top_p, seed=seed)
    if guard is not None:
        if (sampling.n, sampling.sampled, sampling.top_p, sampling.seed) != (1, False, 1.0, 0):
            raise GenerationError(
                "n, temperature, top_p and seed are for unguarded decoding; a guard samples "
                "its branches with GuardConfig(branch_mode='sample', temperature=..., seed=...)"
            )
        return None
    return sampling if sampling.sampled or sampling.n > 1 else None


def _conversation(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _choose(
    llm: LLM, decoded: Decoded, conversations, scorer, shift_values: list
) -> list[list[GuidedAnswer]]:
    """Score the branches of forked prompts and keep each prompt's best one; the scores'
    shift values are appended to ``shift_values``. Per prompt, one answer per sample."""
    by_prompt: list[list[Branch]] = [[] for _ in conversations]
    for branch in decoded.branches:
        by_prompt[branch.prompt].append(branch)
    samples = max((b.sample for b in decoded.branches), default=0) + 1
    stop = set(llm.end_of_turn_ids)
    texts = {id(b): _text(llm, b, stop) for b in decoded.branches}
    mean_log_p = {id(b): sum(b.log_probs) / len(b.log_probs) for b in decoded.branches}
    confidence: dict[int, float | None] = {id(b): None for b in decoded.branches}
    forked = [b for branches in by_prompt if len(branches) > 1 for b in branches]
    if scorer is not None and forked:
        scores = scorer.score(
            [{"messages": conversations[b.prompt], "response": texts[id(b)]} for b in forked],
            warn_shift=False,  # checked once over all branches (_warn_if_shifted)
        )
        if scores.shift_values is not None:
            shift_values.append(scores.shift_values)
        for branch, value in zip(forked, scores.confidence.tolist(), strict=True):
            confidence[id(branch)] = None if math.isnan(value) else value

    def value(branch: Branch) -> float:
        score = mean_log_p[id(branch)] if scorer is None else confidence[id(branch)]
        return -math.inf if score is None else score

    answers = []
    for prompt, branches in enumerate(by_prompt):
        if samples > 1:  # n sampled answers, one branch each (no forks without a guard)
            branches.sort(key=lambda b: b.sample)
            answers.append(
                [
                    GuidedAnswer(
                        response=texts[id(branch)],
                        token_ids=_response_ids(branch, stop),
                        mean_log_prob=mean_log_p[id(branch)],
                        generated_tokens=len(branch.token_ids),
                    )
                    for branch in branches
                ]
            )
            continue
        branches.sort(key=lambda b: b.path)  # ties go to the most likely branch (top-k order)
        best = max(branches, key=value)  # the first of the maxima
        forks = [decoded.forks[index] for index, _ in best.path]
        interventions = [
            _intervention(llm, fork, depth, branches, best, value, texts, mean_log_p, confidence)
            for depth, fork in enumerate(forks)
        ]
        answers.append(
            [
                GuidedAnswer(
                    response=texts[id(best)],
                    token_ids=_response_ids(best, stop),
                    mean_log_prob=mean_log_p[id(best)],
                    confidence=confidence[id(best)],
                    generated_tokens=decoded.generated[prompt],
                    interventions=interventions,
                )
            ]
        )
    return answers


def _warn_if_shifted(scorer: Scorer, shift_values: list[dict[str, np.ndarray]]) -> None:
    """One warning when all the branches scored by this process, as one batch, look unlike
    the probe's training data (a warning per small batch of branches would be noise)."""
    values = {name: np.concatenate([v[name] for v in shift_values]) for name in shift_values[0]}
    check = scorer.bundle.check_shift_values(values)
    if check is not None and check.shifted:
        logger.warning("guard: the branches scored by the probe: %s", check.message())


def _intervention(llm, fork: Fork, depth, branches, best, value, texts, mean_log_p, confidence):
    """The record of ``fork``: per alternative, the best finished answer below it."""
    prefix = best.path[:depth]
    fork_index = best.path[depth][0]
    alternatives = []
    for number, (token_id, prob) in enumerate(zip(fork.token_ids, fork.probs, strict=True)):
        below = [b for b in branches if b.path[: depth + 1] == (*prefix, (fork_index, number))]
        top = max(below, key=value)
        alternatives.append(
            Alternative(
                token=llm.tokenizer.decode([token_id]),
                token_id=token_id,
                prob=prob,
                response=texts[id(top)],
                mean_log_prob=mean_log_p[id(top)],
                confidence=confidence[id(top)],
                chosen=number == best.path[depth][1],
            )
        )
    return Intervention(fork.position, fork.entropy, fork.threshold, alternatives)


def _response_ids(branch: Branch, stop: set[int]) -> list[int]:
    ids = branch.token_ids
    return ids[:-1] if ids and ids[-1] in stop else list(ids)


def _text(llm: LLM, branch: Branch, stop: set[int]) -> str:
    return llm.tokenizer.decode(_response_ids(branch, stop), skip_special_tokens=True).strip()
