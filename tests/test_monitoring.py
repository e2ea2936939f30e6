"""The monitoring library: incident log, online metrics from the service's logs, the CTR-drop
rule, Evidently drift weighed against quality, and the demo's HTML report."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import (
    PROFILE_COLUMNS,
    DriftResult,
    champion_quality,
    drift_decision,
    interaction_drift,
    interaction_profile,
    release_quality,
)
from monitoring.incidents import Incident, IncidentLog, incident_log
from monitoring.report import DayRecord, FaultOutcome, VersionAgreement, write_demo_report
from monitoring.traffic import ArmTraffic, ctr_drop, read_feedback, read_requests, traffic_by_arm
from recsys.errors import RecsysError

# ---- incident log ----------------------------------------------------------------------------


def test_incident_log_appends_and_reads_back_in_order(settings):
    log = incident_log(settings)
    assert log.path == settings.data_dir / "logs" / "incidents.jsonl"
    assert log.read() == []
    first = log.append(
        Incident(
            "serving",
            "cache_version",
            "3 stale entries",
            {"stale": np.int64(3), "share": np.float32(0.5), "where": Path("/x")},
            action="flush_cache",
            verified=True,
            day=2,
        )
    )
    second = log.append(Incident("model", "drift", "drift seen", {"share": 0.4}, day=3))
    back = log.read()
    assert [i.id for i in back] == [first.id, second.id]
    assert back[0].evidence == {"stale": 3, "share": 0.5, "where": "/x"}
    assert (back[0].action, back[0].verified, back[0].day) == ("flush_cache", True, 2)
    assert back[1].action is None and back[1].verified is None
    assert [i.id for i in log.last(1)] == [second.id]
    assert first.id != second.id and first.at <= second.at


def test_a_torn_last_line_is_skipped_and_the_next_record_survives(tmp_path):
    log = IncidentLog(tmp_path / "incidents.jsonl")
    kept = log.append(Incident("data", "delivery", "bad batch", {"rows": 10}))
    with log.path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"layer": "features", "check": "feature_fr')
    assert [i.id for i in log.read()] == [kept.id]
    after = log.append(Incident("features", "feature_freshness", "behind", {"lag_hours": 24}))
    assert [i.id for i in log.read()] == [kept.id, after.id]
    raw = log.path.read_bytes()
    assert b"feature_fr\n" in raw  # the torn bytes are kept, never rewritten


# ---- traffic ---------------------------------------------------------------------------------


def _write_logs(settings) -> tuple[float, float]:
    """Crafted request and feedback logs through the service's own writers; returns the
    window that holds the crafted requests."""
    from serving.logs import FeedbackLog, RequestLog

    logs = settings.data_dir / "logs"
    requests = RequestLog(logs / "requests", sample=1.0, max_bytes=10**9)
    feedback = FeedbackLog(logs / "feedback")
    old = {
        "request_id": "r0",
        "user_id": 9,
        "k": 2,
        "items": [1, 2],
        "variant": "champion",
        "model_version": "1",
        "fallback": None,
        "cached": False,
        "logged_at": time.time() - 7200,
    }
    (logs / "requests" / "requests-20260101T000000000000.jsonl").write_text(json.dumps(old) + "\n")
    since = time.time() - 1
    arms = {
        "r1": ("champion", "1", [1, 2], None, 10.0),
        "r2": ("champion", "1", [2, 3], None, 20.0),
        "r3": ("champion", "1", [3, 4], None, 30.0),
        "r4": ("champion", "1", [5, 6], "cold_start", 40.0),
        "r5": ("challenger", "2", [7, 8], None, None),
        "r6": ("challenger", "2", [7, 9], "degraded", None),
    }
    for rid, (variant, version, items, fallback, latency) in arms.items():
        record = {
            "request_id": rid,
            "user_id": int(rid[1:]),
            "k": 2,
            "items": items,
            "variant": variant,
            "model_version": version,
            "fallback": fallback,
            "cached": rid == "r2",
        }
        if latency is not None:
            record["latency_ms"] = latency
        assert requests.maybe_write(record)
    with requests.current.open("ab") as handle:
        handle.write(b'{"request_id": "r7", "varia')  # a write in progress
    events = [
        ("r1", 1, "click"),
        ("r1", 2, "click"),
        ("r2", 3, "click"),
        ("r2", 3, "purchase"),
        ("r3", 4, "view"),
        ("r3", 9, "click"),  # an item r3 did not show: kept, not a click on r3's answer
        ("r5", 7, "click"),
        ("r0", 1, "click"),  # its request is outside the window
        ("r99", 1, "click"),  # its request was not sampled into the log
    ]
    for rid, item, event in events:
        feedback.append({"request_id": rid, "user_id": 1, "item_id": item, "event": event})
    return since, time.time() + 1


def test_traffic_by_arm_counts_exactly_what_the_logs_hold(settings):
    since, until = _write_logs(settings)
    assert len(read_requests(settings)) == 7
    assert list(read_requests(settings, since, until)["request_id"]) == [
        f"r{i}" for i in range(1, 7)
    ]
    assert len(read_feedback(settings, since, until)) == 9
    champion, challenger = traffic_by_arm(settings, since, until, catalog_size=10)
    assert (champion.variant, champion.model_version) == ("champion", "1")
    assert (champion.requests, champion.clicked_requests, champion.clicks) == (4, 2, 3)
    assert champion.ctr == 0.5
    assert (champion.converted_requests, champion.fallbacks, champion.cached) == (1, 1, 1)
    assert champion.degraded == 0  # a cold start is the designed answer, not an error
    assert champion.p50_ms == 25.0
    assert champion.p99_ms == pytest.approx(np.percentile([10, 20, 30, 40], 99))
    assert (champion.distinct_items, champion.coverage) == (6, 0.6)
    assert (challenger.variant, challenger.model_version) == ("challenger", "2")
    assert (challenger.requests, challenger.clicked_requests, challenger.ctr) == (2, 1, 0.5)
    assert challenger.p50_ms is None and challenger.p99_ms is None
    assert (challenger.distinct_items, challenger.coverage) == (3, 0.3)
    assert (challenger.fallbacks, challenger.degraded) == (1, 1)

    everything = traffic_by_arm(settings, by=("variant",))
    by_variant = {a.variant: a for a in everything}
    assert by_variant["champion"].requests == 5  # r0 joins without a window
    assert by_variant["champion"].clicked_requests == 3
    assert by_variant["champion"].model_version is None
    assert by_variant["champion"].coverage == 6  # no catalog size: the distinct count


def test_numeric_model_versions_stay_labels_and_unrouted_requests_form_their_own_arm(settings):
    folder = settings.data_dir / "logs" / "requests"
    folder.mkdir(parents=True)
    now = time.time()
    records = [
        {"request_id": "a", "items": [1], "variant": None, "model_version": None, "logged_at": now},
        {
            "request_id": "b",
            "items": [2],
            "variant": "champion",
            "model_version": 3,
            "logged_at": now,
        },
    ]
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    arms = {(a.variant, a.model_version): a.requests for a in traffic_by_arm(settings)}
    assert arms == {(None, None): 1, ("champion", "3"): 1}


def test_traffic_by_arm_on_no_logs_is_empty(settings):
    assert traffic_by_arm(settings) == []
    assert read_feedback(settings).empty and read_requests(settings).empty


def _arm(requests: int, clicked: int) -> ArmTraffic:
    return ArmTraffic(
        None, None, requests, clicked, clicked, clicked / requests, None, None, 0, 0, 0
    )


def test_ctr_drop_fires_on_a_real_drop_and_says_why():
    finding = ctr_drop(_arm(2000, 140), baseline_ctr=0.10, baseline_requests=5000)
    assert finding.fired
    assert finding.drop == pytest.approx(0.30)
    assert finding.p_value < 0.001
    assert "z test" in finding.rule and "10%" in finding.rule


@pytest.mark.parametrize(
    ("current", "baseline_ctr", "baseline_requests", "why"),
    [
        (_arm(2000, 196), 0.10, 5000, "within"),  # a normal day: 2% below
        (_arm(150, 5), 0.10, 5000, "too little traffic"),  # big drop, tiny sample
        (_arm(5000, 400), 0.10, 150, "too little traffic"),  # tiny baseline
        (_arm(250, 20), 0.10, 300, "not significantly"),  # 20% below, but noise can do that
        (_arm(100_000, 9500), 0.10, 100_000, "within"),  # significant, but only 5% below
    ],
)
def test_ctr_drop_stays_quiet_without_a_significant_large_drop(
    current, baseline_ctr, baseline_requests, why
):
    finding = ctr_drop(current, baseline_ctr, baseline_requests)
    assert not finding.fired
    assert why in finding.reason


def test_ctr_drop_over_a_daily_series_fires_only_after_the_drop():
    rng = np.random.default_rng(5)
    requests = 3000
    ctr = [0.10] * 20 + [0.08] * 3
    clicked = rng.binomial(requests, ctr)
    fired = []
    for day in range(7, len(ctr)):
        baseline = clicked[day - 7 : day]
        finding = ctr_drop(
            _arm(requests, int(clicked[day])), baseline.sum() / (7 * requests), 7 * requests
        )
        fired.append(finding.fired)
    assert fired == [False] * 13 + [True] * 3


def test_ctr_drop_rejects_impossible_input():
    with pytest.raises(RecsysError):
        ctr_drop(_arm(10, 5), baseline_ctr=1.5, baseline_requests=100)


# ---- drift -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drifting_world():
    from recsys.synthetic import WorldConfig, generate_world

    world = generate_world(
        WorldConfig(
            n_users=1500, n_items=300, n_days=10, n_interactions=40_000, drift_day=8, seed=11
        )
    )
    return world, dict(world.batches())


def test_profile_columns_describe_taste_without_leaking_the_row_itself(drifting_world):
    world, batches = drifting_world
    names = world.batch_names
    reference = pd.concat([batches[n] for n in names[:6]])
    profile = interaction_profile(reference, world.items, reference)
    assert list(profile.columns) == list(PROFILE_COLUMNS)
    assert len(profile) == len(reference)
    assert profile["user_category_share"].between(0, 1).all()
    # leave-one-out: a user's only reference interaction says nothing about that user
    once = reference["user_id"].map(reference["user_id"].value_counts()) == 1
    assert (profile.loc[once.to_numpy(), "user_activity"] == "new").all()
    later = interaction_profile(batches[names[7]], world.items, reference)
    unseen_user = ~batches[names[7]]["user_id"].isin(reference["user_id"])
    assert (later.loc[unseen_user.to_numpy(), "user_category_share"] == 0).all()


def test_drift_fires_on_a_preference_shift_and_not_on_the_same_distribution(
    drifting_world, tmp_path
):
    world, batches = drifting_world
    names = world.batch_names
    reference = pd.concat([batches[n] for n in names[:6]])
    quiet = interaction_drift(reference, batches[names[7]], world.items, tmp_path, "day-7")
    assert not quiet.drifted, quiet.summary
    assert quiet.drifted_columns == []
    shifted = interaction_drift(reference, batches[names[9]], world.items, tmp_path, "day-9")
    assert shifted.drifted, shifted.summary
    assert "user_category_share" in shifted.drifted_columns
    assert shifted.columns["user_category_share"] > 3 * quiet.columns["user_category_share"]
    assert shifted.html_path == tmp_path / "day-9.html" and shifted.html_path.stat().st_size
    saved = json.loads(shifted.json_path.read_text())
    assert saved["drifted"] and saved["summary"] == shifted.summary
    assert saved["evidently"]["metrics"]
    assert shifted.seconds < 10


def test_drift_needs_rows_on_both_sides(drifting_world, tmp_path):
    world, batches = drifting_world
    with pytest.raises(RecsysError, match="rows on both sides"):
        interaction_drift(
            batches[world.batch_names[0]].iloc[:0],
            batches[world.batch_names[1]],
            world.items,
            tmp_path,
            "x",
        )


def _drift(drifted: bool) -> DriftResult:
    return DriftResult(
        drifted=drifted,
        share_drifted=0.43 if drifted else 0.0,
        columns={"user_category_share": 0.3 if drifted else 0.01},
        html_path=None,
        json_path=None,
        summary="",
        drifted_columns=["user_category_share"] if drifted else [],
    )


def test_drift_that_costs_no_quality_does_not_retrain_and_says_why():
    decision = drift_decision(_drift(True), quality_reference=0.20, quality_current=0.195)
    assert not decision.retrain
    assert "costs no quality" in decision.reason and "no retrain" in decision.reason
    assert decision.quality_loss == pytest.approx(0.025)


def test_quality_loss_retrains_even_when_the_drift_test_missed_it():
    decision = drift_decision(_drift(False), quality_reference=0.20, quality_current=0.15)
    assert decision.retrain
    assert decision.quality_loss == pytest.approx(0.25)
    assert "no significant drift" in decision.reason and "retrain" in decision.reason
    assert drift_decision(_drift(True), 0.20, 0.15).retrain
    assert not drift_decision(_drift(False), 0.20, 0.21).retrain


def test_a_quality_loss_within_its_noise_does_not_retrain():
    noisy = drift_decision(_drift(False), 0.20, 0.18, quality_se=0.02)
    assert not noisy.retrain and "standard errors" in noisy.reason
    assert drift_decision(_drift(False), 0.20, 0.18, quality_se=0.005).retrain


def test_without_a_quality_reference_the_drift_verdict_decides():
    assert drift_decision(_drift(True), 0.0, 0.1).retrain
    assert not drift_decision(_drift(False), 0.0, 0.1).retrain


@pytest.fixture(scope="module")
def early_release(drifting_world):
    """A real release (sources and features, no ranker) fit on the world's first 7 days."""
    from recsys.pipeline import PipelineParams, fit_stage
    from recsys.release import Release

    world, batches = drifting_world
    history = pd.concat([batches[n] for n in world.batch_names[:7]])
    item_ids = np.sort(world.items["item_id"].to_numpy())
    params = PipelineParams()
    return Release({}, fit_stage(history, world.items, item_ids, params), None, params)


