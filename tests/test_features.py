"""The Feast feature store, local profile: offline snapshots, the Feast repository, point-in-time
training sets, hot-path online reads, the skew check and backfill, and both CLIs (recsys, feast).

Everything runs for real: parquet offline sources, a SQLite online store, a file registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.compute import category_vocabulary, item_features, user_features
from features.offline import build_offline_features, read_manifest, snapshot_time
from features.spec import (
    FEATURE_REPO_DIR,
    FEATURE_SERVICE_NAME,
    FEATURE_SERVICE_VERSION,
    ITEM_FEATURES,
    RANKER_USER_FEATURES,
    RECENT_ITEMS,
    USER_FEATURES,
    FeaturePaths,
)
from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.ingest import ingest_all
from recsys.lake import file_sha256
from recsys.synthetic import WorldConfig, write_world

WORLD = WorldConfig(n_users=300, n_items=100, n_days=6, n_interactions=6000, seed=11)
DAYS = [WORLD.batch_name(d) for d in range(WORLD.n_days)]
NEWEST = snapshot_time(DAYS[-1])
BIN = Path(sys.executable).parent


def make_world(folder: Path) -> Settings:
    settings = Settings(data_dir=folder)
    write_world(WORLD, settings.lake.init())
    ingest_all(settings.lake)
    return settings


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A world built, applied and materialized once per module (tests copy it, see `fresh`)."""
    from features.store import materialize

    settings = make_world(tmp_path_factory.mktemp("features") / "data")
    assert materialize(settings)["rebuilt"] is None  # the first one: nothing was lost
    return settings


@pytest.fixture
def fresh(built: Settings, tmp_path: Path) -> Settings:
    """A private copy of the built world (offline data, registry, online store)."""
    from features.store import apply_repo

    folder = tmp_path / "data"
    shutil.copytree(built.data_dir, folder)
    settings = Settings(data_dir=folder)
    apply_repo(settings)  # point the sources at this copy's offline files
    return settings


# ---- helpers: poke the SQLite online store directly ----------------------------------------


def entity_key(key: str, value: int) -> bytes:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    proto = EntityKey(join_keys=[key], entity_values=[Value(int64_val=value)])
    return serialize_entity_key(proto, entity_key_serialization_version=3)


def online_db(settings: Settings) -> sqlite3.Connection:
    return sqlite3.connect(FeaturePaths(settings.data_dir).online_db)


def set_online_value(settings: Settings, view: str, key: str, ids, feature: str, value) -> None:
    with online_db(settings) as db:
        for i in ids:
            cur = db.execute(
                f"UPDATE recsys_{view} SET value = ? WHERE entity_key = ? AND feature_name = ?",
                (value.SerializeToString(), entity_key(key, int(i)), feature),
            )
            assert cur.rowcount == 1


def delete_online_rows(settings: Settings, view: str, key: str, ids) -> None:
    with online_db(settings) as db:
        for i in ids:
            db.execute(f"DELETE FROM recsys_{view} WHERE entity_key = ?", (entity_key(key, i),))


def online_dump(settings: Settings) -> str:
    """sha256 of every online row (values and timestamps) of both views."""
    digest = hashlib.sha256()
    with online_db(settings) as db:
        for view in ("user_features", "item_features"):
            rows = db.execute(
                f"SELECT entity_key, feature_name, value, event_ts FROM recsys_{view} "
                "ORDER BY entity_key, feature_name"
            ).fetchall()
            digest.update(repr(rows).encode())
    return digest.hexdigest()


def snapshot(settings: Settings, view: str, day: str) -> pd.DataFrame:
    path = FeaturePaths(settings.data_dir).snapshot_path(view, day)
    return pq.read_table(path).to_pandas()


# ---- offline snapshots ----------------------------------------------------------------------


