"""Online read latency of the serving hot path: one user plus a candidate set of items.

    recsys features bench [--reads 500] [--candidates 200] [--json]

measures, for each item mode of :class:`features.online.OnlineFeatureReader` (``online``: one
``get_online_features`` call for the candidate set; ``table``: the in-memory item table), the
wall time of ``user_features(u)`` + ``item_features(candidates)`` per request: p50/p95/p99 in
milliseconds over ``reads`` requests after a warm-up, on the profile's online store.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from features.offline import offline_days, read_snapshot
from features.online import OnlineFeatureReader
from features.spec import ITEM_VIEW, USER_VIEW, FeaturePaths
from recsys.config import Settings
from recsys.errors import RecsysError

WARMUP = 20


def _summary(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def bench_online_reads(
    settings: Settings,
    *,
    reads: int = 500,
    candidates: int = 200,
    modes: tuple[str, ...] = ("online", "table"),
    seed: int = 0,
) -> dict[str, Any]:
    """Measure hot-path online reads (see the module docstring).

    Returns ``{"online_store", "users", "items", "candidates", "reads", "modes": {mode:
    {"user": stats, "items": stats, "total": stats, "setup_s": seconds}}}`` where ``stats`` has
    ``p50_ms``, ``p95_ms``, ``p99_ms`` and ``mean_ms``.

    Raises:
        RecsysError: nothing materialized yet, or bad arguments.
    """
    from features.store import describe_online_store, feature_store

    if reads < 1 or candidates < 1:
        raise RecsysError("reads and candidates must be >= 1")
    paths = FeaturePaths(settings.data_dir)
    days = offline_days(paths)
    if not days:
        raise RecsysError("nothing to read: run `recsys features materialize` first")
    users = read_snapshot(paths, USER_VIEW, days[-1])["user_id"].to_numpy()
    items = read_snapshot(paths, ITEM_VIEW, days[-1])["item_id"].to_numpy()
    rng = np.random.default_rng(seed)
    size = min(candidates, len(items))
    requests = [
        (int(rng.choice(users)), rng.choice(items, size=size, replace=False))
        for _ in range(reads + WARMUP)
    ]
    out: dict[str, Any] = {
        "online_store": describe_online_store(settings),
        "users": len(users),
        "items": len(items),
        "candidates": size,
        "reads": reads,
        "modes": {},
    }
    feature_store(settings)  # import Feast before timing the reader setup
    for mode in modes:
        started = time.perf_counter()
        reader = OnlineFeatureReader(settings, item_mode=mode)  # type: ignore[arg-type]
        setup = time.perf_counter() - started
        user_t, item_t, total_t = [], [], []
        for n, (user, cands) in enumerate(requests):
            t0 = time.perf_counter()
            row = reader.user_features(user)
            t1 = time.perf_counter()
            batch = reader.item_features(cands)
            t2 = time.perf_counter()
            if row is None or not batch.found.all():
                raise RecsysError(f"online store misses rows for user {user} or its candidates")
            if n >= WARMUP:
                user_t.append(t1 - t0)
                item_t.append(t2 - t1)
                total_t.append(t2 - t0)
        out["modes"][mode] = {
            "user": _summary(user_t),
            "items": _summary(item_t),
            "total": _summary(total_t),
            "setup_s": setup,
        }
    return out
