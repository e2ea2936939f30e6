"""`recsys doctor --json` finds each fault, injected one at a time through the system's real
interfaces (the MLflow registry, the service's /admin/fault drill, the lake, the feature store),
against a real `bentoml serve` on loopback and one shared world; a healthy system exits 0.

The CLI runs in-process through typer's CliRunner (a subprocess would pay its imports and a
Prefect API start-up on every run), with its settings from the environment as a user's shell
gives them. The faults share one world and one service, so the tests run in file order: each
leaves the system healthy again (the reset is part of the test), and the latency drill is last
because the degraded answers it causes stay in the doctor's traffic window.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from conftest import drilled_service

from features.store import materialize
from flows.demo import SourceSystem, _deliver, _land_world, demo_settings
from recsys.ingest import ingest_all
from recsys.simulate import simulate_day
from recsys.synthetic import WorldConfig, generate_world

pytestmark = pytest.mark.slow

WARM = 8


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A world whose first WARM - 1 days are ingested, materialized and trained on, and a real
    service with an admin token and fault drills enabled."""
    from recsys.config import Settings
    from recsys.gate import register_with_gate
    from recsys.train import pipeline_params, train_and_evaluate

    settings = demo_settings(
        Settings(data_dir=tmp_path_factory.mktemp("doctor"), admin_token=secrets.token_urlsafe(16))
    )
    world = generate_world(
        WorldConfig(
            n_users=300, n_items=100, n_days=12, n_interactions=900 * 12, seed=11, drift_share=0.5
        )
    )
    names = world.batch_names
    _land_world(settings, world, names[: WARM - 1])
    # the pipeline's steps as the flows run them (the doctor is what is tested here)
    ingest_all(settings.lake)
    materialize(settings)
    result = train_and_evaluate(
        settings.lake, pipeline_params(settings), budget_s=0.0, model_name=settings.model_name
    )
    assert register_with_gate(settings, result)[1].alias == "champion"
    with drilled_service(settings) as admin:
        yield settings, world, SourceSystem(world), names, admin


