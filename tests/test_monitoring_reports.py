"""The daily model reports (``monitoring.quality``) and the drift decision written into the drift
report (``monitoring.drift.record_decision``), on logs written by the service's own log writers
and on the session's trained world (read from a copy: the fixture stays untouched)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import (
    DriftResult,
    annotate_html,
    drift_decision,
    evidently_drift,
    record_decision,
)
from monitoring.quality import (
    cycle_reports,
    daily_model_reports,
    model_reference,
    ranking_quality,
    served_predictions,
)
from monitoring.traffic import read_feedback, read_requests
from recsys.errors import RecsysError
from serving.logs import FeedbackLog, RequestLog


def _logs(settings) -> tuple[RequestLog, FeedbackLog]:
    folder = settings.data_dir / "logs"
    return RequestLog(folder / "requests", 1.0, 10**9), FeedbackLog(folder / "feedback")


def _answer(request_id, items, scores=None, variant="champion", version="1", fallback=None):
    record = {
        "request_id": request_id,
        "user_id": 1,
        "k": len(items),
        "items": [int(i) for i in items],
        "variant": variant,
        "model_version": version,
        "fallback": fallback,
        "cached": False,
        "latency_ms": 3.0,
    }
    if scores is not None:
        record["scores"] = [float(s) for s in scores]
    return record


# ---- prediction drift ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory):
    """A copy of the trained world's data dir (lake and registry): reports and logs go there."""
    from recsys.config import Settings

    settings, registered, result = trained_world
    copy = tmp_path_factory.mktemp("reports-world") / "data"
    shutil.copytree(settings.data_dir, copy, ignore=shutil.ignore_patterns("logs", "reports"))
    return Settings(data_dir=copy, seed=settings.seed), registered.version, result.release


@pytest.fixture(scope="module")
def reference(world):
    """The reference of the registered version, computed from the registry and kept in reports/
    (the daily reports below read it from there)."""
    settings, version, _ = world
    reference, _ = model_reference(settings, version, settings.data_dir / "reports", 10)
    return reference


def test_the_reference_is_what_the_release_serves_its_holdout_users(world, reference):
    settings, _, release = world
    window = release.meta["training_window"]
    frame = settings.lake.read_clean_interactions()
    holdout = frame[frame["timestamp"] >= pd.Timestamp(window["holdout_start"])]
    assert set(reference["user_id"]) <= set(holdout["user_id"])
    assert len(reference) >= 1000  # enough values for Evidently's distance tests
    for user in reference["user_id"].drop_duplicates().iloc[:3]:
        mine = reference[reference["user_id"] == user].sort_values("rank")
        served = release.recommend(int(user), 10)
        assert mine["item_id"].tolist() == served.item_ids.tolist()
        np.testing.assert_allclose(mine["score"], served.scores, rtol=1e-5)
    assert reference["popularity_pct"].between(0, 1).all()


