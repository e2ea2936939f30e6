"""The data lake under one data directory (local profile) and the rules of each zone.

Layout (all under ``RECSYS_DATA_DIR``, default ``./.recsys``)::

    raw/interactions/<YYYY-MM-DD>.parquet   immutable landing zone, one batch per day
    raw/redelivered/<batch>/<n>.parquet     later deliveries of a batch (``<batch>@r<n>``)
    raw/catalog/items.parquet, users.parquet
    clean/interactions/<YYYY-MM-DD>.parquet contract-checked rows of each batch
    clean/catalog/items.parquet, users.parquet
    quarantine/<delivery>/rows.parquet       rejected rows, every column + ``reason``
    quarantine/<delivery>/report.json        counts per reason, when and why
    quarantine/<batch>/<kind>-<n>.*, .json   a delivered file refused whole (``unreadable``: it
                                             cannot be read; ``batch_day``: the day is not its
                                             rows'), byte for byte, and why; ``n`` counts them
    features/                                Feast offline sources and online store
    logs/                                    request, feedback and incident logs
    reports/                                 HTML reports, plots, JSON snapshots
    world/                                   synthetic world ground truth (tastes, click model)

A batch may be delivered again (the source re-sends a day after a corrupt delivery): each
delivery is its own immutable raw file and keeps its own quarantine; the clean copy of the batch
holds the rows of its newest delivery. A delivery refused whole never reaches the raw zone: it is
kept under its own number in the quarantine, so a later delivery of the day replaces nothing.
Raw files are never rewritten: writing different bytes to an existing raw file is an error,
writing the same bytes again is a no-op. Every write goes to a temporary file first and is
renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.contract import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, conform
from recsys.errors import RecsysError
from recsys.pausepoints import pause_point

ZONES = ("raw", "clean", "quarantine", "features", "logs", "reports", "world")
_REDELIVERY = "@r"
_TIME_SPANS: dict[str, tuple[tuple[int, int, int], list[tuple[Any, Any]]]] = {}
"""Clean file -> (its stat version, row groups' timestamp spans): Lake.read_clean_between."""
_REFUSED_REPORT = re.compile(r"^[a-z_]+-([0-9]+)\.json$")


def check_batch_day(name: str) -> str:
    """Return ``name`` if it is a delivery day (``YYYY-MM-DD``), the name every batch of
    interactions has (``raw/interactions/<YYYY-MM-DD>.parquet``: features, row-count baselines
    and re-ingest windows go by it), else raise."""
    try:
        if len(name) == 10 and date.fromisoformat(name).isoformat() == name:
            return name
    except ValueError:
        pass
    raise RecsysError(f"batch name {name!r} is not a delivery day YYYY-MM-DD")


def batch_of(delivery: str) -> str:
    """The batch a delivery name belongs to (``2026-01-05@r1`` -> ``2026-01-05``)."""
    return delivery.split(_REDELIVERY, 1)[0]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it, fsynced, renamed over it, so
    a reader or a process killed midway sees the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        pause_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialize ``table`` deterministically (same rows -> same bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Lake:
    """Paths and read/write rules of the lake rooted at ``root``."""

    root: Path

    def zone(self, name: str) -> Path:
        if name not in ZONES:
            raise ValueError(f"unknown lake zone {name!r}; zones are {ZONES}")
        return self.root / name

    def init(self) -> Lake:
        for name in ZONES:
            self.zone(name).mkdir(parents=True, exist_ok=True)
        return self

    # ---- raw: immutable ---------------------------------------------------------------------

    def raw_batch_path(self, batch: str) -> Path:
        return self.zone("raw") / "interactions" / f"{batch}.parquet"

    def raw_catalog_path(self, what: str) -> Path:
        return self.zone("raw") / "catalog" / f"{what}.parquet"

    def catalog_deliveries(self) -> list[Path]:
        """Item catalogs delivered by ``recsys data catalog``, oldest first
        (``raw/catalog/deliveries/items-<n>.parquet``, as delivered)."""
        folder = self.zone("raw") / "catalog" / "deliveries"
        return sorted(folder.glob("items-*.parquet")) if folder.exists() else []

    def catalog_delivery_path(self, number: int) -> Path:
        return self.zone("raw") / "catalog" / "deliveries" / f"items-{number:04d}.parquet"

    def write_raw(self, path: Path, table: pa.Table) -> bool:
        """Land ``table`` at ``path`` in the raw zone. Returns True if written, False if identical.

        Raises:
            RecsysError: the file exists with different content (the raw zone is immutable).
        """
        data = parquet_bytes(table)
        if path.exists():
            if hashlib.sha256(data).hexdigest() == file_sha256(path):
                return False
            raise RecsysError(
                f"raw file {path} already exists with different content; the raw zone is "
                "immutable: land the new data as a new batch or use a fresh data directory"
            )
        atomic_write_bytes(path, data)
        return True

    def raw_batches(self) -> list[str]:
        """Names of the landed interaction batches, oldest first."""
        folder = self.zone("raw") / "interactions"
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_raw_batch(self, batch: str) -> pd.DataFrame:
        """The rows of the newest delivery of ``batch``."""
        return self.read_raw_delivery(self.deliveries(batch)[-1])

    def deliveries(self, batch: str) -> list[str]:
        """Delivery names of ``batch``, oldest first: ``batch``, ``batch@r1``, ...

        Raises:
            RecsysError: the batch was never landed (saying so when its delivery was refused).
        """
        if not self.raw_batch_path(batch).exists():
            refused = self.refused_deliveries(batch)
            if refused:
                last = refused[-1]
                raise RecsysError(
                    f"batch {batch} has no readable delivery: its delivery of "
                    f"{last['quarantined_at']} could not be read or was refused "
                    f"({last['error']}; kept as {self.quarantine_dir(batch) / last['file']})"
                )
            raise RecsysError(f"no raw batch {batch!r} under {self.raw_batch_path(batch).parent}")
        folder = self.zone("raw") / "redelivered" / batch
        numbers = sorted(int(p.stem) for p in folder.glob("*.parquet")) if folder.exists() else []
        return [batch] + [f"{batch}{_REDELIVERY}{n}" for n in numbers]

    def delivery_path(self, delivery: str) -> Path:
        batch, _, number = delivery.partition(_REDELIVERY)
        if not number:
            return self.raw_batch_path(batch)
        return self.zone("raw") / "redelivered" / batch / f"{int(number)}.parquet"

    def read_raw_delivery(self, delivery: str) -> pd.DataFrame:
        path = self.delivery_path(delivery)
        if not path.exists():
            raise RecsysError(f"no raw delivery {delivery!r} at {path}")
        return pq.read_table(path).to_pandas()

    def land_redelivery(self, batch: str, table: pa.Table) -> str:
        """Land a new delivery of an existing ``batch``; returns its name (``batch@r<n>``).

        Identical bytes to the newest delivery are not landed twice (its name is returned).
        """
        newest = self.deliveries(batch)[-1]
        if hashlib.sha256(parquet_bytes(table)).hexdigest() == file_sha256(
            self.delivery_path(newest)
        ):
            return newest
        name = f"{batch}{_REDELIVERY}{len(self.deliveries(batch))}"
        self.write_raw(self.delivery_path(name), table)
        return name

    # ---- clean ------------------------------------------------------------------------------

    def clean_batch_path(self, batch: str) -> Path:
        return self.zone("clean") / "interactions" / f"{batch}.parquet"

    def clean_catalog_path(self, what: str) -> Path:
        return self.zone("clean") / "catalog" / f"{what}.parquet"

    def write_clean_batch(self, batch: str, frame: pd.DataFrame) -> Path:
        """Replace the clean copy of ``batch`` (idempotent: a re-ingest overwrites it whole)."""
        path = self.clean_batch_path(batch)
        atomic_write_bytes(path, parquet_bytes(conform(frame, INTERACTIONS_SCHEMA)))
        return path

    def write_clean_catalog(self, items: pd.DataFrame, users: pd.DataFrame) -> None:
        for what, frame, schema in (("items", items, ITEMS_SCHEMA), ("users", users, USERS_SCHEMA)):
            data = parquet_bytes(conform(frame, schema))
            atomic_write_bytes(self.clean_catalog_path(what), data)

    def clean_batches(self) -> list[str]:
        folder = self.zone("clean") / "interactions"
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read_clean_interactions(self, batches: list[str] | None = None) -> pd.DataFrame:
        """All clean interactions (or those of ``batches``), sorted by timestamp."""
        names = self.clean_batches() if batches is None else batches
        if not names:
            raise RecsysError(
                f"no clean interactions under {self.zone('clean')}; run `recsys data generate` "
                "(or `recsys data movielens --data-path DIR`) first"
            )
        tables = [self._read_clean(self.clean_batch_path(n)) for n in names]
        frame = pa.concat_tables(tables).to_pandas()
        return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)

    def read_clean_between(
        self, batch: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> pd.DataFrame | None:
        """The clean rows of ``batch`` with ``start <= timestamp <= end`` (UTC); None when the
        file's row-group statistics show it holds none, without reading its rows. The spans
        are remembered per file version, so asking every batch of a lake costs a ``stat`` each
        (ingesting ML-100K's 213 days asks 45,000 times)."""
        path = self.clean_batch_path(batch)
        if not any(low <= end and high >= start for low, high in self._time_spans(path)):
            return None
        bounds = [("timestamp", ">=", start), ("timestamp", "<=", end)]
        return self._read_clean(path, lambda p: pq.read_table(p, filters=bounds)).to_pandas()

    def _time_spans(self, path: Path) -> list[tuple[Any, Any]]:
        """(min, max) timestamp of each row group of a clean file (unbounded where it has no
        statistics), read from its footer once per version of the file."""
        info = path.stat()
        version = (info.st_mtime_ns, info.st_size, info.st_ino)
        known = _TIME_SPANS.get(str(path))
        if known is not None and known[0] == version:
            return known[1]
        meta = self._read_clean(path, pq.read_metadata)
        column = meta.schema.names.index("timestamp")
        spans = []
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max:
                spans.append(
                    (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))
                )
            else:
                spans.append((stats.min, stats.max))
        _TIME_SPANS[str(path)] = (version, spans)
        return spans

    @staticmethod
    def _read_clean(path: Path, read: Callable[[Path], Any] = pq.read_table) -> Any:
        """``read(path)`` of a clean-zone file (the whole table by default); a damaged file is
        one readable line with the remedy."""
        try:
            return read(path)
        except (pa.ArrowException, OSError) as exc:
            raise RecsysError(
                f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:160]}): the clean "
                "zone is damaged; `recsys data ingest` rebuilds it from the raw zone (a damaged "
                "batch file is kept in clean/damaged/)"
            ) from None

    def damaged_clean(self) -> list[str]:
        """The clean batches whose file cannot be opened as parquet (its footer read only: a
        check cheap enough for every cycle; :meth:`set_aside_damaged_clean` reads them whole)."""
        damaged = []
        for name in self.clean_batches():
            try:
                pq.read_metadata(self.clean_batch_path(name))
            except (pa.ArrowException, OSError):
                damaged.append(name)
        return damaged

    def set_aside_damaged_clean(self) -> list[str]:
        """Move every clean batch file that cannot be read to ``clean/damaged/`` (kept, named
        with the time) so that ingesting its raw batch again rebuilds it; returns the batches.
        Reads each clean file whole: a truncated footer and a corrupt page both count."""
        moved = []
        for name in self.clean_batches():
            path = self.clean_batch_path(name)
            try:
                pq.read_table(path)
            except (pa.ArrowException, OSError):
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                target = self.zone("clean") / "damaged" / f"{name}-{stamp}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append(name)
        return moved

    def read_clean_catalog(self, what: str) -> pd.DataFrame:
        path = self.clean_catalog_path(what)
        if not path.exists():
            raise RecsysError(f"no clean {what} catalog at {path}; generate or load data first")
        return self._read_clean(path).to_pandas()

    # ---- quarantine -------------------------------------------------------------------------

    def quarantine_dir(self, batch: str) -> Path:
        return self.zone("quarantine") / batch

    def quarantine_batch(
        self, batch: str, rejected: pd.DataFrame, reason_counts: dict[str, int], **extra: Any
    ) -> Path | None:
        """Keep rejected rows with their reasons; replaces an earlier quarantine of the same
        delivery ``batch`` (its ``rows.parquet`` and ``report.json``; a refused delivery kept
        beside them is another delivery's record and stays).

        Columns are stored as text when their types are mixed, so nothing is lost to a cast.
        Returns the folder, or None (and removes a stale quarantine) when nothing was rejected.
        """
        folder = self.quarantine_dir(batch)
        if rejected.empty:
            for stale in ("rows.parquet", "report.json"):
                (folder / stale).unlink(missing_ok=True)
            return None
        try:
            table = pa.Table.from_pandas(rejected, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = pa.Table.from_pandas(rejected.astype("string"), preserve_index=False)
        atomic_write_bytes(folder / "rows.parquet", parquet_bytes(table))
        report = {
            "batch": batch,
            "quarantined_rows": len(rejected),
            "reasons": reason_counts,
            "quarantined_at": datetime.now(UTC).isoformat(),
            **extra,
        }
        atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2).encode())
        return folder

    def keep_refused_delivery(
        self, batch: str, source: Path, kind: str, error: str, **extra: Any
    ) -> Path:
        """Keep a delivered file refused whole (it never reaches the raw zone) byte for byte as
        ``quarantine/<batch>/<kind>-<n><suffix>``, beside its report ``<kind>-<n>.json``
        (``reasons: {kind: 1}``, ``error``, ``source``). ``n`` is one more than any earlier
        refused delivery of ``batch``, so none replaces another. Returns the kept file's path."""
        folder = self.quarantine_dir(batch)
        folder.mkdir(parents=True, exist_ok=True)
        number = 1 + max((n for n, _ in self._refused_reports(batch)), default=0)
        while True:  # the report's name, taken exclusively, reserves the number
            report_path = folder / f"{kind}-{number}.json"
            try:
                os.close(os.open(report_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                number += 1
        kept = folder / f"{kind}-{number}{Path(source).suffix or '.bin'}"
        source = Path(source)
        if source.is_file():
            atomic_write_bytes(kept, source.read_bytes())
        report = {
            "batch": batch,
            "file": kept.name,
            "source": str(source),
            "reasons": {kind: 1},
            "error": error,
            "quarantined_at": datetime.now(UTC).isoformat(),
            **extra,
        }
        atomic_write_bytes(report_path, json.dumps(report, indent=2).encode())
        return kept

    def refused_deliveries(self, batch: str | None = None) -> list[dict[str, Any]]:
        """The reports of the deliveries refused whole (:meth:`keep_refused_delivery`) of
        ``batch`` (default: every batch), oldest first."""
        batches = [batch] if batch is not None else self._quarantined_batches()
        found = []
        for name in batches:
            for _, path in self._refused_reports(name):
                try:
                    found.append(json.loads(path.read_text()))
                except (OSError, ValueError):  # reserved, not yet written: being refused now
                    continue
        return sorted(found, key=lambda r: str(r.get("quarantined_at", "")))

    def newest_delivery(self) -> tuple[str, bool] | None:
        """(batch, landed) of the newest delivery: landed in the raw zone, or refused whole and
        kept in the quarantine (``landed`` False); None before any delivery."""
        raw = self.zone("raw")
        files = [*raw.glob("interactions/*.parquet"), *raw.glob("redelivered/*/*.parquet")]
        landed = max(
            ((datetime.fromtimestamp(p.stat().st_mtime, UTC), p) for p in files),
            default=None,
            key=lambda pair: (pair[0], str(pair[1])),
        )
        refused = self.refused_deliveries()
        if refused and (
            landed is None or datetime.fromisoformat(refused[-1]["quarantined_at"]) > landed[0]
        ):
            return refused[-1]["batch"], False
        if landed is None:
            return None
        path = landed[1]
        return (path.stem if path.parent.name == "interactions" else path.parent.name), True

    def _quarantined_batches(self) -> list[str]:
        folder = self.zone("quarantine")
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []

    def _refused_reports(self, batch: str) -> list[tuple[int, Path]]:
        folder = self.quarantine_dir(batch)
        if not folder.is_dir():
            return []
        found = ((_REFUSED_REPORT.match(p.name), p) for p in folder.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    # ---- other zones ------------------------------------------------------------------------

    def world_dir(self) -> Path:
        return self.zone("world")


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as pretty JSON atomically."""
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
