"""The BentoML service through real HTTP against a `bentoml serve` process on loopback.

Two services: one on the shared trained world (its online store was never materialized, so it
ranks with the release's features), one on a copy of it whose Feast online store is
materialized (stale first, then brought up to date, then made unreadable).
"""

from __future__ import annotations

import gzip
import socket
import time
import uuid

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ONLINE_READ_AHEAD, ONLINE_TOKEN

from recsys.config import Settings
from recsys.server import ServiceProcess

pytestmark = pytest.mark.slow
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def service(trained_world):
    settings, registered, result = trained_world
    with ServiceProcess(settings, env={"RECSYS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}) as proc:
        yield proc, registered, result


def test_health_endpoints_answer(service):
    proc, _, _ = service
    assert httpx.get(f"{proc.url}/livez").status_code == 200
    assert httpx.get(f"{proc.url}/readyz").status_code == 200
    assert proc.host == "127.0.0.1"
    # the root page is BentoML's Swagger UI, without the Google Tag Manager it embeds
    page = httpx.get(f"{proc.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in page.text and "googletagmanager" not in page.text.lower()


def test_recommend_returns_ranked_unseen_items_from_the_champion(service):
    proc, registered, result = service
    release = result.release
    user = int(release.user_ids[3])
    reply = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": 7})
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_version"] == registered.version
    assert body["variant"] == "champion" and body["fallback"] is None
    assert body["features"] == "release"  # never materialized: the release's own tables
    items = [it["item_id"] for it in body["items"]]
    assert items == release.recommend(user, 7).item_ids.tolist()
    seen = set(release.item_ids[release.seen_rows(release.user_row(user))].tolist())
    assert not seen & set(items)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert len(body["request_id"]) == 32


def test_unknown_user_gets_a_cold_start_answer(service):
    proc, _, _ = service
    body = httpx.post(f"{proc.url}/recommend", json={"user_id": 10**12, "k": 4}).json()
    assert body["fallback"] == "cold_start" and len(body["items"]) == 4


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"user_id": 1, "k": 0}, "k"),
        ({"user_id": 1, "k": 100000}, "k"),
        ({"user_id": -5}, "user_id"),
        ({"user_id": "abc"}, "user_id"),
        ({"k": 3}, "user_id"),
        # a misspelt field was ignored: 10 items answered for "K": 3
        ({"user_id": 1, "K": 3}, "K: Extra inputs are not permitted"),
    ],
)
def test_invalid_input_is_a_4xx_that_says_what_is_wrong(service, payload, needle):
    proc, _, _ = service
    reply = httpx.post(f"{proc.url}/recommend", json=payload)
    assert 400 <= reply.status_code < 500
    assert needle in reply.text
    assert "pydantic.dev" not in reply.text  # its links name the library's version


def test_every_endpoint_refuses_a_field_it_does_not_have(service):
    proc, _, _ = service
    spec = httpx.get(f"{proc.url}/docs.json").json()
    posts = [path for path, item in spec["paths"].items() if "post" in item]
    assert {"/recommend", "/feedback", "/admin/canary", "/admin/status"} <= set(posts)
    for path in posts:
        reply = httpx.post(f"{proc.url}{path}", json={"unknown_field": 1})
        assert reply.status_code == 400, (path, reply.text)
        assert "unknown_field: Extra inputs are not permitted" in reply.json()["error"]
    schemas = spec["components"]["schemas"]
    assert schemas["recommend__Input"]["additionalProperties"] is False


