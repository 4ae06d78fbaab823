"""A few question–answer records for feature tests on tiny models."""

from __future__ import annotations

from perturbprobe.data import Record

QA = [
    ("Name a colour.", "Blue is a nice colour", ("Say a colour.", "Give me any colour.")),
    ("What is 2 + 2?", "Four", ()),
    ("Capital of France?", "Paris is the capital of France, of course.", ("France's capital?",)),
]

# Three responses of different lengths (T = 3/4, 8/9 and 17/18 tokens with the template's
# end-of-turn suffix, depending on the tokenizer): (id suffix, question, response).
LENGTH_QA = [
    ("short", "Add two and two.", "Four"),
    ("mid", "What is the capital of France?", "Paris is the capital."),
    ("long", "Name a color.", "Blue is a color, and red is a color too."),
]


def chat_record(record_id, question, response, label=1, **fields) -> Record:
    """One generated record of a single user turn (its own question id unless given)."""
    fields.setdefault("question_id", record_id)
    return Record(
        id=record_id,
        messages=({"role": "user", "content": question},),
        response=response,
        label=label,
        source="generated",
        **fields,
    )


def qa_records(paraphrases: bool = False) -> list[Record]:
    """One generated record per QA row, labels alternating 0/1; with the paraphrases if asked."""
    return [
        chat_record(str(i), q, a, label=i % 2, paraphrases=p if paraphrases else ())
        for i, (q, a, p) in enumerate(QA)
    ]


def length_records(prefix: str) -> list[Record]:
    """The :data:`LENGTH_QA` records (label 1), with ids ``{prefix}-short`` and so on."""
    return [chat_record(f"{prefix}-{name}", q, a) for name, q, a in LENGTH_QA]
