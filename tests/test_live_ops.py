"""Live operations under load: the service keeps answering while it is operated.

tests/test_serving_lifecycle.py covers one reload under load (no failed request, the version
ends as the new one). This test runs every operation an operator does on a live service while
client threads keep asking, and checks each answer against what the registry held at that
moment and what the service logged:

* the canary share is changed, the challenger is promoted (``recsys.promotion``: champion to
  ``previous``, challenger to ``champion``) and reloaded, the cache is flushed, a new version is
  registered during the load and made the challenger, and the share changed again;
* three versions that rank differently (the trained release, the same with its ranker negated,
  the same without a ranker), so an answer that mixed two models would show;
* the request log samples every call (``RECSYS_REQUEST_LOG_SAMPLE=1``).

Checked for every answer: HTTP 200 with no transport error and no fallback; its model version
is one the registry held for its variant while the request was in flight (between an alias
move and the reload that follows it, both versions are correct); its items are exactly the list
that version ranks for that user and k; the request log has the same version and items for its
request_id; a cached answer passes the same checks (it carries the version served). Figures
(requests, p50/p99, answers per version) are printed in the test log.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys.config import Settings
from recsys.faults import sabotage_ranker
from recsys.promotion import promote_challenger
from recsys.registry import configure_mlflow, log_release, version_for_alias
from recsys.release import Release
from recsys.server import ServiceProcess

TOKEN = "live-ops-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CLIENTS = 4
KS = (5, 10)


@dataclass
class Answer:
    """One /recommend call as the client saw it (monotonic clock of this process)."""

    user_id: int
    k: int
    sent: float
    received: float
    status: int | None = None
    body: dict = field(default_factory=dict)
    error: str | None = None


class AliasTimeline:
    """Which version each alias pointed at, and when: a move is open from the moment the
    registry changes until the service's reload has answered, and both versions are valid
    during it."""

    def __init__(self, start: dict[str, str | None]) -> None:
        self.spans: dict[str, list[list]] = {
            alias: [[float("-inf"), float("inf"), version]] for alias, version in start.items()
        }

    @contextmanager
    def moving(self, wanted: dict[str, str | None]):
        began = time.monotonic()
        yield
        ended = time.monotonic()
        for alias, version in wanted.items():
            spans = self.spans.setdefault(alias, [])
            if spans and spans[-1][1] == float("inf"):
                spans[-1][1] = ended
            spans.append([began, float("inf"), version])

    def versions(self, alias: str | None, sent: float, received: float) -> set[str | None]:
        """Versions ``alias`` held at some moment of [sent, received]."""
        return {
            v for start, end, v in self.spans.get(alias, []) if start <= received and sent <= end
        }


def read_request_log(folder: Path) -> dict[str, dict]:
    """Every record of the service's request log by request_id (rotated files included)."""
    records = {}
    for path in sorted(folder.glob("requests*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["request_id"]] = record
    return records


def answer_problems(
    answers: list[Answer],
    timeline: AliasTimeline,
    logged: dict[str, dict],
    ranked: dict[str, Release],
) -> list[str]:
    """Every way the answers break the live-ops promises (empty when none): failed calls,
    fallbacks, versions the registry did not hold for the variant at that moment, items that
    are not that version's ranking, and answers the request log does not confirm."""
    problems: list[str] = []
    for a in answers:
        where = f"user {a.user_id} k {a.k}"
        if a.error is not None or a.status != 200:
            problems.append(f"{where}: failed ({a.status} {a.error or a.body})")
            continue
        body = a.body
        version, variant = body["model_version"], body["variant"]
        items = [it["item_id"] for it in body["items"]]
        if body["fallback"] is not None:
            problems.append(f"{where}: fallback {body['fallback']}")
        held = timeline.versions(variant, a.sent, a.received)
        if version not in held:
            kind = "cached answer" if body["cached"] else "answer"
            problems.append(f"{where}: {kind} of v{version} as {variant}; registry held {held}")
        release = ranked.get(version)
        if release is None or items != release.recommend(a.user_id, a.k).item_ids.tolist():
            problems.append(f"{where}: items {items} are not what v{version} ranks")
        record = logged.get(body["request_id"])
        if record is None:
            problems.append(f"{where}: request {body['request_id']} missing from the request log")
        elif (record["model_version"], record["items"], record["variant"]) != (
            version,
            items,
            variant,
        ):
            problems.append(f"{where}: the request log says v{record['model_version']}")
    return problems


def drive(url: str, users: list[int], stop: threading.Event, answers: list[Answer]) -> list:
    """Start ``CLIENTS`` threads asking /recommend in a closed loop until ``stop``."""

    def client(offset: int) -> None:
        with httpx.Client(timeout=20) as http:
            n = offset
            while not stop.is_set():
                user, k = users[(n * 7) % len(users)], KS[n % len(KS)]
                a = Answer(user, k, time.monotonic(), 0.0)
                try:
                    reply = http.post(f"{url}/recommend", json={"user_id": user, "k": k})
                    a.status, a.body = reply.status_code, reply.json()
                except (httpx.HTTPError, ValueError) as exc:
                    a.error = f"{type(exc).__name__}: {exc}"
                a.received = time.monotonic()
                answers.append(a)
                n += CLIENTS

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def figures(answers: list[Answer], seconds: float) -> dict:
    ok = [a for a in answers if a.status == 200]
    latency = np.array([a.received - a.sent for a in ok]) * 1000
    return {
        "requests": len(answers),
        "failed": len(answers) - len(ok),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(answers) / seconds, 1),
        "p50_ms": round(float(np.percentile(latency, 50)), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(latency, 99)), 2) if len(ok) else None,
        "cached": sum(bool(a.body.get("cached")) for a in ok),
        "by_version": dict(
            sorted(Counter(f"v{a.body['model_version']} {a.body['variant']}" for a in ok).items())
        ),
    }


