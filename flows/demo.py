"""``recsys demo``, the main job: simulated days of a live recommender that heals itself.

Warm-up: a synthetic world is generated (its users' true click probabilities are the ground
truth; ``--dataset movielens``: the semi-synthetic MovieLens-100K world of
``recsys.semisynthetic``), the first days land and are ingested, features are materialized,
the first model is trained and registered as ``champion``, and a real ``bentoml serve`` starts
on 127.0.0.1.

Then, each simulated day:

1. yesterday's batch is delivered and goes through the ingest flow (contract, quarantine);
2. the features flow builds and materializes the new day;
3. simulated users send real HTTP requests and click what they are shown, with the world's
   click probabilities; clicks come back as ``/feedback``;
4. the guardian flow runs every check in the triage order and heals what fails, writing an
   incident per failure.

Faults are injected on separate days (``--faults``; see ``recsys.faults``). The demo ends with a
terminal summary (each fault: detected on which day, by which check, healed by which action,
verified) and an HTML report with plots; its exit code is 0 only when every injected fault was
detected and healed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task

from flows.features import features_flow
from flows.guardian import guardian_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from recsys.admin import ServiceAdmin
from recsys.config import Settings
from recsys.console import clip, console, table
from recsys.errors import RecsysError
from recsys.faults import FAULTS, corrupt_delivery, sabotage_ranker
from recsys.guardian import Cycle, GuardianPolicy

# Which check must catch each fault, and which action heals it.
EXPECTED: dict[str, tuple[str, str]] = {
    "corrupt-batch": ("delivery", "redeliver+reingest"),
    "stale-online-store": ("feature_freshness", "backfill"),
    "stale-cache": ("cache_version", "flush_cache"),
    "drift": ("drift", "retrain"),
    "bad-challenger": ("canary", "rollback_challenger"),
    "champion-degradation": ("champion_ctr", "rollback_champion"),
}
# Days a fault needs at the least before the next one may start (drift: detect, retrain, canary).
SPAN = {"drift": 3}
# Days the demo waits for the system to settle (a canary verdict) before it injects the next
# fault anyway, and days it may add to the planned ones for such waits.
MAX_WAIT_DAYS = 4
EXTRA_DAYS = 8


# The demo's training size: what keeps a retrain to seconds on 2 cores. Settings a user set
# (RECSYS_CANDIDATES, RECSYS_RANKER_MAX_EPOCHS, RECSYS_RANKER_MODELS) win.
DEMO_TRAINING = {"candidates": 100, "ranker_max_epochs": 15, "ranker_models": 1}


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo's training size where the user did not choose one."""
    update = {k: v for k, v in DEMO_TRAINING.items() if k not in settings.model_fields_set}
    return settings.model_copy(update=update)


@dataclass
class DemoOptions:
    seed: int = 42
    users: int = 1200
    items: int = 300
    warmup_days: int = 10
    days: int | None = None  # default: what the faults need (and their canaries' verdicts)
    interactions_per_day: int = 3000
    requests_per_day: int = 800
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    budget_s: float = 3.0
    concurrency: int = 4
    k: int = 10
    # "synthetic", or "movielens": the semi-synthetic MovieLens-100K world read from data_path
    # (its users and items are the real ones: users/items above do not apply)
    dataset: str = "synthetic"
    data_path: Path | None = None


@dataclass
class DemoOutcome:
    days: list[Any]
    incidents: list[Any]
    outcomes: list[Any]
    report: Path | None
    seconds: float

    @property
    def ok(self) -> bool:
        return all(o.detected_day is not None and o.verified for o in self.outcomes)


def schedule(faults: list[str], days: int | None) -> tuple[dict[int, str], int]:
    """The earliest demo day (1-based) of each fault, one at a time from day 2 on (``drift`` is
    built into the world, so its day is fixed); and the days that plan needs (the faults' span
    plus one quiet day at the end, or ``days`` if larger). A fault after a model change waits
    for the canary's verdict, so the demo may run up to ``EXTRA_DAYS`` more (not with --days).

    Raises:
        RecsysError: ``days`` is too few for the faults.
    """
    plan: dict[int, str] = {}
    day = 2
    for name in FAULTS:
        if name in faults:
            plan[day] = name
            day += SPAN.get(name, 1)
    needed = day
    if days is not None and days < needed:
        raise RecsysError(f"--days {days} is too few for faults {faults}: they need {needed}")
    return plan, max(needed, days or 0)