def test_malformed_json_is_a_400(service):
    proc, _, _ = service
    reply = httpx.post(
        f"{proc.url}/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400


def test_without_a_model_the_service_is_live_but_not_ready(tmp_path):
    proc = ServiceProcess(Settings(data_dir=tmp_path / "empty"))
    try:
        proc.start(probe="/livez")
        assert httpx.get(f"{proc.url}/readyz").status_code == 503
        reply = httpx.post(f"{proc.url}/recommend", json={"user_id": 1})
        assert reply.status_code == 503
        assert "recsys train" in reply.text
    finally:
        proc.stop()
    assert proc.process.returncode is not None


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "needle"),
    [
        # a form or multipart body would be parsed into the same fields, past their strict types
        ("POST", "/recommend", {"content-type": "application/x-www-form-urlencoded"},
         b"user_id=12&k=3", 415, "Content-Type: application/json"),
        ("POST", "/feedback", {"content-type": "multipart/form-data; boundary=x"},
         b"--x--", 415, "multipart/form-data"),
        ("POST", "/recommend", {"content-type": "text/plain"}, b'{"user_id": 1}', 415,
         "text/plain"),
        # the router's own answers, plain text in BentoML, get the same JSON body
        ("GET", "/recommend", {}, b"", 405, "Method Not Allowed"),
        ("POST", "/no-such-route", {"content-type": "application/json"}, b"{}", 404, "Not Found"),
        # the router redirected to a Location built from the client's Host header
        ("POST", "/recommend/", {"host": "evil.example"}, b"{}", 404, "no endpoint at /recommend/"),
        # a compressed body was parsed as JSON and refused as "Invalid JSON"
        ("POST", "/recommend", {"content-type": "application/json", "content-encoding": "gzip"},
         gzip.compress(b'{"user_id": 1}'), 415, "Content-Encoding gzip is not supported"),
        # the parser kept the last one: answered for user 6
        ("POST", "/recommend", {"content-type": "application/json"},
         b'{"user_id": 5, "k": 3, "user_id": 6}', 400, "user_id: given twice"),
        # NaN is not JSON: Python's parser takes it, the request log's readers would not
        ("POST", "/recommend", {"content-type": "application/json"},
         b'{"user_id": 1, "context": {"score": NaN}}', 400, "finite number"),
    ],
)  # fmt: skip
def test_every_error_answer_is_json_that_says_what_is_wrong(
    service, method, path, headers, body, status, needle
):
    proc, _, _ = service
    reply = httpx.request(method, f"{proc.url}{path}", headers=headers, content=body)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert needle in reply.json()["error"], reply.text


def test_a_refused_request_is_one_info_line_in_the_log_not_an_error_with_a_traceback(service):
    proc, _, _ = service
    marker = "k-of-a-log-test"
    reply = httpx.post(f"{proc.url}/recommend", json={"user_id": 1, "k": marker})
    assert reply.status_code == 400
    # a field name or a path with a newline (or a NUL) wrote a forged line into the log
    forged = "2026-01-01T00:00:00+0000 [ERROR] [forged] FORGED"
    named = httpx.post(f"{proc.url}/recommend", json={"user_id": 1, f"x\n{forged}": 1})
    assert named.status_code == 400
    assert httpx.get(f"{proc.url}/livez%0a{forged}%00").status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = proc.log_path.read_text(errors="replace").splitlines()
        refused = [line for line in lines if "refused /recommend [POST]" in line]
        if len(refused) >= 2:
            break
        time.sleep(0.2)
    assert len(refused) >= 2, proc.log_tail(20)
    assert all("[INFO]" in line for line in refused)
    assert [line for line in refused if "k: Input should be a valid integer" in line]
    assert marker not in "\n".join(lines)  # the client's values stay out of the log
    assert not [line for line in lines if "Exception on /recommend" in line]
    assert "Traceback" not in "\n".join(lines)
    assert not [line for line in lines if line.startswith(forged)]
    assert "\x00" not in proc.log_path.read_text(errors="replace")
    assert [line for line in refused if f"x\\n{forged}: Extra inputs" in line]


def test_a_client_that_leaves_or_stalls_mid_body_is_no_server_error(service):
    """A client that disconnected mid-body was a logged ClientDisconnect traceback and a 500 in
    the metrics the 5xx alert reads; one that stalled was BentoML's 504 after 10 s. A made-up
    path added series to /metrics each."""
    proc, _, _ = service
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"user_id": 1,'
    )
    for _ in range(3):  # leaves
        with socket.create_connection((proc.host, proc.port), timeout=10) as sock:
            sock.sendall(head)
    with socket.create_connection((proc.host, proc.port), timeout=30) as sock:  # stalls
        sock.sendall(head)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        waited = time.monotonic() - started
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer
    assert b"RECSYS_BODY_TIMEOUT_S" in rest and b"connection: close" in rest.lower()
    assert BODY_TIMEOUT_S - 0.5 < waited < 9.5  # not BentoML's 10 s request timeout
    made_up = [f"/made-up-{uuid.uuid4().hex}" for _ in range(3)]
    for path in made_up:
        missing = httpx.get(f"{proc.url}{path}")
        assert missing.status_code == 404 and "no endpoint at" in missing.json()["error"]
    assert httpx.post(f"{proc.url}/recommend", json={"user_id": 1}).status_code == 200
    metrics = httpx.get(f"{proc.url}/metrics").text
    assert not [path for path in made_up if path in metrics]
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("bentoml_service_request_total{") and 'endpoint="/recommend"' in line
    ]
    errors = [line for line in served if 'http_response_code="5' in line]
    assert served and sum(float(line.rsplit(" ", 1)[1]) for line in errors) == 0, served
    log = proc.log_path.read_text(errors="replace")
    assert "ClientDisconnect" not in log and "Exception on /recommend" not in log


