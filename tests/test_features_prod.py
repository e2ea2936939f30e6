"""The feature store in the prod profile: the Redis online store on this machine.

Redis comes from ``REDIS_TEST_URL`` (default redis://127.0.0.1:6379/0). Each test uses its own
Feast project (the Redis key suffix) and data directory, and deletes its keys afterwards.
Without Redis the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.offline import snapshot_time
from features.spec import FEATURE_REPO_DIR, ITEM_FEATURES, PROJECT_ENV, FeaturePaths
from recsys.config import Settings
from recsys.ingest import ingest_all
from recsys.synthetic import WorldConfig, write_world

pytestmark = pytest.mark.prod

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
WORLD = WorldConfig(n_users=300, n_items=100, n_days=6, n_interactions=6000, seed=5)
DAYS = [WORLD.batch_name(d) for d in range(WORLD.n_days)]
NEWEST = snapshot_time(DAYS[-1])


@pytest.fixture(scope="module")
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        message = f"Redis at {REDIS_URL} is unreachable ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run Redis (see .ci/run)")
        pytest.skip(f"{message}; start redis-server to run the prod-profile feature tests")
    return client


def project_keys(client, project: str) -> list[bytes]:
    return [k for k in client.scan_iter(match=f"*{project}".encode(), count=1000)]


@pytest.fixture
def prod(redis_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Prod-profile settings on a fresh synthetic world, with a unique Feast project."""
    from features.store import feature_store, quiet_feast

    project = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(PROJECT_ENV, project)
    # The default data dir of a repository at tmp_path/repo (used by the Feast CLI test).
    data_dir = tmp_path / "repo" / ".recsys"
    settings = Settings(profile="prod", data_dir=data_dir, redis_url=REDIS_URL)
    write_world(WORLD, settings.lake.init())
    ingest_all(settings.lake)
    yield settings, project
    if FeaturePaths(settings.data_dir).registry("prod").exists():
        with quiet_feast():
            feature_store(settings).teardown()
    leftover = project_keys(redis_client, project)
    if leftover:
        redis_client.delete(*leftover)
    assert not leftover, f"teardown left {len(leftover)} Redis keys of {project}"


def redis_key(project: str, key: str, value: int) -> bytes:
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity = EntityKey(join_keys=[key], entity_values=[Value(int64_val=value)])
    return _redis_key(project, entity, entity_key_serialization_version=3)


def redis_dump(client, project: str) -> str:
    digest = hashlib.sha256()
    for key in sorted(project_keys(client, project)):
        digest.update(key + repr(sorted(client.hgetall(key).items())).encode())
    return digest.hexdigest()


def snapshot(settings: Settings, view: str, day: str) -> pd.DataFrame:
    return pq.read_table(FeaturePaths(settings.data_dir).snapshot_path(view, day)).to_pandas()