@dataclass
class Injector:
    """Injects the planned faults in order, each on its earliest day or later: a fault waits
    (up to ``MAX_WAIT_DAYS``) while a challenger is in canary or the previous fault has not
    been healed yet, so faults never overlap. ``drift`` lives in the world: never moved."""

    plan: dict[int, str]
    injected: dict[int, str] = field(default_factory=dict)
    waited: int = 0

    @property
    def pending(self) -> list[tuple[int, str]]:
        done = set(self.injected.values())
        return [(d, f) for d, f in sorted(self.plan.items()) if f not in done]

    def resolved(self, incidents: list[Any]) -> bool:
        """The last injected fault met its expected check (or nothing was injected yet)."""
        if not self.injected:
            return True
        day, fault = max(self.injected.items())
        check, _ = EXPECTED[fault]
        return any(i.check == check and i.day is not None and i.day >= day for i in incidents)

    def fault_for(self, day: int, quiet: bool, incidents: list[Any]) -> str | None:
        if not self.pending:
            return None
        if (day, "drift") in self.pending:  # the world drifts today, whatever else waits
            self.injected[day] = "drift"
            return "drift"
        earliest, fault = self.pending[0]
        if fault == "drift":
            ready = day == earliest
        else:
            settled = quiet and self.resolved(incidents)
            ready = day >= earliest and (settled or self.waited >= MAX_WAIT_DAYS)
            if day >= earliest and not ready:
                self.waited += 1
        if not ready:
            return None
        self.injected[day] = fault
        self.waited = 0
        return fault

    def done(self, quiet: bool, incidents: list[Any]) -> bool:
        return not self.pending and quiet and self.resolved(incidents)


class SourceSystem:
    """The upstream producer: the world's true daily batches, re-sendable on request."""

    def __init__(self, world) -> None:
        self.frames = dict(world.batches())

    def __call__(self, batch: str) -> pd.DataFrame | None:
        frame = self.frames.get(batch)
        return None if frame is None else frame.copy()


@task(name="generate world")
def generate(settings: Settings, opts: DemoOptions, n_days: int, drift_day: int | None):
    from recsys.synthetic import WorldConfig, generate_world

    if opts.dataset == "movielens":
        from recsys.semisynthetic import movielens_world

        if opts.data_path is None:
            raise RecsysError("the movielens demo needs a data path (the ml-100k folder)")
        return movielens_world(
            opts.data_path,
            n_days=n_days,
            n_interactions=opts.interactions_per_day * n_days,
            seed=opts.seed,
            drift_day=drift_day,
            drift_share=0.5,
        )
    if opts.dataset != "synthetic":
        raise RecsysError(f"unknown demo dataset {opts.dataset!r}: synthetic or movielens")
    cfg = WorldConfig(
        n_users=opts.users,
        n_items=opts.items,
        n_days=n_days,
        n_interactions=opts.interactions_per_day * n_days,
        seed=opts.seed,
        drift_day=drift_day,
        drift_share=0.5,
    )
    return generate_world(cfg)


def _describe(world) -> str:
    source = getattr(world.config, "source", None)
    kind = f" ({source} semi-synthetic)" if source else ""
    return f"{world.config.n_users} users, {world.config.n_items} items{kind}"


def _land_world(settings: Settings, world, warm_batches: list[str]) -> None:
    """Land the catalog, the warm-up batches and the ground truth (for the report)."""
    from recsys.contract import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, conform
    from recsys.synthetic import write_ground_truth

    lake = settings.lake.init()
    lake.write_raw(lake.raw_catalog_path("items"), conform(world.items, ITEMS_SCHEMA))
    lake.write_raw(lake.raw_catalog_path("users"), conform(world.users, USERS_SCHEMA))
    frames = dict(world.batches())
    for name in warm_batches:
        lake.write_raw(lake.raw_batch_path(name), conform(frames[name], INTERACTIONS_SCHEMA))
    write_ground_truth(world, lake)


def _deliver(settings: Settings, batch: str, frame: pd.DataFrame, corrupt: bool, seed: int) -> None:
    import pyarrow as pa

    from recsys.contract import INTERACTIONS_SCHEMA, conform

    lake = settings.lake
    if corrupt:
        table_ = pa.Table.from_pandas(corrupt_delivery(frame, seed), preserve_index=False)
    else:
        table_ = conform(frame, INTERACTIONS_SCHEMA)
    lake.write_raw(lake.raw_batch_path(batch), table_)