def _write_day(requests: RequestLog, rows: pd.DataFrame, version: str, rng, shift: float = 0.0):
    """Answers of 10 items drawn from ``rows`` (items with their scores and popularity)."""
    for _ in range(len(rows) // 10):
        pick = rows.iloc[rng.choice(len(rows), 10, replace=False)]
        pick = pick.sort_values("score", ascending=False)
        requests.maybe_write(
            _answer(
                f"r{rng.integers(1e12)}",
                pick["item_id"],
                pick["score"] + shift,
                "champion",
                version,
            )
        )


def test_prediction_drift_fires_on_shifted_scores_and_not_on_scores_like_the_reference(
    world, reference
):
    settings, version, _ = world
    requests, _ = _logs(settings)
    rng = np.random.default_rng(3)
    spread = float(reference["score"].std())
    t0 = time.time()
    _write_day(requests, reference.sample(3000, replace=True, random_state=1), version, rng)
    # cold-start answers carry popularity scores on another scale: they are not the model's
    for i in range(50):
        requests.maybe_write(
            _answer(f"cold{i}", [1, 2, 3], [900.0, 800.0, 700.0], "champion", version, "cold_start")
        )
    t1 = time.time()
    _write_day(requests, reference.sample(3000, replace=True, random_state=2), version, rng, spread)
    t2 = time.time()
    out = settings.data_dir / "reports"

    same = daily_model_reports(settings, t0, t1, out, "day-1")
    shifted = daily_model_reports(settings, t1, t2, out, "day-2")

    calm, moved = same.prediction_drift[version], shifted.prediction_drift[version]
    assert not calm.drifted and calm.drifted_columns == [], calm.summary
    assert moved.drifted and "score" in moved.drifted_columns, moved.summary
    assert "popularity_pct" not in moved.drifted_columns  # the same items, only scores moved
    assert moved.columns["score"] > moved.thresholds["score"] > calm.columns["score"]
    assert calm.current_rows == 3000  # the cold-start answers are left out
    for label, drift in (("day-1", calm), ("day-2", moved)):
        assert drift.html_path == out / f"prediction-drift-{label}-v{version}.html"
        page = drift.html_path.read_text()
        assert f"Prediction drift of model v{version}" in page
        payload = json.loads(drift.json_path.read_text())
        assert payload["drifted"] == drift.drifted and payload["model_version"] == version
        assert payload["evidently"]["metrics"]  # Evidently's own snapshot
    assert (out / f"prediction-reference-v{version}.parquet").is_file()  # kept for later days
    # the ranking report of the same window lands beside it
    assert (
        json.loads((out / "ranking-quality-day-1.json").read_text())["arms"][0]["requests"] == 350
    )


def test_a_log_without_scores_is_reported_as_skipped_not_as_no_drift(world):
    settings, version, _ = world
    requests, _ = _logs(settings)
    t0 = time.time()
    for i in range(20):
        requests.maybe_write(_answer(f"old{i}", [5, 6, 7], None, "champion", version))
    reports = daily_model_reports(settings, t0, time.time(), settings.data_dir / "r2", "day-9")
    assert version not in reports.prediction_drift
    assert (
        "ranked no logged answer with scores"
        in reports.skipped[f"prediction-drift-day-9-v{version}"]
    )
    assert "ranking-quality-day-9" in reports.written  # the ranking report does not need scores


def test_served_predictions_refuse_a_log_line_with_mismatched_scores():
    frame = pd.DataFrame([_answer("bad", [1, 2, 3], [0.5, 0.4])])
    with pytest.raises(RecsysError, match="3 items but 2 scores"):
        served_predictions(frame, "1", pd.Series(dtype=float))


# ---- ranking quality -------------------------------------------------------------------------

LISTS = {  # request -> (variant, version, served items)
    "r1": ("champion", "3", [10, 11, 12, 13]),
    "r2": ("champion", "3", [10, 11, 12, 13]),
    "r3": ("champion", "3", [20, 21, 22, 23]),
    "r4": ("champion", "3", [10, 11, 12, 13]),
    "c1": ("challenger", "4", [30, 31, 32, 33]),
    "c2": ("challenger", "4", [30, 31]),
}
FEEDBACK = [  # (request, item, event)
    ("r1", 12, "click"),
    ("r2", 10, "click"),
    ("r2", 13, "click"),
    ("r4", 99, "click"),  # a click on an item that was not served: CTR, not a hit
    ("c1", 31, "click"),
    ("c1", 31, "click"),  # clicked twice: one relevant item
    ("c1", 30, "view"),  # not a click
    ("c2", 30, "click"),
    ("gone", 10, "click"),  # a request that is not in the log
]


def _expected(variant: str, k: int) -> dict[str, float]:
    """The textbook formulas, computed here from LISTS and FEEDBACK."""
    mine = {r: items for r, (v, _, items) in LISTS.items() if v == variant}
    clicks = {(r, i) for r, i, e in FEEDBACK if e == "click"}
    hit, precision, ndcg, mrr, clicked = [], [], [], [], []
    for request, items in mine.items():
        relevant = [i for i in items if (request, i) in clicks]
        top = items[:k]
        hits = [int((request, i) in clicks) for i in top]
        hit.append(float(any(hits)))
        precision.append(sum(hits) / min(k, len(items)))
        dcg = sum(h / np.log2(rank + 2) for rank, h in enumerate(hits))
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(k, len(relevant))))
        ndcg.append(dcg / ideal if ideal else 0.0)
        mrr.append(1 / (hits.index(1) + 1) if any(hits) else 0.0)
        clicked.append(any(r == request for r, _ in clicks))
    return {
        "ctr": float(np.mean(clicked)),
        "hit_rate": float(np.mean(hit)),
        "precision": float(np.mean(precision)),
        "ndcg": float(np.mean(ndcg)),
        "mrr": float(np.mean(mrr)),
    }


def test_ranking_quality_equals_the_hand_computed_metrics(settings, tmp_path):
    requests, feedback = _logs(settings)
    for request, (variant, version, items) in LISTS.items():
        requests.maybe_write(_answer(request, items, None, variant, version))
    for request, item, event in FEEDBACK:
        feedback.append({"request_id": request, "user_id": 1, "item_id": item, "event": event})

    report = ranking_quality(read_requests(settings), read_feedback(settings), tmp_path, "rq", k=3)

    arms = {a.variant: a for a in report.arms}
    assert set(arms) == {"champion", "challenger"}
    champion, challenger = arms["champion"], arms["challenger"]
    assert (champion.model_version, champion.requests, champion.impressions) == ("3", 4, 16)
    assert (champion.clicks, challenger.clicks) == (4, 3)
    assert champion.ctr == 0.75 and champion.hit_rate == 0.5  # r4's click missed the list
    for arm in (champion, challenger):
        expected = _expected(arm.variant, 3)
        got = {n: getattr(arm, n) for n in expected}
        assert got == pytest.approx(expected, abs=1e-9), arm.variant
    assert champion.ndcg == pytest.approx((0.5 + 1 / (1 + 1 / np.log2(3))) / 4)
    payload = json.loads(report.json_path.read_text())
    assert payload["arms"][0]["ndcg"] == pytest.approx(champion.ndcg)
    assert payload["evidently"]["metrics"]
    page = report.html_path.read_text()
    assert "Ranking quality of the served lists against the clicks" in page
    assert "<td>challenger</td>" in page

    # a k beyond the longest served list is cut to it (4 items here)
    longer = ranking_quality(read_requests(settings), read_feedback(settings), tmp_path, "rq10")
    for arm in longer.arms:
        assert arm.k == 4
        expected = _expected(arm.variant, 4)
        assert {n: getattr(arm, n) for n in expected} == pytest.approx(expected, abs=1e-9)