def _batch(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id"])
    return frame.assign(event_type="click", value=1.0)


def test_release_quality_scores_the_release_against_what_users_did_next(
    early_release, drifting_world
):
    release = early_release
    users = release.user_ids[:40]
    top = [(int(u), int(i)) for u in users for i in release.recommend(int(u), 10).item_ids]
    measure = release_quality(release, _batch(top), k=10)
    assert (measure.users, measure.k) == (40, 10)
    assert measure.ndcg == pytest.approx(1.0)
    assert champion_quality(release, _batch(top)) == pytest.approx(1.0)
    # the same users, but each chose only items ranked below the top 10
    below = [(int(u), int(i)) for u in users for i in release.recommend(int(u), 30).item_ids[20:]]
    assert release_quality(release, _batch(below)).ndcg == 0
    # items a user had already seen are not relevant: nothing left to score
    seen = [(int(users[0]), int(release.item_ids[r])) for r in release.seen_rows(0)]
    assert release_quality(release, _batch(seen)).users == 0
    assert release_quality(release, _batch([(10**9, int(release.item_ids[0]))])).users == 0
    # a real later day: every scorable user counted, a plausible nDCG with its noise
    world, batches = drifting_world
    day = release_quality(release, batches[world.batch_names[7]], max_users=None)
    assert 0.05 < day.ndcg < 0.9 and day.users > 100 and 0 < day.se < 0.05


# ---- report ----------------------------------------------------------------------------------


def test_write_demo_report_writes_the_page_and_its_plots(tmp_path):
    out = tmp_path / "demo" / "report"
    drift_dir = tmp_path / "demo" / "reports"
    drift_dir.mkdir(parents=True)
    (drift_dir / "drift-day-3.html").write_text("<html>evidently</html>")
    (drift_dir / "drift-day-3.json").write_text("{}")
    days = [
        DayRecord(
            day=d,
            faults=["drift"] if d == 3 else [],
            ctr={"champion": 0.1 - 0.02 * (d == 3), "challenger": 0.09}
            if d >= 2
            else {"champion": 0.1},
            expected_ctr={"champion": 0.11},
            versions={
                "champion": "1" if d < 4 else "2",
                "challenger": "2" if d == 3 else None,
                "previous": None if d < 4 else "1",
            },
            p50_ms=12.0 + d,
            p99_ms=40.0 + d,
            requests=1000,
            errors=d % 2,
            notes=["<script>alert(1)</script>"] if d == 1 else [],
        )
        for d in range(6)
    ]
    incidents = [
        Incident(
            "model",
            "drift",
            "drift & quality loss <b>",
            {"share": 0.4, "report": str(drift_dir / "drift-day-3.html")},
            action="retrain",
            verified=True,
            day=3,
            fault="drift",
        )
    ]
    outcomes = [
        FaultOutcome("drift", 3, 3, "drift", "retrain", True),
        FaultOutcome("stale-cache", 4, None, None, None, False),
    ]
    agreement = [
        VersionAgreement("1", 0.20, 0.10, 5000),
        VersionAgreement("2", 0.24, 0.12, 900),
        VersionAgreement("3", 0.22, 0.05, 400),
    ]
    index = write_demo_report(out, days, incidents, outcomes, title="demo <1>", agreement=agreement)
    assert index == out / "index.html"
    page = index.read_text()
    for png in ("ctr.png", "versions.png", "latency.png", "traffic.png", "agreement.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png}"' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "demo &lt;1&gt;" in page and "drift &amp; quality loss &lt;b&gt;" in page
    assert 'href="../reports/drift-day-3.html"' in page
    assert "1 of 2 injected faults detected and healed" in page and "NOT healed" in page
    assert "Spearman" in page
    data = json.loads((out / "report.json").read_text())
    assert [o["healed"] for o in data["outcomes"]] == [True, False]
    assert len(data["days"]) == 6


def test_write_demo_report_needs_days(tmp_path):
    with pytest.raises(RecsysError):
        write_demo_report(tmp_path, [], [], [])


def test_report_timestamps_are_utc():
    incident = Incident("data", "delivery", "x", {})
    assert datetime.fromisoformat(incident.at).tzinfo == UTC
