"""Shared fixtures: an isolated data directory per test, a small trained world per session."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

# No telemetry, one BLAS thread: set before any library is imported by a test module.
for _key, _value in {
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "OPENBLAS_NUM_THREADS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ[_key] = _value
for _key in [k for k in os.environ if k.startswith("RECSYS_") or k == "PREFECT_API_URL"]:
    del os.environ[_key]
# Prefect runs on its ephemeral API with a database of its own per test session.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="recsys-prefect-")
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# On a busy 2-core machine the ephemeral server can need more than Prefect's default to start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO_ROOT = Path(__file__).resolve().parent.parent
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh RECSYS_DATA_DIR for one test."""
    folder = tmp_path / "recsys-data"
    monkeypatch.setenv("RECSYS_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def settings(data_dir: Path):
    from recsys.config import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens-100K files shipped beside the repository (../shared/data/ml-100k)."""
    if not (ML100K / "u.data").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"MovieLens-100K is missing at {ML100K}; CI must have shared/ beside it")
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="session")
def make_trained_world(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a synthetic world in a fresh data dir, ingested, trained and registered as
    champion. ``make_trained_world(name, seed, budget_s, **world)`` returns (settings,
    registered release, train result)."""

    def build(name: str, seed: int, budget_s: float, **world):
        from recsys.config import Settings
        from recsys.gate import register_with_gate
        from recsys.ingest import ingest_all
        from recsys.synthetic import WorldConfig, write_world
        from recsys.train import pipeline_params, train_and_evaluate

        settings = Settings(data_dir=tmp_path_factory.mktemp(name), seed=seed)
        write_world(WorldConfig(seed=seed, **world), settings.lake.init())
        ingest_all(settings.lake)
        result = train_and_evaluate(
            settings.lake, pipeline_params(settings), k=10, budget_s=budget_s
        )
        registered, decision = register_with_gate(settings, result)
        assert decision.alias == "champion"
        return settings, registered, result

    return build


@pytest.fixture(scope="session")
def trained_world(make_trained_world):
    """A small synthetic world, ingested, trained and registered as champion (built once).

    Returns (settings, registered release, train result). Tests must not modify it.
    """
    return make_trained_world(
        "trained-world", 7, 1.0, n_users=800, n_items=200, n_days=12, n_interactions=30_000
    )


ONLINE_TOKEN = "online-features-token"
ONLINE_STALE_DAYS = 3
ONLINE_READ_AHEAD = 100
"""Users whose online rows the ``online`` service reads ahead (of 800: the others are read on
their first request)."""


@pytest.fixture(scope="session")
def online(trained_world, tmp_path_factory):
    """A copy of the trained world with its online store materialized ``ONLINE_STALE_DAYS`` days
    short of the lake (a skipped materialization), and a service on it (admin token
    ``ONLINE_TOKEN``). Shared by the serving tests and the metrics scrape of the alert rules:
    tests must not depend on its counters' absolute values (compare before and after)."""
    import shutil

    from features.offline import build_offline_features, offline_days, snapshot_time
    from features.spec import FeaturePaths
    from features.store import materialize
    from recsys.config import Settings
    from recsys.server import ServiceProcess

    settings, _, result = trained_world
    folder = tmp_path_factory.mktemp("online-features") / "data"
    shutil.copytree(
        settings.data_dir, folder, ignore=shutil.ignore_patterns("logs", "bentoml", "features")
    )
    copy = Settings(data_dir=folder, seed=settings.seed)
    build_offline_features(copy)
    days = offline_days(FeaturePaths(folder))
    stale_end = snapshot_time(days[-1 - ONLINE_STALE_DAYS])
    materialize(copy, end=stale_end, build=False)
    env = {
        "RECSYS_ADMIN_TOKEN": ONLINE_TOKEN,
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_USER_ROWS_AHEAD": str(ONLINE_READ_AHEAD),
    }
    with ServiceProcess(copy, env=env) as proc:
        yield proc, copy, result.release, stale_end, snapshot_time(days[-1])


@contextlib.contextmanager
def drilled_service(settings):
    """A real service on ``settings`` (which carry an admin token) with every request logged,
    no registry poll and the fault drills enabled; yields its :class:`recsys.admin.ServiceAdmin`."""
    from recsys.admin import ServiceAdmin
    from recsys.server import ServiceProcess

    token = settings.admin_token.get_secret_value()
    env = {
        "RECSYS_ADMIN_TOKEN": token,
        "RECSYS_REQUEST_LOG_SAMPLE": "1.0",
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_FAULT_INJECTION": "true",
    }
    with ServiceProcess(settings, env=env).start() as service:
        yield ServiceAdmin(service.url, token)
