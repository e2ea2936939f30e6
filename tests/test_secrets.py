"""Secrets never reach a log: the service, the CLI and alert delivery run with every secret set,
then every log the run produced is searched for each secret.

The secrets (fresh random values per run): the admin token, an alert webhook URL with a
password and a token in its path, ``MLFLOW_TRACKING_PASSWORD`` and a PostgreSQL URL with a
password. The run: a ``bentoml serve`` process (on a copy of the session's trained world) gets
admin calls with the right token and with wrong ones (a near miss, the token as Basic auth, the
token sent to a public endpoint); ``recsys status`` asks it with the right and a wrong token;
``recsys config show`` prints the settings; alerts are delivered with library logging at INFO
(the most talkative setting) to a local receiver that accepts them and to a dead URL that fails.
Searched afterwards: the service's stdout/stderr, every file under the data dir's ``logs/``
(request log sampled at 1.0, feedback log, promotion history), and every CLI and alert output.
A planted copy of a secret in a scratch log must be found by the same search (negative control).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from recsys.config import Settings
from recsys.server import QUIET_ENV, ServiceProcess, free_port

RECSYS = str(Path(sys.executable).with_name("recsys"))
ALERTS = """
import os, sys
from monitoring.alerts import deliver_alert
from recsys.config import get_settings
from recsys.console import quiet_libraries

