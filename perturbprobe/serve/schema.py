"""Request and response bodies of ``POST /v1/score`` (pydantic models: validation and the
OpenAPI schema at ``/docs`` come from them).

A request is ``{"pairs": [...]}``; each pair has ``response`` and either ``messages`` (chat
messages, the last one the user's) or ``question`` (a plain string). Any other field of a pair
(an ``id``, say) is passed through to its result. A field of the wrong type is the client's bug
and fails the whole request (422, naming the field); a well-formed pair the LLM cannot score
(an empty response, one longer than the model's context) gets an ``error`` in its result and
the other pairs are still scored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RESULT_FIELDS", "ChatMessage", "Pair", "PairResult", "ScoreRequest", "ScoreResponse"]

RESULT_FIELDS = ("confidence", "abstain", "error")
"""Fields the service adds to each result; a pair may not bring its own of these names."""


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Pair(BaseModel):
    """A (prompt, response) pair to score; extra fields are passed through."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"id": "a1", "question": "Capital of France?", "response": "Paris"}]
        },
    )

    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="Chat messages; give this or 'question'."
    )
    question: str | None = Field(default=None, description="A plain user question.")
    response: str = Field(description="The LLM's answer to score.")

    @model_validator(mode="after")
    def _one_prompt(self) -> Pair:
        if (self.messages is None) == (self.question is None):
            raise ValueError("give exactly one of 'messages' and 'question'")
        reserved = sorted(set(self.model_extra or {}) & set(RESULT_FIELDS))
        if reserved:
            raise ValueError(f"field {reserved[0]!r} is reserved for the result")
        return self

    def scorer_input(self) -> dict[str, Any]:
        """The mapping :meth:`perturbprobe.Scorer.score` reads."""
        if self.messages is None:
            return {"question": self.question, "response": self.response}
        return {"messages": [m.model_dump() for m in self.messages], "response": self.response}


class ScoreRequest(BaseModel):
    """``{"pairs": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] = Field(min_length=1, description="Pairs to score, in order.")


class PairResult(BaseModel):
    """The result of one pair: its passed-through fields plus ``confidence`` (and
    ``abstain``, ``error``)."""

    model_config = ConfigDict(extra="allow")

    confidence: float | None = Field(
        description="Calibrated P(correct); null when the pair could not be scored."
    )
    abstain: bool | None = Field(
        default=None,
        description="Below the bundle's risk-controlled threshold (or unscored); only when "
        "the bundle has a threshold.",
    )
    error: str | None = Field(default=None, description="Why the pair could not be scored.")


class ShiftResult(BaseModel):
    """Whether this request's pairs, as a batch, look unlike the probe's training data."""

    statistic: float | None = Field(description="Largest KS distance; null when untested.")
    p_value: float | None = Field(description="Bonferroni-adjusted p-value; null when untested.")
    shifted: bool
    n: int = Field(description="Pairs tested.")
    message: str


class ScoreResponse(BaseModel):
    """One result per pair, in the request's order."""

    bundle: str = Field(description="The bundle's id (its manifest hash).")
    results: list[PairResult]
    shift: ShiftResult | None = Field(
        default=None, description="Only when the bundle has a shift reference."
    )
