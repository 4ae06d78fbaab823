"""Self-consistency: the black-box baseline — sample n answers, count those that agree with the
greedy one.

The strongest signal of black-box uncertainty tools is self-consistency: sample n answers at a
temperature T and measure how many agree with the answer actually given (the greedy one). It is
UQLM's "exact match" black-box scorer and the discrete form of LM-Polygraph's "lexical
similarity"; perturbprobe reports it next to its probes together with its cost, n sampled
answers per question (:attr:`SelfConsistency.sample_tokens` against
:attr:`SelfConsistency.greedy_tokens`).

Agreement is exact match of *answer keys*, so that "The answer is 42." agrees with "42". The
key follows the grader the question asks for (:func:`grader_name_for`) and its ``format``:

- ``numeric`` grader or ``number`` format: the last number of the response
  (:func:`parse_numbers`, as the numeric grader reads it);
- ``choice`` grader or ``mc`` format (with choices): the option the choice grader reads as
  chosen — its letter ("B", "(B)", "B) Paris", "Answer: B") or, failing a letter, the one
  option whose text the response contains. The key is the letter for which the choice grader
  itself grades the response correct, so it cannot drift from the grader;
- ``truefalse`` grader or format: the verdict, "true" or "false" (true/yes/correct against
  false/no/incorrect, the first such word of the normalised response, inverted after
  "not"). Parsed here: graders.py has no true/false grader yet;
- otherwise: :func:`normalize_answer` of the whole response (accents, case, punctuation and
  articles removed: "Paris." agrees with "paris").

A response without a key — empty, or with no number, no option or no verdict where one is
needed — never agrees with anything: a sample without a key counts as a disagreement, and a
greedy answer without a key gets agreement 0.

Exact match suits short answers (a number, a letter, a verdict, a name). On long free-form
answers two samples almost never agree word for word: on 40 ``builtin:easy-qa`` questions
SmolLM2-135M's 32-token answers gave agreement 0 everywhere (AUROC 0.5) — a graded lexical
similarity (LM-Polygraph's ROUGE-L) or a prompt asking for a short answer is needed there.

The confidence of any (question, response) pair (:func:`self_consistency_confidence`) is the
share of the question's n samples whose key equals the response's key; for the greedy answer
that is its agreement.

>>> result = self_consistency(llm, dataset, greedy, n=5)  # doctest: +SKIP
>>> confidence = self_consistency_confidence(result, records)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetError, GenerationError
from ..llm import LLM
from .graders import GRADERS, grade_choice, grader_name_for, normalize_answer, parse_numbers
from .records import Record
from .schema import Example, choice_letters

if TYPE_CHECKING:
    from ..decoding import GuidedAnswer

__all__ = [
    "SelfConsistency",
    "answer_key",
    "self_consistency",
    "self_consistency_confidence",
]

_TRUE = {"true", "yes", "correct"}
_FALSE = {"false", "no", "incorrect"}


@dataclass(frozen=True)
class SelfConsistency:
    """Per question: the greedy answer, n sampled answers, their agreement and their cost.

    Attributes
    ----------
    examples : tuple of Example (m,)
    greedy : tuple of str (m,)
        The greedy answers the samples are compared with.
    samples : tuple of tuple of str (m, n)
    agreement : ndarray of float (m,)
        Share of the n samples whose answer key equals the greedy answer's, in [0, 1].
    sample_tokens : ndarray of int (m,)
        Tokens generated for the n samples of each question (end-of-turn tokens included).
    greedy_tokens : ndarray of int (m,)
        Tokens generated for the greedy answer: exact when the greedy answers were decoded here
        or given as :class:`~perturbprobe.decoding.GuidedAnswer`; for given strings, the
        response re-tokenized plus one end-of-turn token when it is shorter than
        ``max_new_tokens`` (an estimate).
    settings : dict
        n, temperature, top_p, seed, max_new_tokens.
    """

    examples: tuple[Example, ...]
    greedy: tuple[str, ...]
    samples: tuple[tuple[str, ...], ...]
    agreement: np.ndarray
    sample_tokens: np.ndarray
    greedy_tokens: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def question_ids(self) -> list[str]:
        return [example.id for example in self.examples]

    @property
    def tokens_per_question(self) -> float:
        """Mean tokens generated for the n samples of a question."""
        return float(np.mean(self.sample_tokens)) if len(self.sample_tokens) else 0.0

    @property
    def cost_ratio(self) -> float:
        """Sampled tokens over greedy tokens: the baseline's cost as a multiple of answering."""
        greedy = int(np.sum(self.greedy_tokens))
        return float(np.sum(self.sample_tokens)) / greedy if greedy else float("nan")

    def confidence(self, records: Sequence[Record]) -> np.ndarray:
        """:func:`self_consistency_confidence` of ``records``."""
        return self_consistency_confidence(self, records)

    def summary(self) -> dict:
        """JSON-ready totals: questions, mean agreement, tokens per question, cost ratio."""
        return {
            **self.settings,
            "questions": len(self.examples),
            "mean_agreement": float(np.mean(self.agreement)) if len(self.agreement) else None,
            "sample_tokens_per_question": self.tokens_per_question,
            "greedy_tokens_per_question": (
                float(np.mean(self.greedy_tokens)) if len(self.greedy_tokens) else 0.0
            ),
            "cost_ratio": self.cost_ratio,
        }


