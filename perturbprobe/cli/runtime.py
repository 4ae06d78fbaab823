"""What commands share at run time: the LLM loader, the torchrun process group, input files.

Commands call these through the module (``runtime.load_model(...)``), so a test can replace
``load_model`` here to prove that nothing loads an LLM.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ..errors import DatasetError, PerturbprobeError

logger = logging.getLogger("perturbprobe")


def join_process_group(obj):
    """The torchrun job this command runs in (None outside one); ranks other than 0 show no
    progress bars or info logs."""
    from ..distributed import process_group

    group = process_group()
    if group is not None and not group.is_root:
        obj["progress"] = False
        logging.getLogger().setLevel(logging.WARNING)
    return group


def load_model(model: str, dtype: str, device: str | None, group=None):
    """The LLM of --model/--dtype/--device (and --device-map, kept in ``ctx.obj``)."""
    from transformers.utils import logging as transformers_logging

    from ..llm import load_llm

    device_map = click.get_current_context().obj.get("device_map")
    if device is None and device_map is None and group is not None:
        device = str(group.device())  # cuda:LOCAL_RANK, or the CPU

    transformers_logging.disable_progress_bar()  # our own bars show the work that matters
    logger.info("loading %s", model)
    return load_llm(model, dtype=dtype, device=device, device_map=device_map)


def refuse_existing(out: Path, overwrite: bool, error: type[PerturbprobeError]) -> None:
    """Raise ``error`` when ``out`` exists and --overwrite was not given."""
    if out.exists() and not overwrite:
        raise error(f"{out} already exists; choose another --out or pass --overwrite")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped); unreadable files and bad lines are user
    errors naming the line."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc})") from exc
    return rows