def test_an_answer_with_nothing_left_to_rank_says_no_features(service):
    proc, _, result = service
    user = int(result.release.user_ids[3])
    every_item = [int(i) for i in result.release.item_ids]
    body = httpx.post(
        f"{proc.url}/recommend", json={"user_id": user, "k": 5, "exclude": every_item}
    ).json()
    assert body["items"] == [] and body["fallback"] is None
    assert body["features"] is None  # no ranker ran on any row: not "release"


def test_exclude_removes_items_and_answers_have_no_duplicates(service):
    proc, _, result = service
    user = int(result.release.user_ids[5])
    first = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": 6}).json()
    banned = [it["item_id"] for it in first["items"][:3]]
    body = httpx.post(
        f"{proc.url}/recommend", json={"user_id": user, "k": 6, "exclude": banned}
    ).json()
    items = [it["item_id"] for it in body["items"]]
    assert len(items) == 6 and len(set(items)) == 6
    assert not set(banned) & set(items)


def test_cold_start_respects_exclude(service):
    proc, _, _ = service
    first = httpx.post(f"{proc.url}/recommend", json={"user_id": 10**12, "k": 3}).json()
    top = first["items"][0]["item_id"]
    body = httpx.post(
        f"{proc.url}/recommend", json={"user_id": 10**12, "k": 3, "exclude": [top]}
    ).json()
    assert body["fallback"] == "cold_start"
    assert top not in [it["item_id"] for it in body["items"]]


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"user_id": 1, "exclude": list(range(5000))}, 400, "exclude"),
        ({"user_id": 1, "exclude": [-1]}, 400, "exclude"),
        ({"user_id": 1, "context": {"note": "x" * 100_000}}, 413, "exceeds"),
    ],
)
def test_oversized_requests_are_refused_with_a_reason(service, payload, status, needle):
    proc, _, _ = service
    reply = httpx.post(f"{proc.url}/recommend", json=payload)
    assert reply.status_code == status
    assert needle in reply.text


def test_admin_is_disabled_without_a_token(service):
    proc, _, _ = service
    for route in ("/admin/status", "/admin/reload", "/admin/cache/flush"):
        reply = httpx.post(f"{proc.url}{route}", json={}, headers={"authorization": "Bearer x"})
        assert reply.status_code == 404 and "admin disabled" in reply.text


def test_metrics_carry_bentoml_and_recsys_series(service):
    proc, _, _ = service
    httpx.post(f"{proc.url}/recommend", json={"user_id": 10**12, "k": 2})
    text = httpx.get(f"{proc.url}/metrics").text
    assert 'bentoml_service_request_total{endpoint="/recommend"' in text
    assert 'recsys_serving_requests_total{fallback="cold_start"' in text
    assert 'recsys_serving_stage_latency_seconds_count{stage="total"}' in text
    assert "recsys_serving_model_age_seconds" in text
    assert 'recsys_serving_feature_source{source="not_materialized"} 1' in text
    assert "recsys_serving_feature_age_seconds" not in text  # no materialization, no age


def test_benchmark_service_reports_latency_without_errors(service):
    from recsys.server import benchmark_service

    proc, _, result = service
    users = [int(u) for u in result.release.user_ids[:30]]
    report = benchmark_service(proc.url, users, requests=60, concurrency=2, k=5)
    assert report.errors == 0 and report.requests == 60
    assert 0 < report.p50_ms <= report.p95_ms <= report.p99_ms
    assert report.cached == 30  # each user asked twice: the second answer is the cached one
    assert report.requests_per_s > 0


# ---- online features ----------------------------------------------------------------------

# the ``online`` fixture (conftest.py): a service on a copy of the trained world whose online
# store was materialized ONLINE_STALE_DAYS days short of the lake
AUTH = {"authorization": f"Bearer {ONLINE_TOKEN}"}
GAUGE_KEPT = "recsys_serving_feature_user_rows_kept"


