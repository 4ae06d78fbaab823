"""Self-consistency: the black-box baseline — sample n answers, measure how far they agree
with the greedy one.

The strongest signal of black-box uncertainty tools is self-consistency: sample n answers at a
temperature T and measure how much they agree with the answer actually given (the greedy one).
perturbprobe reports it next to its probes together with its cost, n sampled answers per
question (:attr:`SelfConsistency.sample_tokens` against :attr:`SelfConsistency.greedy_tokens`).

The agreement of one sample with a response (:func:`answer_agreement`, in [0, 1]) follows the
grader the question asks for (:func:`grader_name_for`) and its ``format``. Keyed formats compare
*answer keys* (:func:`answer_key`) exactly — 1 if the keys are equal, else 0 — so that "The
answer is 42." agrees with "42"; this is UQLM's "exact match" black-box scorer on the keys:

- ``numeric`` grader or ``number`` format: the last number of the response
  (:func:`parse_numbers`, as the numeric grader reads it);
- ``choice`` grader or ``mc`` format (with choices): the option the choice grader reads as
  chosen — its letter ("B", "(B)", "B) Paris", "Answer: B") or, failing a letter, the one
  option whose text the response contains. The key is the letter for which the choice grader
  itself grades the response correct, so it cannot drift from the grader;
- ``truefalse`` grader or format: the verdict, "true" or "false", as the truefalse grader
  reads it (:func:`~perturbprobe.data.graders.truefalse_verdict`).

A response without a key (no number, no option or no verdict) never agrees with anything.

Every other question — the ``contains`` and ``exact`` graders (``short`` format) and graders
registered by users — has a free-text answer, and there agreement is graded: the ROUGE-L F1
(:func:`rouge_l_f1`; Lin 2004) of the sample's and the response's normalised tokens
(``normalize_answer(text).split()``: accents, case, punctuation and articles removed), from
the longest common subsequence of tokens (:func:`lcs_length`). Exact match of whole sentences
is the wrong key for free text: on 40 ``builtin:easy-qa`` questions not one of SmolLM2-135M's
200 sampled 32-token answers matched its greedy answer word for word, so agreement was 0
everywhere and the AUROC 0.5. ROUGE-L is the "lexical similarity" of LM-Polygraph (Fadeeva et
al., 2023, ``LexicalSimilarity(metric="rougeL")``, after Fomicheva et al., 2020), with two
differences: LM-Polygraph averages over all pairs of samples and stems words (the
``rouge-score`` package with a Porter stemmer), whereas here each sample is compared with the
answer being scored, as UQLM's black-box scorers do, on the graders' own normalisation. On one-
word answers ROUGE-L F1 is exact match ("Paris." against "paris": 1; "Paris, France" against
"Paris": 2/3). An empty (normalised) text agrees with nothing. The LCS is a small dynamic
program written here (answers are a few dozen tokens) rather than a dependency on
``rouge-score``, whose tokenizer would differ from :func:`normalize_answer` anyway.

The agreement of a question (:attr:`SelfConsistency.agreement`) is the mean agreement of its n
samples with the greedy answer. The confidence of any (question, response) pair
(:func:`self_consistency_confidence`) is the mean agreement of the question's n samples with
that response; for the greedy answer it is the question's agreement.

>>> result = self_consistency(llm, dataset, greedy, n=5)  # doctest: +SKIP
>>> confidence = self_consistency_confidence(result, records)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.graders import (
    GRADERS,
    grade_choice,
    grader_name_for,
    normalize_answer,
    parse_numbers,
    truefalse_verdict,
)
from ..data.records import Record
from ..data.schema import Example, choice_letters
from ..errors import DatasetError, GenerationError
from ..llm import LLM
from .guided import GuidedAnswer, generate

__all__ = [
    "SelfConsistency",
    "answer_agreement",
    "answer_key",
    "lcs_length",
    "rouge_l_f1",
    "self_consistency",
    "self_consistency_confidence",
]


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
        Mean agreement of the n samples with the greedy answer (:func:`answer_agreement`), in
        [0, 1]: for keyed formats the share of samples whose key is the greedy answer's, for
        free text the mean ROUGE-L F1.
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
    docstring), or None when it gives none: for keyed formats the number, letter or verdict;
    for free text the normalised response (whose tokens :func:`answer_agreement` compares by
    ROUGE-L rather than by equality)."""
    kind = _key_kind(example)
    if kind == "number":
        numbers = parse_numbers(response)
        return repr(numbers[-1] + 0.0) if numbers else None  # + 0.0: -0.0 and 0.0 agree
    if kind == "choice":
        return _chosen_letter(response, example)
    if kind == "verdict":
        verdict = truefalse_verdict(response)
        return None if verdict is None else ("true" if verdict else "false")
    return normalize_answer(response) or None


