"""Locust shoppers for ``recsys bench serve`` (run by :mod:`recsys.loadtest`; never imported by
the library: importing locust patches the standard library with gevent).

    locust -f recsys/locustfile.py --headless -u 8 -r 8 -t 20s -H http://127.0.0.1:3000

Each simulated shopper loops without think time (a closed loop: ``-u`` is the concurrency) and
sends ``POST /recommend`` with ``k = 10``, drawing the kind of each request from the mix:

* ``known``: a user the model was trained on, with 0-3 excluded items (items already in the
  cart or on screen), so the answer is computed, not cached;
* ``unknown``: a user id the model never saw (the cold-start list);
* ``repeat``: the exact request this shopper sent a moment ago (the same page reloaded), which
  the service's cache answers.

Environment: ``RECSYS_BENCH_POPULATION`` (JSON: ``known`` user ids, ``items``, ``unknown_from``,
``mix`` shares, ``seed``) and ``RECSYS_BENCH_SAMPLES``, where the per-request samples are
written when the run ends: client latency in ms per kind, errors, and what answered.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path

from locust import FastHttpUser, constant, events, task

POPULATION = json.loads(Path(os.environ["RECSYS_BENCH_POPULATION"]).read_text())
SAMPLES_PATH = Path(os.environ["RECSYS_BENCH_SAMPLES"])
KNOWN: list[int] = POPULATION["known"]
ITEMS: list[int] = POPULATION["items"]
UNKNOWN_FROM: int = POPULATION["unknown_from"]
MIX: dict[str, float] = POPULATION["mix"]
K = int(POPULATION.get("k", 10))
_SHOPPER_SEEDS = itertools.count(int(POPULATION.get("seed", 0)))

_lock = threading.Lock()
_latency_ms: dict[str, list[float]] = defaultdict(list)
_answers: dict[str, Counter] = {"fallback": Counter(), "features": Counter(), "cached": Counter()}
_errors: Counter[str] = Counter()
_window = {"first_start": float("inf"), "last_end": 0.0}


@events.request.add_listener
def _record(name, response_time, exception, start_time=None, **_kwargs) -> None:
    """Every finished request: its client-side latency (ms, float) and the measured window."""
    end = time.time()
    with _lock:
        if exception is not None:
            _errors[type(exception).__name__] += 1
            return
        _latency_ms[name].append(float(response_time))
        _window["first_start"] = min(_window["first_start"], start_time or end)
        _window["last_end"] = max(_window["last_end"], end)


@events.quitting.add_listener
def _write_samples(**_kwargs) -> None:
    with _lock:
        payload = {
            "latency_ms": dict(_latency_ms),
            "errors": dict(_errors),
            "answers": {kind: dict(counts) for kind, counts in _answers.items()},
            "window": _window,
        }
    SAMPLES_PATH.write_text(json.dumps(payload))


class Shopper(FastHttpUser):
    """One client in a closed loop (no think time)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random(next(_SHOPPER_SEEDS))
        self.recent: deque[dict] = deque(maxlen=20)

    def _next_request(self) -> tuple[str, dict]:
        draw = self.rng.random()
        if self.recent and draw < MIX["repeat"]:
            return "repeat", self.rng.choice(self.recent)
        if draw < MIX["repeat"] + MIX["unknown"]:
            return "unknown", {"user_id": UNKNOWN_FROM + self.rng.randrange(10**9), "k": K}
        user = self.rng.choice(KNOWN)
        exclude = self.rng.sample(ITEMS, self.rng.randint(0, min(3, len(ITEMS))))
        return "known", {"user_id": user, "k": K, "exclude": exclude}

    @task
    def recommend(self) -> None:
        kind, body = self._next_request()
        with self.client.post("/recommend", json=body, name=kind, catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"status {reply.status_code}: {(reply.text or '')[:200]}")
                return
            try:
                answer = reply.json()
            except ValueError:
                reply.failure("the answer is not JSON")
                return
            with _lock:
                _answers["fallback"][str(answer.get("fallback"))] += 1
                _answers["features"][str(answer.get("features"))] += 1
                _answers["cached"][str(bool(answer.get("cached")))] += 1
        if kind != "repeat":
            self.recent.append(body)