def _ask(proc, user: int, k: int = 10) -> dict:
    reply = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": k}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _items(body: dict) -> list[int]:
    return [it["item_id"] for it in body["items"]]


def _status(proc) -> dict:
    return httpx.post(f"{proc.url}/admin/status", json={}, headers=AUTH, timeout=30).json()


def test_online_features_rank_and_a_stale_store_shows_its_age_and_changes_answers(online):
    from features.store import materialize
    from serving.features import ServingFeatures
    from serving.ranking import rank_for_user

    proc, settings, release, stale_end, newest_end = online
    users = [int(u) for u in release.user_ids[:40]]
    stale = {u: _ask(proc, u) for u in users}
    assert {b["fallback"] for b in stale.values()} == {None}
    # items created in the skipped days have no online row yet: the release's rows fill in
    assert {b["features"] for b in stale.values()} <= {"online", "release_fallback"}
    features = _status(proc)["features"]
    assert features["source"] == "online" and features["error"] is None
    assert set(features["materialized_until"].values()) == {stale_end.isoformat()}
    assert features["age_s"] >= 0
    assert sum(features["answers"].values()) >= len(users)
    assert set(features["fallbacks"]) <= {"missing_items", "missing_user"}
    text = httpx.get(f"{proc.url}/metrics").text
    assert 'recsys_serving_feature_source{source="online"} 1' in text
    assert "recsys_serving_feature_age_seconds " in text
    gauge = 'recsys_serving_feature_materialized_until_timestamp_seconds{view="user_features"}'
    assert f"{gauge} {stale_end.timestamp():.0f}" in text

    materialize(settings, build=False)  # the guardian's backfill: the skipped days go online
    reference = ServingFeatures(settings)
    reference.cover(release.item_ids)
    expected = {u: rank_for_user(release, u, 10, [], reference).item_ids.tolist() for u in users}
    deadline = time.monotonic() + 30
    while True:  # the service reloads its item table in the background after a materialization
        fresh = {u: _ask(proc, u) for u in users}
        # until it has, answers fill the new items in from the release (and may rank the same)
        done = all(_items(fresh[u]) == expected[u] for u in users)
        if done and {b["features"] for b in fresh.values()} == {"online"}:
            break
        if time.monotonic() > deadline:
            break
        httpx.post(f"{proc.url}/admin/cache/flush", json={}, headers=AUTH)
        time.sleep(0.5)
    assert {u: _items(fresh[u]) for u in users} == expected
    assert {b["features"] for b in fresh.values()} == {"online"}
    assert [u for u in users if _items(stale[u]) != _items(fresh[u])], "stale features served"
    after = _status(proc)["features"]
    assert set(after["materialized_until"].values()) == {newest_end.isoformat()}
    assert after["age_s"] < features["age_s"] + 30
    # the reload of the item table is in the service's log (features.online, an INFO line)
    assert "item table reloaded" in proc.log_path.read_text(errors="replace")