def answer_key(response: str, example: Example) -> str | None:
    """The answer ``response`` gives to ``example``, as compared by self-consistency (module
    docstring), or None when it gives none."""
    grader = grader_name_for(example)
    if grader == "numeric" or example.format == "number":
        numbers = parse_numbers(response)
        return repr(numbers[-1] + 0.0) if numbers else None  # + 0.0: -0.0 and 0.0 agree
    if example.choices and (grader == "choice" or example.format == "mc"):
        return _chosen_letter(response, example)
    if grader == "truefalse" or example.format == "truefalse":
        return _verdict(response)
    return normalize_answer(response) or None


def _chosen_letter(response: str, example: Example) -> str | None:
    """The one letter the choice grader grades ``response`` correct for, if exactly one."""
    grade = GRADERS.get("choice", grade_choice)
    letters = [
        letter
        for letter in choice_letters(len(example.choices))
        if grade(response, dataclasses.replace(example, answers=(letter,)))
    ]
    return letters[0] if len(letters) == 1 else None


def _verdict(response: str) -> str | None:
    """The verdict, "true" or "false": the first verdict word of the normalised response,
    inverted after "not"; None without one."""
    words = normalize_answer(response).split()
    for index, word in enumerate(words):
        if word in _TRUE or word in _FALSE:
            verdict = word in _TRUE
            if index and words[index - 1] == "not":
                verdict = not verdict
            return "true" if verdict else "false"
    return None