quiet_libraries(verbose=True)  # every library at INFO, as `recsys -v` sets them
print("dead:", deliver_alert(get_settings(), layer="serving", check="latency", seen="slow"))
os.environ["RECSYS_ALERT_WEBHOOK_URL"] = sys.argv[1]
print("live:", deliver_alert(get_settings(), layer="serving", check="latency", seen="slow"))
"""


def secret_needles(values: dict[str, str]) -> dict[str, str]:
    """What to search for: each secret as is, and a URL's userinfo as a Basic auth header would
    carry it (base64 of ``user:password``)."""
    needles = dict(values)
    for name, value in values.items():
        if "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].split("@", 1)[0]
            needles[f"{name} (basic auth)"] = base64.b64encode(userinfo.encode()).decode()
    return needles


def find_leaks(places: list[Path], needles: dict[str, str]) -> dict[str, list[str]]:
    """``{secret name: [files that contain it]}`` over every file in ``places`` (files or
    folders, searched recursively, read as bytes)."""
    files = sorted(
        {f for p in places for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}
    )
    leaks: dict[str, list[str]] = {}
    for path in files:
        data = path.read_bytes()
        for name, needle in needles.items():
            if needle.encode() in data:
                leaks.setdefault(name, []).append(str(path))
    return leaks


class Receiver(BaseHTTPRequestHandler):
    """An alert webhook on loopback that accepts every POST and keeps what it was sent."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization", "")
        type(self).received.append({"path": self.path, "auth": auth, "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:  # the receiver's own access log is not under test
        return


def test_the_leak_search_finds_a_planted_secret_in_any_form_it_searches(tmp_path):
    token = secrets.token_urlsafe(16)
    url = f"postgresql://recsys:{token}@db:5432/recsys"
    needles = secret_needles({"token": token, "url": url})
    nested = tmp_path / "logs" / "deep"
    nested.mkdir(parents=True)
    (nested / "clean.log").write_text("nothing to see\n")
    assert find_leaks([tmp_path], needles) == {}
    (nested / "a.log").write_text(f"connecting with {token}\n")
    basic = base64.b64encode(f"recsys:{token}".encode()).decode()
    (tmp_path / "b.log").write_bytes(f"Authorization: Basic {basic}\n".encode())
    leaks = find_leaks([tmp_path], needles)
    assert leaks["token"] == [str(nested / "a.log")]
    assert leaks["url (basic auth)"] == [str(tmp_path / "b.log")]
    assert "url" not in leaks  # the whole URL was written nowhere


@pytest.mark.slow
def test_no_secret_reaches_any_log_of_the_service_the_cli_or_alerts(trained_world, tmp_path):
    source, _, result = trained_world
    data = tmp_path / "data"
    shutil.copytree(source.data_dir, data, ignore=shutil.ignore_patterns("logs", "bentoml"))
    out = tmp_path / "out"
    out.mkdir()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.received = []
    admin_token = "adm-" + secrets.token_urlsafe(24)
    hook_password, hook_path = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    port = receiver.server_address[1]
    live_hook = f"http://alerts:{hook_password}@127.0.0.1:{port}/hooks/{hook_path}"
    dead_hook = f"http://alerts:{hook_password}@127.0.0.1:{free_port()}/hooks/{hook_path}"
    values = {
        "admin token": admin_token,
        "webhook password": hook_password,
        "webhook path token": hook_path,
        "webhook URL": live_hook,
        "MLflow password": secrets.token_urlsafe(16),
        "PostgreSQL password": secrets.token_urlsafe(16),
    }
    env = {
        "RECSYS_DATA_DIR": str(data),
        "RECSYS_ADMIN_TOKEN": admin_token,
        "RECSYS_ALERT_WEBHOOK_URL": dead_hook,
        "RECSYS_REQUEST_LOG_SAMPLE": "1",
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "MLFLOW_TRACKING_USERNAME": "recsys",
        "MLFLOW_TRACKING_PASSWORD": values["MLflow password"],
        "RECSYS_POSTGRES_URL": (
            f"postgresql://recsys:{values['PostgreSQL password']}@127.0.0.1:5432/recsys"
        ),
    }
    wrong_token = admin_token + "x"

    def start(name: str, args: list[str], **extra: str) -> tuple[subprocess.Popen, Path]:
        """Run a command with the secrets in its environment, its output to ``out/name``."""
        path = out / f"{name}.txt"
        with path.open("wb") as log:
            child = subprocess.Popen(
                args, env={**os.environ, **QUIET_ENV, **env, **extra}, stdout=log, stderr=log
            )
        return child, path

    def finish(started: tuple[subprocess.Popen, Path]) -> tuple[int, str]:
        child, path = started
        return child.wait(timeout=120), path.read_text()

    try:
        with ServiceProcess(Settings(data_dir=data), env=env) as proc:
            url = proc.url
            bearer = {"authorization": f"Bearer {admin_token}"}
            user = int(result.release.user_ids[3])
            for path, payload in [
                ("/admin/status", {}),
                ("/admin/reload", {}),
                ("/admin/canary", {"share": 0.2}),
                ("/admin/cache/flush", {}),
            ]:
                assert httpx.post(url + path, json=payload, headers=bearer).status_code == 200
            basic = base64.b64encode(f"admin:{admin_token}".encode()).decode()
            for headers in (
                {"authorization": f"Bearer {wrong_token}"},
                {"authorization": f"Basic {basic}"},
                {"authorization": admin_token},
            ):
                denied = httpx.post(f"{url}/admin/status", json={}, headers=headers)
                assert denied.status_code == 401 and admin_token not in denied.text
            served = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 3}, headers=bearer)
            assert served.status_code == 200
            event = {"request_id": served.json()["request_id"], "user_id": user, "item_id": 1}
            assert httpx.post(f"{url}/feedback", json={**event, "event": "click"}).is_success
            # side by side: each is mostly the import of the CLI's libraries
            runs = {
                "status": start("status", [RECSYS, "status", "--url", url]),
                "wrong": start(
                    "status-wrong-token",
                    [RECSYS, "status", "--url", url],
                    RECSYS_ADMIN_TOKEN=wrong_token,
                ),
                "config": start("config-show", [RECSYS, "config", "show"]),
                "alerts": start("alerts", [sys.executable, "-c", ALERTS, live_hook]),
            }
            done = {name: finish(started) for name, started in runs.items()}
    finally:
        receiver.shutdown()

    # the run did what it claims: each secret was used, and the logs recorded the events
    assert done["status"][0] == 0 and f"service at {url}: serves champion" in done["status"][1]
    assert done["wrong"][0] == 0 and "answered 401" in done["wrong"][1]
    assert done["config"][0] == 0 and "***" in done["config"][1]
    code, alerts = done["alerts"]
    assert code == 0 and "ALERT [recsys] serving/latency" in alerts
    assert "dead: {'log': True, 'webhook': {'host': '127.0.0.1', 'error': 'ConnectError'}" in alerts
    assert "did not accept the alert" in alerts
    assert "live: {'log': True, 'webhook': {'host': '127.0.0.1', 'status': 200}" in alerts
    [alert] = Receiver.received
    assert alert["path"] == f"/hooks/{hook_path}"
    assert alert["auth"] == "Basic " + base64.b64encode(f"alerts:{hook_password}".encode()).decode()
    service_log = proc.log_path.read_text()
    assert "/admin/status" in service_log and "401" in service_log
    logs = data / "logs"
    assert list((logs / "requests").glob("requests*.jsonl")) and any((logs / "feedback").iterdir())

    needles = secret_needles(values | {"wrong admin token": wrong_token})
    places = [proc.log_path, logs, out]
    assert find_leaks(places, needles) == {}
    # negative control: the same search over the same places finds a planted copy
    (out / "planted.log").write_text(f"oops {values['PostgreSQL password']}\n")
    assert find_leaks(places, needles) == {"PostgreSQL password": [str(out / "planted.log")]}