def test_redis_online_store_skew_check_and_backfill(prod, redis_client):
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.Value_pb2 import Value

    from features.online import OnlineFeatureReader
    from features.skew import backfill, skew_report
    from features.store import materialize

    settings, project = prod
    # Materialization of the newest day skipped: Redis holds the day before.
    result = materialize(settings, end=snapshot_time(DAYS[-2]))
    assert result["views"]["user_features"]["end"] == snapshot_time(DAYS[-2]).isoformat()
    assert len(project_keys(redis_client, project)) > 0

    stale = skew_report(settings, sample_size=1000)
    assert stale.online_store == "redis 127.0.0.1:6379,db=0"
    user_view = stale.views["user_features"]
    assert not user_view.ok and user_view.freshness.lag_seconds == 86_400
    assert user_view.stale_entities == WORLD.n_users
    repaired = backfill(settings, sample_size=1000)
    assert repaired.rematerialized and repaired.after.ok, repaired.after.as_dict()
    clean = redis_dump(redis_client, project)

    # Corrupt Redis directly: values with the same event time (a plain re-materialization
    # would skip them, since Redis keeps the newer-or-equal row) and a whole missing item.
    users = snapshot(settings, "user_features", DAYS[-1])["user_id"].tolist()
    items = snapshot(settings, "item_features", DAYS[-1])["item_id"].tolist()
    field = _mmh3("user_features:user_events_7d")
    for user in users[:5]:
        redis_client.hset(
            redis_key(project, "user_id", user), field, Value(float_val=-1.0).SerializeToString()
        )
    redis_client.delete(redis_key(project, "item_id", items[0]))

    report = skew_report(settings, sample_size=1000)
    assert report.failing_views() == ["user_features", "item_features"]
    assert report.views["user_features"].mismatched_entities == 5
    assert report.views["user_features"].worst[0]["feature"] == "user_events_7d"
    assert report.views["user_features"].worst[0]["online"] == -1.0
    assert report.views["item_features"].missing_online == 1
    assert report.views["item_features"].worst[0]["entity"] == items[0]

    result = backfill(settings, sample_size=1000)
    assert result.rematerialized and not result.before.ok and result.after.ok
    assert redis_dump(redis_client, project) == clean
    assert not backfill(settings, sample_size=1000).rematerialized
    assert backfill(settings, views=["item_features"], sample_size=1000).ok
    assert redis_dump(redis_client, project) == clean

    # A re-ingested newest batch changes its snapshot under the same timestamp: materialize
    # rewrites it (Redis alone would keep the older row of equal timestamp).
    batch = settings.lake.read_clean_interactions([DAYS[-1]])
    settings.lake.write_clean_batch(DAYS[-1], batch.iloc[: len(batch) // 2])
    rebuilt = materialize(settings)
    assert rebuilt["offline"]["replaced"] == [DAYS[-1]]
    assert skew_report(settings, sample_size=1000).ok

    # Hot-path reads from Redis equal the newest offline snapshot.
    truth = snapshot(settings, "item_features", DAYS[-1]).set_index("item_id")
    for mode in ("table", "online"):
        reader = OnlineFeatureReader(settings, item_mode=mode, clock=lambda: NEWEST)
        batch = reader.item_features(items[:50])
        assert batch.found.all() and (batch.age_seconds == 0).all()
        expected = truth.loc[items[:50], list(ITEM_FEATURES)].to_numpy(dtype=np.float32)
        np.testing.assert_array_equal(batch.values, expected)
        assert reader.user_features(users[0])["user_events_7d"] >= 0


@pytest.mark.slow
def test_feast_cli_with_the_prod_feature_store_yaml(prod, tmp_path, redis_client):
    """`feast -f feature_store.prod.yaml apply / materialize-incremental` inside features/."""
    from features.skew import skew_report
    from features.store import build_offline_features, materialize_window

    settings, project = prod
    repo = tmp_path / "repo"
    assert settings.data_dir == repo / ".recsys"
    shutil.copytree(FEATURE_REPO_DIR, repo / "features", ignore=shutil.ignore_patterns("__py*"))
    yaml = repo / "features" / "feature_store.prod.yaml"
    yaml.write_text(yaml.read_text().replace("project: recsys", f"project: {project}"))
    build_offline_features(settings)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(FEAST_USAGE="False", RECSYS_FEAST_REDIS="127.0.0.1:6379")
    feast = [str(Path(sys.executable).with_name("feast")), "-f", str(yaml)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*feast, *args], cwd=repo / "features", env=env, capture_output=True, text=True
        )

    proc = run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Applying changes for project {project}" in proc.stdout
    # First materialization in the recsys API (data-clock window), then Feast's incremental.
    materialize_window(settings, end=snapshot_time(DAYS[-2]))
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None).isoformat()
    assert not skew_report(settings, sample_size=100).ok  # the newest day is not online yet
    proc = run("materialize-incremental", now)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = skew_report(settings, sample_size=100)
    assert report.ok, report.as_dict()
