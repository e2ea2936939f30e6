"""Item catalogs delivered by a producer: ``recsys data catalog FILE``.

A team's own catalog reaches the lake the way its events do: the delivered file lands as it is
in the immutable raw zone (``raw/catalog/deliveries/items-<n>.parquet``), the contract
(:func:`recsys.contract.validate_items`) checks every row, rejected rows are kept with their
reasons (``quarantine/catalog/items-<n>/``), and the accepted rows are merged into the clean
catalog: a delivery adds new items and replaces the rows of items it lists again; items it does
not list stay. An item without ``created_at`` keeps the date the catalog had for it, else
counts as available from :data:`recsys.contract.UNKNOWN_CREATED_AT` on.

The clean catalog is a function of the raw zone: the base catalog of a generated or MovieLens
world (``raw/catalog/items.parquet``, when there is one), then every delivery in order; ``recsys
data ingest`` rebuilds it so. Events quarantined as ``unknown_item`` before their item was
delivered are checked again once it is, and accepted.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from recsys.contract import ITEMS_SCHEMA, UNKNOWN_CREATED_AT, USERS_SCHEMA, validate_items
from recsys.errors import RecsysError
from recsys.lake import Lake, file_sha256, parquet_bytes

QUARANTINE = "catalog"
"""The quarantine folder of catalog deliveries (``quarantine/catalog/items-<n>/``; a file that
cannot be read is kept in ``quarantine/catalog/refused/``)."""


@dataclass
class CatalogReport:
    """What one catalog delivery did."""

    delivery: str
    raw_rows: int
    accepted: int
    new_items: int
    updated_items: int
    unchanged_items: int
    quarantined_rows: int
    catalog_items: int
    reasons: dict[str, int] = field(default_factory=dict)
    schema_errors: list[str] = field(default_factory=list)
    quarantine_dir: str | None = None
    already_delivered: bool = False
    rechecked: dict[str, int] = field(default_factory=dict)  # batch -> rows accepted now
    ignored_columns: list[str] = field(default_factory=list)  # kept in the raw delivery only

    def as_dict(self) -> dict:
        return asdict(self)


def deliver_catalog(lake: Lake, path: Path, *, now: datetime | None = None) -> CatalogReport:
    """Land the item catalog at ``path`` (parquet, CSV or TSV with a header), check it, merge
    its accepted rows into the clean catalog and re-check the events that waited for its items.

    Raises:
        RecsysError: the file is missing or cannot be read as a table (kept in the quarantine
            with the reason first, when it exists).
    """
    import pyarrow as pa

    from recsys.ingest import read_batch_file

    path = Path(path)
    if path.suffix.lower() == ".data":
        raise RecsysError(f"{path.name} is a GroupLens ratings file, not an item catalog")
    try:
        frame = read_batch_file(path)
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (RecsysError, pa.ArrowException) as exc:
        if not path.is_file():
            raise
        kept = lake.keep_refused_delivery(f"{QUARANTINE}/refused", path, "unreadable", str(exc))
        raise RecsysError(f"{exc} (kept as {kept})") from None
    lake.init()
    deliveries = lake.catalog_deliveries()
    same = deliveries and hashlib.sha256(parquet_bytes(table)).hexdigest() == file_sha256(
        deliveries[-1]
    )
    if not same:
        lake.write_raw(lake.catalog_delivery_path(len(deliveries) + 1), table)
    reports = rebuild_catalog(lake, now=now)
    report = reports[-1]
    report.already_delivered = bool(same)
    report.rechecked = recheck_unknown_items(lake)
    return report


def rebuild_catalog(lake: Lake, *, now: datetime | None = None) -> list[CatalogReport]:
    """Write the clean catalog from the raw zone: the base catalog, then every delivery in order
    (each one's rejected rows to its quarantine). Returns a report per delivery.

    Raises:
        RecsysError: the raw zone holds no catalog at all.
    """
    import pyarrow.parquet as pq

    base = {what: lake.raw_catalog_path(what) for what in ("items", "users")}
    deliveries = lake.catalog_deliveries()
    if not base["items"].exists() and not deliveries:
        raise RecsysError(
            f"no item catalog under {lake.zone('raw') / 'catalog'}; deliver one with "
            "`recsys data catalog FILE` or land a data set (`recsys data generate`, `recsys "
            "data movielens --data-path DIR`)"
        )
    items = (
        pq.read_table(base["items"]).to_pandas()
        if base["items"].exists()
        else ITEMS_SCHEMA.empty_table().to_pandas()
    )
    users = (
        pq.read_table(base["users"]).to_pandas()
        if base["users"].exists()
        else USERS_SCHEMA.empty_table().to_pandas()
    )
    reports = []
    for raw_path in deliveries:
        name = raw_path.stem
        raw = pq.read_table(raw_path).to_pandas()
        result = validate_items(raw, now=now or datetime.now(UTC))
        items, counts = merge_items(items, result.clean)
        reasons = result.reason_counts()
        folder = lake.quarantine_batch(
            f"{QUARANTINE}/{name}",
            result.rejected,
            reasons,
            raw_rows=len(raw),
            schema_errors=result.schema_errors,
        )
        reports.append(
            CatalogReport(
                delivery=name,
                raw_rows=len(raw),
                accepted=len(result.clean),
                quarantined_rows=len(result.rejected),
                catalog_items=len(items),
                reasons=reasons,
                schema_errors=result.schema_errors,
                quarantine_dir=str(folder) if folder is not None else None,
                ignored_columns=result.ignored_columns,
                **counts,
            )
        )
    lake.write_clean_catalog(items, users)
    return reports


def merge_items(items: pd.DataFrame, accepted: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """``items`` with ``accepted`` merged in (new items added, listed ones replaced; a missing
    ``created_at`` keeps the old date, else :data:`UNKNOWN_CREATED_AT`), and the counts
    ``new_items``, ``updated_items`` and ``unchanged_items``."""
    columns = list(ITEMS_SCHEMA.names)
    old = items[columns].set_index("item_id")
    new = accepted[columns].set_index("item_id").copy()
    unknown = new["created_at"].isna()
    kept_dates = old["created_at"].reindex(new.index[unknown])
    new.loc[unknown, "created_at"] = kept_dates.fillna(pd.Timestamp(UNKNOWN_CREATED_AT)).to_numpy()
    new["created_at"] = new["created_at"].astype("datetime64[us, UTC]")
    listed = new.index.isin(old.index)
    before = old.reindex(new.index[listed])
    same = (before == new.loc[listed]).all(axis=1).to_numpy()
    counts = {
        "new_items": int((~listed).sum()),
        "updated_items": int((~same).sum()),
        "unchanged_items": int(same.sum()),
    }
    merged = pd.concat([old.drop(index=new.index[listed]), new]).sort_index()
    merged = merged.reset_index().astype({"item_id": "int64"})
    merged["created_at"] = merged["created_at"].astype("datetime64[us, UTC]")
    return merged[columns], counts


def recheck_unknown_items(lake: Lake) -> dict[str, int]:
    """Ingest again every batch whose newest delivery quarantined rows as ``unknown_item`` of
    items the catalog has now; returns, per batch re-checked, how many more rows it accepted."""
    from recsys.contract import as_int_ids
    from recsys.ingest import _clean_rows, batches_quarantining, ingest_batch, known_items

    waiting = batches_quarantining(lake, "unknown_item")
    known = known_items(lake) if waiting else set()
    done = {}
    for batch in waiting:
        kept = lake.quarantine_dir(lake.deliveries(batch)[-1]) / "rows.parquet"
        rows = pd.read_parquet(kept, columns=["item_id", "reason"])
        ids, _ = as_int_ids(
            rows.loc[rows["reason"].str.contains("unknown_item", regex=False), "item_id"]
        )
        if not ids.dropna().isin(known).any():
            continue  # none of its items came: nothing to accept
        before = _clean_rows(lake, batch)
        ingest_batch(lake, batch, known_items=known)
        gained = _clean_rows(lake, batch) - before
        if gained:
            done[batch] = gained
    return done
