"""Ingestion: raw batch -> contract check -> clean lake, rejected rows -> quarantine (+ reason).

Nothing is dropped: for every batch, raw rows = clean rows + quarantined rows. Re-ingesting a
batch replaces its clean copy and its quarantine whole, so running it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pandas as pd
from tqdm.auto import tqdm

from recsys.contract import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    conform,
    validate_interactions,
)
from recsys.errors import RecsysError
from recsys.lake import Lake
from recsys.movielens import Dataset


@dataclass
class IngestReport:
    """What happened to one batch."""

    batch: str
    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    reasons: dict[str, int] = field(default_factory=dict)
    schema_errors: list[str] = field(default_factory=list)

    @property
    def accepted_all(self) -> bool:
        return self.quarantined_rows == 0

    def as_dict(self) -> dict:
        return asdict(self)


def land_dataset(lake: Lake, dataset: Dataset) -> list[str]:
    """Write a contract-shaped data set into the raw zone: the catalog and one batch per UTC day.

    Returns the batch names (``YYYY-MM-DD``), oldest first. Landing the same data again is a
    no-op; landing different data over an existing batch raises RecsysError (raw is immutable).
    """
    lake.init()
    lake.write_raw(lake.raw_catalog_path("items"), conform(dataset.items, ITEMS_SCHEMA))
    lake.write_raw(lake.raw_catalog_path("users"), conform(dataset.users, USERS_SCHEMA))
    frame = dataset.interactions.sort_values("timestamp", kind="stable")
    days = frame["timestamp"].dt.strftime("%Y-%m-%d")
    batches = []
    for day, rows in frame.groupby(days, sort=True):
        lake.write_raw(lake.raw_batch_path(str(day)), conform(rows, INTERACTIONS_SCHEMA))
        batches.append(str(day))
    return batches


def ingest_catalog(lake: Lake) -> tuple[int, int]:
    """Copy the raw item and user catalogs to the clean zone. Returns (items, users) counts."""
    import pyarrow.parquet as pq

    paths = {what: lake.raw_catalog_path(what) for what in ("items", "users")}
    for what, path in paths.items():
        if not path.exists():
            raise RecsysError(f"no raw {what} catalog at {path}; land a data set first")
    items = pq.read_table(paths["items"]).to_pandas()
    users = pq.read_table(paths["users"]).to_pandas()
    lake.write_clean_catalog(items, users)
    return len(items), len(users)


def ingest_batch(
    lake: Lake,
    batch: str,
    *,
    known_items: set[int] | None = None,
    now: datetime | None = None,
    frame: pd.DataFrame | None = None,
) -> IngestReport:
    """Contract-check raw ``batch`` (or ``frame``) into the clean zone and the quarantine."""
    raw = lake.read_raw_batch(batch) if frame is None else frame
    result = validate_interactions(raw, known_items=known_items, now=now or datetime.now(UTC))
    lake.write_clean_batch(batch, result.clean)
    counts = result.reason_counts()
    lake.quarantine_batch(batch, result.rejected, counts, raw_rows=len(raw))
    return IngestReport(
        batch=batch,
        raw_rows=len(raw),
        clean_rows=len(result.clean),
        quarantined_rows=len(result.rejected),
        reasons=counts,
        schema_errors=result.schema_errors,
    )


def ingest_all(
    lake: Lake, batches: list[str] | None = None, *, show_progress: bool = False
) -> list[IngestReport]:
    """Ingest the catalog and every raw batch (or ``batches``). Idempotent."""
    ingest_catalog(lake)
    known = set(lake.read_clean_catalog("items")["item_id"].tolist())
    names = lake.raw_batches() if batches is None else batches
    if not names:
        raise RecsysError(f"no raw batches under {lake.zone('raw')}; generate or land data first")
    return [
        ingest_batch(lake, name, known_items=known)
        for name in tqdm(names, desc="ingest", unit="batch", disable=not show_progress)
    ]
