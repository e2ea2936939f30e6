"""Coalescing of concurrent blocking reads into one call on a worker thread.

The service's event loop must not wait on the online store, and a read on a worker thread per
request costs Feast's fixed price per call every time, plus a hop to a thread and back that on a
busy 2-core machine waits for the OS scheduler. :class:`Coalescer` gives the requests that wait
on a read shared calls instead: a waiter that finds a free slot (at most ``parallel`` calls in
flight) runs ``fetch(keys)`` on a thread for every key waiting at that moment; requests arriving
meanwhile queue, and the next waiter to find a free slot reads for all of them. Batches grow
with the load by themselves (one key when idle, up to ``max_batch`` under load).

It runs on one event loop (a BentoML worker's); ``fetch`` should not raise (it records its own
failures; see ``ServingFeatures.prefetch_users``). If it does, the waiters of that call are
released all the same and the error is logged: they then find no kept row and read alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import anyio

logger = logging.getLogger("recsys.serving")


class Coalescer:
    """Share blocking ``fetch(keys)`` calls between the coroutines that :meth:`wait` on keys.

    Args:
        fetch: called on a worker thread with a list of distinct keys.
        max_batch: most keys per call.
        parallel: most calls in flight at once.
    """

    def __init__(
        self, fetch: Callable[[list], None], *, max_batch: int = 128, parallel: int = 1
    ) -> None:
        if max_batch < 1 or parallel < 1:
            raise ValueError("max_batch and parallel must be at least 1")
        self.fetch = fetch
        self.max_batch = max_batch
        self.parallel = parallel
        self._waiting: dict[Hashable, anyio.Event] = {}
        self._in_flight: dict[Hashable, anyio.Event] = {}
        self._running = 0
        self._freed = anyio.Event()  # set (and replaced) whenever a call ends
        self._limiter = anyio.CapacityLimiter(parallel)
        self.calls = 0
        self.keys = 0

    async def wait(self, key: Hashable) -> None:
        """Return once a ``fetch`` call that included ``key`` has ended."""
        done = self._in_flight.get(key) or self._waiting.get(key)
        if done is None:
            done = self._waiting[key] = anyio.Event()
        while not done.is_set():
            if key not in self._waiting:  # in a call now (ours or another waiter's)
                await done.wait()
            elif self._running >= self.parallel:  # every slot busy: the next one is ours
                await self._freed.wait()
            else:
                await self._run_next()

    async def _run_next(self) -> None:
        keys = list(self._waiting)[: self.max_batch]
        batch = {key: self._waiting.pop(key) for key in keys}
        self._in_flight.update(batch)
        self._running += 1
        try:
            # not abandoned on cancel: a disconnected client's call still serves the others
            await anyio.to_thread.run_sync(self.fetch, keys, limiter=self._limiter)
        except Exception:
            logger.exception("coalesced read of %d keys failed", len(keys))
        finally:
            self._running -= 1
            self.calls += 1
            self.keys += len(keys)
            for key, event in batch.items():
                del self._in_flight[key]
                event.set()
            freed, self._freed = self._freed, anyio.Event()
            freed.set()
