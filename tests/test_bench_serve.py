"""`recsys bench serve` end to end on a tiny world: it trains, serves, drives locust against the
service and the trivial endpoint, and prints a sane JSON report (figures, not exact timings)."""

from __future__ import annotations

import json
import math

import pytest

from recsys.loadtest import histogram_quantile, stage_split, summarize_samples

pytestmark = pytest.mark.slow


@pytest.mark.background(
    *("bench", "serve", "--json", "--duration", "2", "--concurrency", "2", "--warmup", "20"),
    *("--dataset", "synthetic", "--items", "60", "--users", "200", "--days", "6"),
    *("--interactions", "4000"),
    timeout=600,
)
def test_bench_serve_prints_a_sane_json_report(background_run):
    """The command runs in the background from the start of the session (tests/conftest.py)."""
    code, out, err, _ = background_run
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["world"]["items"] == 60 and report["world"]["source"].startswith("temporary")
    assert report["run"]["concurrency"] == 2 and report["run"]["generator"].startswith("locust")
    for endpoint in ("service", "floor"):
        figures = report[endpoint]
        assert figures["requests"] > 20 and figures["errors"] == 0
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        assert figures["requests_per_s"] > 0 and 0 < figures["seconds"] < 10
    service = report["service"]
    assert set(service["by_kind"]) == {"known", "unknown", "repeat"}
    assert service["answers"]["features"].get("online", 0) > 0  # the world is materialized
    assert service["answers"]["fallback"].get("cold_start", 0) > 0  # the unknown users
    assert service["answers"]["cached"].get("True", 0) > 0  # the repeat users
    assert report["share_of_floor"] == pytest.approx(
        service["requests_per_s"] / report["floor"]["requests_per_s"], abs=1e-3
    )
    stages = report["in_process"]
    assert {"candidates", "features", "ranking", "total"} <= set(stages)
    assert sum(stages[s]["share"] for s in ("candidates", "features", "ranking")) == pytest.approx(
        1, abs=0.01
    )
    assert stages["total"]["requests"] >= service["requests"]
    assert 0 < stages["features"]["mean_ms"] < stages["total"]["p99_ms"] + 1000
    assert report["features"]["source"] == "online" and report["features"]["age_s"] >= 0
    assert [t["target"] for t in report["targets"]] == ["throughput >= 60% of the trivial endpoint"]


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    buckets = {0.001: 10.0, 0.002: 30.0, 0.005: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0015)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.005)
    assert math.isnan(histogram_quantile(0.5, {math.inf: 0.0}))
    before = {"ranking": {"buckets": {0.001: 5.0, math.inf: 5.0}, "count": 5.0, "sum": 0.004}}
    after = {"ranking": {"buckets": {0.001: 9.0, math.inf: 10.0}, "count": 10.0, "sum": 0.014}}
    split = stage_split(before, after)["ranking"]
    assert split["requests"] == 5 and split["mean_ms"] == pytest.approx(2.0)
    assert split["share"] == 1.0


def test_samples_summary_counts_errors_apart_from_latencies():
    samples = {
        "latency_ms": {"known": [1.0, 2.0, 3.0], "repeat": [0.5]},
        "errors": {"CatchResponseError": 2},
        "answers": {"cached": {"True": 1, "False": 3}},
        "window": {"first_start": 100.0, "last_end": 102.0},
    }
    result = summarize_samples(samples)
    assert result.requests == 6 and result.errors == 2
    assert result.requests_per_s == 2.0  # 4 answered in 2 s
    assert result.by_kind["known"]["requests"] == 3 and result.max_ms == 3.0
