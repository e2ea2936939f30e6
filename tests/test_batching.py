"""serving.batching.Coalescer: concurrent waits on blocking reads share one call at a time."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from serving.batching import Coalescer


class SlowFetch:
    """A blocking read that takes ``seconds`` and records each call's keys and thread."""

    def __init__(self, seconds: float = 0.05, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls: list[list[int]] = []
        self.threads: set[int] = set()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, keys: list[int]) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.calls.append(list(keys))
            self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        with self._lock:
            self.active -= 1
        if self.fail:
            raise ConnectionError("store down")


async def _wait_all(coalescer: Coalescer, keys: list[int], spacing: float = 0.0) -> list[float]:
    """Each key waited on by its own task; returns each task's seconds to be released."""
    waited: list[float] = []

    async def one(key: int) -> None:
        started = time.perf_counter()
        await coalescer.wait(key)
        waited.append(time.perf_counter() - started)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(one, key)
            if spacing:
                await anyio.sleep(spacing)
    return waited


def test_concurrent_waits_share_calls_one_at_a_time_off_the_event_loop():
    fetch = SlowFetch(0.05)
    coalescer = Coalescer(fetch)
    keys = list(range(40))
    loop_thread = threading.get_ident()
    waited = anyio.run(_wait_all, coalescer, keys)

    assert len(waited) == 40
    assert sorted(k for call in fetch.calls for k in call) == keys  # each key read once
    assert fetch.most_active == 1  # never two calls in flight
    assert loop_thread not in fetch.threads  # the blocking read never ran on the loop
    # the first waiter reads alone, everyone who queued meanwhile shares the next call
    assert fetch.calls[0] == [0] and len(fetch.calls) == 2
    assert coalescer.calls == 2 and coalescer.keys == 40
    assert max(waited) < 0.05 * 2 + 1.0  # the call in flight, then its own


def test_repeated_keys_and_keys_in_flight_are_not_read_twice():
    fetch = SlowFetch(0.1)
    coalescer = Coalescer(fetch)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(coalescer.wait, 1)
            await anyio.sleep(0.02)  # key 1 is now in flight
            for key in (1, 2, 2, 3, 1):
                group.start_soon(coalescer.wait, key)

    anyio.run(main)
    assert fetch.calls == [[1], [2, 3]]


def test_batches_are_bounded_and_grow_with_the_queue():
    fetch = SlowFetch(0.02)
    coalescer = Coalescer(fetch, max_batch=8)
    anyio.run(_wait_all, coalescer, list(range(50)))
    assert max(len(call) for call in fetch.calls) == 8
    assert sorted(k for call in fetch.calls for k in call) == list(range(50))

    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(fetch, max_batch=0)
    with pytest.raises(ValueError, match="parallel"):
        Coalescer(fetch, parallel=0)


def test_parallel_calls_are_bounded_and_share_the_queue():
    fetch = SlowFetch(0.05)
    coalescer = Coalescer(fetch, parallel=3)
    anyio.run(_wait_all, coalescer, list(range(60)), 0.002)
    assert fetch.most_active == 3  # the slots were used, and never more
    assert len(fetch.threads) <= 3
    assert sorted(k for call in fetch.calls for k in call) == list(range(60))
    assert len(fetch.calls) < 30  # the keys arriving meanwhile shared calls


def test_a_failing_read_releases_its_waiters_and_the_next_ones_still_read(caplog):
    fetch = SlowFetch(0.01, fail=True)
    coalescer = Coalescer(fetch)
    waited = anyio.run(_wait_all, coalescer, [1, 2, 3])
    assert len(waited) == 3  # nobody hangs on a read that raised
    assert "coalesced read of" in caplog.text and "store down" in caplog.text
    fetch.fail = False
    anyio.run(_wait_all, coalescer, [4])
    assert fetch.calls[-1] == [4]


def test_a_cancelled_reader_leaves_the_others_their_read():
    """The waiter whose call is in flight goes away (its client disconnected): the call still
    ends (it is not abandoned on its thread) and the waiters queued behind it get theirs."""
    fetch = SlowFetch(0.1)
    coalescer = Coalescer(fetch)
    released: list[float] = []

    async def reader() -> None:
        started = time.perf_counter()
        with anyio.move_on_after(0.03) as scope:
            await coalescer.wait(1)
        assert scope.cancel_called
        released.append(time.perf_counter() - started)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            await anyio.sleep(0.01)
            group.start_soon(coalescer.wait, 2)
            group.start_soon(coalescer.wait, 3)

    anyio.run(main)
    assert len(released) == 1 and released[0] >= 0.09  # its call was not abandoned
    assert fetch.calls == [[1], [2, 3]]
    assert coalescer.calls == 2
