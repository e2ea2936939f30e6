"""Durable JSON-lines logs shared by several processes (the incident log, the promotion
history): one record per line, appended under an exclusive lock and fsynced."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path``, fsynced, under an exclusive lock (safe
    across processes). A torn last line left by a crash mid-write is closed first, so it never
    swallows this record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """Every readable record of ``path``, oldest first, through ``parse``. A line that is not
    a complete record (a torn write, or one ``parse`` refuses with ValueError, TypeError or
    RecsysError) is skipped with a warning; a missing file is an empty log."""
    from recsys.errors import RecsysError

    if not path.exists():
        return []
    records: list[T] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                payload = json.loads(text)
                if not isinstance(payload, dict):
                    raise ValueError("not a JSON object")
                records.append(parse(payload))
            except (ValueError, TypeError, RecsysError) as exc:
                logger.warning("skipping unreadable line %d of %s: %s", number, path, exc)
    return records