def test_a_stalled_online_store_holds_up_only_the_requests_that_read_it(online):
    """/recommend runs on the event loop unless it must read the store (a user row not kept):
    those requests wait on worker threads, and nothing else waits behind them."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    proc, settings, release, _, _ = online
    # users no other test asks for; the fresh one is not read ahead (not among the most active)
    fresh, warm = _not_read_ahead(release)[0], int(release.user_ids[101])
    # its online row is read and kept now (stale store: some items may lack a row)
    assert _ask(proc, warm, k=5)["features"] in {"online", "release_fallback"}
    store = sqlite3.connect(settings.data_dir / "features" / "online.db", timeout=0)
    store.execute("BEGIN EXCLUSIVE")  # readers wait (Feast's connection: 5 s busy timeout)
    try:
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(_ask, proc, fresh, 5)
            time.sleep(0.5)
            started = time.monotonic()
            answers = [_ask(proc, warm, k) for k in (4, 6, 7)]
            live = httpx.get(f"{proc.url}/livez", timeout=30)
            waited = time.monotonic() - started
            still_waiting = not stalled.done()
    finally:
        store.rollback()
        store.close()
    assert waited < 2.0, f"requests that need no store read waited {waited:.1f} s behind one"
    assert still_waiting, "the fresh user's request should have been waiting on the store"
    assert live.status_code == 200
    assert len({b["features"] for b in answers}) == 1  # the same rows as before the stall
    assert [len(b["items"]) for b in answers] == [4, 6, 7]
    # the stalled one answers too, from the store or (timed out) with the release's rows
    assert stalled.result(timeout=30)["features"] in {"online", "release_fallback"}


def _not_read_ahead(release) -> list[int]:
    """Users of ``release`` the ``online`` service does not read ahead and no test asks for
    (other tests ask for some of the first 110 user ids), least active first."""
    asked = {int(u) for u in release.user_ids[:110]}
    return [u for u in reversed(release.users_by_activity()) if u not in asked]


def _wait_for(proc, done, timeout: float = 30.0) -> dict:
    """``/admin/status`` features once ``done(features)`` holds (or the last one seen)."""
    deadline = time.monotonic() + timeout
    while True:
        features = _status(proc)["features"]
        if done(features) or time.monotonic() > deadline:
            return features
        time.sleep(0.2)


def test_active_users_rows_are_read_ahead_so_they_never_wait_on_the_store(online):
    """The most active users' rows are read at load and again after a materialization, on a
    background thread: their requests read nothing; an inactive user's first request reads."""
    from features.store import materialize

    proc, settings, release, _, _ = online
    warmed = release.users_by_activity(ONLINE_READ_AHEAD)
    deadline = time.monotonic() + 30
    while _status(proc)["features"]["source"] != "online" and time.monotonic() < deadline:
        _ask(proc, warmed[0], k=1)  # after another test's store failure: past its retry window
        time.sleep(0.2)
    features = _wait_for(proc, lambda f: f["user_rows"]["read_ahead_pending"] == 0)
    rows = features["user_rows"]
    assert rows["read_ahead_limit"] == ONLINE_READ_AHEAD
    assert rows["read_ahead"].get("warm", 0) > 0 and rows["kept"] >= ONLINE_READ_AHEAD
    text = httpx.get(f"{proc.url}/metrics").text
    kept = [line for line in text.splitlines() if line.startswith(f"{GAUGE_KEPT} ")]
    assert kept and float(kept[0].split()[-1]) >= ONLINE_READ_AHEAD

    def reads() -> int:
        return _status(proc)["features"]["user_reads"]["users"]

    before = reads()
    answers = [_ask(proc, u, k=3) for u in warmed[-5:]]
    assert reads() == before, "a read-ahead user's request read the store"
    assert {a["features"] for a in answers} <= {"online", "release_fallback"}
    inactive = _not_read_ahead(release)[1]
    _ask(proc, inactive, k=3)
    assert reads() == before + 1, "an inactive user's first request should read its row"

    # a materialization drops every kept row: they are read again ahead of the next requests,
    # the last used first (as many as the read-ahead limit: the least recently used is not)
    again = rows["read_ahead"].get("materialized", 0)
    materialize(settings, build=False)
    features = _wait_for(
        proc,
        lambda f: (
            f["user_rows"]["read_ahead"].get("materialized", 0) >= again + ONLINE_READ_AHEAD
            and f["user_rows"]["read_ahead_pending"] == 0
        ),
    )
    refetched = features["user_rows"]["read_ahead"].get("materialized", 0) - again
    assert refetched == ONLINE_READ_AHEAD, refetched
    before = reads()
    answers = [_ask(proc, u, k=4) for u in [*warmed[-5:], inactive]]
    assert reads() == before, "after a materialization, kept users' requests read the store"
    assert {a["features"] for a in answers} <= {"online", "release_fallback"}


def test_rows_in_use_are_refreshed_before_their_ttl_and_idle_rows_expire(online):
    """In-process, on the same online store, with a 3 s row TTL: a row a request used is read
    again from half its TTL, so it never expires; a row nobody used expires and is read by the
    next request that needs it."""
    from serving.features import ServingFeatures

    _, settings, release, _, _ = online
    features = ServingFeatures(settings, row_ttl_s=3.0)
    try:
        used, idle = release.users_by_activity(2)
        features.cover(release.item_ids, [used, idle])
        deadline = time.monotonic() + 20
        while features.kept_rows < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not features.reads_store(used) and not features.reads_store(idle)
        items = np.arange(min(20, release.n_items))
        started = time.monotonic()
        while time.monotonic() - started < 4.5:  # one and a half TTLs of requests
            assert not features.reads_store(used), "a row in use expired"
            rows = features.rows(release, used, release.user_row(used), items)
            assert rows.user is not None and "missing_user" not in rows.reasons  # its online row
            time.sleep(0.1)
        assert features.read_ahead["refresh"] >= 1
        assert features.reads_store(idle), "a row nobody used was kept past its TTL"
    finally:
        features.close()