def self_consistency(
    llm: LLM,
    examples: Sequence[Example],
    greedy_responses: Sequence[str | GuidedAnswer] | None,
    *,
    n: int = 5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
) -> SelfConsistency:
    """Sample n answers per question and measure their agreement with the greedy answer.

    Parameters
    ----------
    llm : LLM
    examples : sequence of Example (m,)
        E.g. a :class:`~perturbprobe.data.Dataset`.
    greedy_responses : sequence of str or GuidedAnswer (m,), or None
        The greedy answers, aligned with ``examples`` (e.g. the generated records'
        responses, or :func:`perturbprobe.generate`'s answers, whose token counts are then
        exact); None: decode them here.
    n : int
        Samples per question (default 5).
    temperature, top_p, seed
        Sampling (:func:`perturbprobe.generate`); temperature must be > 0.
    max_new_tokens : int
        Tokens per sample at most (use the greedy answers' limit).
    batch_size : int
        Questions decoded together; each becomes n rows of the batch.
    progress : bool

    Returns
    -------
    SelfConsistency

    Raises
    ------
    GenerationError
        Bad settings, or greedy answers not aligned with the examples.
    """
    from ..decoding import generate

    examples = list(examples)
    if not (isinstance(n, int) and n >= 1):
        raise GenerationError(f"self-consistency: n must be an integer >= 1, got {n!r}")
    if not (temperature is not None and temperature > 0):
        raise GenerationError(
            f"self-consistency: temperature must be > 0 (at 0 every sample is the greedy "
            f"answer), got {temperature!r}"
        )
    prompts = [list(example.messages) for example in examples]
    names = [example.id for example in examples]
    common = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "progress": progress,
        "names": names,
    }
    if greedy_responses is None:
        answers = generate(llm, prompts, **common) if prompts else []
        greedy = [answer.response for answer in answers]
        greedy_tokens = [answer.generated_tokens for answer in answers]
    else:
        greedy_responses = list(greedy_responses)
        if len(greedy_responses) != len(examples):
            raise GenerationError(
                f"self-consistency: {len(greedy_responses)} greedy responses for "
                f"{len(examples)} examples"
            )
        greedy, greedy_tokens = [], []
        for item in greedy_responses:
            if isinstance(item, str):
                greedy.append(item)
                greedy_tokens.append(_estimated_tokens(llm, item, max_new_tokens))
            else:  # a GuidedAnswer
                greedy.append(item.response)
                greedy_tokens.append(int(item.generated_tokens))
    sampled = (
        generate(llm, prompts, n=n, temperature=temperature, top_p=top_p, seed=seed, **common)
        if prompts
        else []
    )
    if n == 1:
        sampled = [[answer] for answer in sampled]
    samples = tuple(tuple(answer.response for answer in row) for row in sampled)
    agreement = np.array(
        [
            _agreement(answer_key(response, example), row, example)
            for example, response, row in zip(examples, greedy, samples, strict=True)
        ],
        dtype=np.float64,
    )
    return SelfConsistency(
        examples=tuple(examples),
        greedy=tuple(greedy),
        samples=samples,
        agreement=agreement,
        sample_tokens=np.array(
            [sum(answer.generated_tokens for answer in row) for row in sampled], dtype=np.int64
        ),
        greedy_tokens=np.array(greedy_tokens, dtype=np.int64),
        settings={
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
        },
    )


def self_consistency_confidence(result: SelfConsistency, records: Sequence[Record]) -> np.ndarray:
    """The self-consistency confidence (n,) of each record, aligned with ``records``: the share
    of its question's samples (matched by ``question_id``) whose answer key equals the key of
    the record's response — the agreement for the greedy answer; 0 for a response without a
    key.

    Raises
    ------
    DatasetError
        A record whose question has no samples in ``result``.
    """
    by_id = {
        example.id: (example, samples)
        for example, samples in zip(result.examples, result.samples, strict=True)
    }
    confidence = np.empty(len(records), dtype=np.float64)
    for index, record in enumerate(records):
        try:
            example, samples = by_id[record.question_id]
        except KeyError:
            raise DatasetError(
                f"record {record.id!r}: question {record.question_id!r} has no self-consistency "
                "samples"
            ) from None
        confidence[index] = _agreement(answer_key(record.response, example), samples, example)
    return confidence


def _agreement(key: str | None, samples: Sequence[str], example: Example) -> float:
    """Share of ``samples`` whose key is ``key`` (0 without a key or samples)."""
    if key is None or not samples:
        return 0.0
    return sum(answer_key(sample, example) == key for sample in samples) / len(samples)


def _estimated_tokens(llm: LLM, response: str, max_new_tokens: int) -> int:
    """Tokens the greedy answer ``response`` took: its tokens, plus the end-of-turn token when
    it stopped before ``max_new_tokens``."""
    tokens = len(llm.tokenizer.encode(response, add_special_tokens=False))
    return tokens + 1 if tokens < max_new_tokens else max_new_tokens
