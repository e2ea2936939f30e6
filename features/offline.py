"""Offline feature snapshots: clean lake -> one parquet file per view and batch day.

The snapshot of day ``D`` holds the features *as of* ``D+1 00:00 UTC`` (every event of day ``D``
and before, nothing later); its ``event_timestamp`` is that midnight. Recomputing a day replaces
its file whole, and the same inputs give the same bytes, so a recompute never duplicates rows.

A manifest keeps, per day, a fingerprint of everything the snapshot depends on (the code
version, the catalog's categories, the catalog rows of the items that count by that day and
every clean batch up to it). ``build_offline_features`` without ``days`` recomputes exactly the
days whose fingerprint changed: new days, and every day from a re-ingested batch on (features
are cumulative, so a changed batch changes later days); a catalog delivery, the days from the
first one its changed items count on (a new item created yesterday: yesterday and today; a
new category: every day, since it reorders every affinity vector).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.compute import ITEM_NUMERIC, RECENT_ITEMS, USER_NUMERIC, category_vocabulary
from features.compute import item_features as compute_item_features
from features.compute import user_features as compute_user_features
from features.spec import (
    AFFINITY,
    FEATURE_CODE_VERSION,
    ITEM_VIEW,
    TIMESTAMP_FIELD,
    USER_VIEW,
    FeaturePaths,
)
from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.lake import atomic_write_bytes, file_sha256, parquet_bytes, write_json

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
ONLINE_PENDING = "online_pending"
"""Manifest key: days whose snapshots were replaced and not yet rewritten online. Kept until a
materialization covers them, so a process killed in between leaves no stale online rows."""

USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(name, pa.float32()) for name in USER_NUMERIC),
        pa.field(AFFINITY, pa.list_(pa.float32())),
        pa.field(RECENT_ITEMS, pa.list_(pa.int64())),
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(name, pa.float32()) for name in ITEM_NUMERIC),
        pa.field("item_category_index", pa.int64()),
    ]
)
SCHEMAS = {USER_VIEW: USER_SCHEMA, ITEM_VIEW: ITEM_SCHEMA}


def snapshot_time(day: str) -> pd.Timestamp:
    """The ``event_timestamp`` of day ``day``'s snapshot: the midnight UTC that ends it."""
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)


def _calendar_days(first: str, last: str) -> list[str]:
    start, stop = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((stop - start).days + 1)]


FEATURE_CATALOG_COLUMNS = ("item_id", "category", "created_at")
"""The catalog columns the features are computed from: a delivery that changes only titles or
genres recomputes no day."""


def _catalog_days(lake, first_day: str) -> tuple[str, dict[str, str]]:
    """(SHA-256 of the category vocabulary, day -> SHA-256 of the
    :data:`FEATURE_CATALOG_COLUMNS` of the items that first count on that day).

    An item counts from the day it was created (its item row) or of its first event (its
    category in the affinity of the event's user), whichever is earlier; ``first_day`` for an
    item from before it. A snapshot of day D depends on the catalog rows of the items counting
    on D or before, and on the vocabulary (the order of the affinity vector)."""
    import pyarrow.parquet as pq

    items = lake.read_clean_catalog("items")[list(FEATURE_CATALOG_COLUMNS)]
    vocabulary = json.dumps(category_vocabulary(items)).encode()
    firsts = []
    for batch in lake.clean_batches():
        events = pq.read_table(
            lake.clean_batch_path(batch), columns=["item_id", "timestamp"]
        ).to_pandas()
        firsts.append(events.groupby("item_id")["timestamp"].min())
    starts = pd.to_datetime(items["created_at"], utc=True)
    if firsts:
        first_event = pd.concat(firsts).groupby(level=0).min()
        seen = pd.to_datetime(items["item_id"].map(first_event), utc=True)
        starts = starts.where(seen.isna() | (starts <= seen), seen)
    days = starts.dt.strftime("%Y-%m-%d").fillna(first_day)
    days = days.where(days >= first_day, first_day)
    chunks = {}
    for day, group in items.groupby(days.to_numpy(), sort=True):
        ordered = group.sort_values("item_id", kind="stable")
        rows = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
        chunks[str(day)] = hashlib.sha256(rows.tobytes()).hexdigest()
    return hashlib.sha256(vocabulary).hexdigest(), chunks


def _fingerprints(settings: Settings, days: list[str]) -> dict[str, str]:
    """Chain fingerprint per day: code version + the category vocabulary, then per day its
    clean batch and the catalog rows of the items that first count on it
    (:func:`_catalog_days`)."""
    lake = settings.lake
    vocabulary, chunks = _catalog_days(lake, days[0]) if days else ("", {})
    running = hashlib.sha256(f"{FEATURE_CODE_VERSION}|{vocabulary}".encode()).hexdigest()
    present = set(lake.clean_batches())
    out: dict[str, str] = {}
    for day in days:
        batch = file_sha256(lake.clean_batch_path(day)) if day in present else "none"
        catalog = chunks.get(day, "none")
        running = hashlib.sha256(f"{running}|{day}|{batch}|{catalog}".encode()).hexdigest()
        out[day] = running
    return out