def test_rows_read_ahead_during_a_store_failure_are_read_once_it_answers(online):
    from serving.features import ServingFeatures

    _, settings, release, _, _ = online
    features = ServingFeatures(settings, retry_s=0.5)
    features.close()  # no background thread: this test drives the rounds itself
    users = release.users_by_activity(3)
    features.cover(release.item_ids, users)
    reader = features._reader
    read = reader.users_features
    reader.users_features = lambda ids: (_ for _ in ()).throw(OSError("store down"))
    try:
        assert features.read_ahead_now() == 0
        assert features.state == "unreachable" and features.kept_rows == 0
        assert features.status()["user_rows"]["read_ahead_pending"] == 3  # kept in the queue
    finally:
        reader.users_features = read
    time.sleep(0.6)  # past the retry window
    assert features.read_ahead_now() == 3
    assert features.state == "online" and features.kept_rows == 3
    assert not any(features.reads_store(u) for u in users)


def test_with_read_ahead_off_rows_are_read_by_the_requests(online):
    from serving.features import ServingFeatures

    _, settings, release, _, _ = online
    features = ServingFeatures(settings.model_copy(update={"user_rows_ahead": 0}))
    try:
        users = release.users_by_activity(3)
        features.cover(release.item_ids, users)
        time.sleep(0.5)
        assert features.kept_rows == 0 and not features.read_ahead
        assert all(features.reads_store(u) for u in users)
        features.prefetch_users(users)  # what a waiting request does
        assert features.kept_rows == 3 and not any(features.reads_store(u) for u in users)
    finally:
        features.close()


def test_an_unreachable_online_store_gives_flagged_answers_with_release_features(online):
    proc, settings, release, _, _ = online
    store = settings.data_dir / "features" / "online.db"
    intact = store.read_bytes()
    users = [int(u) for u in release.user_ids[50:60]]
    try:
        with store.open("r+b") as handle:  # in place: the service's open connection sees it
            handle.write(b"\x00 not a database " * (len(intact) // 19 + 1))
        answers = {u: _ask(proc, u, k=8) for u in users}
        features = _status(proc)["features"]
    finally:
        store.write_bytes(intact)
    for user, body in answers.items():
        assert body["features"] == "release_fallback" and body["fallback"] is None
        assert _items(body) == release.recommend(user, 8).item_ids.tolist()
    assert features["source"] == "unreachable" and "database" in features["error"]
    assert features["fallbacks"]["unreachable"] >= len(users)
    text = httpx.get(f"{proc.url}/metrics").text
    for series in (
        'recsys_serving_feature_fallbacks_total{reason="unreachable"}',
        'recsys_serving_feature_answers_total{features="release_fallback"}',
    ):
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)]
        assert values and values[0] >= len(users), series  # declared at 0: must have grown
    deadline = time.monotonic() + 15
    while _ask(proc, users[0], k=7)["features"] != "online" and time.monotonic() < deadline:
        time.sleep(0.5)  # the store is retried a few seconds after the failure
    assert _ask(proc, users[1], k=7)["features"] == "online"
    assert _status(proc)["features"]["source"] == "online"


