"""The prod profile end to end on this machine's PostgreSQL and Redis.

One stack per module (``recsys.prodstack.ProdStack``): an ``mlflow server`` with its backend
store in a fresh PostgreSQL database, artifacts served by the server and basic auth; a Prefect
server on another fresh database with basic auth; the Redis online store under a Feast project
of its own. Then a short demo cycle on ``RECSYS_PROFILE=prod``, every flow a real Prefect flow
run on that server: ingest, materialize, train and register a champion through the gate, serve
it with ``bentoml serve`` (the champion read from the MLflow server by alias, features from
Redis), a new batch, a retrained challenger in canary that loses online, and the guardian
rolling it back, the registry aliases on the MLflow server saying so.

PostgreSQL comes from ``POSTGRES_TEST_URL`` (default postgresql://postgres@127.0.0.1:5432/test,
a role that may create databases), Redis from ``REDIS_TEST_URL``. Without them the tests skip,
except under CI (``CI`` set), where they fail. The databases, the Redis keys and the servers
are gone at the end, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import uuid
from collections.abc import Iterator
from typing import NoReturn

import httpx
import pytest
from test_features_prod import project_keys

from recsys.errors import RecsysError
from recsys.prodstack import (
    BasicAuth,
    ProdStack,
    check_postgres,
    check_redis,
    mlflow_auth_problem,
    postgres_database,
    with_driver,
)

POSTGRES_URL = os.environ.get("POSTGRES_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
WARM = 6  # days landed before the first model; the next day is the new batch


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing(reason: str, what: str) -> NoReturn:
    """Skip the test, or fail it under CI (``CI`` set), for want of ``what``."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have {what} (see .ci/run)")
    pytest.skip(f"{reason}; the prod-profile tests need {what}")


def require(check, url: str, what: str) -> None:
    """:func:`missing` when ``check(url)`` finds the service unreachable."""
    try:
        check(url)
    except RecsysError as exc:
        missing(str(exc), what)