def read_manifest(paths: FeaturePaths) -> dict[str, Any]:
    """The offline manifest (``{"days": {}}`` when nothing was built yet)."""
    if not paths.manifest_path.exists():
        return {"format": MANIFEST_FORMAT, "days": {}}
    return json.loads(paths.manifest_path.read_text())


def read_vocabulary(paths: FeaturePaths) -> list[str]:
    """The category order of ``user_category_affinity`` (as stored next to the offline data).

    Raises:
        RecsysError: no offline features were built yet.
    """
    if not paths.vocabulary_path.exists():
        raise RecsysError(
            f"no category vocabulary at {paths.vocabulary_path}; run `recsys features materialize`"
        )
    return list(json.loads(paths.vocabulary_path.read_text())["categories"])


def offline_days(paths: FeaturePaths) -> list[str]:
    """Days that have a snapshot for every view, oldest first."""
    per_view = [
        {p.stem for p in paths.view_dir(v).glob("*.parquet")} for v in (USER_VIEW, ITEM_VIEW)
    ]
    return sorted(set.intersection(*per_view))


def _to_table(frame: pd.DataFrame, view: str) -> pa.Table:
    schema = SCHEMAS[view]
    if frame.empty:
        return schema.empty_table()
    frame = frame.sort_values(schema.names[0], kind="stable").reset_index(drop=True)
    if view == USER_VIEW:
        frame = frame.assign(
            **{
                AFFINITY: [list(map(float, v)) for v in frame[AFFINITY]],
                RECENT_ITEMS: [list(map(int, v)) for v in frame[RECENT_ITEMS]],
            }
        )
    table = pa.Table.from_pandas(frame[list(schema.names)], preserve_index=False)
    return table.cast(schema).replace_schema_metadata(None)


def _write_if_changed(path, data: bytes) -> bool:
    digest = hashlib.sha256(data).hexdigest()
    if path.exists() and file_sha256(path) == digest:
        return False
    atomic_write_bytes(path, data)
    return True


def build_offline_features(settings: Settings, days: list[str] | None = None) -> dict[str, Any]:
    """Compute the offline snapshots of the feature views from the clean lake.

    Args:
        settings: whose ``data_dir`` holds the clean lake and receives ``features/offline/``.
        days: ``YYYY-MM-DD`` days to recompute unconditionally; ``None`` computes every day from
            the first to the last clean batch whose snapshot is missing or whose inputs changed.

    Returns:
        ``{"days": [...all days...], "computed": [...], "written": [...], "replaced": [...],
        "unchanged": [...], "removed": [...], "rows": {view: rows of the newest snapshot},
        "newest": iso timestamp, "vocabulary": [...]}``. ``written`` lists days whose files
        changed, ``replaced`` the days built before whose content changed (their online copies
        are now out of date: they are also kept in the manifest under :data:`ONLINE_PENDING`
        until :func:`clear_online_pending`); recomputing a day with unchanged inputs leaves its
        files byte-identical (listed under ``unchanged``).

    Raises:
        RecsysError: no clean data, or a requested day is outside the clean batches.
    """
    lake = settings.lake
    paths = FeaturePaths(settings.data_dir)
    batches = lake.clean_batches()
    if not batches:
        raise RecsysError(
            f"no clean interactions under {lake.zone('clean')}; run `recsys data generate` "
            "(or `recsys data movielens --data-path DIR`) first"
        )
    all_days = _calendar_days(batches[0], batches[-1])
    if days is not None:
        unknown = sorted(set(days) - set(all_days))
        if unknown:
            raise RecsysError(
                f"days {unknown} are outside the clean batches {all_days[0]}..{all_days[-1]}; "
                "pass YYYY-MM-DD days that were ingested"
            )
    fingerprints = _fingerprints(settings, all_days)
    manifest = read_manifest(paths)
    recorded = manifest.get("days", {}) if manifest.get("format") == MANIFEST_FORMAT else {}

    def up_to_date(day: str) -> bool:
        entry = recorded.get(day)
        return bool(
            entry
            and entry.get("fingerprint") == fingerprints[day]
            and all(
                paths.snapshot_path(v, day).exists()
                and file_sha256(paths.snapshot_path(v, day)) == entry["sha256"][v]
                for v in (USER_VIEW, ITEM_VIEW)
            )
        )

    todo = sorted(days) if days is not None else [d for d in all_days if not up_to_date(d)]
    previously_built = {d for d in recorded if paths.snapshot_path(USER_VIEW, d).exists()}
    items = lake.read_clean_catalog("items")
    vocabulary = category_vocabulary(items)
    write_json(paths.vocabulary_path, {"categories": vocabulary, "feature": AFFINITY})

    written, unchanged, replaced = [], [], []
    if todo:
        needed = [b for b in batches if b <= todo[-1]]
        interactions = lake.read_clean_interactions(needed)
        for day in todo:
            as_of = snapshot_time(day)
            frames = {
                USER_VIEW: compute_user_features(interactions, items, as_of),
                ITEM_VIEW: compute_item_features(interactions, items, as_of),
            }
            changed, digests, rows = False, {}, {}
            for view, frame in frames.items():
                data = parquet_bytes(_to_table(frame, view))
                changed |= _write_if_changed(paths.snapshot_path(view, day), data)
                digests[view] = hashlib.sha256(data).hexdigest()
                rows[view] = len(frame)
            # Compared with the manifest too: a build killed after rewriting a file but before
            # recording it leaves new bytes on disk that the online store has never seen.
            differs = day in recorded and recorded[day].get("sha256") != digests
            recorded[day] = {
                "fingerprint": fingerprints[day],
                "event_timestamp": as_of.isoformat(),
                "sha256": digests,
                "rows": rows,
            }
            (written if changed else unchanged).append(day)
            if (changed or differs) and day in previously_built:
                replaced.append(day)
            logger.info("offline features of %s: %s", day, "written" if changed else "unchanged")

    removed = []
    for view in (USER_VIEW, ITEM_VIEW):
        for path in paths.view_dir(view).glob("*.parquet"):
            if path.stem not in fingerprints:
                path.unlink()
                removed.append(f"{view}/{path.name}")
    recorded = {d: e for d, e in recorded.items() if d in fingerprints}
    pending = set(manifest.get(ONLINE_PENDING, [])) | set(replaced)
    write_json(
        paths.manifest_path,
        {
            "format": MANIFEST_FORMAT,
            "days": recorded,
            ONLINE_PENDING: sorted(d for d in pending if d in fingerprints),
        },
    )
    newest = all_days[-1]
    return {
        "days": all_days,
        "computed": todo,
        "written": written,
        "replaced": replaced,
        "unchanged": unchanged,
        "removed": sorted(removed),
        "rows": dict(recorded[newest]["rows"]),
        "newest": snapshot_time(newest).isoformat(),
        "vocabulary": vocabulary,
    }


