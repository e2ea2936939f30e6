"""Each fault alone, injected into a real system and healed by the guardian flow (Prefect runs,
a real MLflow registry, a real Feast online store, a real `bentoml serve` on loopback answering
simulated users), asserting the exact detection, the exact healing action, and that no row was
lost. The canary is tested both ways: a truly better challenger is promoted, a worse one rolled
back."""

from __future__ import annotations

import secrets

import pytest
from conftest import drilled_service

from flows.demo import SourceSystem, _deliver, _inject_bad_model, _land_world, demo_settings
from flows.features import features_flow
from flows.guardian import guardian_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from recsys.guardian import Cycle, GuardianPolicy
from recsys.simulate import simulate_day
from recsys.synthetic import WorldConfig, generate_world

pytestmark = pytest.mark.slow

WARM = 8


@pytest.fixture
def settings(settings):
    """The demo's training size: seconds per retrain."""
    return demo_settings(settings)


def _system(settings, drift_day=None, n_days=12):
    """A world whose first WARM - 1 days are ingested, materialized and trained on."""
    world = generate_world(
        WorldConfig(
            n_users=400,
            n_items=120,
            n_days=n_days,
            n_interactions=1200 * n_days,
            seed=11,
            drift_day=drift_day,
            drift_share=0.5,
        )
    )
    names = world.batch_names
    _land_world(settings, world, names[: WARM - 1])
    ingest_flow(settings, batches=names[: WARM - 1])
    features_flow(settings)
    train_flow(settings, window_days=None, budget_s=0.0)
    return world, SourceSystem(world), names


def _cycle(settings, batch, source, admin=None, **kw) -> Cycle:
    import time

    now = time.time()
    return Cycle(
        settings=settings,
        admin=admin,
        current=kw.pop("current", (now - 3600, now)),
        baseline=kw.pop("baseline", None),
        batches=[batch] if batch else [],
        source=source,
        policy=kw.pop(
            "policy", GuardianPolicy(retrain_budget_s=0.0, min_requests=150, canary_share=0.5)
        ),
        day=kw.pop("day", 1),
    )


def test_corrupt_batch_is_quarantined_redelivered_and_reingested(settings):
    _world, source, names = _system(settings)
    batch = names[WARM - 1]
    _deliver(settings, batch, source(batch), corrupt=True, seed=1)
    (result,) = ingest_flow(settings, batches=[batch])
    report = result["report"]
    assert report["clean_rows"] == 0 and report["quarantined_rows"] == report["raw_rows"]
    features_flow(settings)

    _findings, incidents = guardian_flow(_cycle(settings, batch, source))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("delivery", "redeliver+reingest", True)
    ]
    lake = settings.lake
    assert lake.deliveries(batch) == [batch, f"{batch}@r1"]
    # nothing lost: the corrupt delivery is kept whole in the quarantine, the day is complete
    assert len(lake.read_clean_interactions([batch])) == len(source(batch))
    quarantined = lake.quarantine_dir(batch) / "rows.parquet"
    import pandas as pd

    assert len(pd.read_parquet(quarantined)) == len(lake.read_raw_delivery(batch))
    # the next cycle finds nothing wrong
    _, again = guardian_flow(_cycle(settings, batch, source, day=2))
    assert again == []


def test_stale_online_store_is_backfilled(settings):
    _world, source, names = _system(settings)
    batch = names[WARM - 1]
    _deliver(settings, batch, source(batch), corrupt=False, seed=1)
    ingest_flow(settings, batches=[batch])  # the features flow silently does not run

    findings, incidents = guardian_flow(_cycle(settings, batch, source))
    failing = [f.check for f in findings if not f.ok]
    assert failing == ["feature_freshness"]
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("feature_freshness", "backfill", True)
    ]
    _, again = guardian_flow(_cycle(settings, batch, source, day=2))
    assert again == []