def test_ranking_quality_needs_logged_answers_and_a_positive_k(settings, tmp_path):
    with pytest.raises(RecsysError, match="no logged answer"):
        ranking_quality(read_requests(settings), read_feedback(settings), tmp_path, "rq")
    requests, _ = _logs(settings)
    requests.maybe_write(_answer("r1", [1, 2]))
    with pytest.raises(RecsysError, match="k must be positive"):
        ranking_quality(read_requests(settings), read_feedback(settings), tmp_path, "rq", k=0)


def test_the_monitor_cycle_writes_a_simulated_day_and_a_wall_clock_day_once(settings):
    from recsys.guardian import Cycle

    requests, feedback = _logs(settings)
    t0 = time.time()
    requests.maybe_write(_answer("r1", [1, 2, 3], None, "champion", None))
    feedback.append({"request_id": "r1", "user_id": 1, "item_id": 2, "event": "click"})
    day = Cycle(settings, None, (t0, time.time() + 1), None, day=4)
    written = cycle_reports(day)
    assert set(written.written) == {"ranking-quality-day-4"}
    assert (settings.data_dir / "reports" / "ranking-quality-day-4.json").is_file()
    # on the wall clock the report covers yesterday (UTC): no traffic then, so nothing yet
    live = Cycle(settings, None, (t0, time.time() + 1), None)
    skipped = cycle_reports(live)
    assert skipped.written == {} and "no logged answer" in skipped.skipped["all"]
    yesterday = settings.data_dir / "reports" / f"ranking-quality-{skipped.label}.json"
    yesterday.write_text("{}")
    assert cycle_reports(live) is None  # written once a day


# ---- the drift decision in the drift report --------------------------------------------------


def _saved_drift(tmp_path, shift: float) -> DriftResult:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000)})
    current = pd.DataFrame({"a": rng.normal(shift, size=2000), "b": rng.normal(size=2000)})
    return evidently_drift(
        reference,
        current,
        numerical=("a", "b"),
        categorical=(),
        share_threshold=0.5,
        decisive=("a",),
        what="test",
        out_dir=tmp_path,
        name=f"drift-{shift}",
    )


def test_the_drift_report_says_why_drift_without_quality_loss_does_not_retrain(tmp_path):
    drift = _saved_drift(tmp_path, 1.0)
    assert drift.drifted
    record_decision(drift, drift_decision(drift, 0.30, 0.29, tolerance=0.15))
    page = drift.html_path.read_text()
    assert "Guardian decision: no retrain" in page
    assert "Drift alone does not retrain" in page
    decision = json.loads(drift.json_path.read_text())["decision"]
    assert decision["retrain"] is False and decision["verdict"] == "no retrain"
    assert "costs no quality" in decision["reason"] and "Drift alone" in decision["why"]

    # the same report decided again (a quality loss) carries only the new decision
    record_decision(drift, drift_decision(drift, 0.30, 0.20, tolerance=0.15))
    page = drift.html_path.read_text()
    assert "Guardian decision: retrain" in page and "no retrain" not in page
    decision = json.loads(drift.json_path.read_text())["decision"]
    assert decision["retrain"] is True and "fell beyond the 15% tolerance" in decision["reason"]


def test_a_quality_loss_without_drift_says_the_loss_decided(tmp_path):
    drift = _saved_drift(tmp_path, 0.0)
    assert not drift.drifted
    record_decision(drift, drift_decision(drift, 0.30, 0.20, tolerance=0.15))
    assert "the measured quality loss decides" in drift.html_path.read_text()


def test_a_decision_needs_a_saved_report(tmp_path):
    unsaved = DriftResult(True, 1.0, {"a": 0.5}, None, None, "drift")
    with pytest.raises(RecsysError, match="not saved"):
        record_decision(unsaved, drift_decision(unsaved, 0.3, 0.3))
    with pytest.raises(RecsysError, match="no report to annotate"):
        annotate_html(tmp_path / "missing.html", "x", [])