def test_offline_snapshots_are_daily_incremental_and_idempotent(tmp_path):
    settings = make_world(tmp_path / "data")
    paths = FeaturePaths(settings.data_dir)
    first = build_offline_features(settings)
    assert first["written"] == DAYS and first["days"] == DAYS

    # One snapshot per day, stamped with the midnight that ends it, equal to features/compute.py.
    interactions = settings.lake.read_clean_interactions()
    items = settings.lake.read_clean_catalog("items")
    day = DAYS[2]
    users = snapshot(settings, "user_features", day)
    assert (users["event_timestamp"] == pd.Timestamp(DAYS[3], tz="UTC")).all()
    expected = user_features(interactions, items, pd.Timestamp(DAYS[3], tz="UTC"))
    assert users["user_id"].tolist() == sorted(expected["user_id"].tolist())
    merged = users.merge(expected, on="user_id", suffixes=("", "_expected"))
    np.testing.assert_array_equal(merged["user_events_7d"], merged["user_events_7d_expected"])
    np.testing.assert_allclose(
        np.stack(merged["user_category_affinity"]),
        np.stack(merged["user_category_affinity_expected"]),
    )
    expected_items = item_features(interactions, items, pd.Timestamp(DAYS[3], tz="UTC"))
    assert len(snapshot(settings, "item_features", day)) == len(expected_items)
    vocabulary = json.loads(paths.vocabulary_path.read_text())["categories"]
    assert vocabulary == category_vocabulary(items)

    def hashes() -> dict[str, str]:
        return {
            f"{v}/{d}": file_sha256(paths.snapshot_path(v, d))
            for v in ("user_features", "item_features")
            for d in DAYS
        }

    before = hashes()
    again = build_offline_features(settings)
    assert again["computed"] == [] and hashes() == before

    # Recomputing a day replaces it with the same bytes: no duplicate rows.
    redo = build_offline_features(settings, days=[DAYS[3]])
    assert redo["computed"] == [DAYS[3]] and redo["unchanged"] == [DAYS[3]]
    assert hashes() == before
    assert read_manifest(paths)["days"][DAYS[3]]["rows"]["user_features"] == len(
        snapshot(settings, "user_features", DAYS[3])
    )

    # A re-ingested batch changes its own day and every later one (features are cumulative).
    batch = settings.lake.read_clean_interactions([DAYS[3]])
    settings.lake.write_clean_batch(DAYS[3], batch.iloc[: len(batch) // 2])
    changed = build_offline_features(settings)
    assert changed["computed"] == DAYS[3:] and changed["replaced"] == DAYS[3:]
    after = hashes()
    assert all(after[f"user_features/{d}"] == before[f"user_features/{d}"] for d in DAYS[:3])
    assert all(after[f"user_features/{d}"] != before[f"user_features/{d}"] for d in DAYS[3:])

    # A delivered catalog that renames items recomputes nothing; a new item, the days from
    # the one it was created on (every day did: 34 s on MovieLens-100K per delivery); a new
    # category, everything (it reorders every affinity vector).
    from recsys.catalog import deliver_catalog

    item = int(items["item_id"].iloc[0])
    renamed = tmp_path / "renamed.csv"
    pd.DataFrame(
        {"item_id": [item], "title": ["A new title"], "category": [items["category"].iloc[0]]}
    ).to_csv(renamed, index=False)
    assert deliver_catalog(settings.lake, renamed).updated_items == 1
    assert build_offline_features(settings)["computed"] == []
    new_item = tmp_path / "new.csv"
    pd.DataFrame(
        {
            "item_id": [int(items["item_id"].max()) + 1],
            "category": [items["category"].iloc[0]],
            "created_at": [f"{DAYS[-2]}T12:00:00Z"],
        }
    ).to_csv(new_item, index=False)
    assert deliver_catalog(settings.lake, new_item).new_items == 1
    added = build_offline_features(settings)
    assert added["computed"] == DAYS[-2:] and added["written"] == DAYS[-2:]
    moved = tmp_path / "moved.csv"
    pd.DataFrame({"item_id": [item], "category": ["a category nobody had"]}).to_csv(
        moved, index=False
    )
    assert deliver_catalog(settings.lake, moved).updated_items == 1
    assert build_offline_features(settings)["computed"] == DAYS
    assert "a category nobody had" in json.loads(paths.vocabulary_path.read_text())["categories"]

    with pytest.raises(RecsysError, match="outside the clean batches"):
        build_offline_features(settings, days=["1999-01-01"])


# ---- the Feast repository -------------------------------------------------------------------


def test_recent_items_are_each_users_distinct_items_of_the_last_days_newest_first():
    from features.compute import RECENT_ITEMS_DAYS, RECENT_ITEMS_MAX, recent_items

    as_of = pd.Timestamp("2026-03-10", tz="UTC")
    day = pd.Timedelta(days=1)
    rows = [
        (1, 5, as_of - (RECENT_ITEMS_DAYS + 1) * day),  # before the window: not recent
        (1, 6, as_of - 3 * day),
        (1, 7, as_of - day),
        (1, 6, as_of - day / 2),  # again: once, at its newest place
        (2, 9, as_of - 2 * day),
        *((3, 1000 + i, as_of - day + i * pd.Timedelta(seconds=1)) for i in range(150)),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    lists = recent_items(frame, np.array([1, 2, 3, 4]), as_of)
    assert [lst.tolist() for lst in lists[:2]] == [[6, 7], [9]]
    assert len(lists[2]) == RECENT_ITEMS_MAX and lists[2][0] == 1149  # the newest hundred
    assert lists[3].tolist() == [] and all(lst.dtype == np.int64 for lst in lists)


def test_feast_finds_exactly_the_objects_of_definitions_py(monkeypatch):
    from feast.repo_operations import parse_repo

    monkeypatch.chdir(FEATURE_REPO_DIR)
    monkeypatch.syspath_prepend(str(FEATURE_REPO_DIR))
    repo = parse_repo(FEATURE_REPO_DIR)
    assert sorted(e.name for e in repo.entities) == ["__dummy", "item", "user"]
    assert sorted(fv.name for fv in repo.feature_views) == ["item_features", "user_features"]
    assert [fs.name for fs in repo.feature_services] == [FEATURE_SERVICE_NAME]
    assert sorted(s.name for s in repo.data_sources) == [
        "item_features_source",
        "user_activity_push",
        "user_features_source",
    ]
    service = repo.feature_services[0]
    assert f"ranker_v{FEATURE_SERVICE_VERSION}" == FEATURE_SERVICE_NAME
    assert service.tags["version"] == str(FEATURE_SERVICE_VERSION)
    served = [f.name for p in service.feature_view_projections for f in p.features]
    assert served == [*RANKER_USER_FEATURES, *ITEM_FEATURES]  # the recent items: serving's
    views = {fv.name: fv for fv in repo.feature_views}
    assert [f.name for f in views["user_features"].features] == list(USER_FEATURES)
    assert USER_FEATURES[-1] == RECENT_ITEMS
    assert views["user_features"].stream_source.name == "user_activity_push"
    assert str(views["user_features"].ttl) == "2 days, 0:00:00"
    from features.store_meta import FEATURE_SERVICE_NAME as recorded

    assert recorded == FEATURE_SERVICE_NAME


FEAST_TYPES_PROBE = """
import sys
import features
{before}
import feast
try:
    feast.Entity(name=3, join_keys=["x"])
except Exception as exc:
    print(type(exc).__name__, features.feast_types_checked())
else:
    print("accepted", features.feast_types_checked())
"""

APPLY_FIRST = """
from typer.testing import CliRunner
from recsys.cli import app
done = CliRunner().invoke(app, ["features", "apply"])
assert done.exit_code == 0, done.output
"""


def test_feast_is_imported_without_typeguard_except_where_definitions_are_written(tmp_path):
    """features/__init__.py: this package's processes import Feast without typeguard's
    instrumentation (half of Feast's import time); `recsys features apply` and
    RECSYS_FEAST_TYPECHECKS=1 keep Feast's run-time checks of the definitions."""
    env = {**os.environ, "RECSYS_DATA_DIR": str(tmp_path / "data")}
    env.pop("RECSYS_FEAST_TYPECHECKS", None)
    flag = "import features; print(features._check_types)"
    runs = {
        "default": (FEAST_TYPES_PROBE.format(before=""), env),
        "apply": (FEAST_TYPES_PROBE.format(before=APPLY_FIRST), env),
        # the variable sets the flag `recsys features apply` sets (no Feast import: cheap)
        "env": (flag, {**env, "RECSYS_FEAST_TYPECHECKS": "1"}),
        "env off": (flag, {**env, "RECSYS_FEAST_TYPECHECKS": "0"}),
    }
    procs = {  # at once: each is a fresh interpreter importing Feast
        name: subprocess.Popen(
            [sys.executable, "-c", code],
            env=run_env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, (code, run_env) in runs.items()
    }
    said = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        said[name] = out.split()
    assert said["default"] == ["accepted", "False"]
    assert said["apply"] == ["TypeCheckError", "True"]
    assert said["env"] == ["True"] and said["env off"] == ["False"]
    assert any((tmp_path / "data").rglob("registry*")), "the apply wrote no registry"


def test_a_registry_that_cannot_be_parsed_is_said_and_apply_registers_again(tmp_path):
    """A registry file that is not one made every features command an internal DecodeError,
    `recsys features apply` included: the only way out was deleting it by hand."""
    from features.store import apply_repo, feature_status

    settings = Settings(data_dir=tmp_path / "data")
    apply_repo(settings)
    registry = FeaturePaths(settings.data_dir).registry(settings.profile)
    registry.write_bytes(b"garbage" * 500)
    with pytest.raises(RecsysError, match=r"registry .* cannot be parsed .*features apply"):
        feature_status(settings)
    applied = apply_repo(settings)
    assert FEATURE_SERVICE_NAME in applied["feature_service"]
    [kept] = registry.parent.glob(f"{registry.name}.unreadable-*")
    assert kept.read_bytes() == b"garbage" * 500
    assert feature_status(settings)["applied"]


def test_one_factory_builds_the_store_of_each_profile(tmp_path):
    from features.store import redis_connection_string, repo_config

    local = repo_config(Settings(data_dir=tmp_path))
    assert local.online_store.type == "sqlite"
    assert local.online_store.path == str(tmp_path / "features" / "online.db")
    assert local.registry.path == str(tmp_path / "features" / "registry.db")

    prod = repo_config(
        Settings(profile="prod", data_dir=tmp_path, redis_url="redis://:s3cr%40t@cache:6380/2")
    )
    assert prod.online_store.type == "redis"
    assert prod.online_store.connection_string == "cache:6380,db=2,password=s3cr@t"
    assert prod.registry.path == str(tmp_path / "features" / "registry-prod.db")
    assert redis_connection_string("rediss://h") == "h:6379,ssl=true"
    # redis-py's query form: the password was dropped, and Feast connected without it
    assert (
        redis_connection_string("redis://cache:6380?password=s3cr%40t&db=2&ssl=true")
        == "cache:6380,db=2,password=s3cr@t,ssl=true"
    )
    with pytest.raises(RecsysError, match=r"has \?timeout=, which the Feast online store"):
        redis_connection_string("redis://cache/0?timeout=5&password=x")
    with pytest.raises(RecsysError, match="RECSYS_REDIS_URL"):
        repo_config(Settings(profile="prod", data_dir=tmp_path))
    with pytest.raises(RecsysError, match="not a redis URL"):
        redis_connection_string("http://h:1")
    from features.store import feature_store

    nobody = Settings(profile="prod", data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(RecsysError, match=r"does not answer.*RECSYS_REDIS_URL"):
        feature_store(nobody)


def test_errors_say_what_to_do(tmp_path):
    from features.skew import skew_report
    from features.store import historical_features, materialize

    empty = Settings(data_dir=tmp_path / "empty")
    with pytest.raises(RecsysError, match="recsys data generate"):
        materialize(empty)
    labels = pd.DataFrame({"user_id": [1], "item_id": [1], "event_timestamp": [NEWEST]})
    with pytest.raises(RecsysError, match="recsys features materialize"):
        historical_features(empty, labels)
    with pytest.raises(RecsysError, match="recsys features materialize"):
        skew_report(empty)
    with pytest.raises(RecsysError, match="event_timestamp"):
        historical_features(empty, labels.drop(columns="event_timestamp"))


# ---- training sets --------------------------------------------------------------------------


def test_training_set_is_point_in_time_correct(fresh):
    from features.store import historical_features

    paths = FeaturePaths(fresh.data_dir)
    day = DAYS[3]
    label_time = snapshot_time(day) + pd.Timedelta(hours=6)
    user = int(snapshot(fresh, "user_features", day)["user_id"].iloc[0])
    item_a, item_b = snapshot(fresh, "item_features", DAYS[2])["item_id"].iloc[:2].tolist()
    truth = snapshot(fresh, "user_features", day).set_index("user_id").loc[user]

    # A value written after the label time: a row stamped one minute later, in its own file.
    late = snapshot(fresh, "user_features", day).query("user_id == @user").copy()
    late["event_timestamp"] = label_time + pd.Timedelta(minutes=1)
    late["user_events_total"] = np.float32(12345.0)
    table = pa.Table.from_pandas(late, preserve_index=False).cast(
        pq.read_schema(paths.snapshot_path("user_features", day))
    )
    pq.write_table(table, paths.view_dir("user_features") / "late-write.parquet")

    labels = pd.DataFrame(
        {
            "user_id": [user, user, user, user, user],
            "item_id": [item_a, item_b, item_a, item_a, item_a],
            "event_timestamp": [
                label_time,
                label_time,  # same user and time, another item: must stay its own row
                label_time + pd.Timedelta(minutes=2),  # after the late write: sees it
                snapshot_time(day) - pd.Timedelta(microseconds=1),  # the day before
                NEWEST + pd.Timedelta(days=5),  # beyond the TTL: null, but the row stays
            ],
            "label": [1, 0, 1, 0, 1],
        },
        index=[10, 11, 12, 13, 14],
    )
    out = historical_features(fresh, labels)
    assert list(out.index) == [10, 11, 12, 13, 14]
    assert out["label"].tolist() == [1, 0, 1, 0, 1]
    assert out.loc[10, "user_events_total"] == truth["user_events_total"] != 12345.0
    assert out.loc[11, "user_events_total"] == truth["user_events_total"]
    assert out.loc[12, "user_events_total"] == 12345.0
    previous = snapshot(fresh, "user_features", DAYS[2]).set_index("user_id").loc[user]
    assert out.loc[13, "user_events_total"] == previous["user_events_total"]
    assert pd.isna(out.loc[14, "user_events_total"]) and pd.isna(out.loc[14, "item_age_days"])
    np.testing.assert_allclose(out.loc[10, "user_category_affinity"], truth.user_category_affinity)
    item_truth = snapshot(fresh, "item_features", day).set_index("item_id")
    assert out.loc[11, "item_events_7d"] == item_truth.loc[item_b, "item_events_7d"]
    assert set(RANKER_USER_FEATURES + ITEM_FEATURES) <= set(out.columns)
    assert RECENT_ITEMS not in out.columns  # serving's filter, not a ranker input


# ---- online reads ---------------------------------------------------------------------------


def test_online_reader_serves_what_was_materialized_and_reports_age(fresh):
    from features.online import OnlineFeatureReader

    clock = {"now": NEWEST.to_pydatetime() + timedelta(hours=6)}
    users = snapshot(fresh, "user_features", DAYS[-1]).set_index("user_id")
    items = snapshot(fresh, "item_features", DAYS[-1]).set_index("item_id")
    candidates = [*items.index[:30].tolist(), 99_999]
    readers = {
        mode: OnlineFeatureReader(fresh, item_mode=mode, clock=lambda: clock["now"])
        for mode in ("table", "online")
    }
    assert readers["table"].table_size == len(items)
    for reader in readers.values():
        row = reader.user_features(int(users.index[0]))
        assert row["user_events_total"] == users.iloc[0]["user_events_total"]
        np.testing.assert_array_equal(
            row["user_category_affinity"], users.iloc[0]["user_category_affinity"]
        )
        # serving's seen filter: the item ids, newest first, as the snapshot has them
        assert row[RECENT_ITEMS].dtype == np.int64 and len(row[RECENT_ITEMS])
        np.testing.assert_array_equal(row[RECENT_ITEMS], users.iloc[0][RECENT_ITEMS])
        assert row["age_seconds"] == 6 * 3600 and not row["expired"]
        assert reader.user_features(99_999) is None

        batch = reader.item_features(candidates)
        assert batch.found.tolist() == [True] * 30 + [False]
        expected = items.loc[candidates[:30], list(ITEM_FEATURES)].to_numpy(dtype=np.float32)
        np.testing.assert_array_equal(batch.values[:30], expected)
        assert np.isnan(batch.values[30]).all() and batch.expired[30]
        assert (batch.age_seconds[:30] == 6 * 3600).all() and not batch.expired[:30].any()

    # Several users in one read (what the service batches): the rows Feast's own
    # get_online_features gives, in order. A row with a null feature is no row (Feast calls it
    # PRESENT with an empty value): the service then answers with the release's row.
    from feast.protos.feast.types.Value_pb2 import Value

    from features.online import read_online_rows

    ids = [*users.index[:25].tolist(), 99_999, int(users.index[0])]
    nulled = int(users.index[1])
    set_online_value(fresh, "user_features", "user_id", [nulled], "user_events_1d", Value())
    for reader in readers.values():
        rows = reader.users_features(ids)
        values, found, stamps = read_online_rows(
            reader._store, "user_features", "user_id", ids, USER_FEATURES
        )
        assert values["user_events_1d"][1] is None and found[1]
        found[1] = False
        assert [row is not None for row in rows] == found.tolist()
        assert not found[25] and found.sum() == len(ids) - 2
        for i, row in enumerate(rows):
            if row is None:
                continue
            for name in USER_FEATURES:
                np.testing.assert_array_equal(row[name], values[name][i])
            assert row["event_timestamp"].timestamp() == stamps[i]
            assert row["age_seconds"] == 6 * 3600
        assert reader.users_features([]) == []

    clock["now"] = NEWEST.to_pydatetime() + timedelta(days=3)  # beyond the 2-day TTL
    assert readers["online"].user_features(int(users.index[0]))["expired"]
    assert readers["table"].item_features(candidates[:5]).expired.all()

    # The table reloads in the background when a materialization is seen.
    reader = OnlineFeatureReader(fresh, item_mode="table", watch_interval=0.0)
    first = int(items.index[0])
    set_online_value(fresh, "item_features", "item_id", [first], "item_trend", Value(float_val=7.5))
    assert reader.item_features([first]).values[0, ITEM_FEATURES.index("item_trend")] != 7.5
    marker = FeaturePaths(fresh.data_dir).materialized_marker
    os.utime(marker, (time.time() + 5, time.time() + 5))
    deadline = time.monotonic() + 20
    while reader.item_features([first]).values[0, ITEM_FEATURES.index("item_trend")] != 7.5:
        assert time.monotonic() < deadline, "the item table was not reloaded"
        time.sleep(0.05)


def test_pushed_rows_reach_online_reads_and_are_not_skew(fresh):
    from features.online import OnlineFeatureReader
    from features.skew import skew_report
    from features.store import push_user_features

    row = snapshot(fresh, "user_features", DAYS[-1]).iloc[[0]].copy()
    user = int(row["user_id"].iloc[0])
    row["event_timestamp"] = NEWEST + pd.Timedelta(hours=1)
    row["user_events_1d"] = np.float32(77.0)
    assert push_user_features(fresh, row) == 1
    reader = OnlineFeatureReader(fresh, item_mode="online")
    assert reader.user_features(user)["user_events_1d"] == 77.0
    report = skew_report(fresh)
    assert report.ok and report.views["user_features"].ahead_entities == 1
    # a user with no item in the last days has an empty list: a row still, not a missing one
    row[RECENT_ITEMS] = [np.zeros(0, dtype=np.int64)]
    row["event_timestamp"] = NEWEST + pd.Timedelta(hours=2)
    assert push_user_features(fresh, row) == 1
    quiet = reader.user_features(user)
    assert quiet is not None and quiet[RECENT_ITEMS].tolist() == []


# ---- skew check and backfill ----------------------------------------------------------------


def test_skew_check_finds_corruption_and_backfill_repairs_it(fresh):
    from feast.protos.feast.types.Value_pb2 import Value

    from features.skew import backfill, skew_report

    healthy = skew_report(fresh, sample_size=1000)
    assert healthy.ok, healthy.as_dict()
    assert healthy.views["user_features"].sampled == WORLD.n_users
    clean_dump = online_dump(fresh)

    users = snapshot(fresh, "user_features", DAYS[-1])["user_id"].tolist()
    items = snapshot(fresh, "item_features", DAYS[-1])["item_id"].tolist()
    set_online_value(
        fresh, "user_features", "user_id", users[:7], "user_events_total", Value(float_val=999.0)
    )
    set_online_value(
        fresh, "item_features", "item_id", items[:3], "item_category_index", Value(string_val="x")
    )
    delete_online_rows(fresh, "item_features", "item_id", items[3:5])

    report = skew_report(fresh, sample_size=1000)
    assert not report.ok and report.failing_views() == ["user_features", "item_features"]
    user_view, item_view = report.views["user_features"], report.views["item_features"]
    assert user_view.mismatched_entities == 7 and user_view.missing_online == 0
    by_feature = {f.feature: f for f in user_view.features}
    assert by_feature["user_events_total"].mismatched == 7
    assert by_feature["user_events_total"].max_abs_diff > 900
    assert by_feature["user_events_1d"].mismatched == 0
    worst = user_view.worst[0]
    assert worst["feature"] == "user_events_total" and worst["online"] == 999.0
    assert worst["entity"] in users[:7] and worst["kind"] == "value"
    assert item_view.type_errors == 3 and item_view.missing_online == 2
    assert {w["kind"] for w in item_view.worst} >= {"missing"}
    json.dumps(report.as_dict())  # JSON-able

    result = backfill(fresh, sample_size=1000)
    assert result.rematerialized and result.views == ["user_features", "item_features"]
    assert not result.before.ok and result.after.ok, result.after.as_dict()
    assert online_dump(fresh) == clean_dump

    # Twice changes nothing: a healthy store is left alone, an explicit re-run rewrites the same.
    again = backfill(fresh, sample_size=1000)
    assert not again.rematerialized and again.ok
    forced = backfill(fresh, start=DAYS[-2], views=["user_features"], sample_size=1000)
    assert forced.rematerialized and forced.ok
    assert online_dump(fresh) == clean_dump


def test_skew_check_finds_a_skipped_materialization_and_backfill_repairs_it(fresh):
    from features.skew import backfill, skew_report
    from features.store import feature_status, materialize_window

    clean_dump = online_dump(fresh)
    # The online store as it is when the newest day's materialization was skipped.
    previous = snapshot_time(DAYS[-2])
    materialize_window(fresh, previous, previous, overwrite=True)

    report = skew_report(fresh, sample_size=1000)
    user_view = report.views["user_features"]
    assert not user_view.ok
    assert user_view.stale_entities == WORLD.n_users
    assert user_view.freshness.lag_seconds == 86_400 and not user_view.freshness.up_to_date
    assert user_view.freshness.within_ttl  # one day old: behind, not yet expired
    assert any("behind" in p for p in user_view.problems)
    assert user_view.repair_from == previous.isoformat()
    assert report.views["item_features"].stale_entities > 0

    result = backfill(fresh, sample_size=1000)
    assert result.start == previous.isoformat() and result.end == NEWEST.isoformat()
    assert result.after.ok and online_dump(fresh) == clean_dump
    assert feature_status(fresh)["views"]["user_features"]["lag_seconds"] == 0
    assert not backfill(fresh, sample_size=1000).rematerialized

    # Freshness against the TTL: three days after the newest snapshot every row has expired.
    late = skew_report(fresh, as_of=NEWEST + pd.Timedelta(days=3), sample_size=50)
    for view in late.views.values():
        assert not view.ok and not view.freshness.within_ttl
        assert view.freshness.expired_entities == view.sampled == 50


def _lose_online_store(settings: Settings, how: str) -> bytes | None:
    """Break the SQLite online store as a lost disk, a bad copy or a stray tool would; returns
    the bytes a corrupt file holds (None when nothing is left to keep)."""
    store = FeaturePaths(settings.data_dir).online_db
    if how == "missing":
        store.unlink()
        return None
    if how == "no_tables":
        with online_db(settings) as db:
            for view in ("user_features", "item_features"):
                db.execute(f"DROP TABLE recsys_{view}")
        return None
    garbage = b"\x00 not a database " * (store.stat().st_size // 19 + 1)
    store.write_bytes(garbage)
    return garbage


def _guardian_cycle(settings: Settings):
    from recsys.guardian import Cycle

    return Cycle(settings=settings, admin=None, current=(0.0, 1.0), baseline=None)


@pytest.mark.parametrize("how", ["missing", "not_a_database", "no_tables"])
def test_a_lost_or_corrupt_online_store_fails_the_checks_and_backfill_rebuilds_it(fresh, how):
    from features.skew import backfill, skew_report
    from recsys.guardian import check_feature_freshness, check_feature_skew

    paths = FeaturePaths(fresh.data_dir)
    clean_dump = online_dump(fresh)
    garbage = _lose_online_store(fresh, how)

    cycle = _guardian_cycle(fresh)
    for check in (check_feature_freshness, check_feature_skew):
        finding = check(cycle)
        assert not finding.ok and finding.fix == "backfill", finding
        assert "online store" in finding.seen and "cannot be read" in finding.seen, finding.seen
    assert paths.online_db.exists() == (how != "missing")  # looking created nothing
    with pytest.raises(RecsysError, match="recsys features backfill"):
        skew_report(fresh)

    result = backfill(fresh, sample_size=1000)
    assert result.rematerialized and result.ok, result.as_dict()
    assert result.views == ["user_features", "item_features"]
    problem = {"missing": "missing", "not_a_database": "not a database", "no_tables": "no table"}
    assert result.rebuilt is not None and problem[how] in result.rebuilt["problem"]
    assert online_dump(fresh) == clean_dump  # every entity of the TTL window, not a sample's
    aside = sorted(paths.root.glob("online.db.corrupt-*"))
    if garbage is None:
        assert aside == [] and result.rebuilt["moved_to"] is None
    else:  # nothing is lost: the corrupt file is kept beside the new one
        assert [p.read_bytes() for p in aside] == [garbage]
        assert result.rebuilt["moved_to"] == str(aside[0])
    for check in (check_feature_freshness, check_feature_skew):
        assert check(_guardian_cycle(fresh)).ok
    assert not backfill(fresh, sample_size=1000).rematerialized


def test_lost_offline_snapshots_of_a_materialized_store_fail_the_skew_check(fresh):
    """The skew check read any error as "nothing to compare yet" and passed: a store whose
    offline snapshots were deleted (or whose Feast registry broke) looked healthy."""
    from recsys.guardian import check_feature_skew, fix_backfill

    shutil.rmtree(FeaturePaths(fresh.data_dir).root / "offline")
    finding = check_feature_skew(_guardian_cycle(fresh))
    assert not finding.ok and finding.fix == "backfill"
    assert "cannot run on a materialized store: no offline features" in finding.seen
    outcome = fix_backfill(_guardian_cycle(fresh), finding)
    assert outcome.verified, outcome


def test_materialize_onto_a_corrupt_online_store_rebuilds_it(fresh):
    from features.store import materialize

    paths = FeaturePaths(fresh.data_dir)
    clean_dump = online_dump(fresh)
    garbage = _lose_online_store(fresh, "not_a_database")
    result = materialize(fresh)
    assert result["rebuilt"]["moved_to"] is not None
    assert result["views"]["user_features"]["entities"] == WORLD.n_users
    assert online_dump(fresh) == clean_dump
    assert [p.read_bytes() for p in paths.root.glob("online.db.corrupt-*")] == [garbage]
    assert materialize(fresh)["rebuilt"] is None  # a readable store is left as it is


def test_a_locked_online_store_is_never_set_aside(fresh):
    from features.skew import backfill

    paths = FeaturePaths(fresh.data_dir)
    holder = sqlite3.connect(paths.online_db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: readers wait, then give up
    try:
        with pytest.raises(RecsysError, match="another process holds it"):
            backfill(fresh)
    finally:
        holder.rollback()
        holder.close()
    assert list(paths.root.glob("online.db.corrupt-*")) == []
    assert backfill(fresh).ok


def test_commands_on_an_unreadable_online_store_say_what_to_do(fresh):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_DATA_DIR": str(fresh.data_dir), "FEAST_USAGE": "False"}
    recsys = str(BIN / "recsys")
    garbage = _lose_online_store(fresh, "not_a_database")
    proc = run([recsys, "features", "skew"], fresh.data_dir, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsys: error: "), proc.stderr
    assert "not a database" in lines[0] and "recsys features backfill" in lines[0]

    proc = run([recsys, "features", "backfill", "--json"], fresh.data_dir, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["rebuilt"]["moved_to"].startswith(str(fresh.data_dir))
    assert Path(result["rebuilt"]["moved_to"]).read_bytes() == garbage
    proc = run([recsys, "features", "skew"], fresh.data_dir, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_materialize_is_incremental(fresh):
    from features.store import feature_status, materialize

    result = materialize(fresh)
    assert result["offline"]["computed"] == []
    assert result["views"]["user_features"]["start"] == NEWEST.isoformat()
    assert result["views"]["user_features"]["entities"] == WORLD.n_users
    status = feature_status(fresh)
    assert status["applied"] and status["offline"]["pending_days"] == 0
    assert status["offline"]["days"] == WORLD.n_days
    assert status["views"]["item_features"]["materialized_until"] == NEWEST.isoformat()


# ---- the command lines ----------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_recsys_features_cli_and_feast_cli_inside_features(tmp_path):
    """`recsys data generate` + `recsys features ...` on a repo's default data dir, then the
    Feast CLI inside its features/ folder, on a copy of the repository layout."""
    repo = tmp_path / "repo"
    shutil.copytree(FEATURE_REPO_DIR, repo / "features", ignore=shutil.ignore_patterns("__py*"))
    data = repo / ".recsys"  # the default data dir, seen from the repository root
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env["FEAST_USAGE"] = "False"
    recsys = str(BIN / "recsys")
    generate = [recsys, "data", "generate", "--users", "300", "--items", "100", "--days", "6"]
    proc = run([*generate, "--interactions", "6000"], repo, env)
    assert proc.returncode == 0, proc.stderr

    proc = run([recsys, "features", "materialize"], repo, env)
    assert proc.returncode == 0, proc.stderr
    assert "Materialized" in proc.stdout and "user_features" in proc.stdout
    assert (data / "features" / "online.db").is_file()
    proc = run([recsys, "features", "materialize", "--start", "2999-01-01"], repo, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # not the newest day copied again
    assert "after the newest offline snapshot" in proc.stderr and "Traceback" not in proc.stderr

    from feast.protos.feast.types.Value_pb2 import Value

    settings = Settings(data_dir=data)
    set_online_value(settings, "user_features", "user_id", [1, 2, 3], "user_mean_weight", Value())
    proc = run([recsys, "features", "skew"], repo, env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "user_mean_weight" in proc.stdout and "NO" in proc.stdout

    proc = run([recsys, "features", "backfill", "--json"], repo, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["before"]["ok"] is False and result["after"]["ok"] is True
    assert result["views"] == ["user_features"]

    # The Feast CLI inside features/ sees the same registry, sources and online store.
    feast = str(BIN / "feast")
    proc = run([feast, "apply"], repo / "features", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Applying changes for project recsys" in proc.stdout
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None).isoformat()
    proc = run([feast, "materialize-incremental", now], repo / "features", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NEWEST.strftime("%Y-%m-%d %H:%M:%S") in proc.stdout  # it goes on from recsys' end

    from features.skew import skew_report
    from features.store import feature_status

    assert skew_report(settings, sample_size=100).ok

    status = feature_status(settings)
    assert status["applied"] and status["offline"]["days"] == 6
    assert status["views"]["user_features"]["materialized_until"].startswith(now[:10])


def test_list_feature_columns_get_content_tokens_in_dask():
    """features/dask_tokens.py: Feast's file offline store runs on dask, whose default token of
    an object column pickles and unpickles it at least twice. Ours hashes the rows once; it
    must still tell every difference of content (a value, a row boundary, a dtype) and leave
    other arrays alone."""
    from dask.tokenize import tokenize

    from features.dask_tokens import install, numeric_rows

    install()
    rows = [np.array([0.1, 0.2, 0.7]), np.array([1.0]), np.array([0.5, 0.5])]
    frame = pd.DataFrame({"user_id": [1, 2, 3], "shares": pd.Series(rows, dtype=object)})
    same = frame.copy(deep=True)
    same["shares"] = [r.copy() for r in rows]
    assert numeric_rows(frame._mgr.arrays[1]) is not None  # the fast path is the one taken
    assert tokenize(frame) == tokenize(same)

    def token_with(shares) -> str:
        other = frame.copy(deep=True)
        other["shares"] = pd.Series(shares, dtype=object)
        return tokenize(other)

    base = tokenize(frame)
    assert token_with([rows[0], rows[1], np.array([0.5, 0.6])]) != base  # a value
    assert token_with([rows[0][:2], np.r_[rows[0][2:], rows[1]], rows[2]]) != base  # boundaries
    assert token_with([r.astype(np.float32) for r in rows]) != base  # the dtype
    # the user view's two list columns, float and int, in one pandas block: still the fast path
    both = frame.assign(
        items=pd.Series(
            [np.array([5, 6]), np.array([], dtype=np.int64)] * 1 + [np.array([7])], dtype=object
        )
    )
    both._consolidate_inplace()
    (block,) = [b.values for b in both._mgr.blocks if b.dtype == object]
    assert block.shape == (2, 3) and numeric_rows(block) is not None
    changed = both.copy(deep=True)
    changed["items"] = pd.Series([np.array([5, 6]), np.array([8]), np.array([7])], dtype=object)
    assert tokenize(both) == tokenize(both.copy(deep=True)) != tokenize(changed)
    # anything else keeps dask's own token: mixed rows, strings, numbers
    mixed = np.array([rows[0], [1.0, 2.0]], dtype=object)
    assert numeric_rows(mixed) is None and tokenize(mixed) == tokenize(mixed.copy())
    assert numeric_rows(np.array(["a", "b"], dtype=object)) is None
    assert tokenize(np.arange(4)) != tokenize(np.arange(1, 5))