def doctor(live, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """`recsys doctor --json --url URL [ARGS]` as a user runs it: (exit code, the JSON report).
    ``env``: more environment for the run."""
    from typer.testing import CliRunner

    from recsys.cli import app

    settings, *_, admin = live
    env = {
        "RECSYS_DATA_DIR": str(settings.data_dir),
        "RECSYS_ADMIN_TOKEN": admin.token,
        **(env or {}),
    }
    result = CliRunner().invoke(app, ["doctor", "--json", "--url", admin.url, *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    start = result.stdout.index('{\n  "healthy"')
    return result.exit_code, json.loads(result.stdout[start:])


def failing(report: dict) -> list[tuple[str, str, str | None]]:
    return [(f["layer"], f["check"], f["fix"]) for f in report["findings"] if not f["ok"]]


def assert_finds(live, layer: str, check: str, fix: str | None) -> dict:
    """The doctor fails exactly ``check`` (in ``layer``, asking for ``fix``) and exits 1."""
    code, report = doctor(live)
    assert failing(report) == [(layer, check, fix)], [
        (f["check"], f["seen"]) for f in report["findings"] if not f["ok"]
    ]
    assert code == 1 and report["healthy"] is False
    return next(f for f in report["findings"] if f["check"] == check)


def _traffic(live, n: int, seed: int):
    _settings, world, *_, admin = live
    traffic = simulate_day(admin.url, world.click_model(), WARM, n, seed=seed, concurrency=4)
    assert traffic.errors == 0, traffic.error_examples
    return traffic


def test_a_healthy_system_exits_0(live):
    code, report = doctor(live)
    assert failing(report) == [] and report["healthy"] is True
    assert code == 0
    checks = [f["check"] for f in report["findings"]]
    assert checks[:4] == ["delivery", "readiness", "model_version", "cache_version"]
    assert {"latency", "feature_freshness", "feature_skew", "drift"} <= set(checks)
    assert all(f["checked"] for f in report["findings"])


def test_without_an_admin_token_the_service_checks_say_skipped_not_ok(live):
    # the service is asked only with the token: a doctor run without it must not read as if the
    # service had been found healthy (it said "ok: no service to check")
    from typer.testing import CliRunner

    from recsys.cli import app

    settings, *_, admin = live
    env = {"RECSYS_DATA_DIR": str(settings.data_dir), "RECSYS_ADMIN_TOKEN": ""}
    result = CliRunner().invoke(app, ["doctor", "--url", admin.url], env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if "│" in line}
    for check in ("readiness", "model_version", "cache_version"):
        assert "skipped" in rows[check] and " ok " not in rows[check], result.stdout
    assert "ok" in rows["delivery"]
    assert "3 not checked (readiness, model_version, cache_version)" in result.stdout


def test_a_service_that_does_not_answer_is_said_so_and_pages_a_person(live):
    # it read "readiness FAIL: the service is not ready" with the fix "reload" (which cannot
    # reach it either), and model_version / cache_version each "failed themselves"
    from typer.testing import CliRunner

    from recsys.cli import app
    from recsys.server import free_port

    settings, *_, admin = live
    url = f"http://127.0.0.1:{free_port()}"
    env = {"RECSYS_DATA_DIR": str(settings.data_dir), "RECSYS_ADMIN_TOKEN": admin.token}
    result = CliRunner().invoke(app, ["doctor", "--json", "--fix", "--url", url], env=env)
    report = json.loads(result.stdout[result.stdout.index('{\n  "healthy"') :])
    findings = {f["check"]: f for f in report["findings"]}
    assert failing(report) == [("serving", "readiness", "alert")]
    assert findings["readiness"]["seen"].startswith(f"the service at {url}: nothing answers")
    for check in ("model_version", "cache_version"):
        assert findings[check]["checked"] is False
        assert "the service does not answer" in findings[check]["seen"]
    assert report["needs_a_person"] == ["readiness"] and result.exit_code == 1


def test_wrong_model_version_served(live):
    from recsys.registry import configure_mlflow, version_for_alias

    settings, *_, admin = live
    client = configure_mlflow(settings)
    served = admin.served_versions()["champion"]
    # a hot fix registered and made champion in the registry; the service was never reloaded
    hotfix = client.copy_model_version(
        f"models:/{settings.model_name}/{served}", settings.model_name
    )
    client.set_registered_model_alias(settings.model_name, "champion", hotfix.version)
    try:
        finding = assert_finds(live, "serving", "model_version", "reload")
        assert finding["evidence"]["mismatch"] == {
            "champion": {"served": served, "registry": str(hotfix.version)}
        }
    finally:
        client.set_registered_model_alias(settings.model_name, "champion", served)
    assert version_for_alias(settings, "champion") == served


def test_a_champion_alias_on_a_rejected_version_is_rolled_back(live):
    # an alias moved by hand (MLflow UI) onto a version the gate or a canary refused: the service
    # served it once reloaded, and the doctor said healthy
    from recsys.registry import configure_mlflow, version_for_alias

    settings, *_, admin = live
    client = configure_mlflow(settings)
    name = settings.model_name
    served = admin.served_versions()["champion"]
    bad = client.copy_model_version(f"models:/{name}/{served}", name).version
    client.set_model_version_tag(name, bad, "rejected", "true")
    client.set_model_version_tag(name, bad, "rejection_reason", "canary lost CTR")
    client.set_registered_model_alias(name, "previous", served)
    client.set_registered_model_alias(name, "champion", bad)
    try:
        finding = assert_finds(live, "serving", "model_version", "rollback_champion")
        assert finding["evidence"]["rejected"] == {
            "champion": {"version": str(bad), "reason": "canary lost CTR"}
        }
        code, report = doctor(live, "--fix")
        assert report["fixes"] == [
            {"check": "model_version", "action": "rollback_champion", "verified": True}
        ]
        assert code == 0
    finally:
        client.set_registered_model_alias(name, "champion", served)
        client.delete_registered_model_alias(name, "previous")
    assert version_for_alias(settings, "champion") == served
    assert admin.served_versions() == {"champion": served}


def test_a_canary_stopped_by_hand_and_left_in_place_is_resumed(live):
    # `/admin/canary {"share": 0}` with the challenger alias left in place: the service served
    # the challenger to no user and the doctor said "canary continues: collecting" forever
    from recsys.guardian import Cycle, GuardianPolicy, check_canary
    from recsys.registry import configure_mlflow, version_for_alias
    from recsys.server import free_port

    settings, *_, admin = live
    client = configure_mlflow(settings)
    name = settings.model_name
    champion = admin.served_versions()["champion"]
    share = admin.status()["canary_share"]
    challenger = str(client.copy_model_version(f"models:/{name}/{champion}", name).version)
    client.set_registered_model_alias(name, "challenger", challenger)
    try:
        admin.reload()
        admin.set_canary(0.0)
        assert admin.served_versions() == {"champion": champion, "challenger": challenger}
        finding = assert_finds(live, "canary", "canary", "resume_canary")
        assert finding["seen"].startswith(
            f"canary stalled: challenger v{challenger} is loaded at share 0"
        )
        # a service that cannot be asked leaves the canary to the traffic, as before
        unreachable = type(admin)(f"http://127.0.0.1:{free_port()}", admin.token)
        for asked in (None, unreachable):
            cycle = Cycle(settings, asked, (0.0, 1e10), None)
            assert check_canary(cycle).ok
        # canaries turned off where the guardian runs (share 0 configured): nothing to resume
        off = settings.model_copy(update={"canary_share": 0.0})
        assert check_canary(Cycle(off, admin, (0.0, 1e10), None)).ok
        # resumed at the one configured share (RECSYS_CANARY_SHARE), not a guardian default
        code, report = doctor(live, "--fix", env={"RECSYS_CANARY_SHARE": "0.3"})
        assert report["fixes"] == [{"check": "canary", "action": "resume_canary", "verified": True}]
        assert code == 0
        assert admin.status()["canary_share"] == 0.3
        assert GuardianPolicy().canary_share is None
        code, report = doctor(live)
        assert failing(report) == [] and code == 0
    finally:
        client.delete_registered_model_alias(name, "challenger")
        admin.set_canary(share)
        admin.reload()
    assert version_for_alias(settings, "challenger") is None
    assert admin.served_versions() == {"champion": champion}


def test_stale_cache(live):
    *_, admin = live
    _traffic(live, 40, seed=1)  # fills the cache (fewer answers than the latency check judges)
    assert admin.inject_fault("stale-cache")["entries"] > 0
    try:
        finding = assert_finds(live, "serving", "cache_version", "flush_cache")
        assert finding["evidence"]["stale_entries"] > 0
        code, report = doctor(live, "--fix")  # the fix, verified by looking again
        assert code == 0, report
        flushed = {"check": "cache_version", "action": "flush_cache", "verified": True}
        assert report["fixes"] == [flushed]
    finally:
        admin.flush_cache()
    assert admin.status()["cache"]["stale_entries"] == 0


def test_stale_online_store(live):
    from recsys.guardian import Cycle, check_feature_freshness

    settings, _, source, names, _ = live
    batch = names[WARM - 1]
    _deliver(settings, batch, source(batch), corrupt=False, seed=1)
    ingest_all(settings.lake, [batch])  # the features flow silently does not run
    try:
        finding = assert_finds(live, "features", "feature_freshness", "backfill")
        assert finding["evidence"]["newest_clean_day"] == batch
    finally:
        materialize(settings)
    assert check_feature_freshness(Cycle(settings, None, (0.0, 0.0), None)).ok


def test_corrupt_batch_delivery(live):
    import pyarrow as pa

    from recsys.contract import INTERACTIONS_SCHEMA, conform
    from recsys.faults import corrupt_delivery

    settings, _, source, names, _ = live
    batch = names[WARM - 1]  # the newest day, sent again by a broken producer
    lake = settings.lake
    broken = corrupt_delivery(source(batch), seed=2)
    lake.land_redelivery(batch, pa.Table.from_pandas(broken, preserve_index=False))
    ingest_all(settings.lake, [batch])
    try:
        finding = assert_finds(live, "data", "delivery", "redeliver_reingest")
        bad = finding["evidence"]["batches"][batch]
        assert bad["delivery"] == f"{batch}@r1"
        assert bad["quarantined_share"] == 1.0 and bad["row_count_anomaly"] is True
    finally:
        # the producer sends the day again, whole: the clean rows are the ones the features
        # were built from, so the online store needs nothing
        good = conform(source(batch), INTERACTIONS_SCHEMA).to_pandas()
        lake.land_redelivery(batch, pa.Table.from_pandas(good, preserve_index=False))
        ingest_all(settings.lake, [batch])
    assert len(lake.read_clean_interactions([batch])) == len(source(batch))


def test_a_check_that_can_only_page_a_person_is_not_called_fixed(live, monkeypatch):
    # a check that crashes asks for "alert"; the alert is delivered, but nothing was healed:
    # `doctor --fix` said "fixed and verified" and exited 0
    import recsys.guardian as guardian

    def broken(cycle):
        raise RuntimeError("the drift reference is unreadable")

    checks = tuple((n, broken if n == "drift" else c) for n, c in guardian.CHECKS)
    monkeypatch.setattr(guardian, "CHECKS", checks)
    code, report = doctor(live, "--fix")
    assert failing(report) == [("model", "drift", "alert")]
    assert report["fixes"] == [{"check": "drift", "action": "alert", "verified": True}]
    assert code == 1 and report["healthy"] is False
    assert report["needs_a_person"] == ["drift"]


def test_latency_and_degraded_answers(live):
    *_, admin = live
    admin.flush_cache()  # every answer below goes to the broken model, none to the cache
    assert admin.inject_fault("model-error")["models"] == ["champion"]
    try:
        _traffic(live, 60, seed=2)
        finding = assert_finds(live, "serving", "latency", "alert")
        assert finding["evidence"]["degraded_answers"] >= 50  # new users get the cold-start list
        assert "degraded" in finding["seen"]
    finally:
        admin.inject_fault("clear")
    user = int(live[0].lake.read_clean_interactions()["user_id"].iloc[0])
    answer = httpx.post(f"{admin.url}/recommend", json={"user_id": user, "k": 5}, timeout=30)
    answer = answer.json()
    assert answer["fallback"] is None and answer["model_version"] is not None


def test_the_table_shows_each_finding_whole_up_to_240_characters(tmp_path):
    # the evidence was cut at 90 characters, and with it the advice at its end: on a new data
    # dir the skew check's row read "... no offline features under DIR; run `"
    from features.offline import newest_snapshot
    from features.store import FeaturePaths
    from flows.cli import doctor_row
    from recsys.errors import RecsysError
    from recsys.guardian import Finding, FixOutcome

    with pytest.raises(RecsysError) as refused:
        newest_snapshot(FeaturePaths(tmp_path / "a-data-dir-of-a-new-user"))
    seen = f"nothing to compare yet: {refused.value}"
    assert 90 < len(seen) <= 240
    row = doctor_row(Finding("features", "feature_skew", True, seen), None)
    assert row == ["features", "feature_skew", "ok", seen, "-"]
    assert row[3].endswith("run `recsys features materialize`")
    long = Finding("model", "drift", False, "x" * 300, fix="retrain")
    row = doctor_row(long, FixOutcome("retrain", verified=True))
    assert row[2:] == ["FAIL", "x" * 239 + "…", "retrain: verified"]
    assert doctor_row(long, None)[4] == "retrain (not applied: --fix)"
