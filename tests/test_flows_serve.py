"""`recsys flows serve` against a real Prefect server on loopback: the flows are registered as
deployments with their schedules, and a run triggered through the server's API is executed by
the serving process and completes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EXPECTED = {"ingest", "features", "train", "guardian"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def test_flows_serve_registers_scheduled_deployments_and_runs_one(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env |= {"PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=base_env | {"PREFECT_HOME": str(tmp_path / "server-home")},
        stdout=server_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    serve = None
    try:
        _wait(
            lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200,
            120,
            "the Prefect server answers /health",
            server,
            server_log,
        )
        serve = subprocess.Popen(
            [str(BIN / "recsys"), "flows", "serve", "--guardian-minutes", "60"],
            env=base_env
            | {
                "PREFECT_HOME": str(tmp_path / "client-home"),
                "RECSYS_DATA_DIR": str(tmp_path / "data"),
                "RECSYS_PREFECT_API_URL": api,
            },
            stdout=serve_log.open("wb"),
            stderr=subprocess.STDOUT,
        )

        def deployments():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return found if {d["name"] for d in found} >= EXPECTED else None

        found = {d["name"]: d for d in _wait(deployments, 120, "4 deployments", serve, serve_log)}
        schedules = {name: found[name].get("schedules") or [] for name in EXPECTED}
        assert schedules["ingest"] == []  # on demand
        for name in ("features", "train", "guardian"):
            assert len(schedules[name]) == 1 and schedules[name][0]["active"], schedules[name]
        assert schedules["guardian"][0]["schedule"]["interval"] == 3600.0
        assert schedules["train"][0]["schedule"]["cron"] == "0 3 * * *"

        run = httpx.post(
            f"{api}/deployments/{found['guardian']['id']}/create_flow_run", json={}, timeout=10
        ).json()

        def finished():
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=5).json()["state"]
            return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

        state = _wait(finished, 180, "the triggered guardian run finishes", serve, serve_log)
        assert state["type"] == "COMPLETED", (state, serve_log.read_text()[-3000:])
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)


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