def online_pending(paths: FeaturePaths) -> list[str]:
    """Days whose snapshots were replaced since they were last materialized, oldest first."""
    return list(read_manifest(paths).get(ONLINE_PENDING, []))


def clear_online_pending(paths: FeaturePaths, until: pd.Timestamp) -> list[str]:
    """Drop from the pending days those whose snapshot time is at most ``until`` (a
    materialization copied them online); returns the days still pending."""
    manifest = read_manifest(paths)
    pending = manifest.get(ONLINE_PENDING, [])
    left = [d for d in pending if snapshot_time(d) > until]
    if left != pending:
        write_json(paths.manifest_path, {**manifest, ONLINE_PENDING: left})
    return left


def newest_snapshot(paths: FeaturePaths) -> pd.Timestamp:
    """``event_timestamp`` of the newest offline snapshot.

    Raises:
        RecsysError: no offline features were built yet.
    """
    days = offline_days(paths)
    if not days:
        raise RecsysError(
            f"no offline features under {paths.offline_dir}; run `recsys features materialize`"
        )
    return snapshot_time(days[-1])


def users_with_recent_items(paths: FeaturePaths, until: pd.Timestamp) -> np.ndarray:
    """Sorted ids of the users whose ``RECENT_ITEMS`` are not empty in the newest user snapshot
    at or before ``until`` (the end of a materialized window: the rows the online store holds,
    snapshots being cumulative); empty when there is none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    days = [d for d in offline_days(paths) if snapshot_time(d) <= until]
    if not days:
        return np.zeros(0, dtype=np.int64)
    table = pq.read_table(
        paths.snapshot_path(USER_VIEW, days[-1]), columns=["user_id", RECENT_ITEMS]
    )
    lengths = pc.fill_null(pc.list_value_length(table[RECENT_ITEMS]), 0)
    users = table["user_id"].filter(pc.greater(lengths, 0)).to_numpy()
    return np.unique(users.astype(np.int64))


def read_snapshot(paths: FeaturePaths, view: str, day: str) -> pd.DataFrame:
    """One day's offline snapshot of ``view`` as a DataFrame."""
    import pyarrow.parquet as pq

    path = paths.snapshot_path(view, day)
    if not path.exists():
        raise RecsysError(f"no offline snapshot {path}; run `recsys features materialize`")
    return pq.read_table(path).to_pandas()
