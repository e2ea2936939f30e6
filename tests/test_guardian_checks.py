"""The guardian's alerting checks on crafted logs (written by the service's own log writers) and
alert delivery to a real webhook on loopback: ``latency`` and ``ctr_decay`` fire on a bad
series and stay quiet on a normal one; the webhook gets the alert and its secret never reaches
the logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from monitoring.alerts import deliver_alert
from recsys.config import Settings
from recsys.guardian import (
    Cycle,
    Finding,
    GuardianPolicy,
    apply_fix,
    check_ctr_decay,
    check_latency,
)


def _request_log(settings):
    from serving.logs import FeedbackLog, RequestLog

    logs = settings.data_dir / "logs"
    return RequestLog(logs / "requests", sample=1.0, max_bytes=10**9), FeedbackLog(
        logs / "feedback"
    )


def _traffic(settings, n, ctr, *, latency=10.0, fallback_every=0, version="1", prefix="r"):
    """``n`` champion requests of which a share ``ctr`` earned a click; returns the window."""
    requests, feedback = _request_log(settings)
    started = time.time()
    for i in range(n):
        rid = f"{prefix}{i}"
        fallback = "degraded" if fallback_every and i % fallback_every == 0 else None
        requests.maybe_write(
            {
                "request_id": rid,
                "user_id": i,
                "k": 2,
                "items": [1, 2],
                "variant": "champion",
                "model_version": version,
                "fallback": fallback,
                "cached": False,
                "latency_ms": latency if i % 10 else latency * 1.5,
            }
        )
        if i < round(n * ctr):
            feedback.append({"request_id": rid, "user_id": i, "item_id": 1, "event": "click"})
    time.sleep(0.01)
    return started, time.time()


def _cycle(settings, current, baseline=None) -> Cycle:
    return Cycle(
        settings=settings,
        admin=None,
        current=current,
        baseline=baseline,
        policy=GuardianPolicy(min_requests=200, canary_share=0.5),
    )


@pytest.fixture
def champion(settings):
    """A registered model with the champion alias on version 1 (no training needed)."""
    from recsys.registry import configure_mlflow

    client = configure_mlflow(settings)
    client.create_registered_model(settings.model_name)
    client.create_model_version(settings.model_name, source=str(settings.data_dir))
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    return settings


def test_latency_is_quiet_on_normal_traffic_and_fires_on_slow_or_degraded(settings):
    window = _traffic(settings, 300, 0.5, latency=12.0)
    ok = check_latency(_cycle(settings, window))
    assert ok.ok and ok.evidence["p99_ms"] < 20

    slow = _traffic(settings, 300, 0.5, latency=400.0, prefix="s")
    finding = check_latency(_cycle(settings, slow))
    assert not finding.ok and finding.fix == "alert"
    assert "p99 latency" in finding.seen and finding.evidence["p99_ms"] > 250

    degraded = _traffic(settings, 300, 0.5, fallback_every=20, prefix="d")
    finding = check_latency(_cycle(settings, degraded))
    assert not finding.ok and "degraded" in finding.seen
    assert finding.evidence["degraded_answers"] == 15

    few = _traffic(settings, 20, 0.5, latency=900.0, prefix="f")
    assert check_latency(_cycle(settings, few)).ok  # too little traffic never fires


def test_ctr_decay_fires_on_a_significant_drop_and_stays_quiet_otherwise(champion):
    settings = champion
    baseline = _traffic(settings, 400, 0.50, prefix="b")
    steady = _traffic(settings, 400, 0.48, prefix="s")
    quiet = check_ctr_decay(_cycle(settings, steady, baseline))
    assert quiet.ok and quiet.evidence["ctr_now"] == pytest.approx(0.48)

    decayed = _traffic(settings, 400, 0.30, prefix="c")
    finding = check_ctr_decay(_cycle(settings, decayed, baseline))
    assert not finding.ok and finding.fix == "alert"
    assert finding.evidence["ctr_baseline"] == pytest.approx(0.5)
    assert finding.evidence["ctr_now"] == pytest.approx(0.3)
    assert "40% below" in finding.seen

    assert check_ctr_decay(_cycle(settings, decayed)).ok  # no baseline: nothing to compare


def test_ctr_decay_leaves_a_new_champion_to_champion_ctr(champion):
    from recsys.promotion import AliasMove, aliases, record_move

    settings = champion
    baseline = _traffic(settings, 400, 0.50, prefix="b")
    record_move(
        settings,
        AliasMove("manual_promote", {"champion": "0"}, aliases(settings), "hot fix", {}),
    )
    decayed = _traffic(settings, 400, 0.30, prefix="c")
    finding = check_ctr_decay(_cycle(settings, decayed, baseline))
    assert finding.ok and "champion_ctr" in finding.seen


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_go_to_the_log_and_the_webhook_without_leaking_its_secret(data_dir, caplog):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "s3cr3t-t0ken"
    url = f"http://127.0.0.1:{server.server_port}/hooks/{secret}"
    try:
        settings = Settings(data_dir=data_dir, alert_webhook_url=url)
        with caplog.at_level(logging.WARNING, logger="recsys.alerts"):
            result = deliver_alert(
                settings, layer="model", check="ctr_decay", seen="CTR fell", evidence={"a": 1}
            )
            slow = Finding("serving", "latency", False, "p99 too high", {}, "alert")
            outcome = apply_fix(_cycle(settings, (0, 1)), slow)
    finally:
        server.shutdown()
    assert result["ok"] and result["webhook"] == {"host": "127.0.0.1", "status": 204}
    assert outcome.action == "alert" and outcome.verified
    paths = [p for p, _ in _Receiver.received]
    assert paths == [f"/hooks/{secret}"] * 2
    payload = _Receiver.received[0][1]
    assert payload["text"] == "[recsys] model/ctr_decay: CTR fell"
    assert payload["evidence"] == {"a": 1}
    assert any("ALERT [recsys] model/ctr_decay: CTR fell" in r.message for r in caplog.records)
    assert secret not in caplog.text


def test_an_unreachable_webhook_is_an_unverified_alert(data_dir, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(data_dir=data_dir, alert_webhook_url=f"http://127.0.0.1:{port}/x")
    with caplog.at_level(logging.WARNING, logger="recsys.alerts"):
        result = deliver_alert(settings, layer="serving", check="latency", seen="slow")
    assert not result["ok"] and result["webhook"]["error"] == "ConnectError"
    assert "ALERT [recsys] serving/latency: slow" in caplog.text


def test_the_admin_token_never_reaches_the_prefect_api_in_a_flow_runs_parameters(data_dir):
    # a guardian cycle is a flow parameter, which Prefect stores on its server: the token was in
    # clear there (`recsys doctor` and the scheduled guardian pass cycles without a batch source,
    # which Prefect encodes field by field)
    from prefect.client.orchestration import get_client

    from flows.guardian import monitor_flow
    from recsys.admin import ServiceAdmin

    token = "adm-" + "k" * 24
    settings = Settings(data_dir=data_dir)
    admin = ServiceAdmin("http://127.0.0.1:9", token, timeout=1.0)
    cycle = Cycle(settings, admin, (0.0, 1.0), None, day=7)
    findings = monitor_flow(cycle, ["delivery"])
    assert [f.check for f in findings] == ["delivery"] and admin.token == token
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=50) if r.parameters.get("cycle")]
    stored = [r.parameters["cycle"] for r in runs if isinstance(r.parameters["cycle"], dict)]
    mine = [c for c in stored if c.get("day") == 7 and c["settings"]["data_dir"] == str(data_dir)]
    assert len(mine) == 1, stored  # the cycle was stored, field by field
    assert mine[0]["admin"]["url"] == "http://127.0.0.1:9"
    assert token not in repr(runs)
