"""The incident log: every detection and the fix that followed, one JSON line each.

The log is append-only: a line is written with one ``write`` call, flushed and fsynced before
:meth:`IncidentLog.append` returns, and the file is never rewritten. A crash mid-write leaves a
torn last line; :meth:`IncidentLog.read` skips it (and any other line that is not a JSON
object), and the next append starts on a fresh line so the torn bytes never swallow a record.

    from monitoring.incidents import Incident, incident_log
    log = incident_log(settings)
    log.append(Incident("serving", "cache_version", "3 stale entries", {"stale": 3}))
    log.last(5)
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.jsonlog import append_record, read_records

logger = logging.getLogger(__name__)

LAYERS: tuple[str, ...] = ("data", "serving", "features", "model", "canary")
"""The layers of the triage order (DESIGN.md), in order."""


def _new_id() -> str:
    return uuid.uuid4().hex


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Incident:
    """One failing check: what was seen, the numbers behind it, the fix and its verification."""

    layer: str
    check: str
    seen: str
    evidence: dict[str, Any]
    action: str | None = None
    verified: bool | None = None
    day: int | None = None
    fault: str | None = None
    id: str = field(default_factory=_new_id)
    at: str = field(default_factory=_utc_now)

    def as_dict(self) -> dict[str, Any]:
        """The incident as JSON-able plain values (numpy scalars, paths and the like converted)."""
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Incident:
        """Build an incident from :meth:`as_dict` output; keys this code does not know are
        ignored (a newer writer), missing required keys raise :class:`RecsysError`."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("layer", "check", "seen") if k not in payload]
        if missing:
            raise RecsysError(f"an incident record lacks {missing}: {str(payload)[:200]}")
        values = {k: v for k, v in payload.items() if k in known}
        values.setdefault("evidence", {})
        return cls(**values)


def json_safe(value: Any) -> Any:
    """``value`` with every part turned into something ``json.dumps`` writes as standard JSON:
    numpy scalars and arrays to Python values, paths and unknown objects to strings, non-finite
    floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return json_safe(tolist())
    return str(value)


class IncidentLog:
    """An append-only JSONL file of :class:`Incident` records."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, incident: Incident) -> Incident:
        """Write ``incident`` as one line, fsynced; returns it. Safe across processes (an
        exclusive lock around the write)."""
        append_record(self.path, incident.as_dict())
        return incident

    def read(self) -> list[Incident]:
        """Every readable incident, oldest first. A line that is not a complete record (a torn
        write) is skipped with a warning; a missing file is an empty log."""
        return read_records(self.path, Incident.from_dict)

    def last(self, n: int = 10) -> list[Incident]:
        """The ``n`` newest incidents, oldest first."""
        if n <= 0:
            return []
        return self.read()[-n:]


def incident_log(settings) -> IncidentLog:
    """The system's incident log: ``<data_dir>/logs/incidents.jsonl``."""
    return IncidentLog(Path(settings.data_dir) / "logs" / "incidents.jsonl")
