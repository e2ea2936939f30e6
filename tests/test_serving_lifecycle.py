"""Model lifecycle, canary, cache, feedback and admin of the service, through real HTTP.

One service runs on its own trained world (a fresh data dir: these tests move aliases), with an
admin token, a 1 s reload poll, fault drills enabled and a tiny request-log budget so rotation
happens.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pandas as pd
import pytest
from conftest import wait_for_log

from recsys.config import Settings
from recsys.registry import configure_mlflow, log_release, version_for_alias
from recsys.server import ServiceProcess
from serving.router import route

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def world(make_trained_world):
    return make_trained_world(
        "serving-world", 11, 0.0, n_users=300, n_items=120, n_days=10, n_interactions=9_000
    )


@pytest.fixture(scope="module")
def live(world):
    settings, registered, result = world
    env = {
        "RECSYS_ADMIN_TOKEN": TOKEN,
        "RECSYS_RELOAD_INTERVAL_S": "1",
        "RECSYS_CANARY_SHARE": "0",
        "RECSYS_REQUEST_LOG_SAMPLE": "1",
        "RECSYS_REQUEST_LOG_MAX_MB": "0.01",
        "RECSYS_FAULT_INJECTION": "true",
    }
    with ServiceProcess(settings, env=env) as proc:
        yield proc, settings, registered, result


def admin(proc, path, payload=None, headers=AUTH):
    return httpx.post(f"{proc.url}{path}", json=payload or {}, headers=headers, timeout=30)


def recommend(proc, user, k=5, **extra):
    reply = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": k, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_admin_needs_the_right_bearer_token(live):
    proc, *_ = live
    assert admin(proc, "/admin/status", headers={}).status_code == 401
    wrong = admin(proc, "/admin/status", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    assert admin(proc, "/admin/status", headers={"authorization": TOKEN}).status_code == 401
    status = admin(proc, "/admin/status")
    assert status.status_code == 200 and status.json()["ready"] is True
    assert TOKEN not in proc.log_path.read_text()


def test_feedback_is_durable_and_tied_to_the_serving_variant(live):
    proc, settings, registered, result = live
    user = int(result.release.user_ids[1])
    served = recommend(proc, user)
    item = served["items"][0]["item_id"]
    event = {"request_id": served["request_id"], "user_id": user, "item_id": item}
    reply = httpx.post(f"{proc.url}/feedback", json={**event, "event": "click"})
    assert reply.status_code == 200
    assert reply.json()["attributed"] is True
    lines = [
        json.loads(line)
        for path in sorted((settings.data_dir / "logs" / "feedback").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    mine = [r for r in lines if r["request_id"] == served["request_id"]]
    assert mine and mine[0]["variant"] == "champion"
    assert mine[0]["model_version"] == registered.version and mine[0]["item_id"] == item

    unknown = httpx.post(
        f"{proc.url}/feedback", json={**event, "request_id": "f" * 32, "event": "view"}
    )
    assert unknown.status_code == 200
    assert unknown.json()["attributed"] is False and unknown.json()["variant"] is None

    other_user = httpx.post(
        f"{proc.url}/feedback", json={**event, "user_id": user + 1, "event": "view"}
    )
    assert other_user.status_code == 409 and "served user" in other_user.text
    no_stars = httpx.post(f"{proc.url}/feedback", json={**event, "event": "rating"})
    assert no_stars.status_code == 400 and "rating" in no_stars.text
    bad = httpx.post(f"{proc.url}/feedback", json={**event, "event": "teleport"})
    assert 400 <= bad.status_code < 500 and "event" in bad.text


def _series_sum(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_click_on_an_item_the_answer_did_not_show_is_kept_but_not_a_click(live):
    proc, settings, registered, result = live
    user = int(result.release.user_ids[3])
    served = recommend(proc, user, k=3)
    shown = {it["item_id"] for it in served["items"]}
    elsewhere = next(int(i) for i in result.release.item_ids if int(i) not in shown)
    labels = f'variant="champion",version="{registered.version}"'
    clicked = f"recsys_serving_clicked_requests_total{{{labels}}}"
    before = _series_sum(httpx.get(f"{proc.url}/metrics").text, clicked)
    event = {"request_id": served["request_id"], "user_id": user, "event": "click"}
    reply = httpx.post(f"{proc.url}/feedback", json={**event, "item_id": elsewhere})
    assert reply.status_code == 200
    assert reply.json()["attributed"] is True and reply.json()["shown"] is False
    text = httpx.get(f"{proc.url}/metrics").text
    assert _series_sum(text, clicked) == before  # the canary's CTR is not moved by it
    assert 'shown="false"' in text
    kept = [
        json.loads(line)
        for path in sorted((settings.data_dir / "logs" / "feedback").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    mine = [r for r in kept if r["request_id"] == served["request_id"]]
    assert [(r["item_id"], r["shown"]) for r in mine] == [(elsewhere, False)]  # nothing lost

    on_answer = httpx.post(f"{proc.url}/feedback", json={**event, "item_id": min(shown)})
    assert on_answer.json()["shown"] is True
    assert _series_sum(httpx.get(f"{proc.url}/metrics").text, clicked) == before + 1


def test_cache_serves_repeats_and_flushes(live):
    proc, _, _, result = live
    user = int(result.release.user_ids[2])
    first = recommend(proc, user, k=4)
    second = recommend(proc, user, k=4)
    assert first["cached"] is False and second["cached"] is True
    assert second["items"] == first["items"] and second["request_id"] != first["request_id"]
    before = admin(proc, "/admin/status").json()["cache"]
    assert before["hits"] >= 1 and before["entries"] >= 1
    assert admin(proc, "/admin/cache/flush").json()["flushed"] >= 1
    assert recommend(proc, user, k=4)["cached"] is False


def test_a_model_failing_mid_request_answers_degraded_never_a_5xx(live):
    proc, _, _, result = live
    release = result.release
    seen, fresh = int(release.user_ids[200]), int(release.user_ids[201])
    last_good = recommend(proc, seen, k=5)
    assert last_good["fallback"] is None
    broken = admin(proc, "/admin/fault", {"name": "model-error"})
    assert broken.status_code == 200 and "champion" in broken.json()["models"]
    try:
        from_cache = recommend(proc, seen, k=4)  # another k: not a cache hit, the model runs
        topped_up = recommend(proc, seen, k=9, exclude=[last_good["items"][0]["item_id"]])
        popular = recommend(proc, fresh, k=5)
        cold = recommend(proc, 10**12, k=3)
    finally:
        assert admin(proc, "/admin/fault", {"name": "clear"}).json()["models"]
    cached = [it["item_id"] for it in last_good["items"]]
    assert from_cache["fallback"] == "cache"
    assert [it["item_id"] for it in from_cache["items"]] == cached[:4]
    # a last good answer shorter than k is topped up with popular unseen items, not cut short
    items = [it["item_id"] for it in topped_up["items"]]
    assert topped_up["fallback"] == "cache" and len(items) == 9 == len(set(items))
    assert items[:4] == cached[1:] and cached[0] not in items
    seen_items = {int(i) for i in release.item_ids[release.seen_rows(release.user_row(seen))]}
    assert not seen_items & set(items)
    assert items[4:] == [int(i) for i in release.cold_start(5, [*seen_items, *cached]).item_ids]
    # the popular list leaves out what the user has seen, as the model's answers do
    fresh_seen = [int(i) for i in release.item_ids[release.seen_rows(release.user_row(fresh))]]
    assert set(fresh_seen) & set(release.cold_start(5).item_ids.tolist())  # or nothing to see
    assert popular["fallback"] == "degraded" and popular["variant"] is None
    assert [it["item_id"] for it in popular["items"]] == (
        release.cold_start(5, fresh_seen).item_ids.tolist()
    )
    assert cold["fallback"] == "cold_start"  # the cold-start list needs no ranker
    text = httpx.get(f"{proc.url}/metrics").text
    for series in (
        'recsys_serving_model_errors_total{variant="champion"',
        'recsys_serving_fallbacks_total{kind="degraded"}',
    ):  # declared at 0: must grow
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)]
        assert values and sum(values) > 0, series
    healed = recommend(proc, fresh, k=5)
    assert healed["fallback"] is None and healed["variant"] == "champion"


def test_canary_routing_is_deterministic_and_follows_the_share(live):
    proc, settings, _, result = live
    challenger = log_release(settings, result.release, result.metrics, aliases=("challenger",))
    reloaded = admin(proc, "/admin/reload").json()
    assert reloaded["served"]["challenger"] == challenger.version
    users = [int(u) for u in result.release.user_ids[:40]]
    try:
        assert admin(proc, "/admin/canary", {"share": 0.5}).status_code == 200
        first = {u: recommend(proc, u)["variant"] for u in users}
        assert first == {u: route(u, 0.5, True) for u in users}
        assert set(first.values()) == {"champion", "challenger"}
        assert {u: recommend(proc, u)["variant"] for u in users} == first
        for u in users[:5]:
            body = recommend(proc, u)
            wanted = challenger.version if first[u] == "challenger" else body["model_version"]
            assert body["model_version"] == wanted
        admin(proc, "/admin/canary", {"share": 1.0})
        assert {recommend(proc, u)["variant"] for u in users} == {"challenger"}
        admin(proc, "/admin/canary", {"share": 0.0})
        assert {recommend(proc, u)["variant"] for u in users} == {"champion"}
        assert admin(proc, "/admin/canary", {"share": 1.5}).status_code == 400
    finally:
        admin(proc, "/admin/canary", {"share": 0.0})


def test_reload_under_load_swaps_the_version_without_a_failed_request(live):
    proc, settings, _, result = live
    users = [int(u) for u in result.release.user_ids[:50]]
    old = recommend(proc, users[0])["model_version"]
    recommend(proc, users[1], k=3)  # a cache entry of the old version
    retired_before = admin(proc, "/admin/status").json()["cache"]["retired"]
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=20) as http:
            i = offset
            while not stop.is_set():
                reply = http.post(f"{proc.url}/recommend", json={"user_id": users[i % 50], "k": 5})
                if reply.status_code != 200 or reply.json()["fallback"] not in (None,):
                    failures.append(f"{reply.status_code} {reply.text[:200]}")
                else:
                    versions.append(reply.json()["model_version"])
                i += 7

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        new = log_release(settings, result.release, result.metrics, aliases=("champion",))
        reloaded = admin(proc, "/admin/reload").json()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not failures
    assert reloaded["served"]["champion"] == new.version == version_for_alias(settings, "champion")
    assert versions[0] == old and versions[-1] == new.version
    status = admin(proc, "/admin/status").json()
    assert status["models"]["champion"]["version"] == new.version
    # the old version's entries left with it (requests still in flight on it are not kept);
    # the 1 s poll may see the alias move and swap before the admin call does, so the count is
    # the cache's total, not the admin call's own
    assert status["cache"]["retired"] > retired_before
    assert status["cache"]["stale_entries"] == 0


def test_a_release_trained_on_a_window_never_serves_what_users_had_before_it(live):
    # the guardian's retrain sees the last 14 days only; its release still knows the lake's past
    from recsys.train import pipeline_params, train_and_evaluate

    proc, settings, _, _ = live
    windowed = train_and_evaluate(
        settings.lake, pipeline_params(settings), window_days=5, test_days=1, k=10
    )
    events = settings.lake.read_clean_interactions()
    earlier = events[events["timestamp"] < pd.Timestamp(windowed.window["start"])]
    before = earlier.groupby("user_id")["item_id"].agg(set)
    new = log_release(settings, windowed.release, windowed.metrics, aliases=("champion",))
    assert admin(proc, "/admin/reload").json()["served"]["champion"] == new.version
    shown = 0
    for user in before.index[:40]:
        body = recommend(proc, int(user), k=10)
        assert body["model_version"] == new.version
        items = {i["item_id"] for i in body["items"]}
        assert len(items) == 10 and not items & before[user], user
        shown += len(items)
    assert shown == 400


def test_the_poll_follows_an_alias_move_without_a_reload_call(live):
    proc, settings, registered, _ = live
    configure_mlflow(settings).set_registered_model_alias(
        settings.model_name, "champion", registered.version
    )
    deadline = time.monotonic() + 15
    served = None
    while time.monotonic() < deadline:
        served = admin(proc, "/admin/status").json()["models"]["champion"]["version"]
        if served == registered.version:
            break
        time.sleep(0.25)
    assert served == registered.version


def test_a_version_with_corrupt_artifacts_is_refused_and_the_old_one_keeps_serving(live):
    proc, settings, _, result = live
    before = admin(proc, "/admin/status").json()["models"]["challenger"]["version"]
    broken = log_release(settings, result.release, result.metrics, aliases=("challenger",))
    newest = max(
        settings.data_dir.glob("mlartifacts/**/release.json"), key=lambda p: p.stat().st_mtime
    )
    (newest.parent / "user_ids.npy").write_bytes(b"not an array")
    reloaded = admin(proc, "/admin/reload").json()
    assert "corrupt" in reloaded["errors"]["challenger"]
    assert reloaded["served"]["challenger"] == before != broken.version
    admin(proc, "/admin/canary", {"share": 1.0})
    try:
        body = recommend(proc, int(result.release.user_ids[7]))
        assert body["variant"] == "challenger" and body["model_version"] == before
    finally:
        admin(proc, "/admin/canary", {"share": 0.0})


def test_the_service_log_has_its_own_info_lines(live):
    # BentoML's server logging drops everything below WARNING unless the service sets a level:
    # which version serves and who moved the canary must be in the log for a post-mortem
    proc, _, _, _ = live
    champion = admin(proc, "/admin/status").json()["models"]["champion"]["version"]
    admin(proc, "/admin/canary", {"share": 0.25})
    admin(proc, "/admin/canary", {"share": 0.0})
    wanted = [f"serving champion version {champion}", "canary share 0.25 -> 0.0"]
    text = wait_for_log(proc, wanted)
    line = next(row for row in text.splitlines() if wanted[1] in row)
    assert "[INFO]" in line  # through BentoML's handler and format


def test_request_log_is_sampled_and_rotated_within_its_budget(live):
    proc, settings, _, result = live
    for u in result.release.user_ids[:60]:
        recommend(proc, int(u), k=3, context={"page": "home"})
    folder = settings.data_dir / "logs" / "requests"
    files = sorted(folder.glob("requests*.jsonl"))
    assert len(files) >= 2
    assert sum(p.stat().st_size for p in files) <= 0.01 * 2**20 * 1.25
    record = json.loads(files[-1].read_text().splitlines()[-1])
    assert {"request_id", "user_id", "items", "variant", "model_version"} <= set(record)


def test_a_log_the_disk_refuses_never_fails_an_answer_and_never_loses_feedback_quietly(live):
    """A request log that could not be written made every sampled /recommend a 500 (the
    answer was computed); a feedback log, an opaque 500."""
    import shutil
    from datetime import UTC, datetime

    proc, settings, _, result = live
    logs = settings.data_dir / "logs"
    current = logs / "requests" / "requests.jsonl"
    feedback = logs / "feedback" / f"feedback-{datetime.now(UTC):%Y-%m-%d}.jsonl"
    kept = {path: path.read_bytes() if path.exists() else None for path in (current, feedback)}
    for path in kept:  # a folder where the file goes: no write can succeed, whoever runs it
        path.unlink(missing_ok=True)
        path.mkdir()
    try:
        user = int(result.release.user_ids[7])
        answers = [recommend(proc, user, k=k) for k in (2, 3, 4)]  # sample 1: each one written
        item = answers[0]["items"][0]["item_id"]
        event = {"request_id": answers[0]["request_id"], "user_id": user, "item_id": item}
        refused = httpx.post(f"{proc.url}/feedback", json={**event, "event": "click"})
        status = admin(proc, "/admin/status").json()["request_log"]
        metrics = httpx.get(f"{proc.url}/metrics").text
    finally:
        for path, data in kept.items():
            shutil.rmtree(path)
            if data is not None:
                path.write_bytes(data)
    assert [len(a["items"]) for a in answers] == [2, 3, 4]
    assert refused.status_code == 503 and "the feedback was not recorded" in refused.json()["error"]
    assert status["write_errors"] >= 3 and "IsADirectoryError" in status["last_error"]
    assert _series_sum(metrics, 'recsys_serving_log_write_errors_total{log="requests"}') >= 3
    assert _series_sum(metrics, 'recsys_serving_log_write_errors_total{log="feedback"}') == 1
    again = httpx.post(f"{proc.url}/feedback", json={**event, "event": "click"})
    assert again.status_code == 200  # the log is writable again: kept


def test_without_a_champion_the_service_answers_degraded_from_the_lake(world, tmp_path):
    settings, _, _ = world
    copy = tmp_path / "no-registry"
    shutil.copytree(
        settings.data_dir,
        copy,
        ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "logs", "bentoml"),
    )
    proc = ServiceProcess(Settings(data_dir=copy), env={"RECSYS_RELOAD_INTERVAL_S": "0"})
    try:
        proc.start(probe="/livez")
        assert httpx.get(f"{proc.url}/readyz").status_code == 503
        reply = httpx.post(f"{proc.url}/recommend", json={"user_id": 3, "k": 5, "exclude": [1]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["fallback"] == "degraded" and body["model_version"] is None
        items = [it["item_id"] for it in body["items"]]
        assert len(items) == 5 and 1 not in items
        counts = Settings(data_dir=copy).lake.read_clean_interactions()["item_id"].value_counts()
        assert items == [i for i in counts.index.tolist() if i != 1][:5]
    finally:
        proc.stop()
