"""The BentoML service through real HTTP against a `bentoml serve` process on loopback."""

from __future__ import annotations

import httpx
import pytest

from recsys.config import Settings
from recsys.server import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(trained_world):
    settings, registered, result = trained_world
    with ServiceProcess(settings) as proc:
        yield proc, registered, result


def test_health_endpoints_answer(service):
    proc, _, _ = service
    assert httpx.get(f"{proc.url}/livez").status_code == 200
    assert httpx.get(f"{proc.url}/readyz").status_code == 200
    assert proc.host == "127.0.0.1"


def test_recommend_returns_ranked_unseen_items_from_the_champion(service):
    proc, registered, result = service
    release = result.release
    user = int(release.user_ids[3])
    reply = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "k": 7})
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_version"] == registered.version
    assert body["variant"] == "champion" and body["fallback"] is None
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
    ],
)
def test_invalid_input_is_a_4xx_that_says_what_is_wrong(service, payload, needle):
    proc, _, _ = service
    reply = httpx.post(f"{proc.url}/recommend", json=payload)
    assert 400 <= reply.status_code < 500
    assert needle in reply.text


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
