"""The per-user recommendation cache: an LRU keyed by (model version, user, k, exclude, feature
epoch).

The model version is part of the key, so a reload never serves an answer of the old model (and
the feature epoch, the stamp of the last materialization, so new features are never hidden); the
stamp is also kept in the value so ``stale_entries`` can check that no entry disagrees with its
key (a defect the guardian flow looks for). The last good answer per user is kept apart, as
the degraded answer when the model fails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedAnswer:
    version: str
    variant: str
    item_ids: tuple[int, ...]
    scores: tuple[float, ...]
    features: str | None = None


CacheKey = tuple[str, int, int, tuple[int, ...], str]


class RecommendationCache:
    """Thread-safe LRU with hit/miss counters. ``capacity`` 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, CachedAnswer] = OrderedDict()
        self._last_good: OrderedDict[int, CachedAnswer] = OrderedDict()
        self._lock = threading.Lock()
        self._served: frozenset[str] | None = None  # None: any version may be cached
        self.hits = 0
        self.misses = 0
        self.retired = 0

    @staticmethod
    def key(version: str, user_id: int, k: int, exclude: list[int], epoch: str = "") -> CacheKey:
        return (version, int(user_id), int(k), tuple(sorted(set(exclude))), epoch)

    def get(self, key: CacheKey) -> CachedAnswer | None:
        if not self.capacity:
            return None
        with self._lock:
            answer = self._entries.get(key)
            if answer is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return answer

    def put(self, key: CacheKey, answer: CachedAnswer) -> None:
        if not self.capacity:
            return
        with self._lock:
            if self._served is not None and key[0] not in self._served:
                return  # a request that started on a model retired meanwhile: not kept
            self._entries[key] = answer
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            self._last_good[key[1]] = answer
            self._last_good.move_to_end(key[1])
            while len(self._last_good) > self.capacity:
                self._last_good.popitem(last=False)

    def last_good(self, user_id: int) -> CachedAnswer | None:
        """The most recent answer cached for ``user_id`` by any model version."""
        with self._lock:
            return self._last_good.get(int(user_id))

    def retire(self, served_versions: set[str]) -> int:
        """After a reload: drop the entries (and last good answers) of versions no longer
        served, and refuse them from now on; returns how many entries were dropped."""
        keep = frozenset(served_versions)
        with self._lock:
            self._served = keep
            old = [key for key in self._entries if key[0] not in keep]
            for key in old:
                del self._entries[key]
            for user in [u for u, a in self._last_good.items() if a.version not in keep]:
                del self._last_good[user]
            self.retired += len(old)
            return len(old)

    def flush(self) -> int:
        """Drop every entry; returns how many there were."""
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
            self._last_good.clear()
            return dropped

    def stale_entries(self, served_versions: set[str]) -> int:
        """Entries whose stamp disagrees with their key or with every served version."""
        with self._lock:
            return sum(
                1
                for key, answer in self._entries.items()
                if answer.version != key[0] or answer.version not in served_versions
            )

    def restamp(self, version: str) -> int:
        """Fault drill only: stamp every entry with ``version`` (as a cache that survived a
        deploy would hold); returns how many entries now disagree with their key."""
        with self._lock:
            for key, answer in list(self._entries.items()):
                self._entries[key] = CachedAnswer(
                    version, answer.variant, answer.item_ids, answer.scores, answer.features
                )
            return sum(1 for key in self._entries if key[0] != version)

    def __len__(self) -> int:
        return len(self._entries)