def _variant_of(release: Release, folder: Path, *, ranker: str) -> Release:
    """A private copy of ``release`` (saved and loaded: the session's release stays as it is),
    its ranker negated (``reversed``) or removed (``none``)."""
    copy = Release.load(release.save(folder))
    if ranker == "reversed":
        sabotage_ranker(copy)
    else:
        copy.ranker = None
    return copy


# ---- the check catches what it must ---------------------------------------------------------


def test_answer_problems_catches_mixed_versions_and_unlogged_answers(trained_world, tmp_path):
    _, _, result = trained_world
    good, reversed_ = result.release, _variant_of(result.release, tmp_path, ranker="reversed")
    user = int(good.user_ids[0])
    good_items = good.recommend(user, 5).item_ids.tolist()
    assert good_items != reversed_.recommend(user, 5).item_ids.tolist()
    timeline = AliasTimeline({"champion": "1", "challenger": None})
    with timeline.moving({"champion": "2"}):
        pass
    moved = timeline.spans["champion"][-1][0]

    def answer(version, items, sent, cached=False, request_id="r1"):
        body = {
            "request_id": request_id,
            "model_version": version,
            "variant": "champion",
            "fallback": None,
            "cached": cached,
            "items": [{"item_id": i} for i in items],
        }
        return Answer(user, 5, sent, sent + 0.01, 200, body)

    log = {"r1": {"model_version": "1", "items": good_items, "variant": "champion"}}
    releases = {"1": good, "2": reversed_}
    before = moved - 10
    assert answer_problems([answer("1", good_items, before)], timeline, log, releases) == []
    bad = {
        "a version retired before the request": answer("1", good_items, moved + 5),
        "a cached answer of a retired version": answer("1", good_items, moved + 5, cached=True),
        "the items of another version": answer("2", good_items, moved + 5),
        "no request-log record": answer("1", good_items, before, request_id="r2"),
        "a failed call": Answer(user, 5, before, before, 503, {"error": "x"}),
    }
    for case, wrong in bad.items():
        assert answer_problems([wrong], timeline, log, releases), case
    log_disagrees = {"r1": {"model_version": "2", "items": good_items, "variant": "champion"}}
    assert answer_problems([answer("1", good_items, before)], timeline, log_disagrees, releases)