def _inject_bad_model(settings: Settings, opts: DemoOptions, as_champion: bool) -> str:
    """Train a model, break its ranker after evaluation, and register it: through the gate as a
    challenger, or (a hot fix that skips the canary) straight to champion."""
    from recsys.gate import register_with_gate
    from recsys.promotion import AliasMove, aliases, record_move
    from recsys.registry import CHAMPION, PREVIOUS, configure_mlflow, log_release
    from recsys.train import pipeline_params, train_and_evaluate

    before = aliases(settings)
    result = train_and_evaluate(
        settings.lake,
        pipeline_params(settings),
        window_days=14,
        budget_s=0.0,
        model_name=settings.model_name,
    )
    sabotage_ranker(result.release)
    if not as_champion:
        registered, decision = register_with_gate(settings, result)
        reason, actor = decision.reason, "guardian"
        if decision.alias != "challenger":
            # the model was not broken yet when the gate judged it: a rejection is the noise of
            # a short search on a small holdout. The fault is a model the canary must catch, so
            # it is pushed to the canary as an operator would, and the move says so.
            client = configure_mlflow(settings)
            client.set_registered_model_alias(settings.model_name, "challenger", registered.version)
            for tag in ("rejected", "rejection_reason"):
                client.delete_model_version_tag(settings.model_name, registered.version, tag)
            reason = f"fault injection: pushed to the canary past the gate ({decision.reason})"
            actor = "operator"
        record_move(
            settings,
            AliasMove(
                "challenger_registered",
                before,
                aliases(settings),
                reason,
                {"gate": decision.as_dict(), "injected": "bad-challenger"},
                _now(),
                actor=actor,
            ),
        )
        return registered.version
    registered = log_release(settings, result.release, result.metrics, tags={"hotfix": "true"})
    client = configure_mlflow(settings)
    if before.get("champion"):
        client.set_registered_model_alias(settings.model_name, PREVIOUS, before["champion"])
    client.set_registered_model_alias(settings.model_name, CHAMPION, registered.version)
    record_move(
        settings,
        AliasMove(
            "manual_promote",
            before,
            aliases(settings),
            "hot fix promoted by an operator without a canary",
            {"injected": "champion-degradation"},
            _now(),
            actor="operator",
        ),
    )
    return registered.version


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _attribute(
    plan: dict[int, str], incidents: list[Any], n_days: int
) -> tuple[list[Any], list[Any]]:
    """Match each injected fault with the first incident of its expected check on or after
    the day it was injected (and before the next fault); marks those incidents."""
    from monitoring.report import FaultOutcome

    outcomes = []
    starts = sorted(plan)
    for i, day in enumerate(starts):
        fault = plan[day]
        until = starts[i + 1] if i + 1 < len(starts) else n_days + 1
        check, action = EXPECTED[fault]
        match = next(
            (
                inc
                for inc in incidents
                if inc.day is not None and day <= inc.day < until and inc.check == check
            ),
            None,
        )
        notes = []
        if match is not None:
            match.fault = fault
        if fault == "drift":
            # users react before the data shows why: the CTR alert, then the retrain's canary
            window = [inc for inc in incidents if inc.day is not None and day <= inc.day < until]
            first = next((inc for inc in window if inc.check == "ctr_decay"), None)
            if first is not None:
                first.fault = fault
                notes.append(f"CTR alert on day {first.day}")
            verdict = next(
                (inc for inc in window if inc.check == "canary" and match and inc.day >= match.day),
                None,
            )
            if verdict is not None:
                verdict.fault = fault
                notes.append(f"canary {verdict.action} on day {verdict.day}")
        follow_up = "; ".join(notes) or None
        outcomes.append(
            FaultOutcome(
                fault=fault,
                injected_day=day,
                detected_day=match.day if match else None,
                check=match.check if match else None,
                action=match.action if match else None,
                verified=bool(match and match.verified and match.action == action),
                follow_up=follow_up,
            )
        )
    return outcomes, incidents


