"""Collecting records: the LLM answers a dataset and a grader labels each answer.

Two sources:

- ``"generate"``: batched greedy generation, then grading (one record per question);
- ``"gold"``: no generation — the gold answer (label 1) and every wrong answer (label 0) are
  written as responses to be teacher-forced, the way the CCPS authors augment training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..data.graders import Grader, grader_name_for, resolve_grader
from ..data.records import Record
from ..errors import DatasetError
from ..llm import LLM
from .responses import generate_responses

if TYPE_CHECKING:
    from ..distributed import ProcessGroup
from ..data.schema import Example

__all__ = ["COLLECT_SOURCES", "collect"]

COLLECT_SOURCES = ("generate", "gold")


def collect(
    llm: LLM | None,
    dataset: Sequence[Example],
    *,
    source: str = "generate",
    grader: str | Grader | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    group: ProcessGroup | None = None,
) -> list[Record]:
    """Answer and grade every example of ``dataset``.

    Parameters
    ----------
    llm : LLM or None
        The model that answers; not needed (may be None) for ``source="gold"``.
    dataset : sequence of Example
        E.g. ``perturbprobe.data.load_dataset("builtin:easy-qa")``.
    source : {"generate", "gold"}
    grader : str or callable, optional
        Overrides every example's grader: a registered name or ``f(response, example) -> bool``.
    max_new_tokens, batch_size : int
        Generation settings.
    progress : bool
        Show a progress bar.
    group : ProcessGroup, optional
        Under torchrun: the generation is sharded over the ranks; every rank returns all
        records (:mod:`perturbprobe.distributed`).

    Returns
    -------
    list of Record
        ``generate``: one per example, ids ``<question id>/generated``; ``gold``: one gold
        record (``/gold``) and one per wrong answer (``/wrong-<k>``) per example.
    """
    if source not in COLLECT_SOURCES:
        raise DatasetError(f"unknown source {source!r}; use one of {', '.join(COLLECT_SOURCES)}")
    override = resolve_grader(grader) if grader is not None else None
    if source == "gold":
        return [record for example in dataset for record in _gold_records(example)]
    if llm is None:
        raise ValueError("collect(source='generate') needs an LLM")
    responses = generate_responses(
        llm,
        [example.messages for example in dataset],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        names=[f"question {example.id!r}" for example in dataset],
        group=group,
    )
    records = []
    for example, response in zip(dataset, responses, strict=True):
        name, grade = override or resolve_grader(grader_name_for(example))
        records.append(
            _record(
                example,
                f"{example.id}/generated",
                response,
                int(grade(response, example)),
                "generated",
                name,
            )
        )
    return records


def _record(example: Example, record_id: str, response: str, label, source, grader) -> Record:
    return Record(
        id=record_id,
        question_id=example.id,
        messages=example.messages,
        response=response,
        label=label,
        source=source,
        grader=grader,
        paraphrases=example.paraphrases,
        category=example.category,
        domain=example.domain,
        format=example.format,
    )


def _gold_records(example: Example) -> list[Record]:
    gold = _record(example, f"{example.id}/gold", example.answers[0], 1, "gold", "gold")
    wrong = [
        _record(example, f"{example.id}/wrong-{k}", answer, 0, "wrong", "gold")
        for k, answer in enumerate(example.wrong_answers, start=1)
    ]
    return [gold, *wrong]