def _databases(prefix: str) -> list[str]:
    import psycopg2

    conn = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}%",))
            return [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()


# ---- without servers ------------------------------------------------------------------------


def test_unreachable_services_are_one_clear_error_with_the_password_masked():
    port = _closed_port()
    with pytest.raises(RecsysError, match=r"PostgreSQL at .* is unreachable") as pg:
        check_postgres(f"postgresql://recsys:hunter2-secret@127.0.0.1:{port}/db")
    assert "hunter2-secret" not in str(pg.value) and "***" in str(pg.value)
    with pytest.raises(RecsysError, match=r"Redis at .* is unreachable") as rd:
        check_redis(f"redis://:hunter2-secret@127.0.0.1:{port}/0")
    assert "hunter2-secret" not in str(rd.value)


def test_an_unreachable_service_skips_locally_and_fails_under_ci(monkeypatch):
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        require(check_redis, url, "Redis")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have Redis"):
        require(check_redis, url, "Redis")


def test_driver_urls_and_database_names():
    url = "postgresql://u:p@db:5432/x"
    assert with_driver(url, "asyncpg") == "postgresql+asyncpg://u:p@db:5432/x"
    assert with_driver("postgresql+psycopg2://db/x", "asyncpg") == "postgresql+asyncpg://db/x"
    with pytest.raises(RecsysError, match="not a PostgreSQL URL"):
        with_driver("mysql://u:secret@db/x", "asyncpg")
    injection = 'x"; DROP DATABASE test; --'
    with (
        pytest.raises(RecsysError, match="lowercase letters"),
        postgres_database(POSTGRES_URL, injection),
    ):
        pass
    auth = BasicAuth.generate("svc")
    assert auth.auth_string.startswith("svc:") and len(auth.auth_string) > 30
    assert auth.password.get_secret_value() not in repr(auth)


def test_the_service_process_is_told_the_prod_servers_of_its_settings(tmp_path, monkeypatch):
    """Settings given as arguments (not variables) reach the `bentoml serve` child."""
    from recsys.config import Settings
    from recsys.server import service_env

    for name in ("RECSYS_MLFLOW_TRACKING_URI", "RECSYS_REDIS_URL", "RECSYS_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        profile="prod",
        data_dir=tmp_path,
        mlflow_tracking_uri="http://127.0.0.1:5000",
        redis_url="redis://127.0.0.1:6379/0",
    )
    env = service_env(settings)
    assert env["RECSYS_PROFILE"] == "prod"
    assert env["RECSYS_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["RECSYS_REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "RECSYS_PREFECT_API_URL" not in env  # unset stays unset
    assert "RECSYS_MLFLOW_TRACKING_URI" not in service_env(Settings(data_dir=tmp_path))


def test_json_copies_of_the_settings_carry_no_url_password(tmp_path):
    """Prefect stores a flow's parameters (the settings among them) as JSON on its server."""
    import json

    from recsys.config import Settings

    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://:s3cret@127.0.0.1:6379/0",
        postgres_url="postgresql://recsys:s3cret@db:5432/recsys",
        mlflow_tracking_uri="http://127.0.0.1:5000",
    )
    dumped = settings.model_dump(mode="json")
    assert "s3cret" not in json.dumps(dumped)
    assert dumped["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert dumped["mlflow_tracking_uri"] == "http://127.0.0.1:5000"
    # the settings themselves keep the password: the stores still log in
    assert settings.redis_url == "redis://:s3cret@127.0.0.1:6379/0"
    assert settings.model_dump()["postgres_url"] == "postgresql://recsys:s3cret@db:5432/recsys"


@pytest.mark.prod
def test_a_database_is_dropped_even_when_its_user_fails():
    require(check_postgres, POSTGRES_URL, "PostgreSQL")
    name = f"recsys_test_{secrets.token_hex(4)}"
    with pytest.raises(RuntimeError, match="boom"), postgres_database(POSTGRES_URL, name) as url:
        assert _databases(name) == [name]
        check_postgres(url)
        raise RuntimeError("boom")
    assert _databases(name) == []


# ---- the stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """MLflow and Prefect servers on fresh PostgreSQL databases, both behind basic auth."""
    require(check_postgres, POSTGRES_URL, "PostgreSQL")
    require(check_redis, REDIS_URL, "Redis")
    if problem := mlflow_auth_problem():
        missing(problem, "Flask-WTF (pinned in pyproject.toml)")
    with ProdStack(
        tmp_path_factory.mktemp("prodstack"),
        postgres_url=POSTGRES_URL,
        redis_url=REDIS_URL,
        prefix="recsys_test",
    ) as started:
        yield started
    assert _databases(started.name) == [], "the stack left its databases behind"


@contextlib.contextmanager
def prefect_api(stack: ProdStack) -> Iterator[None]:
    """Prefect clients in this process talk to the stack's server, with its auth string; on
    exit the queued logs and events are sent and their connections closed, before the server
    goes away (a connection left open would hold its shutdown)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates = {
        PREFECT_API_URL: stack.prefect.api_url,
        PREFECT_API_AUTH_STRING: stack.prefect_auth.auth_string,
    }
    with temporary_settings(updates=updates):
        try:
            yield
        finally:
            APILogWorker.drain_all(timeout=15)
            EventsWorker.drain_all(timeout=15)


@pytest.mark.prod
@pytest.mark.slow
def test_the_prefect_server_refuses_calls_without_its_auth_string(stack):
    api = stack.prefect.api_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
    assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401
    wrong = httpx.post(f"{api}/flow_runs/filter", json={}, auth=("recsys", "wrong"), timeout=10)
    assert wrong.status_code == 401
    right = httpx.post(
        f"{api}/flow_runs/filter",
        json={},
        auth=tuple(stack.prefect_auth.auth_string.split(":", 1)),
        timeout=10,
    )
    assert right.status_code == 200


@pytest.mark.prod
@pytest.mark.slow
def test_the_mlflow_server_refuses_calls_without_credentials(stack):
    search = f"{stack.mlflow.url}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(f"{stack.mlflow.url}/health", timeout=10).status_code == 200
    assert httpx.get(search, timeout=10).status_code == 401
    admin = stack.mlflow_admin
    assert (
        httpx.get(search, auth=(admin.username, "wrong-password!"), timeout=10).status_code == 401
    )
    right = httpx.get(search, auth=(admin.username, admin.password.get_secret_value()), timeout=10)
    assert right.status_code == 200


@pytest.mark.prod
@pytest.mark.slow
def test_missing_or_wrong_mlflow_credentials_are_one_line_not_no_champion(stack, tmp_path):
    # the registry's 401 was read as "no model yet": `recsys status` said no champion, and
    # `recsys rollback` said there was nothing to roll back, instead of naming the variables
    import subprocess
    import sys
    from pathlib import Path

    recsys = str(Path(sys.executable).with_name("recsys"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env = base | stack.client_env() | {"RECSYS_DATA_DIR": str(tmp_path / "data")}
    for credentials in ({}, {"MLFLOW_TRACKING_PASSWORD": "wrong-password!"}):
        run_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_PASSWORD"}
        if credentials:
            run_env |= credentials
        else:
            run_env.pop("MLFLOW_TRACKING_USERNAME")
        for command in (["status"], ["rollback", "--to", "1"]):
            proc = subprocess.run(
                [recsys, *command], capture_output=True, text=True, env=run_env, timeout=120
            )
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (command, proc.stdout, proc.stderr)
            assert lines[0].startswith("recsys: error: the MLflow registry at"), lines
            assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in lines[0]


@pytest.mark.prod
@pytest.mark.slow
def test_a_run_on_the_server_prints_no_view_run_line(stack, tmp_path, monkeypatch, capfd):
    # MLflow prints "View run NAME at: URL" at the end of each run on an HTTP server: a train
    # with its hyperparameter search printed ~900 such lines
    import mlflow

    from recsys.config import Settings
    from recsys.registry import configure_mlflow

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    configure_mlflow(settings)
    mlflow.set_experiment(f"t-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(run_name="quiet") as run:
        mlflow.log_metric("x", 1.0)
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    assert "View run" not in capfd.readouterr().out


@pytest.fixture
def prod_env(stack, tmp_path, monkeypatch):
    """The prod profile's variables for this test (as infra/docker-compose.yml sets them), a
    Feast project and a model of its own; the project's Redis keys are deleted afterwards."""
    import redis

    project = f"t{uuid.uuid4().hex[:12]}"
    env = stack.client_env() | {
        "RECSYS_DATA_DIR": str(tmp_path / "data"),
        "RECSYS_FEAST_PROJECT": project,
        "RECSYS_MODEL_NAME": f"recsys-{project}",
        "RECSYS_ADMIN_TOKEN": secrets.token_urlsafe(16),
        # a password the flows must never hand to the Prefect server (trust auth ignores it)
        "RECSYS_POSTGRES_URL": POSTGRES_URL.replace("postgres@", "postgres:pw-not-for-prefect@"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    client = redis.Redis.from_url(REDIS_URL)
    leftover = project_keys(client, project)
    if leftover:
        client.delete(*leftover)


@pytest.mark.prod
@pytest.mark.slow
def test_a_demo_cycle_on_the_prod_profile(stack, prod_env):
    from flows.demo import SourceSystem, _deliver, _inject_bad_model, _land_world, demo_settings
    from flows.features import features_flow
    from flows.guardian import guardian_flow
    from flows.ingest import ingest_flow
    from flows.train import train_flow
    from recsys.admin import ServiceAdmin
    from recsys.config import get_settings
    from recsys.guardian import Cycle, GuardianPolicy
    from recsys.promotion import aliases
    from recsys.registry import configure_mlflow
    from recsys.server import ServiceProcess
    from recsys.simulate import simulate_day
    from recsys.synthetic import WorldConfig, generate_world

    settings = demo_settings(get_settings())
    assert settings.profile == "prod" and settings.tracking_uri == stack.mlflow.url
    world = generate_world(
        WorldConfig(n_users=300, n_items=100, n_days=WARM + 1, n_interactions=6000, seed=11)
    )
    source, names = SourceSystem(world), world.batch_names
    new_batch = names[WARM - 1]
    _land_world(settings, world, names[: WARM - 1])

    with prefect_api(stack):
        ingest_flow(settings, batches=names[: WARM - 1])
        features_flow(settings)
        first = train_flow(settings, window_days=None, budget_s=0.0)
        assert first["gate"]["alias"] == "champion", first["gate"]
        champion = first["version"]

        token = prod_env["RECSYS_ADMIN_TOKEN"]
        env = {"RECSYS_REQUEST_LOG_SAMPLE": "1.0", "RECSYS_RELOAD_INTERVAL_S": "0"}
        with ServiceProcess(settings, env=env).start() as service:
            # nothing of the registry is local: versions and artifacts are on the server
            assert not (settings.data_dir / "mlflow.db").exists()
            assert not (settings.data_dir / "mlartifacts").exists()
            assert any((stack.state_dir / "mlflow" / "mlartifacts").rglob("release.json"))
            user = int(settings.lake.read_clean_interactions()["user_id"].iloc[0])
            answer = _recommend(service.url, user)
            assert answer["model_version"] == champion and answer["features"] == "online"

            _deliver(settings, new_batch, source(new_batch), corrupt=False, seed=1)
            ingest_flow(settings, batches=[new_batch])
            features_flow(settings)
            bad = _inject_bad_model(settings, None, as_champion=False)
            assert aliases(settings) == {"champion": champion, "challenger": bad, "previous": None}
            admin = ServiceAdmin(service.url, token)
            admin.reload()
            admin.set_canary(0.5)
            assert admin.served_versions() == {"champion": champion, "challenger": bad}

            traffic = simulate_day(service.url, world.click_model(), WARM, 400, seed=2)
            assert traffic.errors == 0
            cycle = Cycle(
                settings=settings,
                admin=admin,
                current=(traffic.started, traffic.finished),
                baseline=None,
                batches=[new_batch],
                source=source,
                policy=GuardianPolicy(retrain_budget_s=0.0, min_requests=150, canary_share=0.5),
                day=1,
            )
            _findings, incidents = guardian_flow(cycle)
            healed = [(i.check, i.action, i.verified) for i in incidents]
            assert ("canary", "rollback_challenger", True) in healed, healed

            # The decision is on the MLflow server, and the service follows it.
            assert aliases(settings) == {"champion": champion, "challenger": None, "previous": None}
            tags = configure_mlflow(settings).get_model_version(settings.model_name, bad).tags
            assert tags["rejected"] == "true" and tags["rejection_stage"] == "canary"
            assert admin.served_versions() == {"champion": champion}
            answer = _recommend(service.url, user)
            assert answer["model_version"] == champion and answer["features"] == "online"

    with prefect_api(stack):
        runs, error_logs = _prefect_records(stack)
    _assert_stored_in_postgres(stack, settings.model_name, champion)

    by_flow: dict[str, list[str]] = {}
    for flow_name, state, _parameters in runs:
        by_flow.setdefault(flow_name, []).append(state)
    assert by_flow.keys() >= {"ingest", "features", "train", "guardian", "monitor", "heal"}
    assert len(by_flow["ingest"]) == 2 and len(by_flow["train"]) == 1, by_flow
    assert {s for states in by_flow.values() for s in states} == {"COMPLETED"}, by_flow
    assert error_logs == []
    # The settings are flow parameters: URL passwords reach the Prefect server masked.
    stored = repr([parameters for *_, parameters in runs])
    assert "pw-not-for-prefect" not in stored and stack.mlflow.url in stored
    assert prod_env["RECSYS_ADMIN_TOKEN"] not in stored


def _recommend(url: str, user: int) -> dict:
    reply = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["items"]) == 5
    return body


def _prefect_records(stack: ProdStack) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """(flow name, state type, parameters) of every flow run on the Prefect server, and the
    messages of the error logs the runs sent it; read with Prefect's own client (so with the
    auth string)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel

    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == stack.prefect.api_url
        runs = client.read_flow_runs(limit=200)
        flows = {run.flow_id: client.read_flow(run.flow_id).name for run in runs}
        errors = client.read_logs(LogFilter(level=LogFilterLevel(ge_=40)), limit=20)
    records = [(flows[r.flow_id], r.state.type.value, r.parameters) for r in runs]
    return records, [log.message[:300] for log in errors]


def _assert_stored_in_postgres(stack: ProdStack, model_name: str, champion: str) -> None:
    """The registry and the flow runs live in the stack's PostgreSQL databases."""
    import psycopg2

    def query(database: str, sql: str, *args) -> list[tuple]:
        conn = psycopg2.connect(stack.databases[database], connect_timeout=5)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            conn.close()

    assert query(
        "mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s", model_name
    ) == [("champion", int(champion))]
    assert query("prefect", "SELECT count(*) FROM flow_run")[0][0] >= 6