@flow(name="demo", validate_parameters=False)
def demo_flow(settings: Settings, opts: DemoOptions) -> DemoOutcome:
    """The whole demo (see the module doc). Returns the days, incidents and fault outcomes."""
    from monitoring.incidents import incident_log
    from monitoring.report import DayRecord, FaultOutcome, write_demo_report
    from recsys.promotion import aliases
    from recsys.server import ServiceProcess
    from recsys.simulate import simulate_day

    started = time.perf_counter()
    settings = demo_settings(settings)
    plan, n_days = schedule(opts.faults, opts.days)
    drift_demo_day = next((d for d, f in plan.items() if f == "drift"), None)
    last_day = n_days if opts.days is not None else n_days + EXTRA_DAYS
    world_days = opts.warmup_days + last_day
    # demo day d serves world day warmup + d - 1, and receives the batch of the day before
    drift_day = opts.warmup_days + drift_demo_day - 1 if drift_demo_day else None
    world = generate(settings, opts, world_days, drift_day)
    click_model = world.click_model()
    source = SourceSystem(world)
    names = world.batch_names
    _land_world(settings, world, names[: opts.warmup_days - 1])
    console.print(
        f"world: {_describe(world)}; {opts.warmup_days} warm-up days, "
        f"{n_days} demo days planned (up to {last_day}); faults from: "
        f"{', '.join(f'day {d}: {f}' for d, f in sorted(plan.items())) or 'none'}"
    )
    ingest_flow(settings, batches=names[: opts.warmup_days - 1])
    features_flow(settings)
    first = train_flow(settings, window_days=None, budget_s=opts.budget_s)
    console.print(f"warm-up: model v{first['version']} is champion ({first['gate']['reason']})")

    token = secrets.token_urlsafe(24)
    service_env = {
        "RECSYS_ADMIN_TOKEN": token,
        "RECSYS_REQUEST_LOG_SAMPLE": "1.0",
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_FAULT_INJECTION": "true",
    }
    # half the users on a canary (production's default is RECSYS_CANARY_SHARE, 0.1): a verdict
    # within a simulated day's traffic
    policy = GuardianPolicy(retrain_budget_s=opts.budget_s, min_requests=200, canary_share=0.5)
    days: list[Any] = []
    windows: list[tuple[float, float]] = []
    healed_so_far: list[Any] = []
    injector = Injector(plan)
    with ServiceProcess(settings, env=service_env).start() as service:
        admin = ServiceAdmin(service.url, token)
        console.print(f"service ready on {service.url}")
        for day in range(1, last_day + 1):
            quiet = not aliases(settings).get("challenger")
            fault = injector.fault_for(day, quiet, healed_so_far)
            world_day = opts.warmup_days + day - 1
            if world_day > len(names):
                break
            batch = names[world_day - 1]
            notes = []
            frame = source(batch)
            _deliver(settings, batch, frame, fault == "corrupt-batch", opts.seed + day)
            ingest_flow(settings, batches=[batch])
            if fault != "stale-online-store":
                features_flow(settings, check_skew=False)
            else:
                notes.append("materialization silently skipped")
            if fault == "bad-challenger":
                version = _inject_bad_model(settings, opts, as_champion=False)
                admin.reload()
                admin.set_canary(policy.canary_share)
                notes.append(f"bad challenger v{version} registered (passed the offline gate)")
            if fault == "champion-degradation":
                version = _inject_bad_model(settings, opts, as_champion=True)
                admin.reload()
                notes.append(f"bad release v{version} made champion without a canary")
            if fault == "stale-cache":
                answer = admin.inject_fault("stale-cache")
                notes.append(f"{answer.get('entries', 0)} cache entries of a superseded model")
            traffic = simulate_day(
                service.url,
                click_model,
                world_day,
                opts.requests_per_day,
                k=opts.k,
                seed=opts.seed,
                concurrency=opts.concurrency,
            )
            windows.append((traffic.started, traffic.finished))
            cycle = Cycle(
                settings=settings,
                admin=admin,
                current=(traffic.started, time.time()),
                baseline=windows[-2] if len(windows) > 1 else None,
                batches=[batch],
                source=source,
                policy=policy,
                day=day,
                reports_dir=settings.lake.zone("reports") / "demo",
            )
            _, healed = guardian_flow(cycle)
            healed_so_far.extend(healed)
            record = DayRecord(
                day=day,
                faults=[fault] if fault else [],
                ctr={v: a.ctr for v, a in traffic.by_variant().items()},
                expected_ctr={v: a.expected_ctr for v, a in traffic.by_variant().items()},
                versions={**aliases(settings), **_served_during(traffic)},
                p50_ms=traffic.percentile_ms(50),
                p99_ms=traffic.percentile_ms(99),
                requests=traffic.requests,
                errors=traffic.errors,
                notes=notes + [f"{i.check}: {i.action}" for i in healed],
            )
            days.append(record)
            _print_day(record, healed)
            quiet = not aliases(settings).get("challenger")
            if opts.days is None and day >= n_days and injector.done(quiet, healed_so_far):
                break
    not_injected = [f for _, f in injector.pending]
    if not_injected:
        console.print(f"[bold red]not injected[/] (the days ran out): {', '.join(not_injected)}")
    plan = injector.injected

    incidents = incident_log(settings).read()
    outcomes, incidents = _attribute(plan, incidents, len(days))
    outcomes += [
        FaultOutcome(
            fault=f, injected_day=None, detected_day=None, check=None, action=None, verified=False
        )
        for f in not_injected
    ]
    report = write_demo_report(
        settings.lake.zone("reports") / "demo",
        days,
        incidents,
        outcomes,
        agreement=_agreement(settings),
        summary={"seed": opts.seed, "days": len(days), "faults": ", ".join(plan.values())},
    )
    return DemoOutcome(days, incidents, outcomes, report, time.perf_counter() - started)