# ---- the live run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_reload_flush_and_canary_moves_under_load_fail_no_request_and_mix_no_versions(
    trained_world, tmp_path, capsys
):
    _, _, result = trained_world
    settings = Settings(data_dir=tmp_path / "data")
    releases = {
        "good": result.release,
        "reversed": _variant_of(result.release, tmp_path / "reversed", ranker="reversed"),
        "no_ranker": _variant_of(result.release, tmp_path / "no-ranker", ranker="none"),
    }
    v1 = log_release(settings, releases["good"], result.metrics, aliases=("champion",)).version
    v2 = log_release(
        settings, releases["reversed"], result.metrics, aliases=("challenger",)
    ).version
    ranked = {v1: releases["good"], v2: releases["reversed"]}
    users = [int(u) for u in result.release.user_ids[:60]]
    env = {
        "RECSYS_ADMIN_TOKEN": TOKEN,
        "RECSYS_RELOAD_INTERVAL_S": "0",  # only the moves below reload: their windows are known
        "RECSYS_CANARY_SHARE": "0.2",
        "RECSYS_REQUEST_LOG_SAMPLE": "1",
    }
    answers: list[Answer] = []
    stop = threading.Event()
    timeline = AliasTimeline({"champion": v1, "challenger": v2})
    steps: dict[str, float] = {}
    with ServiceProcess(settings, env=env) as proc:

        def admin(path: str, payload: dict | None = None) -> dict:
            reply = httpx.post(f"{proc.url}{path}", json=payload or {}, headers=AUTH, timeout=60)
            assert reply.status_code == 200, reply.text
            return reply.json()

        began = time.monotonic()
        threads = drive(proc.url, users, stop, answers)
        try:
            time.sleep(0.6)
            admin("/admin/canary", {"share": 0.5})
            time.sleep(0.6)
            t = time.monotonic()
            v3 = log_release(settings, releases["no_ranker"], result.metrics).version
            ranked[v3] = releases["no_ranker"]
            steps["register_s"] = time.monotonic() - t
            with timeline.moving({"champion": v2, "challenger": None}):
                t = time.monotonic()
                promote_challenger(settings, "live-ops test", {"test": True}, actor="test")
                promoted = admin("/admin/reload")
                steps["promote_reload_s"] = time.monotonic() - t
            assert promoted["served"] == {"champion": v2}
            time.sleep(0.4)
            flushed = admin("/admin/cache/flush")["flushed"]
            time.sleep(0.6)
            with timeline.moving({"challenger": v3}):
                t = time.monotonic()
                client = configure_mlflow(settings)
                client.set_registered_model_alias(settings.model_name, "challenger", v3)
                canary = admin("/admin/reload")
                steps["canary_reload_s"] = time.monotonic() - t
            assert canary["served"] == {"champion": v2, "challenger": v3}
            admin("/admin/canary", {"share": 0.3})
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        seconds = time.monotonic() - began
        status = admin("/admin/status")
        logged = read_request_log(settings.data_dir / "logs" / "requests")

    report = figures(answers, seconds)
    report |= {k: round(v, 2) for k, v in steps.items()} | {"flushed": flushed}
    with capsys.disabled():
        print(f"\nlive ops: {json.dumps(report)}")
    assert version_for_alias(settings, "champion") == v2
    assert promoted["cache_entries_retired"] >= 1  # v1's answers left with it
    assert status["cache"]["stale_entries"] == 0
    assert answer_problems(answers, timeline, logged, ranked) == []
    seen = {(a.body["model_version"], a.body["variant"]) for a in answers}
    # every phase was exercised: both arms before, champion alone, the new canary after
    assert {(v1, "champion"), (v2, "challenger"), (v2, "champion"), (v3, "challenger")} <= seen
    assert report["cached"] > 0 and report["requests"] >= 100
