"""The service's own logs under ``<data_dir>/logs``: feedback events and sampled requests.

Feedback is durable: one JSON line per event, flushed and fsynced before /feedback answers.
The request log is a sample, bounded in size: it rotates to a new file at a quarter of the
budget and deletes the oldest rotated files beyond it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger("recsys.serving.logs")


def _append_line(path: Path, record: dict[str, Any], *, sync: bool) -> int:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with path.open("ab") as handle:
        handle.write(line)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    return len(line)


class FeedbackLog:
    """Appends feedback events to ``folder/feedback-YYYY-MM-DD.jsonl`` (UTC day)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> Path:
        """Write ``record`` (a ``logged_at`` stamp is added) and fsync; returns the file."""
        now = datetime.now(UTC)
        path = self.folder / f"feedback-{now:%Y-%m-%d}.jsonl"
        with self._lock:
            _append_line(path, {**record, "logged_at": now.isoformat()}, sync=True)
        return path


class RequestLog:
    """A sampled, size-bounded log of /recommend calls under ``folder``."""

    def __init__(self, folder: Path, sample: float, max_bytes: int, seed: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.max_bytes = max_bytes
        self.current = self.folder / "requests.jsonl"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0
        self.last_error: str | None = None
        self._warned_at = -math.inf

    def maybe_write(self, record: dict[str, Any] | Callable[[], dict[str, Any]]) -> bool:
        """Write ``record`` with probability ``sample``; returns whether it was written.
        ``record`` may be a function that builds it: called only for a sampled request. A
        write the disk refuses (full, read-only, permissions) is counted in ``failed`` and
        logged at most once a minute, never raised: the answer it samples is given anyway."""
        with self._lock:
            if self.sample <= 0 or self._rng.random() >= self.sample:
                return False
            if callable(record):
                record = record()
            try:
                _append_line(self.current, {**record, "logged_at": time.time()}, sync=False)
                self.written += 1
                if self.current.stat().st_size >= self.max_bytes / 4:
                    self._rotate()
            except OSError as exc:
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if time.monotonic() - self._warned_at >= 60:
                    self._warned_at = time.monotonic()
                    logger.warning(
                        "the request log cannot be written (%s): answers go on, their samples "
                        "are lost (%d so far)",
                        self.last_error,
                        self.failed,
                    )
                return False
            return True

    def _rotate(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.current.rename(self.folder / f"requests-{stamp}.jsonl")
        rotated = sorted(self.folder.glob("requests-*.jsonl"))
        total = sum(p.stat().st_size for p in rotated)
        for old in rotated:
            if total <= self.max_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("requests*.jsonl"))


class ServedRequests:
    """A bounded map request_id -> what served it, so feedback can be attributed."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, served: dict[str, Any]) -> None:
        with self._lock:
            self._entries[request_id] = served
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(request_id)