def test_drift_with_quality_loss_triggers_a_retrain_into_the_canary(settings):
    from recsys.promotion import aliases

    _world, source, names = _system(settings, drift_day=WARM - 1)
    batch = names[WARM - 1]
    _deliver(settings, batch, source(batch), corrupt=False, seed=1)
    ingest_flow(settings, batches=[batch])
    features_flow(settings)
    findings, incidents = guardian_flow(_cycle(settings, batch, source))
    drift = next(f for f in findings if f.check == "drift")
    assert not drift.ok and drift.evidence["quality_loss"] > 0.05
    assert [(i.check, i.action, i.verified) for i in incidents] == [("drift", "retrain", True)]
    names_now = aliases(settings)
    assert names_now["challenger"] is not None and names_now["challenger"] != names_now["champion"]


def test_no_drift_no_retrain(settings):
    _world, source, names = _system(settings)
    batch = names[WARM - 1]
    _deliver(settings, batch, source(batch), corrupt=False, seed=1)
    ingest_flow(settings, batches=[batch])
    features_flow(settings)
    findings, incidents = guardian_flow(_cycle(settings, batch, source))
    assert incidents == []
    drift = next(f for f in findings if f.check == "drift")
    assert drift.ok and drift.evidence["reason"]


# ---- against a live service ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A trained system and a real service with admin token and fault drills enabled."""
    from recsys.config import Settings

    settings = demo_settings(
        Settings(data_dir=tmp_path_factory.mktemp("live"), admin_token=secrets.token_urlsafe(16))
    )
    world, source, names = _system(settings)
    with drilled_service(settings) as admin:
        yield settings, world, source, names, admin


def _traffic(live, day: int, n: int = 600):
    _settings, world, _, _, admin = live
    return simulate_day(admin.url, world.click_model(), WARM, n, seed=day, concurrency=4)


def _live_cycle(live, traffic, baseline=None, day=1) -> Cycle:
    settings, _, source, _, admin = live
    return _cycle(
        settings,
        None,
        source,
        admin,
        current=(traffic.started, traffic.finished),
        baseline=baseline,
        day=day,
    )


def test_stale_cache_is_detected_and_flushed(live):
    _settings, *_, admin = live
    traffic = _traffic(live, 1, 200)
    assert traffic.errors == 0
    drill = admin.inject_fault("stale-cache")
    assert drill["entries"] > 0
    _findings, incidents = guardian_flow(_live_cycle(live, traffic))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("cache_version", "flush_cache", True)
    ]
    assert admin.status()["cache"]["stale_entries"] == 0


def test_worse_challenger_is_rolled_back(live):
    from recsys.promotion import aliases, promotion_history

    settings, *_, admin = live
    champion = aliases(settings)["champion"]
    bad = _inject_bad_model(settings, None, as_champion=False)
    admin.reload()
    admin.set_canary(0.5)
    traffic = _traffic(live, 2)
    assert {a.variant for a in traffic.arms.values()} >= {"champion", "challenger"}
    _, incidents = guardian_flow(_live_cycle(live, traffic, day=2))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("canary", "rollback_challenger", True)
    ]
    assert aliases(settings)["champion"] == champion and aliases(settings)["challenger"] is None
    assert admin.served_versions() == {"champion": champion}
    assert promotion_history(settings)[-1].action == "reject_challenger"
    from recsys.registry import configure_mlflow

    tags = configure_mlflow(settings).get_model_version(settings.model_name, bad).tags
    assert tags.get("rejected") == "true"


def test_degraded_champion_is_rolled_back_to_previous(live):
    from recsys.promotion import aliases

    settings, *_, admin = live
    good = aliases(settings)["champion"]
    before = _traffic(live, 3, 400)
    bad = _inject_bad_model(settings, None, as_champion=True)
    admin.reload()
    assert admin.served_versions()["champion"] == bad
    after = _traffic(live, 4, 400)
    _, incidents = guardian_flow(
        _live_cycle(live, after, baseline=(before.started, before.finished), day=3)
    )
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("champion_ctr", "rollback_champion", True)
    ]
    assert aliases(settings)["champion"] == good
    assert admin.served_versions()["champion"] == good