def test_a_restored_online_store_file_is_read_again_after_the_retry_window(online):
    """The online store corrupted, then put back as a new file (a restore from backup, a
    re-materialization into a new file and a rename): the service answers from it again."""
    import os
    import shutil

    proc, settings, release, _, _ = online
    store = settings.data_dir / "features" / "online.db"
    backup = store.with_name("online.db.backup")
    shutil.copyfile(store, backup)
    users = [int(u) for u in release.user_ids[60:70]]
    try:
        with store.open("r+b") as handle:  # in place: the service's open connection sees it
            handle.write(b"\x00 not a database " * (store.stat().st_size // 19 + 1))
        answers = {u: _ask(proc, u, k=6) for u in users}
        assert {b["features"] for b in answers.values()} == {"release_fallback"}
        assert _status(proc)["features"]["source"] == "unreachable"
    finally:
        os.replace(backup, store)  # restored as a new file: the corrupt one is unlinked

    def answered_from_store(user: int) -> bool:  # (a stale store may lack some items' rows)
        before = _status(proc)["features"]["fallbacks"].get("unreachable", 0)
        _ask(proc, user, k=5)
        features = _status(proc)["features"]
        return features["fallbacks"].get("unreachable", 0) == before and (
            features["source"] == "online"
        )

    deadline = time.monotonic() + 15
    while not answered_from_store(users[0]) and time.monotonic() < deadline:
        time.sleep(0.5)  # the store is retried a few seconds after the failure
    assert answered_from_store(users[1]), _status(proc)["features"]


def _private_online_store(settings, folder):
    """A ServingFeatures-ready copy of ``settings``' feature store (registry, marker, online
    store) under ``folder``, with no reading ahead: every read is a request's."""
    import shutil

    shutil.copytree(settings.data_dir / "features", folder / "features")
    return Settings(data_dir=folder, seed=settings.seed, user_rows_ahead=0)


def test_serving_features_reopen_a_replaced_online_store(online, tmp_path):
    """In-process, on a private SQLite online store: a corrupt store fails reads (the release's
    rows answer); a good file put back as a new file is read once the retry window has
    passed; a file replaced while reads succeed is noticed too (the old connection would go on
    reading the unlinked file)."""
    import os
    import shutil
    import sqlite3

    from serving.features import ServingFeatures

    _, settings, release, _, _ = online
    copy = _private_online_store(settings, tmp_path / "data")
    store = copy.data_dir / "features" / "online.db"
    good = tmp_path / "good.db"
    shutil.copyfile(store, good)
    features = ServingFeatures(copy, retry_s=0.5, watch_s=0.1, row_ttl_s=0.0)
    items = np.arange(min(20, release.n_items))
    users = release.users_by_activity(5)

    def read(user: int):
        return features.rows(release, user, release.user_row(user), items)

    def read_until(done, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            rows = read(users[0])
            if done(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    try:
        features.cover(release.item_ids)
        assert features.state == "online"
        first = read(users[0])
        assert first.user is not None and "unreachable" not in first.reasons

        with store.open("r+b") as handle:  # corrupted in place
            handle.write(b"\x00 not a database " * (store.stat().st_size // 19 + 1))
        failed = read(users[1])
        assert failed.source == "release_fallback" and failed.reasons == ("unreachable",)
        assert features.state == "unreachable" and "database" in features.error

        restored = tmp_path / "restored.db"
        shutil.copyfile(good, restored)
        os.replace(restored, store)  # restored from the backup as a new file
        assert read(users[2]).reasons == ("unreachable",)  # inside the retry window
        back = read_until(lambda rows: "unreachable" not in rows.reasons)
        assert "unreachable" not in back.reasons, features.status()
        assert back.user is not None and features.state == "online"
        assert features.error is None

        # Replaced while every read succeeds: a store whose user rows are gone.
        emptied = tmp_path / "emptied.db"
        shutil.copyfile(good, emptied)
        with sqlite3.connect(emptied) as db:
            db.execute("DELETE FROM recsys_user_features")
        db.close()
        os.replace(emptied, store)
        gone = read_until(lambda rows: "missing_user" in rows.reasons)
        assert "missing_user" in gone.reasons, "the replaced online store was never read"
        assert features.state == "online"
    finally:
        features.close()


def test_bentoml_serve_without_host_binds_loopback(tmp_path):
    # `bentoml serve serving.service:RecommenderService` as the README shows it, without --host:
    # BentoML's own default is 0.0.0.0, every interface (the docs said 127.0.0.1)
    import os
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    from recsys.server import PROJECT_ROOT, free_port

    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = os.environ | {"RECSYS_DATA_DIR": str(tmp_path / "data")}
    env.pop("RECSYS_SERVE_HOST", None)
    procs = {}
    for target in ("serving.service:RecommenderService", "serving.floor:FloorService"):
        port = free_port()
        procs[port] = subprocess.Popen(
            [bentoml, "serve", target, "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 90
        bound: dict[int, set[str]] = {}
        while time.monotonic() < deadline and len(bound) < len(procs):
            for c in psutil.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port in procs:
                    bound.setdefault(c.laddr.port, set()).add(c.laddr.ip)
            for port, proc in procs.items():
                assert proc.poll() is None, f"bentoml serve on {port} exited {proc.returncode}"
            time.sleep(0.5)
        assert bound == {port: {"127.0.0.1"} for port in procs}, bound
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)


def test_items_a_user_had_after_the_training_cut_are_not_recommended_once_materialized(
    online, tmp_path
):
    """The release knows the lake up to its training cut; a user who then watched the item it
    ranks first was shown it again until the next release. The online store's recent items
    (features/compute.py) reach the filter with the next materialization. So for a user new
    since the cut, whose cold-start list held what they had just watched; an id nobody has
    used costs no store read."""
    import shutil

    from features.spec import RECENT_ITEMS
    from features.store import materialize
    from recsys.contract import INTERACTIONS_SCHEMA, conform
    from recsys.ingest import ingest_all
    from serving.features import ServingFeatures
    from serving.ranking import rank_for_user

    _, settings, release, _, _ = online
    folder = tmp_path / "data"
    shutil.copytree(settings.data_dir, folder, ignore=shutil.ignore_patterns("logs", "bentoml"))
    copy = Settings(data_dir=folder, seed=settings.seed, user_rows_ahead=0)
    user = release.users_by_activity(1)[0]
    before = ServingFeatures(copy, row_ttl_s=0.0)
    try:
        before.cover(release.item_ids)
        shown = rank_for_user(release, user, 5, features=before)
    finally:
        before.close()
    assert shown.features is not None  # ranked with the online store's rows
    watched = int(shown.item_ids[0])
    newcomer, stranger = int(release.user_ids.max()) + 1000, int(release.user_ids.max()) + 2000
    trending = int(release.cold_start(1).item_ids[0])  # what a new user is shown first
    seen = release.item_ids[release.seen_rows(release.user_row(user))].tolist()
    popular = int(release.cold_start(1, seen).item_ids[0])  # what the user is shown degraded

    lake = copy.lake  # a new day lands: the user watched it
    newest = pd.Timestamp(lake.clean_batches()[-1], tz="UTC")
    day = (newest + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    event = pd.DataFrame(
        {
            "user_id": [user, newcomer, user],
            "item_id": [watched, trending, popular],
            "event_type": ["view", "click", "view"],
            "value": [1.0, 1.0, 1.0],
            "timestamp": [pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=9)] * 3,
        }
    )
    lake.write_raw(lake.raw_batch_path(day), conform(event, INTERACTIONS_SCHEMA))
    ingest_all(lake)
    materialize(copy)
    after = ServingFeatures(copy, row_ttl_s=0.0)
    try:
        after.cover(release.item_ids)
        assert watched in after.recent_items(user).tolist()
        again = rank_for_user(release, user, 5, features=after)
        assert after.load_recent_users() >= 2 and after.has_recent_items(newcomer) == (True, True)
        assert after.has_recent_items(stranger) == (False, True)
        new = rank_for_user(release, newcomer, 5, features=after)
        cold = rank_for_user(release, stranger, 5, features=after)
        assert after.status()["user_rows"]["kept"] == 2  # the stranger's id was never read
    finally:
        after.close()
    assert watched not in again.item_ids.tolist() and len(again.item_ids) == 5
    assert new.fallback == "cold_start" and new.cacheable
    assert trending not in new.item_ids.tolist() and len(new.item_ids) == 5
    assert cold.item_ids[0] == trending  # nothing to leave out for an id nobody used
    assert again.features == "online"
    assert RECENT_ITEMS not in release.meta.get("feature_names", [])  # not a ranker input
    env = {"RECSYS_RELOAD_INTERVAL_S": "0", "RECSYS_FAULT_INJECTION": "true"}
    env["RECSYS_ADMIN_TOKEN"] = token = "recent-items-token"
    with ServiceProcess(copy, env=env) as proc:  # through HTTP
        body = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": 5}).json()
        deadline = time.monotonic() + 30  # the users with recent items load in the background
        while True:
            answer = httpx.post(f"{proc.url}/recommend", json={"user_id": newcomer, "k": 5})
            items = [i["item_id"] for i in answer.json()["items"]]
            if trending not in items or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # the model fails and no last good answer is left: the degraded popular list leaves
        # out the recent items of the row kept from the user's first request, without a read
        auth = {"authorization": f"Bearer {token}"}
        drills = (("/admin/cache/flush", {}), ("/admin/fault", {"name": "model-error"}))
        for path, payload in drills:
            assert httpx.post(f"{proc.url}{path}", json=payload, headers=auth).status_code == 200
        degraded = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": 5}).json()
    assert body["features"] == "online" and body["model_version"]
    assert [i["item_id"] for i in body["items"]] == again.item_ids.tolist()
    assert answer.json()["fallback"] == "cold_start" and items == new.item_ids.tolist()
    assert degraded["fallback"] == "degraded" and len(degraded["items"]) == 5
    assert popular not in [i["item_id"] for i in degraded["items"]]