def _served_during(traffic) -> dict[str, str]:
    """The version each variant served during the day's traffic (the busiest, if a variant
    changed version mid-day): what users saw, before the guardian healed anything."""
    during: dict[str, tuple[int, str]] = {}
    for (variant, version), arm in traffic.arms.items():
        if variant and version and arm.requests > during.get(variant, (0, ""))[0]:
            during[variant] = (arm.requests, str(version))
    return {f"served_{v}": ver for v, (_, ver) in during.items()}


def _agreement(settings: Settings) -> list[Any]:
    """Offline holdout nDCG (as registered) beside online CTR (from the service's logs) of every
    model version that served traffic: does offline quality predict online behaviour?"""
    from monitoring.report import VersionAgreement
    from monitoring.traffic import traffic_by_arm
    from recsys.registry import configure_mlflow

    client = configure_mlflow(settings)
    rows = []
    for arm in traffic_by_arm(settings, by=("model_version",)):
        if arm.model_version is None:
            continue
        tags = client.get_model_version(settings.model_name, arm.model_version).tags
        ndcg = tags.get("pipeline_ndcg_at_k")
        if ndcg is not None:
            rows.append(VersionAgreement(arm.model_version, float(ndcg), arm.ctr, arm.requests))
    return sorted(rows, key=lambda r: int(r.version))


def _print_day(record, healed: list[Any]) -> None:
    ctr = ", ".join(f"{v} {c:.3f}" for v, c in sorted(record.ctr.items()))
    fault = f" [bold red]fault: {record.faults[0]}[/]" if record.faults else ""
    console.print(
        f"day {record.day:>2}:{fault} {record.requests} requests, {record.errors} errors, "
        f"p99 {record.p99_ms or 0:.1f} ms, CTR {ctr}"
    )
    for incident in healed:
        mark = "[green]verified[/]" if incident.verified else "[red]NOT verified[/]"
        console.print(f"        {incident.layer}/{incident.check}: {incident.seen}")
        console.print(f"        -> {incident.action} ({mark})")


def print_summary(outcome: DemoOutcome) -> None:
    """The terminal summary: one row per injected fault."""
    rows = [
        [
            o.fault,
            o.injected_day if o.injected_day is not None else "-",
            o.detected_day if o.detected_day is not None else "-",
            o.check or "-",
            (o.action or "-") + (f" ({o.follow_up})" if o.follow_up else ""),
            "yes" if o.verified else "NO",
        ]
        for o in outcome.outcomes
    ]
    console.print(
        table(
            "Faults: injected, detected, healed",
            ["fault", "injected day", "detected day", "check", "action", "healed"],
            rows,
        )
    )
    unplanned = [i for i in outcome.incidents if i.fault is None]
    if unplanned:
        console.print(
            table(
                "Other incidents",
                ["day", "layer/check", "seen", "action", "verified"],
                [
                    [i.day, f"{i.layer}/{i.check}", clip(i.seen, 120), i.action, i.verified]
                    for i in unplanned
                ],
            )
        )
    ctr = [np.mean(list(d.expected_ctr.values())) for d in outcome.days if d.expected_ctr]
    console.print(
        f"report: {outcome.report}  ({outcome.seconds:.0f} s; mean true CTR "
        f"{np.mean(ctr) if ctr else 0:.3f})"
    )
