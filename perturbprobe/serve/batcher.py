"""Micro-batching: pairs from concurrent requests are merged into one scoring batch.

One batched teacher-forced pass over 32 pairs costs far less than 32 single passes, so the
service does not score each request on its own. Requests put their pairs on a bounded queue;
one worker takes up to ``max_batch`` pairs at a time — waiting at most ``max_wait`` seconds
after the oldest queued pair for more to arrive — scores them in a worker thread (the event
loop keeps answering health checks meanwhile) and hands each result back to its request.

>>> batcher = MicroBatcher(score_batch, max_batch=32, max_wait=0.01, max_queue=256)
>>> await batcher.start()                                   # doctest: +SKIP
>>> results = await batcher.score(pairs, timeout=30.0)     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .metrics import ServiceMetrics

__all__ = ["MicroBatcher", "QueueFull", "ShuttingDown"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue cannot take the request's pairs now; retry later (HTTP 503)."""


class ShuttingDown(Exception):
    """The service is draining; it takes no new work (HTTP 503)."""


@dataclass
class _Item:
    pair: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Merges pairs of concurrent requests into batches for ``score_batch``.

    Parameters
    ----------
    score_batch : callable
        ``score_batch(pairs) -> results``, one result per pair, in order; runs in a worker
        thread, one batch at a time.
    max_batch : int
        Most pairs per batch.
    max_wait : float
        Seconds a batch waits for more pairs after its oldest pair was queued.
    max_queue : int
        Most pairs waiting; a request that would exceed it is refused with :class:`QueueFull`.
    metrics : ServiceMetrics, optional
        Updated with queue depth, batch sizes and batch times.
    """

    def __init__(
        self,
        score_batch: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 1 and max_wait >= 0; got {max_batch}, "
                f"{max_queue}, {max_wait}"
            )
        self.score_batch = score_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.metrics = metrics or ServiceMetrics()
        self.batches = 0  # scoring calls so far
        self.seconds = 0.0  # time spent in them
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether the worker is taking work."""
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def depth(self) -> int:
        """Pairs waiting to be scored."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the worker (on the running event loop); again after :meth:`stop` too."""
        self._closing = False
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perturbprobe-score")
        self._worker = asyncio.create_task(self._run(), name="perturbprobe-batcher")

    async def stop(self) -> None:
        """Score what is already queued, then stop the worker and its thread."""
        self._closing = True
        if self._worker is not None:
            self._arrived.set()
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def score(self, pairs: Sequence[Any], *, timeout: float | None = None) -> list[Any]:
        """Queue ``pairs`` (all or none) and wait for their results, in order.

        Raises
        ------
        QueueFull
            ``pairs`` does not fit in the queue now.
        ShuttingDown
            :meth:`stop` was called.
        TimeoutError
            The results did not come within ``timeout`` seconds; the request's pairs that
            were not yet being scored are dropped from the queue.
        """
        if not self.running:
            raise ShuttingDown("the service is shutting down")
        if len(self._queue) + len(pairs) > self.max_queue:
            raise QueueFull(
                f"{len(self._queue)} pairs are waiting and this request adds {len(pairs)}; "
                f"the queue holds at most {self.max_queue}"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(pair, loop.create_future()) for pair in pairs]
        self._queue.extend(items)
        self.metrics.queue_depth.set(len(self._queue))
        self._arrived.set()
        futures = [item.future for item in items]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except asyncio.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None
        finally:
            for future in futures:
                future.cancel()  # no-op for those done; the worker skips the others

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_more()
            batch = self._take()
            if batch:
                await self._score(batch)

    async def _wait_for_more(self) -> None:
        """Until the queue holds a full batch, ``max_wait`` after the oldest pair, or close."""
        deadline = self._queue[0].enqueued + self.max_wait
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Up to ``max_batch`` queued pairs whose request still waits for them."""
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if not item.future.done():
                batch.append(item)
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _score(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        pairs = [item.pair for item in batch]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.score_batch, pairs)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)} pairs")
        except Exception as exc:  # every waiting request gets the error, the worker lives on
            logger.exception("scoring a batch of %d pairs failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            elapsed = time.perf_counter() - started
            self.batches += 1
            self.seconds += elapsed
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_seconds.observe(elapsed)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