def answer_agreement(sample: str, response: str, example: Example) -> float:
    """How far the sampled answer ``sample`` agrees with ``response`` to ``example``, in [0, 1].

    Keyed formats (number, choice, verdict): 1.0 if both have the same :func:`answer_key`,
    else 0.0 (also when ``response`` has no key). Free text: the ROUGE-L F1
    (:func:`rouge_l_f1`) of their normalised tokens, ``normalize_answer(text).split()``.
    """
    if _key_kind(example) == "text":
        return rouge_l_f1(normalize_answer(sample).split(), normalize_answer(response).split())
    key = answer_key(response, example)
    return float(key is not None and answer_key(sample, example) == key)


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (not necessarily
    contiguous, order kept): ``lcs_length("a b c d".split(), "a c b d".split()) == 3``."""
    # previous[j]: LCS of the tokens of `first` read so far and second[:j]; one row at a time.
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of two token sequences: with L their longest common subsequence
    (:func:`lcs_length`), precision L / len(candidate), recall L / len(reference), and their
    harmonic mean 2PR / (P + R) = 2L / (len(candidate) + len(reference)). Symmetric; 1 for
    equal non-empty sequences, 0 when they share no token or one is empty."""
    common = lcs_length(candidate, reference)
    if not common:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def _key_kind(example: Example) -> str:
    """How answers to ``example`` are compared: "number", "choice", "verdict" (exact keys) or
    "text" (ROUGE-L)."""
    grader = grader_name_for(example)
    if grader == "numeric" or example.format == "number":
        return "number"
    if example.choices and (grader == "choice" or example.format == "mc"):
        return "choice"
    if grader == "truefalse" or example.format == "truefalse":
        return "verdict"
    return "text"


def _chosen_letter(response: str, example: Example) -> str | None:
    """The one letter the choice grader grades ``response`` correct for, if exactly one."""
    grade = GRADERS.get("choice", grade_choice)
    letters = [
        letter
        for letter in choice_letters(len(example.choices))
        if grade(response, dataclasses.replace(example, answers=(letter,)))
    ]
    return letters[0] if len(letters) == 1 else None


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
            _agreement(response, row, example)
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
    """The self-consistency confidence (n,) of each record, aligned with ``records``: the mean
    agreement (:func:`answer_agreement`) of its question's samples (matched by
    ``question_id``) with the record's response — the question's agreement for the greedy
    answer; 0 for a response without a key or, for free text, without a word.

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
        confidence[index] = _agreement(record.response, samples, example)
    return confidence


def _agreement(response: str, samples: Sequence[str], example: Example) -> float:
    """Mean agreement of ``samples`` with ``response`` (0 without samples)."""
    if not samples:
        return 0.0
    return sum(answer_agreement(sample, response, example) for sample in samples) / len(samples)


def _estimated_tokens(llm: LLM, response: str, max_new_tokens: int) -> int:
    """Tokens the greedy answer ``response`` took: its tokens, plus the end-of-turn token when
    it stopped before ``max_new_tokens``."""
    tokens = len(llm.tokenizer.encode(response, add_special_tokens=False))
    return tokens + 1 if tokens < max_new_tokens else max_new_tokens
