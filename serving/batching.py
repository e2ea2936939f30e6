"""Coalescing of concurrent blocking reads into one call on a worker thread.

The service's event loop must not wait on the online store, and a read on a worker thread per
request costs Feast's fixed price per call every time (several rows' worth of Python, holding
the GIL against the loop). :class:`Coalescer` gives the requests that wait on a read one shared
call instead: the first waiter runs ``fetch(keys)`` on a thread for every key waiting at that
moment; requests arriving meanwhile queue, and the next of them runs the next call for all of
them when it ends. At most one call is in flight, so batches grow with the load by themselves
(one key when idle, up to ``max_batch`` under load) and no waiter ever waits for more than the
call in flight plus its own.

It runs on one event loop (a BentoML worker's); ``fetch`` must not raise (it records its own
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
    """

    def __init__(self, fetch: Callable[[list], None], *, max_batch: int = 128) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fetch = fetch
        self.max_batch = max_batch
        self._waiting: dict[Hashable, anyio.Event] = {}
        self._in_flight: dict[Hashable, anyio.Event] = {}
        self._idle: anyio.Event | None = None  # set when the call in flight ends
        self._limiter = anyio.CapacityLimiter(1)
        self.calls = 0
        self.keys = 0

    async def wait(self, key: Hashable) -> None:
        """Return once a ``fetch`` call that included ``key`` has ended."""
        done = self._in_flight.get(key) or self._waiting.get(key)
        if done is None:
            done = self._waiting[key] = anyio.Event()
        while not done.is_set():
            if self._idle is not None:  # a call is in flight: the next one is ours or later
                await self._idle.wait()
                continue
            await self._run_next()

    async def _run_next(self) -> None:
        keys = list(self._waiting)[: self.max_batch]
        batch = {key: self._waiting.pop(key) for key in keys}
        self._in_flight, self._idle = batch, anyio.Event()
        try:
            # not abandoned on cancel: a disconnected client's call still serves the others
            await anyio.to_thread.run_sync(self.fetch, keys, limiter=self._limiter)
        except Exception:
            logger.exception("coalesced read of %d keys failed", len(keys))
        finally:
            self.calls += 1
            self.keys += len(keys)
            idle, self._idle, self._in_flight = self._idle, None, {}
            for event in batch.values():
                event.set()
            idle.set()
