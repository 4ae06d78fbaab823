"""``perturbprobe generate`` on files: a JSONL of prompts in, a JSONL of answers out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import write_jsonl
from ..errors import DatasetError, PerturbprobeError
from ..llm.pairs import validate_messages
from .guided import GuidedAnswer, generate

__all__ = ["OUTPUT_FIELDS", "generate_file", "read_prompts"]

OUTPUT_FIELDS = ("response", "guard")


def read_prompts(
    path: str | os.PathLike,
) -> tuple[list[dict[str, Any]], list[list[dict]], list[str]]:
    """The rows of a prompts JSONL, their conversations and names ("<path> line N"),
    checked before any work.

    Each row needs ``messages`` (a list of {"role", "content"}) or ``question`` (a string);
    other fields pass through. Raises DatasetError naming the line of the first bad row.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read prompts from {path}: {exc}") from exc
    rows, conversations, names = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{where}: invalid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected an object with 'messages' or 'question'")
        clash = [name for name in OUTPUT_FIELDS if name in row]
        if clash:
            raise DatasetError(
                f"{where}: the row already has {clash[0]!r}, which generate writes; rename it"
            )
        if ("messages" in row) == ("question" in row):
            raise DatasetError(f"{where}: give exactly one of 'messages' and 'question'")
        prompt = row.get("messages", row.get("question"))
        if "question" in row:
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError(f"{where}: 'question' must be a non-empty string")
            prompt = [{"role": "user", "content": prompt}]
        try:
            conversations.append(validate_messages(prompt, what=where))
        except PerturbprobeError as exc:
            raise DatasetError(str(exc)) from exc
        rows.append(row)
        names.append(where)
    if not rows:
        raise DatasetError(f"{path} holds no prompts")
    return rows, conversations, names


def generate_file(
    llm, input_path: str | os.PathLike, output_path: str | os.PathLike, **kwargs
) -> list[GuidedAnswer] | None:
    """Answer every prompt of ``input_path`` and write ``output_path`` atomically, in order.

    Output rows are the input rows plus ``response`` and, with a guard, ``guard`` (see
    :meth:`GuidedAnswer.guard_record`). ``kwargs`` go to :func:`generate`. Under torchrun
    only rank 0 writes; the other ranks return None.
    """
    rows, conversations, names = read_prompts(input_path)
    answers = generate(llm, conversations, names=names, **kwargs)
    group = kwargs.get("group")
    if group is not None and not group.is_root:
        return None
    guarded = kwargs.get("guard") is not None
    output = []
    for row, answer in zip(rows, answers, strict=True):
        out = {**row, "response": answer.response}
        if guarded:
            out["guard"] = answer.guard_record()
        output.append(out)
    write_jsonl(output_path, output)
    return answers
