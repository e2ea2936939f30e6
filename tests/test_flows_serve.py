"""`recsys flows serve` against a real Prefect server on loopback (on PostgreSQL, behind basic
auth, as in the prod profile): the flows are registered as deployments with their schedules, and
a run triggered through the server's API is executed by the serving process and completes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from recsys.prodstack import check_postgres

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EXPECTED = {"ingest", "features", "train", "guardian"}


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"{what}: the process exited ({proc.returncode}):\n{tail}")
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.prod
def test_flows_serve_registers_scheduled_deployments_and_runs_one(tmp_path):
    """The prod arrangement: a Prefect server on PostgreSQL behind basic auth, and `recsys flows
    serve` as the process that runs the flows."""
    from recsys.prodstack import BasicAuth, PrefectServer, postgres_database, with_driver
    from tests.test_prod_profile import POSTGRES_URL, require

    require(check_postgres, POSTGRES_URL, "PostgreSQL")
    auth = BasicAuth.generate()
    name = f"recsys_flows_serve_{uuid.uuid4().hex[:8]}"
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    serve_log = tmp_path / "serve.log"
    with (
        postgres_database(POSTGRES_URL, name) as database,
        PrefectServer(
            tmp_path / "server", database_url=with_driver(database, "asyncpg"), auth=auth
        ) as server,
    ):
        api = server.api_url
        client = httpx.Client(auth=(auth.username, auth.password.get_secret_value()), timeout=10)
        assert httpx.post(f"{api}/deployments/filter", json={}, timeout=10).status_code == 401
        # a wrong auth string is one line before anything runs (it was a 401 traceback)
        for wrong in ({"PREFECT_API_AUTH_STRING": "recsys:wrong"}, {}):
            refused = subprocess.run(
                [str(BIN / "recsys"), "flows", "serve"],
                env=base_env
                | {"RECSYS_DATA_DIR": str(tmp_path / "data"), "RECSYS_PREFECT_API_URL": api}
                | wrong,
                capture_output=True,
                text=True,
                timeout=120,
            )
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 2 and len(lines) == 1, refused.stderr
            assert f"the Prefect API at {api} refused the request (401" in lines[0]
        serve = subprocess.Popen(
            [str(BIN / "recsys"), "flows", "serve", "--guardian-minutes", "60"],
            env=base_env
            | {
                "PREFECT_HOME": str(tmp_path / "client-home"),
                "RECSYS_DATA_DIR": str(tmp_path / "data"),
                "RECSYS_PREFECT_API_URL": api,
                "PREFECT_API_AUTH_STRING": auth.auth_string,
            },
            stdout=serve_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:

            def deployments():
                found = client.post(f"{api}/deployments/filter", json={}).json()
                return found if {d["name"] for d in found} >= EXPECTED else None

            found = {
                d["name"]: d for d in _wait(deployments, 120, "4 deployments", serve, serve_log)
            }
            schedules = {name: found[name].get("schedules") or [] for name in EXPECTED}
            assert schedules["ingest"] == []  # on demand
            for flow in ("features", "train", "guardian"):
                assert len(schedules[flow]) == 1 and schedules[flow][0]["active"], schedules[flow]
            assert schedules["guardian"][0]["schedule"]["interval"] == 3600.0
            assert schedules["train"][0]["schedule"]["cron"] == "0 3 * * *"

            run = client.post(
                f"{api}/deployments/{found['guardian']['id']}/create_flow_run", json={}
            ).json()

            def finished():
                state = client.get(f"{api}/flow_runs/{run['id']}").json()["state"]
                return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

            state = _wait(finished, 180, "the triggered guardian run finishes", serve, serve_log)
            assert state["type"] == "COMPLETED", (state, serve_log.read_text()[-3000:])
            assert auth.password.get_secret_value() not in serve_log.read_text()
            # every check ran: Prefect loaded `flows/guardian.py` as a script with `flows/` first
            # on sys.path, so `import features.store` found `flows/features.py`, and 7 checks
            # "failed themselves" (ModuleNotFoundError) inside a run that still said COMPLETED
            from monitoring.incidents import IncidentLog

            incidents = IncidentLog(tmp_path / "data" / "logs" / "incidents.jsonl").read()
            crashed = [(i.check, i.seen) for i in incidents if "check itself failed" in i.seen]
            assert crashed == [], crashed
        finally:
            _stop(serve)
            client.close()
        # the deployments and the run live in PostgreSQL, not in a SQLite file of the server
        assert not list((tmp_path / "server").rglob("*.db"))


def test_flows_serve_without_a_server_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL"}}
    env |= {"RECSYS_DATA_DIR": str(tmp_path / "data")}
    env.pop("RECSYS_PREFECT_API_URL", None)
    proc = subprocess.run(
        [str(BIN / "recsys"), "flows", "serve"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("recsys: error: `recsys flows serve` needs a Prefect server")
    )


def test_a_prefect_api_that_does_not_answer_is_one_line(tmp_path):
    # "internal error: RuntimeError: Failed to reach API" before
    from recsys.server import free_port

    api = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"RECSYS_DATA_DIR": str(tmp_path / "data"), "RECSYS_PREFECT_API_URL": api}
    batch = tmp_path / "2024-01-01.tsv"
    batch.write_text("1\t2\t3\t881250949\n")
    for args in (["flows", "serve"], ["ingest", str(batch)], ["doctor"]):
        proc = subprocess.run(
            [str(BIN / "recsys"), *args], capture_output=True, text=True, env=env, timeout=60
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith(f"recsys: error: the Prefect API at {api} does not answer")
