"""Lake rules, the MovieLens loader on the real files, and ingestion with quarantine."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from recsys.contract import INTERACTIONS_SCHEMA, conform, validate_interactions
from recsys.errors import RecsysError
from recsys.ingest import ingest_all, ingest_batch, land_dataset
from recsys.lake import Lake, file_sha256
from recsys.movielens import load_movielens, read_udata


def small_batch(n: int = 5, start: str = "2026-01-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": range(1, n + 1),
            "item_id": [1] * n,
            "event_type": ["click"] * n,
            "value": [1.0] * n,
            "timestamp": pd.date_range(start, periods=n, freq="h", tz="UTC"),
        }
    )


# ---- lake -----------------------------------------------------------------------------------


def test_raw_zone_is_immutable(tmp_path):
    lake = Lake(tmp_path).init()
    path = lake.raw_batch_path("2026-01-01")
    table = conform(small_batch(), INTERACTIONS_SCHEMA)
    assert lake.write_raw(path, table) is True
    digest = file_sha256(path)
    assert lake.write_raw(path, table) is False  # same bytes: a no-op
    with pytest.raises(RecsysError, match="immutable"):
        lake.write_raw(path, conform(small_batch(6), INTERACTIONS_SCHEMA))
    assert file_sha256(path) == digest
    assert not list(path.parent.glob("*.tmp"))


def test_reading_an_empty_lake_says_what_to_do(tmp_path):
    with pytest.raises(RecsysError, match="recsys data generate"):
        Lake(tmp_path).read_clean_interactions()


# ---- MovieLens ------------------------------------------------------------------------------


def test_movielens_loader_maps_the_real_files_to_the_contract(ml100k):
    data = load_movielens(ml100k)
    assert len(data.interactions) == 100_000
    assert data.interactions["user_id"].nunique() == 943
    assert len(data.items) == 1682 and len(data.users) == 943
    assert set(data.interactions["event_type"]) == {"rating"}
    assert data.interactions["value"].between(1, 5).all()
    assert str(data.interactions["timestamp"].dt.tz) == "UTC"
    assert data.interactions["timestamp"].min().year == 1997
    result = validate_interactions(data.interactions, known_items=set(data.items["item_id"]))
    assert result.rejected.empty
    toy_story = data.items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert toy_story["category"] == "Animation"
    assert (data.users["gender"].isin(["M", "F"])).all()
    # an item is never created after its first rating
    first = data.interactions.groupby("item_id")["timestamp"].min()
    created = data.items.set_index("item_id")["created_at"]
    assert (created.loc[first.index] <= first).all()


def test_movielens_loader_errors_are_readable(tmp_path):
    with pytest.raises(RecsysError, match="not a folder"):
        load_movielens(tmp_path / "missing")
    with pytest.raises(RecsysError, match=r"u\.data"):
        load_movielens(tmp_path)
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\tthree\t4\n")
    with pytest.raises(RecsysError, match=r"u\.data layout"):
        read_udata(bad)


# ---- ingest ---------------------------------------------------------------------------------


def test_movielens_lands_as_daily_batches_and_ingests_without_loss(ml100k, tmp_path):
    lake = Lake(tmp_path).init()
    batches = land_dataset(lake, load_movielens(ml100k))
    assert len(batches) > 200 and batches == sorted(batches)
    reports = ingest_all(lake)
    assert sum(r.raw_rows for r in reports) == 100_000
    assert sum(r.clean_rows for r in reports) == 100_000
    before = {b: file_sha256(lake.clean_batch_path(b)) for b in lake.clean_batches()}
    ingest_all(lake)  # idempotent
    assert before == {b: file_sha256(lake.clean_batch_path(b)) for b in lake.clean_batches()}


def test_a_corrupted_batch_is_quarantined_row_by_row(tmp_path):
    lake = Lake(tmp_path).init()
    frame = small_batch(10).astype({"user_id": "object", "value": "object"})
    frame.loc[2, "user_id"] = None
    frame.loc[4, "value"] = -3.0
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    lake.write_raw(lake.raw_batch_path("2026-01-01"), pa.Table.from_pandas(frame))
    report = ingest_batch(lake, "2026-01-01", known_items={1})
    assert report.raw_rows == 11
    assert report.clean_rows == 8 and report.quarantined_rows == 3
    assert report.reasons == {"duplicate": 1, "null:user_id": 1, "range:value": 1}
    rows = pd.read_parquet(lake.quarantine_dir("2026-01-01") / "rows.parquet")
    assert len(rows) == 3 and "reason" in rows.columns
    saved = json.loads((lake.quarantine_dir("2026-01-01") / "report.json").read_text())
    assert saved["quarantined_rows"] == 3 and saved["raw_rows"] == 11
    assert len(lake.read_clean_interactions()) == 8
