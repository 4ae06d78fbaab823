"""A few question–answer records for feature tests on tiny models."""

from __future__ import annotations

from perturbprobe.data import Record

QA = [
    ("Name a colour.", "Blue is a nice colour", ("Say a colour.", "Give me any colour.")),
    ("What is 2 + 2?", "Four", ()),
    ("Capital of France?", "Paris is the capital of France, of course.", ("France's capital?",)),
]


def qa_records(paraphrases: bool = False) -> list[Record]:
    """One generated record per QA row, labels alternating 0/1; with the paraphrases if asked."""
    return [
        Record(
            id=str(i),
            question_id=str(i),
            messages=({"role": "user", "content": q},),
            response=a,
            label=i % 2,
            source="generated",
            paraphrases=p if paraphrases else (),
        )
        for i, (q, a, p) in enumerate(QA)
    ]
