"""Small file and JSON helpers: atomic writes, so an interrupted run leaves no half-written file.

Failing to create an output (a read-only or missing directory, a full disk) raises
:class:`~perturbprobe.errors.PerturbprobeError` naming the output, so the command line prints
one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import PerturbprobeError


def check_writable(path: str | os.PathLike) -> None:
    """Raise PerturbprobeError unless ``path`` can be created (or replaced): its nearest
    existing ancestor directory must be writable. A cheap check before long work; the write
    itself still reports any other failure."""
    path = Path(path)
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PerturbprobeError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PerturbprobeError(f"cannot write {path}: {ancestor} is not writable")


@contextlib.contextmanager
def _creating(path: Path) -> Iterator[None]:
    """Turn an OSError of creating ``path``'s temporary sibling into a one-line user error."""
    try:
        yield
    except OSError as exc:
        raise PerturbprobeError(
            f"cannot write {path}: {exc.strerror or exc}; check that {path.parent} is a "
            "writable directory"
        ) from exc


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    If the block raises (or the process is interrupted) the temporary file is removed and
    any existing file at ``path`` is left untouched.
    """
    path = Path(path)
    with _creating(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are meant to be shared
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    If the block raises (or the process is interrupted) the temporary directory is removed
    and ``path`` is left as it was, so a half-written directory never looks complete.
    Concurrent writers of one ``path`` never mix their files: with ``replace`` the last one
    to finish wins, without it a writer that finds ``path`` already there raises
    FileExistsError.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PerturbprobeError(f"{path} exists and is not a directory; choose another path")
    with _creating(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    asides: list[Path] = []
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; results are meant to be shared
        yield staging
        # rename() is atomic but refuses a non-empty target: move the old directory aside
        # (a rename too, never a slow rmtree that an interrupt could cut short), then retry.
        # Another writer may rename its own directory in between: that one goes aside too.
        while True:
            try:
                staging.rename(path)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not replace:
                    raise FileExistsError(errno.EEXIST, "already exists", str(path)) from exc
            aside = staging.with_name(f"{staging.stem}.old{len(asides)}")
            with contextlib.suppress(FileNotFoundError):  # another writer moved it already
                path.rename(aside)
                asides.append(aside)
    except BaseException:
        if asides and not path.exists():  # interrupted between the two renames
            with contextlib.suppress(OSError):
                asides.pop().rename(path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for aside in asides:
            shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def output_directory(
    path: Path, *, overwrite: bool, error: type[PerturbprobeError], advice: str
) -> Iterator[Path]:
    """:func:`atomic_directory` for an output a user names: an existing ``path`` is refused
    unless ``overwrite``, and so is one another run writes meanwhile (``error``, ending with
    ``advice``)."""
    if path.exists() and not overwrite:
        raise error(f"{path} already exists; {advice}")
    try:
        with atomic_directory(path, replace=overwrite) as staging:
            yield staging
    except FileExistsError:  # another run wrote ``path`` while this one was working
        raise error(f"{path} was written by another run meanwhile; {advice}") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines to ``path`` atomically; return the path."""
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def count_values(values: np.ndarray) -> dict[str, int]:
    """``{value: count}`` of a 1-D array, JSON-ready."""
    names, counts = np.unique(values.astype(str), return_counts=True)
    return {str(name): int(count) for name, count in zip(names, counts, strict=True)}
