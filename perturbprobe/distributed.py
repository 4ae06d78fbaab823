"""Data-parallel runs under ``torchrun``: shard the batches over ranks, gather on rank 0.

``torchrun --nproc-per-node N -m perturbprobe extract …`` (and ``collect``, ``score``) starts N
processes; each finds the process group in its environment (:func:`process_group`), works on
its share of the batches on its own device, and rank 0 assembles and writes the one output.

The batches are exactly those a single process would form (same order, same members), and
only whole batches are dealt out, so every row is computed in the same batch as in a single
process and the output is the same — bitwise on CPU. Batches go to the rank with the least
work so far (work = tokens in the batch), which balances long and short records.

A rank that fails makes every rank fail: after the work all ranks exchange their outcome
(:meth:`ProcessGroup.agree`), so nobody waits forever for a result and rank 0 writes nothing.
Results travel between ranks with ``torch.distributed``'s object collectives (pickle between
the processes of one job; nothing a user hands us is unpickled).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import PerturbprobeError

__all__ = ["ProcessGroup", "RankFailed", "exit_rank", "process_group"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RankFailed(PerturbprobeError):
    """Another rank of the run failed (its error is in the message)."""


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a torchrun job.

    Attributes
    ----------
    rank, world_size, local_rank : int
        From torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that writes outputs."""
        return self.rank == 0

    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, batches: Sequence[Sequence[int]], cost: Callable[[int], int]) -> list:
        """This rank's batches: each batch, in order, to the rank with the least total
        ``cost`` (summed over the batch's items) so far; ties to the lowest rank."""
        load = [0] * self.world_size
        mine = []
        for batch in batches:
            owner = min(range(self.world_size), key=lambda r: (load[r], r))
            load[owner] += sum(cost(item) for item in batch)
            if owner == self.rank:
                mine.append(batch)
        return mine

    def agree(self, error: BaseException | None) -> None:
        """Exchange outcomes: re-raise this rank's ``error``, or raise :class:`RankFailed`
        when another rank had one; return when every rank succeeded."""
        outcomes: list[str | None] = [None] * self.world_size
        dist.all_gather_object(outcomes, None if error is None else f"{error}")
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
        if failed:
            rank, message = failed[0]
            raise RankFailed(f"rank {rank} of {self.world_size} failed: {message}")

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` on this rank, then :meth:`agree` on the outcome."""
        try:
            result = work()
        except Exception as exc:  # every rank must hear of it before anyone goes on
            self.agree(exc)
            raise  # pragma: no cover - agree re-raises
        self.agree(None)
        return result

    def gather(self, local: dict[int, Any]) -> dict[int, Any] | None:
        """Merge every rank's ``{item index: result}`` on rank 0 (None on the others)."""
        parts: list[dict[int, Any]] | None = [{}] * self.world_size if self.is_root else None
        dist.gather_object(local, parts, dst=0)
        if parts is None:
            return None
        merged: dict[int, Any] = {}
        for part in parts:
            merged.update(part)
        return merged

    def all_gather(self, local: dict[int, Any]) -> dict[int, Any]:
        """Merge every rank's ``{item index: result}`` on every rank."""
        parts: list[dict[int, Any]] = [{}] * self.world_size
        dist.all_gather_object(parts, local)
        merged: dict[int, Any] = {}
        for part in parts:
            merged.update(part)
        return merged


def process_group() -> ProcessGroup | None:
    """The torchrun job this process belongs to, joining its process group (gloo on CPU,
    nccl on CUDA) on first use; None when not run by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    group = ProcessGroup(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(_leave_process_group)  # for library use; the CLI ends with exit_rank
        logger.debug("rank %d of %d joined (%s)", group.rank, world_size, backend)
    return group


def exit_rank(code: int) -> None:
    """End a rank that joined a process group: leave the group, flush, and exit with ``code``
    at once, without the interpreter's teardown.

    Left to that teardown, the group's communication threads are destroyed while still
    joinable and the rank aborts after its work ("terminate called without an active
    exception", SIGABRT): 10 of 40 bare two-rank gloo runs on a loaded 2-core machine
    (``benchmarks/gloo_teardown.py``). Destroying the group in an ``atexit`` hook made that
    rare but not impossible (a rank with no batches still aborted once in a fresh-clone
    ``make test``), so a rank's process ends with ``os._exit`` after everything is written.
    Does nothing (returns) when this process never joined a group.
    """
    if not dist.is_initialized():
        return
    _leave_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _leave_process_group() -> None:
    """Destroy the default process group, if it is still there."""
    if dist.is_initialized():
        dist.destroy_process_group()
