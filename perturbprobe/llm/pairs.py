"""Chat rendering and pair encoding: where the response tokens start and end.

A *pair* is prompt messages plus a response string (FEATURES.md, "Common ground"):

- prompt ids: the messages rendered with the chat template and ``add_generation_prompt=True``;
- response ids: the tokens of the full conversation (prompt + assistant message, rendered
  without the generation prompt) after the prompt prefix, so they include the end-of-turn
  marker(s) the template appends;
- if the full rendering does not start with the prompt ids (a template that rewrites
  history), fall back to the tokenized response followed by the end-of-turn id, and flag it;
- a tokenizer without a chat template uses plain concatenation: the message contents joined
  by newlines plus a newline, then the response tokens and the EOS token.

``response_end="eot"`` cuts the response after its first end-of-turn token (SemGrad's
convention); the default ``"template"`` keeps everything the template appends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import PairEncodingError

__all__ = [
    "RESPONSE_ENDS",
    "EncodedPair",
    "encode_pair",
    "render_ids",
    "render_prompt_ids",
    "validate_messages",
]

RESPONSE_ENDS = ("template", "eot")
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair.

    Attributes
    ----------
    prompt_ids : tuple[int, ...]  (I,)
    response_ids : tuple[int, ...]  (T,)
        Response token t (0-based here) is predicted at position ``I + t - 1``.
    used_fallback : bool
        True when the template rewrote history and the fallback encoding was used.
    """

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    used_fallback: bool = False

    @property
    def input_ids(self) -> tuple[int, ...]:
        """``prompt_ids + response_ids``, length I + T."""
        return self.prompt_ids + self.response_ids


def validate_messages(messages, *, what: str = "pair") -> list[dict[str, str]]:
    """Check chat messages and return them as plain dicts.

    Raises
    ------
    PairEncodingError
        If ``messages`` is empty, a message lacks a string role/content, a role is unknown,
        or the last message is the assistant's.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise PairEncodingError(f"{what}: 'messages' must be a non-empty list of messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PairEncodingError(
                f"{what}: 'messages' item {index} is not an object with role/content"
            )
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise PairEncodingError(
                f"{what}: 'messages' item {index} has role {role!r}; expected one of "
                f"{', '.join(_ROLES)}"
            )
        if not isinstance(content, str):
            raise PairEncodingError(f"{what}: 'messages' item {index} has no string 'content'")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] == "assistant":
        raise PairEncodingError(
            f"{what}: 'messages' ends with the assistant's message; pass it as the response"
        )
    return checked


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_ids(tokenizer, messages, *, add_generation_prompt: bool) -> list[int]:
    # Render to text, then tokenize without adding special tokens: this is what
    # apply_chat_template(tokenize=True) does, without depending on its return type.
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_prompt_ids(tokenizer, messages, *, what: str = "pair") -> list[int]:
    """Prompt ids (I,) of ``messages`` ready for the assistant's answer."""
    messages = validate_messages(messages, what=what)
    if not _has_template(tokenizer):
        text = "\n".join(message["content"] for message in messages) + "\n"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [tokenizer.bos_token_id, *ids]
        return ids
    try:
        return render_ids(tokenizer, messages, add_generation_prompt=True)
    except Exception as exc:  # jinja raises its own exception types (TemplateError, ...)
        raise PairEncodingError(f"{what}: the chat template cannot render it: {exc}") from exc


def encode_pair(
    tokenizer,
    messages,
    response: str,
    *,
    end_of_turn_ids: Sequence[int],
    response_end: str = "template",
    max_length: int | None = None,
    what: str = "pair",
) -> EncodedPair:
    """Encode one (messages, response) pair with the exact response span of FEATURES.md.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    messages : list of {"role", "content"}
    response : str
        The assistant's answer; must contain non-whitespace text.
    end_of_turn_ids : sequence of int
        Tokens that close a turn; the first one is appended in the fallback encoding.
    response_end : {"template", "eot"}
    max_length : int, optional
        The model's context size; longer pairs raise.
    what : str
        How to name the pair in error messages (e.g. its record id).

    Raises
    ------
    PairEncodingError
        Empty response, bad messages, unrenderable template, or a pair longer than the context.
    """
    if response_end not in RESPONSE_ENDS:
        raise PairEncodingError(
            f"response_end must be one of {', '.join(RESPONSE_ENDS)}; got {response_end!r}"
        )
    if not isinstance(response, str) or not response.strip():
        raise PairEncodingError(f"{what}: the response is empty")
    prompt_ids = render_prompt_ids(tokenizer, messages, what=what)
    response_tokens = tokenizer(response, add_special_tokens=False)["input_ids"]
    used_fallback = False
    if not _has_template(tokenizer):
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        response_ids = response_tokens + eos
    else:
        conversation = [*validate_messages(messages), {"role": "assistant", "content": response}]
        try:
            full_ids = render_ids(tokenizer, conversation, add_generation_prompt=False)
        except Exception as exc:
            raise PairEncodingError(f"{what}: the chat template cannot render it: {exc}") from exc
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            response_ids = full_ids[len(prompt_ids) :]
        else:
            used_fallback = True
            response_ids = response_tokens + list(end_of_turn_ids[:1])
    if response_end == "eot":
        eot = set(end_of_turn_ids)
        first = next((i for i, token in enumerate(response_ids) if token in eot), None)
        if first is not None:
            response_ids = response_ids[: first + 1]
    total = len(prompt_ids) + len(response_ids)
    if max_length is not None and total > max_length:
        raise PairEncodingError(
            f"{what}: {total} tokens ({len(prompt_ids)} prompt + {len(response_ids)} response) "
            f"exceed the model's context of {max_length}; shorten the prompt or response"
        )
    return EncodedPair(tuple(prompt_ids), tuple(response_ids), used_fallback)
