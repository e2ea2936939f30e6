"""Simulated users: real HTTP traffic against the service, clicks drawn from the ground truth.

For one simulated day, each request picks a user (mostly known users, some new ones, some who
come back), asks ``POST /recommend``, and clicks the served items with the synthetic world's
true click probability times a position bias ``1 / log2(rank + 2)``; every click is sent back
as ``POST /feedback``. Nothing here looks inside the service: what it measures is what a client
sees (latency, errors, fallbacks) plus the ground truth the service cannot see (the expected
CTR of what it served).

New users (ids above the world's users) click like a randomly chosen world user: they are new
to the model, not to the world.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from recsys.synthetic import ClickModel


@dataclass
class ArmOutcome:
    """What one (variant, model version) served during a simulation, from the client side."""

    variant: str | None
    model_version: str | None
    requests: int = 0
    clicked_requests: int = 0
    clicks: int = 0
    expected_ctr_sum: float = 0.0  # sum over requests of P(at least one click)
    fallbacks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicked_requests / self.requests if self.requests else 0.0

    @property
    def expected_ctr(self) -> float:
        return self.expected_ctr_sum / self.requests if self.requests else 0.0


@dataclass
class TrafficOutcome:
    """One simulated batch of traffic: per-arm outcomes, client latencies and errors."""

    day: int
    started: float
    finished: float
    arms: dict[tuple[str | None, str | None], ArmOutcome] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    feedback_errors: int = 0

    @property
    def requests(self) -> int:
        return sum(a.requests for a in self.arms.values())

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def by_variant(self) -> dict[str, ArmOutcome]:
        """Outcomes merged per variant (``None`` variants as ``"degraded"``)."""
        merged: dict[str, ArmOutcome] = {}
        for (variant, _), arm in self.arms.items():
            name = variant or "degraded"
            into = merged.setdefault(name, ArmOutcome(name, None))
            into.requests += arm.requests
            into.clicked_requests += arm.clicked_requests
            into.clicks += arm.clicks
            into.expected_ctr_sum += arm.expected_ctr_sum
            into.fallbacks += arm.fallbacks
        return merged


def position_bias(rank: np.ndarray) -> np.ndarray:
    """Probability that a user looks at the item at 0-based ``rank``."""
    return 1.0 / np.log2(np.asarray(rank, dtype=np.float64) + 2.0)


def traffic_plan(
    n_users: int, n_requests: int, seed: int, *, new_share: float = 0.05, repeat_share: float = 0.15
) -> list[int]:
    """User ids for ``n_requests`` requests: known users (1..n_users, skewed towards active
    ones), new users (ids above n_users), and users coming back within the batch."""
    rng = random.Random(seed)
    plan: list[int] = []
    weights = [1.0 / math.sqrt(i + 1) for i in range(n_users)]
    order = list(range(1, n_users + 1))
    rng.shuffle(order)
    known = rng.choices(order, weights=weights, k=n_requests)
    for i in range(n_requests):
        roll = rng.random()
        if roll < new_share:
            plan.append(n_users + 1 + rng.randrange(10 * n_users))
        elif roll < new_share + repeat_share and plan:
            plan.append(rng.choice(plan))
        else:
            plan.append(known[i])
    return plan


def simulate_day(
    url: str,
    click_model: ClickModel,
    day: int,
    n_requests: int,
    *,
    k: int = 10,
    seed: int = 0,
    concurrency: int = 4,
    timeout: float = 10.0,
) -> TrafficOutcome:
    """Send ``n_requests`` real /recommend calls for simulated ``day`` and the clicks they earn.

    Deterministic given the served lists: request ``i`` draws its clicks from its own seeded
    generator. Errors (non-2xx answers, connection failures) are counted, never raised.
    """
    plan = traffic_plan(click_model.n_users, n_requests, seed * 1_000_003 + day)
    outcome = TrafficOutcome(day=day, started=time.time(), finished=0.0)
    lock = threading.Lock()
    arms: dict[tuple, ArmOutcome] = defaultdict(lambda: ArmOutcome(None, None))
    bias = position_bias(np.arange(k))

    def one(index: int, client: httpx.Client) -> None:
        user = plan[index]
        started = time.perf_counter()
        try:
            response = client.post(f"{url}/recommend", json={"user_id": user, "k": k})
        except httpx.HTTPError as exc:
            with lock:
                outcome.errors += 1
                if len(outcome.error_examples) < 5:
                    outcome.error_examples.append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            with lock:
                outcome.errors += 1
                outcome.latencies_ms.append(elapsed)
                if len(outcome.error_examples) < 5:
                    outcome.error_examples.append(f"{response.status_code}: {response.text[:200]}")
            return
        body = response.json()
        items = np.array([it["item_id"] for it in body["items"]], dtype=np.int64)
        world_user = user if user <= click_model.n_users else 1 + user % click_model.n_users
        valid = (items >= 1) & (items <= click_model.n_items)
        probs = np.zeros(len(items))
        if valid.any():
            probs[valid] = click_model.click_probability(
                np.full(int(valid.sum()), world_user), items[valid], day
            )
        shown = probs * bias[: len(items)]
        rng = np.random.default_rng([seed, day, index])
        clicked = rng.random(len(items)) < shown
        feedback_errors = 0
        for item in items[clicked]:
            try:
                answer = client.post(
                    f"{url}/feedback",
                    json={
                        "request_id": body["request_id"],
                        "user_id": user,
                        "item_id": int(item),
                        "event": "click",
                    },
                )
                feedback_errors += answer.status_code != 200
            except httpx.HTTPError:
                feedback_errors += 1
        with lock:
            arm = arms[(body.get("variant"), body.get("model_version"))]
            arm.variant, arm.model_version = body.get("variant"), body.get("model_version")
            arm.requests += 1
            arm.clicked_requests += bool(clicked.any())
            arm.clicks += int(clicked.sum())
            arm.expected_ctr_sum += float(1.0 - np.prod(1.0 - shown)) if len(shown) else 0.0
            arm.fallbacks += body.get("fallback") is not None
            outcome.latencies_ms.append(elapsed)
            outcome.feedback_errors += feedback_errors

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(timeout=timeout, limits=limits) as client,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        list(pool.map(lambda i: one(i, client), range(n_requests)))
    outcome.arms = dict(arms)
    outcome.finished = time.time()
    return outcome