def test_truly_better_challenger_is_promoted(live):
    """The champion is made a weak model (reversed ranker); a normally trained challenger must
    win the canary and be promoted, the weak champion becoming `previous`."""
    from flows.train import train_flow
    from recsys.promotion import aliases
    from recsys.registry import configure_mlflow

    settings, *_, admin = live
    weak = _inject_bad_model(settings, None, as_champion=True)
    good = train_flow(settings, window_days=None, budget_s=0.0)
    assert good["gate"]["alias"] == "challenger", good["gate"]
    admin.reload()
    admin.set_canary(0.5)
    traffic = _traffic(live, 5)
    _, incidents = guardian_flow(_live_cycle(live, traffic, day=4))
    canary = [i for i in incidents if i.check == "canary"]
    assert [(i.action, i.verified) for i in canary] == [("promote", True)]
    names = aliases(settings)
    assert names["champion"] == good["version"] and names["previous"] == weak
    assert admin.served_versions() == {"champion": good["version"]}
    assert configure_mlflow(settings) is not None


def _break_release(settings, version: str) -> None:
    """Truncate one array of ``version``'s release where the registry keeps it."""
    from recsys.registry import configure_mlflow

    source = configure_mlflow(settings).get_model_version(settings.model_name, version).source
    model_id = source.rstrip("/").rsplit("/", 1)[-1]
    (folder,) = {p.parent for p in settings.data_dir.glob(f"mlartifacts/**/{model_id}/**/*.npy")}
    array = folder / "item_ids.npy"
    array.write_bytes(array.read_bytes()[:40])


def test_versions_with_broken_artifacts_are_rejected_or_rolled_back(live):
    """A release that cannot be read from the registry itself cannot be healed by a reload:
    a broken challenger is rejected, a broken champion rolled back to ``previous`` or, with
    no ``previous``, replaced by a model trained on the recent window."""
    from recsys.promotion import aliases, promotion_history
    from recsys.registry import configure_mlflow

    settings, *_, admin = live
    serving = aliases(settings)["champion"]
    assert admin.served_versions() == {"champion": serving}

    challenger = _inject_bad_model(settings, None, as_champion=False)
    _break_release(settings, challenger)
    _, incidents = guardian_flow(_cycle(settings, None, live[2], admin, day=5))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("model_version", "rollback_challenger", True)
    ]
    assert "corrupt" in incidents[0].evidence["fix"]["broken"]["challenger"]["reason"]
    assert aliases(settings)["challenger"] is None
    assert admin.served_versions() == {"champion": serving}
    client = configure_mlflow(settings)
    tags = client.get_model_version(settings.model_name, challenger).tags
    assert tags["rejected"] == "true" and "cannot be loaded" in tags["rejection_reason"]

    champion = _inject_bad_model(settings, None, as_champion=True)  # previous: the served one
    _break_release(settings, champion)
    _, incidents = guardian_flow(_cycle(settings, None, live[2], admin, day=6))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("model_version", "rollback_champion", True)
    ]
    assert aliases(settings)["champion"] == serving
    assert admin.served_versions() == {"champion": serving}
    assert promotion_history(settings)[-1].action == "rollback_champion"
    tags = client.get_model_version(settings.model_name, champion).tags
    assert tags["rejected"] == "true"

    # a broken champion with nothing to roll back to (as a first model): replaced by a retrain
    champion = _inject_bad_model(settings, None, as_champion=True)
    client.delete_registered_model_alias(settings.model_name, "previous")
    _break_release(settings, champion)
    _, incidents = guardian_flow(_cycle(settings, None, live[2], admin, day=7))
    assert [(i.check, i.action, i.verified) for i in incidents] == [
        ("model_version", "replace_champion", True)
    ]
    replacement = aliases(settings)["champion"]
    assert replacement not in (champion, serving)
    assert admin.served_versions() == {"champion": replacement}
    move = promotion_history(settings)[-1]
    assert move.action == "replace_champion" and move.evidence["replacement"] == replacement
    assert client.get_model_version(settings.model_name, champion).tags["rejected"] == "true"
    assert (
        "replaces a broken champion"
        in (client.get_model_version(settings.model_name, replacement).tags["gate_reason"])
    )
