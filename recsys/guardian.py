"""The guardian's checks and fixes, in the triage order of DESIGN.md.

Each check reads the system (lake, registry, feature store, the service's admin API, the service's
request and feedback logs) and returns a :class:`Finding`; a failing finding names the fix that
heals it. Each fix acts, then verifies by looking again, and returns a :class:`FixOutcome`. The
Prefect flows (``flows/guardian.py``: monitor, heal, guardian) only compose these functions; the
incidents they write are ``monitoring.incidents.Incident`` records.

Triage order (data and system health first, then features, then the model):

1. data       ``delivery``: the newest batches passed the contract and kept their row count.
              Fix: fetch the batch again from its source, land it as a redelivery, re-ingest,
              rebuild the affected features.
2. serving    ``readiness``, ``model_version`` (served versions equal the registry aliases),
              ``cache_version`` (no cache entry stamped with a model that is not served),
              ``latency`` (p99 and degraded answers from the request log).
              Fix: reload by alias (a version whose files are broken in the registry itself:
              reject the challenger, roll the champion back to ``previous`` or, with none,
              replace it by a model trained on the recent window); flush the cache;
              latency: an alert.
3. features   ``feature_freshness`` (online store readable and materialized up to the newest
              offline day), ``feature_skew`` (online equals offline point-in-time values).
              Fix: backfill (an unreadable online store is rebuilt).
4. model      ``drift``: Evidently data drift of the newest batch against the champion's
              training window, weighed against the champion's measured quality loss on it.
              Fix: retrain on the recent window, gate offline, start the canary.
              ``ctr_decay``: the unchanged champion's CTR fell against the baseline. Fix: an
              alert (the data shows why a day later; then ``drift`` retrains).
5. canary     ``canary``: the challenger against the champion on online CTR with guardrails
              (``recsys.canary``). Fix: promote or roll back. Before a verdict, a challenger
              the service serves at canary share 0 (stopped by hand, never resumed) is a
              stalled canary. Fix: set the canary share again (``RECSYS_CANARY_SHARE``
              unless the policy names one). ``champion_ctr``: a champion that
              replaced another and lost CTR against it. Fix: roll back to ``previous``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from recsys.admin import ServiceAdmin
from recsys.config import Settings
from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

LAYERS = ("data", "serving", "features", "model", "canary")
BatchSource = Callable[[str], pd.DataFrame | None]
"""Fetches a batch again from its producer (``None``: the producer cannot re-send it)."""


@dataclass
class Finding:
    """One check's verdict. ``fix`` names the fix for a failing check (None: nothing to do);
    ``checked`` is False when there was nothing it could look at (no service to ask): it is
    ``ok`` for the healing, but a report must not call it healthy."""

    layer: str
    check: str
    ok: bool
    seen: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None
    checked: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FixOutcome:
    action: str
    verified: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class GuardianPolicy:
    """Thresholds of the checks; defaults are production-minded, the demo keeps them."""

    max_quarantine_share: float = 0.01
    drift_quality_tolerance: float = 0.15
    drift_share_threshold: float = 0.3
    ctr_drop: float = 0.10
    min_requests: int = 200
    canary_share: float | None = None  # None: the configured RECSYS_CANARY_SHARE (0.1)
    retrain_window_days: int | None = 14
    retrain_budget_s: float = 3.0
    feature_skew_sample: int = 200
    max_p99_ms: float = 250.0
    max_degraded_share: float = 0.01
    min_latency_samples: int = 50


@dataclass
class Cycle:
    """What one guardian cycle looks at.

    ``current`` and ``baseline`` are wall-clock windows (epoch seconds) of the service's logs:
    the traffic being judged and the traffic it is compared with. ``batches`` are the batches
    delivered since the last cycle.
    """

    settings: Settings
    admin: ServiceAdmin | None
    current: tuple[float, float]
    baseline: tuple[float, float] | None
    batches: list[str] = field(default_factory=list)
    source: BatchSource | None = None
    policy: GuardianPolicy = field(default_factory=GuardianPolicy)
    day: int | None = None
    reports_dir: Any = None
    cache: dict[str, Any] = field(default_factory=dict)


# ---- 1. data ---------------------------------------------------------------------------------


def check_delivery(cycle: Cycle) -> Finding:
    """The cycle's batches: contract rejections and the row count against trailing days."""
    import json

    from recsys.ingest import row_count_check

    lake = cycle.settings.lake
    damaged = lake.damaged_clean()
    missing = [b for b in lake.raw_batches() if not lake.clean_batch_path(b).exists()]
    if damaged or missing:  # the row count below could not read them (a traceback), or read 0
        said = []
        if damaged:
            reason = damaged_reason(lake, damaged[0])
            said.append(f"clean batch(es) {', '.join(damaged)} cannot be read ({reason})")
        if missing:
            said.append(f"clean batch(es) {', '.join(missing)} are missing though landed")
        return Finding(
            "data",
            "delivery",
            False,
            "; ".join(said) + ": `recsys data ingest` rebuilds them from the raw zone",
            {"damaged_clean": damaged + missing},
            fix="rebuild_clean",
        )
    bad: dict[str, Any] = {}
    for batch in cycle.batches:
        refused = _refused_last(lake, batch)
        if refused is not None:  # its newest delivery could not be read at all
            bad[batch] = {
                "delivery": None,
                "refused": str(refused.get("error", ""))[:300],
                "kept_as": str(lake.quarantine_dir(batch) / str(refused.get("file", ""))),
                "quarantined_share": 1.0,
                "reasons": refused.get("reasons", {}),
                "row_count_anomaly": False,
            }
            continue
        delivery = lake.deliveries(batch)[-1]
        report_file = lake.quarantine_dir(delivery) / "report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        quarantined = int(report.get("quarantined_rows", 0))
        raw = int(report.get("raw_rows", 0)) or 1
        rows = row_count_check(lake, batch)
        share = quarantined / raw
        if share > cycle.policy.max_quarantine_share or rows.anomalous:
            bad[batch] = {
                "delivery": delivery,
                "quarantined_rows": quarantined,
                "quarantined_share": round(share, 4),
                "reasons": report.get("reasons", {}),
                "clean_rows": rows.clean_rows,
                "baseline_rows": rows.baseline_rows,
                "row_count_anomaly": rows.anomalous,
            }
    if not bad:
        return Finding("data", "delivery", True, f"{len(cycle.batches)} batch(es) passed")
    unread = {b: v for b, v in bad.items() if v.get("refused")}
    if unread:
        day, first = next(iter(unread.items()))
        seen = (
            f"batch(es) {', '.join(bad)}: the newest delivery of {day} could not be read or "
            f"was refused ({first['refused'][:150]}; kept as {first['kept_as']})"
        )
    else:
        worst = max(bad.values(), key=lambda b: b["quarantined_share"])
        said = [
            f"{worst['quarantined_share']:.0%} of rows quarantined ({worst['reasons']})"
            if worst["quarantined_share"] > cycle.policy.max_quarantine_share
            else ""
        ]
        counted = [(b, v) for b, v in bad.items() if v.get("row_count_anomaly")]
        if counted:  # said as "0% of rows quarantined ({})", which is no reason at all
            day, first = counted[0]
            baseline = first["baseline_rows"]
            said.append(
                f"{day} has {first['clean_rows']} clean rows"
                + (f" against a trailing median of {baseline:.0f}" if baseline else "")
            )
        seen = f"batch(es) {', '.join(bad)} failed the contract or row count: " + "; ".join(
            part for part in said if part
        )
    return Finding("data", "delivery", False, seen, {"batches": bad}, fix="redeliver_reingest")


def _refused_last(lake, batch: str) -> dict[str, Any] | None:
    """The report of ``batch``'s newest delivery when that delivery was refused whole
    (unreadable, kept only in the quarantine): newer than its newest landed delivery, or the
    batch never landed. None otherwise."""
    from datetime import UTC, datetime

    refused = lake.refused_deliveries(batch)
    if not refused:
        return None
    if not lake.raw_batch_path(batch).exists():
        return refused[-1]
    landed = lake.delivery_path(lake.deliveries(batch)[-1]).stat().st_mtime
    at = datetime.fromisoformat(str(refused[-1]["quarantined_at"]))
    return refused[-1] if at > datetime.fromtimestamp(landed, UTC) else None


def fix_redeliver_reingest(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Fetch each bad batch again from the source, land it as a redelivery, re-ingest it, and
    rebuild the features of the changed days. Verifies with :func:`check_delivery`."""
    import pyarrow as pa

    from recsys.contract import INTERACTIONS_SCHEMA, conform
    from recsys.ingest import reingest_window

    lake = cycle.settings.lake
    landed: dict[str, str] = {}
    for batch in finding.evidence["batches"]:
        frame = cycle.source(batch) if cycle.source else None
        if frame is None:
            continue
        table = pa.Table.from_pandas(conform(frame, INTERACTIONS_SCHEMA).to_pandas())
        if lake.raw_batch_path(batch).exists():
            landed[batch] = lake.land_redelivery(batch, table)
        else:  # every earlier delivery of the day was refused whole: this is its first
            lake.write_raw(lake.raw_batch_path(batch), table)
            landed[batch] = batch
    if not landed:
        return FixOutcome("quarantine (no source can re-send)", False, {"landed": {}})
    reports = reingest_window(lake, list(landed))
    _rebuild_features(cycle)
    after = check_delivery(cycle)
    return FixOutcome(
        "redeliver+reingest",
        after.ok,
        {"landed": landed, "reingested": [r.as_dict() for r in reports], "after": after.seen},
    )


def damaged_reason(lake, batch: str) -> str:
    """Why the clean file of ``batch`` cannot be read, in one short line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = lake.clean_batch_path(batch)
    try:
        pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        said = str(exc).replace(f"'{path}'", "").replace(str(path), "")
        return " ".join(f"{type(exc).__name__}: {said}".split())[:100]
    return "readable now"


def fix_rebuild_clean(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Set the damaged clean batch files aside (kept in ``clean/damaged/``) and rebuild them,
    and the missing ones, from the raw zone; the features of the days they change are rebuilt.
    Verifies with :func:`check_delivery`."""
    from recsys.ingest import ingest_all

    damaged = list(finding.evidence["damaged_clean"])
    reports = ingest_all(cycle.settings.lake, damaged)
    _rebuild_features(cycle)
    after = check_delivery(cycle)
    return FixOutcome(
        "rebuild clean batches from raw",
        after.ok or not ("cannot be read" in after.seen or "are missing" in after.seen),
        {"rebuilt": damaged, "reports": [r.as_dict() for r in reports], "after": after.seen},
    )


def _rebuild_features(cycle: Cycle) -> None:
    from features.store import materialize

    materialize(cycle.settings)


# ---- 2. serving ------------------------------------------------------------------------------


def _status(cycle: Cycle) -> dict[str, Any]:
    if "status" not in cycle.cache:
        cycle.cache["status"] = cycle.admin.status() if cycle.admin else {}
    return cycle.cache["status"]


def _no_service(check: str, cycle: Cycle | None = None) -> Finding:
    """A service check that did not run: no admin token, or (``cycle`` given) readiness found
    that nothing answers at the service's URL (each check would only fail the same way)."""
    why = (
        "the service does not answer (see readiness)"
        if cycle is not None and "unreachable" in cycle.cache
        else "no service (set RECSYS_ADMIN_TOKEN)"
    )
    return Finding("serving", check, True, f"not checked: {why}", checked=False)


def _service_unchecked(cycle: Cycle) -> bool:
    return cycle.admin is None or "unreachable" in cycle.cache


def check_readiness(cycle: Cycle) -> Finding:
    from recsys.admin import UNREACHABLE

    if cycle.admin is None:
        return _no_service("readiness")
    why = cycle.admin.unready_reason()
    if why is None:
        return Finding("serving", "readiness", True, "the service is ready")
    if why.startswith(UNREACHABLE):  # no reload can help: a person starts the service
        cycle.cache["unreachable"] = why
        return Finding(
            "serving",
            "readiness",
            False,
            f"the service at {cycle.admin.url}: {why}",
            {"url": cycle.admin.url},
            "alert",
        )
    return Finding(
        "serving",
        "readiness",
        False,
        f"the service is not ready: {why}",
        {"url": cycle.admin.url},
        "reload",
    )


def check_model_version(cycle: Cycle) -> Finding:
    """No alias names a version tagged rejected (set by hand, or by a tool that skips the
    gate: it would be served), and the versions the service serves equal the aliases."""
    from recsys.registry import CHALLENGER, CHAMPION, version_for_alias

    rejected = _rejected_aliases(cycle.settings)
    if rejected:
        alias = CHAMPION if CHAMPION in rejected else CHALLENGER
        bad = rejected[alias]
        return Finding(
            "serving",
            "model_version",
            False,
            f"{alias} points at v{bad['version']}, tagged rejected ({bad['reason'][:120]})",
            {"rejected": rejected},
            "rollback_champion" if alias == CHAMPION else "rollback_challenger",
        )
    if _service_unchecked(cycle):
        return _no_service("model_version", cycle)
    served = {a: m["version"] for a, m in _status(cycle).get("models", {}).items()}
    wanted = {a: version_for_alias(cycle.settings, a) for a in (CHAMPION, CHALLENGER)}
    wrong = {
        a: {"served": served.get(a), "registry": v} for a, v in wanted.items() if served.get(a) != v
    }
    if not wrong:
        return Finding("serving", "model_version", True, f"serving {served}")
    return Finding(
        "serving",
        "model_version",
        False,
        f"served versions differ from the registry: {wrong}",
        {"mismatch": wrong},
        "reload",
    )


def _rejected_aliases(settings: Settings) -> dict[str, dict[str, str]]:
    """{alias: {version, reason}} of the serving aliases that point at a rejected version."""
    from recsys.promotion import aliases
    from recsys.registry import CHALLENGER, CHAMPION, configure_mlflow

    client = configure_mlflow(settings)
    found = {}
    for alias, version in aliases(settings).items():
        if alias not in (CHAMPION, CHALLENGER) or version is None:
            continue
        tags = client.get_model_version(settings.model_name, version).tags or {}
        if tags.get("rejected") == "true":
            reason = tags.get("rejection_reason", "no reason recorded")
            found[alias] = {"version": version, "reason": reason}
    return found


def fix_reload(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Reload by alias. When the service still cannot load a version the registry names and
    that version's release is broken in the registry itself (read afresh here), reloading can
    never heal it: a broken challenger is rejected, a broken champion rolled back to
    ``previous``; with no ``previous`` it is replaced by a model trained on the recent window
    (when that fails, a person is paged: the outcome stays unverified)."""
    answer = cycle.admin.reload()
    cycle.cache.pop("status", None)
    after = check_model_version(cycle)
    if after.ok and not answer.get("errors"):
        return FixOutcome("reload", True, {"reload": answer})
    broken = _broken_versions(cycle, after.evidence.get("mismatch", {}))
    if not broken:
        return FixOutcome("reload", False, {"reload": answer})
    return _retire_broken(cycle, broken, {"reload": answer, "broken": broken})


def _broken_versions(cycle: Cycle, mismatch: dict[str, dict]) -> dict[str, dict[str, str]]:
    """{alias: {version, reason}} of the versions not served whose release cannot be read."""
    from recsys.registry import unreadable_reason

    broken = {}
    for alias, versions in mismatch.items():
        version = versions.get("registry")
        if version is None:
            continue
        try:
            reason = unreadable_reason(cycle.settings, version)
        except Exception as exc:  # the registry is unreachable: that says nothing of the version
            logger.warning("could not read v%s to judge it: %s", version, exc)
            continue
        if reason is not None:
            broken[alias] = {"version": version, "reason": reason}
    return broken


def _retire_broken(cycle: Cycle, broken: dict[str, dict[str, str]], detail: dict) -> FixOutcome:
    from recsys.promotion import aliases, reject_challenger, rollback_champion
    from recsys.registry import CHALLENGER, CHAMPION, PREVIOUS

    move, action = None, "reload"
    for alias, retire, name in (
        (CHALLENGER, reject_challenger, "rollback_challenger"),
        (CHAMPION, rollback_champion, "rollback_champion"),
    ):
        if alias not in broken:
            continue
        bad = broken[alias]
        reason = f"{alias} v{bad['version']} cannot be loaded: {bad['reason']}"
        if alias == CHAMPION and aliases(cycle.settings)[PREVIOUS] is None:
            replaced = _replace_broken_champion(cycle, bad, reason, detail)
            if replaced is not None:
                move, action = replaced, "replace_champion"
            continue
        move, action = retire(cycle.settings, reason, {"broken": bad}), name
    if move is None:
        return FixOutcome(action, False, detail)
    outcome = _after_move(cycle, action, move)
    verified = outcome.verified and not detail.get("no_previous")
    return FixOutcome(outcome.action, verified, {**detail, **outcome.detail})


def _replace_broken_champion(cycle: Cycle, bad: dict[str, str], reason: str, detail: dict):
    """A champion that cannot be loaded and has no ``previous`` (the first model, or every
    earlier one rejected): train a replacement on the recent window and make it the champion,
    since serving nothing is worse than serving an untried model. The replacement must be
    loadable from the registry. Returns the alias move, or None (logged, ``detail`` says why)
    when training or registering fails: then a person must retrain or restore the artifacts."""
    from recsys.gate import decide
    from recsys.promotion import replace_champion
    from recsys.registry import configure_mlflow, log_release, unreadable_reason

    logger.error(
        "champion v%s cannot be loaded (%s) and there is no previous version to roll back to: "
        "training a replacement",
        bad["version"],
        bad["reason"],
    )
    try:
        result = _train_recent(cycle)
        gate = decide(cycle.settings, result)
        registered = log_release(
            cycle.settings,
            result.release,
            result.metrics,
            tags={"gate": "passed", "gate_reason": f"replaces a broken champion; {gate.reason}"},
            trials=result.trials,
            ranker_history=result.release.ranker.history if result.release.ranker else None,
        )
        unreadable = unreadable_reason(cycle.settings, registered.version)
        if unreadable is not None:
            why = f"cannot be loaded: {unreadable}"
            client = configure_mlflow(cycle.settings)
            for key, value in {"rejected": "true", "rejection_reason": why[:500]}.items():
                client.set_model_version_tag(
                    cycle.settings.model_name, registered.version, key, value
                )
            raise RecsysError(f"the replacement v{registered.version} {why}")
        evidence = {"broken": bad, "replacement": registered.version, "gate": gate.as_dict()}
        return replace_champion(cycle.settings, registered.version, reason, evidence)
    except Exception as exc:  # the page below must still go out, whatever failed
        logger.error(
            "could not replace champion v%s (%s: %s): retrain or restore its artifacts",
            bad["version"],
            type(exc).__name__,
            exc,
        )
        detail["no_previous"] = True
        detail["replacement_error"] = f"{type(exc).__name__}: {exc}"
        return None


def check_cache_version(cycle: Cycle) -> Finding:
    """No cache entry carries a model version the service does not serve."""
    if _service_unchecked(cycle):
        return _no_service("cache_version", cycle)
    cache = _status(cycle).get("cache", {})
    stale = int(cache.get("stale_entries", 0))
    requests = _requests_frame(cycle)
    wrong_version = 0
    if not requests.empty and "model_version" in requests:
        served = {m["version"] for m in _status(cycle).get("models", {}).values()}
        hits = (
            requests[requests.get("cached", False).astype(bool)]
            if "cached" in requests
            else requests
        )
        wrong_version = int(
            (~hits["model_version"].isin(served) & hits["model_version"].notna()).sum()
        )
    evidence = {
        "stale_entries": stale,
        "cached_answers_from_unserved_versions": wrong_version,
        "entries": cache.get("entries"),
    }
    if stale == 0:
        return Finding(
            "serving", "cache_version", True, "every cache entry matches a served model", evidence
        )
    return Finding(
        "serving",
        "cache_version",
        False,
        f"{stale} cache entries are stamped with a model version that is not served",
        evidence,
        "flush_cache",
    )


def fix_flush_cache(cycle: Cycle, finding: Finding) -> FixOutcome:
    answer = cycle.admin.flush_cache()
    cycle.cache.pop("status", None)
    after = check_cache_version(cycle)
    return FixOutcome("flush_cache", after.ok, {"flushed": answer.get("flushed")})


# ---- 3. features -----------------------------------------------------------------------------


def check_latency(cycle: Cycle) -> Finding:
    """p99 of the in-service latency and the share of degraded answers (a model or the feature
    store failed; cold starts are by design) over the cycle's traffic, from the request log.
    No automated fix: an alert, and docs/runbook.md."""
    frame = _requests_frame(cycle)
    latency = (
        pd.to_numeric(frame["latency_ms"], errors="coerce").dropna()
        if "latency_ms" in frame
        else pd.Series(dtype=float)
    )
    if len(latency) < cycle.policy.min_latency_samples:
        return Finding(
            "serving", "latency", True, f"too little logged traffic to judge ({len(latency)})"
        )
    fallback = frame["fallback"] if "fallback" in frame else pd.Series(dtype=object)
    degraded = int(fallback.map(lambda f: isinstance(f, str) and f != "cold_start").sum())
    share = degraded / len(frame)
    p99 = float(latency.quantile(0.99))
    evidence = {
        "requests": len(frame),
        "p50_ms": round(float(latency.quantile(0.5)), 2),
        "p99_ms": round(p99, 2),
        "degraded_answers": degraded,
        "degraded_share": round(share, 4),
        "rule": f"p99 <= {cycle.policy.max_p99_ms:g} ms and degraded answers <= "
        f"{cycle.policy.max_degraded_share:.0%}",
    }
    problems = []
    if p99 > cycle.policy.max_p99_ms:
        problems.append(f"p99 latency {p99:.0f} ms above {cycle.policy.max_p99_ms:g} ms")
    if share > cycle.policy.max_degraded_share:
        problems.append(f"{share:.1%} of answers degraded (a model or the feature store failed)")
    if not problems:
        return Finding(
            "serving", "latency", True, f"p99 {p99:.1f} ms, {share:.1%} degraded", evidence
        )
    return Finding("serving", "latency", False, "; ".join(problems), evidence, "alert")


def check_feature_freshness(cycle: Cycle) -> Finding:
    """The online store can be read and is materialized up to the newest clean day of the lake
    (on the data's clock): a skipped or failed materialization leaves it behind; a lost or
    corrupt online store (the marker says materialized, the store has nothing) fails too."""
    import json

    from features.offline import snapshot_time
    from features.spec import FeaturePaths
    from features.store import describe_online_store, online_store_problem

    lake = cycle.settings.lake
    clean = lake.clean_batches()
    if not clean:
        return Finding("features", "feature_freshness", True, "no clean data yet")
    expected = snapshot_time(max(clean))
    marker = FeaturePaths(cycle.settings.data_dir).materialized_marker
    views = json.loads(marker.read_text()).get("views", {}) if marker.exists() else {}
    behind = {}
    for view, window in views.items():
        end = pd.Timestamp(window["end"])
        if end < expected:
            lag = round((expected - end).total_seconds() / 3600, 1)
            behind[view] = {"materialized_to": end.isoformat(), "lag_hours": lag}
    evidence = {
        "newest_clean_day": max(clean),
        "expected_through": expected.isoformat(),
        "views": behind or {v: w["end"] for v, w in views.items()},
    }
    if not views:
        seen = "the online store was never materialized"
        return Finding("features", "feature_freshness", False, seen, evidence, "backfill")
    problem = online_store_problem(cycle.settings)
    if problem is not None:
        evidence |= {"online_store": describe_online_store(cycle.settings), "problem": problem}
        seen = f"the online store cannot be read ({problem}): it must be rebuilt"
        return Finding("features", "feature_freshness", False, seen, evidence, "backfill")
    if not behind:
        seen = f"online store fresh through {expected.isoformat()}"
        return Finding("features", "feature_freshness", True, seen, evidence)
    lag = max(b["lag_hours"] for b in behind.values())
    seen = f"online store is {lag:g} h behind the newest clean data ({', '.join(behind)})"
    return Finding("features", "feature_freshness", False, seen, evidence, "backfill")


def check_feature_skew(cycle: Cycle) -> Finding:
    """Online values equal offline point-in-time values on sampled entities."""
    from features.skew import skew_report
    from features.store import OnlineStoreUnreadable

    try:
        report = skew_report(cycle.settings, sample_size=cycle.policy.feature_skew_sample)
    except OnlineStoreUnreadable as exc:  # materialized, then lost: nothing to compare against
        seen = f"the online store cannot be read ({exc.problem}): it must be rebuilt"
        return Finding(
            "features", "feature_skew", False, seen, {"problem": exc.problem}, "backfill"
        )
    except RecsysError as exc:
        from features.spec import FeaturePaths

        if not FeaturePaths(cycle.settings.data_dir).materialized_marker.exists():
            return Finding("features", "feature_skew", True, f"nothing to compare yet: {exc}")
        # materialized before: what was there is gone or broken (the offline snapshots, the
        # Feast registry), which read "nothing to compare yet" and ok
        seen = f"the skew check cannot run on a materialized store: {exc}"
        return Finding(
            "features", "feature_skew", False, seen, {"problem": str(exc)[:300]}, "backfill"
        )
    failing = report.failing_views()
    evidence = {"failing_views": failing, "report": _small(report.as_dict())}
    if not failing:
        return Finding(
            "features", "feature_skew", True, "online equals offline on the sample", evidence
        )
    return Finding(
        "features",
        "feature_skew",
        False,
        f"online values differ from offline point-in-time values in {', '.join(failing)}",
        evidence,
        "backfill",
    )


def fix_backfill(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Build the missing offline days, materialize them, repair any remaining skew, verify
    freshness and skew again."""
    from features.skew import backfill
    from features.store import materialize

    done = materialize(cycle.settings)
    repaired = backfill(cycle.settings, sample_size=cycle.policy.feature_skew_sample)
    fresh = check_feature_freshness(cycle)
    skew = check_feature_skew(cycle)
    return FixOutcome(
        "backfill",
        fresh.ok and skew.ok,
        {
            "rebuilt": done["rebuilt"] or repaired.rebuilt,
            "materialized": _small(done["views"]),
            "repaired_views": repaired.views,
            "freshness_after": fresh.seen,
            "skew_after": skew.seen,
        },
    )


# ---- 4. model --------------------------------------------------------------------------------


def check_drift(cycle: Cycle) -> Finding:
    """Evidently drift of the cycle's batches against the champion's training window, and the
    champion's quality on them against its quality on its own holdout days. Drift without a
    quality loss beyond the tolerance does not ask for a retrain; a quality loss does."""
    from monitoring.drift import (
        champion_quality,
        drift_decision,
        interaction_drift,
        record_decision,
    )
    from recsys.registry import CHAMPION, load_release, version_for_alias

    if not cycle.batches or version_for_alias(cycle.settings, CHAMPION) is None:
        return Finding("model", "drift", True, "no new batch or no champion: nothing to compare")
    deferred = _drift_deferred(cycle)
    if deferred:
        return Finding("model", "drift", True, deferred, {"deferred": True})
    lake = cycle.settings.lake
    version, release = load_release(cycle.settings, CHAMPION)
    window = release.meta["training_window"]
    frame = lake.read_clean_interactions()
    start, end = pd.Timestamp(window["start"]), pd.Timestamp(window["end"])
    holdout_start = pd.Timestamp(window["holdout_start"])
    reference = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < holdout_start)]
    holdout = frame[(frame["timestamp"] >= holdout_start) & (frame["timestamp"] <= end)]
    current = lake.read_clean_interactions([b for b in cycle.batches if b in lake.clean_batches()])
    # only what the champion has not trained on can tell how it does on new behaviour
    current = current[current["timestamp"] > end] if not current.empty else current
    if current.empty or reference.empty:
        return Finding(
            "model", "drift", True, "no rows newer than the champion's training window to compare"
        )
    items = lake.read_clean_catalog("items")
    out_dir = cycle.reports_dir or (cycle.settings.data_dir / "reports")
    name = f"drift-day-{cycle.day}" if cycle.day is not None else f"drift-{cycle.batches[-1]}"
    drift = interaction_drift(
        pd.concat([reference, holdout]),
        current,
        items,
        out_dir,
        name,
        share_threshold=cycle.policy.drift_share_threshold,
    )
    # the reference is the quality measured at training on the temporal holdout (a model fit
    # on earlier days, scored on the next ones): the same question asked of the newest batch
    recorded = release.meta.get("metrics", {}).get("holdout", {}).get("pipeline", {})
    q_now = champion_quality(release, current)
    q_ref = recorded.get("ndcg")
    if q_ref is None:
        q_ref = champion_quality(release, holdout) if not holdout.empty else q_now
    decision = drift_decision(drift, q_ref, q_now, tolerance=cycle.policy.drift_quality_tolerance)
    record_decision(drift, decision)  # the report says in words why it did or did not retrain
    evidence = {
        "champion": version,
        "drifted": drift.drifted,
        "share_drifted": round(drift.share_drifted, 3),
        "columns": {c: round(float(s), 4) for c, s in drift.columns.items()},
        "quality_reference": round(decision.quality_reference, 4),
        "quality_current": round(decision.quality_current, 4),
        "quality_loss": round(decision.quality_loss, 4),
        "report": str(drift.html_path) if drift.html_path else None,
        "reason": decision.reason,
    }
    if not decision.retrain:
        return Finding("model", "drift", True, decision.reason, evidence)
    return Finding("model", "drift", False, decision.reason, evidence, "retrain")


def check_ctr_decay(cycle: Cycle) -> Finding:
    """The champion's CTR in the cycle's traffic against its CTR in the baseline traffic (the
    CTR-drop rule of ``monitoring.traffic.ctr_drop``: 10% below and significantly lower). A
    champion that changed in between is judged by ``champion_ctr`` instead. No automated fix:
    users behave differently before the data shows why (the drift check retrains once it
    does); an alert, and docs/runbook.md."""
    from monitoring.traffic import traffic_by_arm
    from recsys.promotion import aliases

    if cycle.baseline is None:
        return Finding("model", "ctr_decay", True, "no baseline traffic to compare with")
    champion = aliases(cycle.settings).get("champion")
    move = _last_move(cycle, CHAMPION_MOVES)
    if move is not None and _epoch(move.at) >= cycle.baseline[0]:
        return Finding(
            "model", "ctr_decay", True, "the champion changed since the baseline: champion_ctr"
        )
    catalog = _catalog_size(cycle)
    before = _arm(
        traffic_by_arm(cycle.settings, *cycle.baseline, catalog_size=catalog), "champion", champion
    )
    now = _arm(
        traffic_by_arm(cycle.settings, *cycle.current, catalog_size=catalog), "champion", champion
    )
    if before.requests == 0:
        return Finding("model", "ctr_decay", True, "no baseline traffic of the champion")
    baseline_ctr, drop = _ctr_drop_between(cycle, before, now)
    evidence = {
        "champion": champion,
        "ctr_now": round(drop.current_ctr, 4),
        "ctr_baseline": round(baseline_ctr, 4),
        "requests_now": now.requests,
        "requests_baseline": before.requests,
        "p_value": drop.p_value,
        "rule": drop.rule,
    }
    if not drop.fired:
        return Finding("model", "ctr_decay", True, drop.reason or "CTR holds", evidence)
    seen = (
        f"champion v{champion} CTR {drop.current_ctr:.3f} is {drop.drop:.0%} below its baseline "
        f"{baseline_ctr:.3f}"
    )
    return Finding("model", "ctr_decay", False, seen, evidence, "alert")


def _ctr_drop_between(cycle: Cycle, before, after):
    """(the baseline CTR, the CTR-drop rule's finding for ``after`` against ``before``)."""
    from monitoring.traffic import ctr_drop

    baseline_ctr = before.clicked_requests / before.requests
    drop = ctr_drop(
        after,
        baseline_ctr,
        before.requests,
        threshold=cycle.policy.ctr_drop,
        min_requests=cycle.policy.min_requests,
    )
    return baseline_ctr, drop


def _drift_deferred(cycle: Cycle) -> str | None:
    """Why a retrain must wait, or None. While a challenger is in canary, its verdict comes
    first (a second retrain would replace it unjudged); a champion that changed since the
    baseline traffic is on probation: ``champion_ctr`` judges it online before drift asks for
    another model."""
    from recsys.promotion import aliases

    names = aliases(cycle.settings)
    if names.get("challenger"):
        return f"challenger v{names['challenger']} is in canary: drift is judged after its verdict"
    move = _last_move(cycle, CHAMPION_MOVES)
    since = cycle.baseline[0] if cycle.baseline else cycle.current[0]
    if move is not None and _epoch(move.at) >= since:
        return (
            f"champion v{names.get('champion')} took over ({move.action}) since the baseline "
            "traffic: on probation, judged online by champion_ctr before any retrain"
        )
    return None


def fix_retrain(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Retrain on the recent window, gate offline; a passing model becomes the challenger and
    the canary starts at the policy's share. Verified when the service serves the challenger."""
    from recsys.gate import register_with_gate
    from recsys.promotion import AliasMove, aliases, record_move

    before = aliases(cycle.settings)
    result = _train_recent(cycle)
    registered, decision = register_with_gate(cycle.settings, result)
    detail = {"version": registered.version, "gate": decision.reason, "passed": decision.passed}
    if not decision.passed or decision.alias != "challenger":
        return FixOutcome("retrain (rejected by the gate)", False, detail)
    record_move(
        cycle.settings,
        AliasMove(
            "challenger_registered",
            before,
            aliases(cycle.settings),
            f"retrain: {finding.seen}",
            {"gate": decision.as_dict(), "trigger": finding.check},
            _now_iso(),
        ),
    )
    verified = start_canary(cycle)
    detail["canary_share"] = canary_share(cycle)
    return FixOutcome("retrain", verified, detail)


def _train_recent(cycle: Cycle):
    """Train and evaluate on the policy's recent window, within its search budget."""
    from recsys.train import pipeline_params, train_and_evaluate

    return train_and_evaluate(
        cycle.settings.lake,
        pipeline_params(cycle.settings),
        window_days=cycle.policy.retrain_window_days,
        budget_s=cycle.policy.retrain_budget_s,
        model_name=cycle.settings.model_name,
    )


def canary_share(cycle: Cycle) -> float:
    """The share a canary the guardian starts or resumes gets: the policy's, else the one the
    service is configured with (``RECSYS_CANARY_SHARE``), so one setting rules both."""
    share = cycle.policy.canary_share
    return cycle.settings.canary_share if share is None else share


def start_canary(cycle: Cycle) -> bool:
    """Point the service at the new challenger with the canary share; True when it serves it."""
    from recsys.registry import CHALLENGER, version_for_alias

    if cycle.admin is None:
        return True
    cycle.admin.reload()
    cycle.admin.set_canary(canary_share(cycle))
    cycle.cache.pop("status", None)
    return cycle.admin.served_versions().get(CHALLENGER) == version_for_alias(
        cycle.settings, CHALLENGER
    )


# ---- 5. canary and champion ------------------------------------------------------------------


def _arm(arms, variant: str, version: str | None):
    from recsys.canary import ArmStats

    match = [a for a in arms if a.variant == variant and a.model_version == version]
    if not match:
        return ArmStats(0, 0)
    a = match[0]
    return ArmStats(a.requests, a.clicked_requests, a.p99_ms, a.degraded, a.coverage)


def _last_move(cycle: Cycle, actions: tuple[str, ...]):
    from recsys.promotion import promotion_history

    moves = [m for m in promotion_history(cycle.settings) if m.action in actions]
    return moves[-1] if moves else None


# moves that put a version judged online by ``champion_ctr`` (not ``replace_champion``: the
# version it replaced could not be served, so there is nothing to roll back to)
CHAMPION_MOVES = ("promote", "manual_promote", "rollback_champion", "manual_rollback")


def _epoch(iso: str) -> float:
    return pd.Timestamp(iso).timestamp()


def check_canary(cycle: Cycle) -> Finding:
    """Judge the running canary on the traffic since it started (``recsys.canary``). Without a
    verdict yet, a service that serves the challenger at canary share 0 (a canary stopped
    through ``/admin/canary`` and never resumed) fails: no verdict could ever come, the
    challenger gets no traffic. Fix: ``resume_canary``. Without a service to ask, only the
    traffic is judged."""
    from monitoring.traffic import traffic_by_arm
    from recsys.canary import CanaryPolicy, decide_canary
    from recsys.promotion import aliases

    names = aliases(cycle.settings)
    if not names.get("challenger"):
        return Finding("canary", "canary", True, "no canary running")
    move = _last_move(cycle, ("challenger_registered",))
    since = _epoch(move.at) if move else None
    arms = traffic_by_arm(
        cycle.settings, since=since, until=cycle.current[1], catalog_size=_catalog_size(cycle)
    )
    champion = _arm(arms, "champion", names["champion"])
    challenger = _arm(arms, "challenger", names["challenger"])
    policy = CanaryPolicy(min_requests=cycle.policy.min_requests)
    decision = decide_canary(champion, challenger, policy)
    evidence = {
        "champion": {"version": names["champion"], **asdict(champion)},
        "challenger": {"version": names["challenger"], **asdict(challenger)},
        "rule": decision.rule,
        **decision.evidence,
    }
    if decision.action == "continue":
        stalled = _stalled_challenger(cycle)
        if stalled is not None:
            evidence["served_challenger"] = stalled
            evidence["canary_share"] = 0.0
            seen = (
                f"canary stalled: challenger v{stalled} is loaded at share 0, it gets no "
                f"traffic ({decision.reason})"
            )
            return Finding("canary", "canary", False, seen, evidence, "resume_canary")
        return Finding("canary", "canary", True, f"canary continues: {decision.reason}", evidence)
    ok = False
    fix = "promote" if decision.action == "promote" else "rollback_challenger"
    seen = (
        f"canary v{names['challenger']} vs v{names['champion']}: {decision.action} "
        f"({decision.reason})"
    )
    return Finding("canary", "canary", ok, seen, evidence, fix)


def _stalled_challenger(cycle: Cycle) -> str | None:
    """The version of the challenger the service serves at canary share 0, or None: it serves
    none, its share is not 0, there is no service to ask (no admin client, or it does not
    answer), or the configured share is 0 itself (canaries turned off: nothing to resume)."""
    if _service_unchecked(cycle) or canary_share(cycle) == 0:
        return None
    try:
        status = _status(cycle)
    except Exception as exc:  # the service cannot be asked: the traffic alone decides
        logger.warning("canary share unknown (%s): judged on the traffic alone", exc)
        return None
    served = status.get("models", {}).get("challenger")
    if served is None or status.get("canary_share") != 0:
        return None
    return str(served["version"])


def fix_resume_canary(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Set the canary share on the service (``start_canary``); verified when it serves the
    registry's challenger and the canary is no longer stalled."""
    serves = start_canary(cycle)
    after = _stalled_challenger(cycle)
    detail = {"canary_share": canary_share(cycle), "stalled_after": after}
    return FixOutcome("resume_canary", serves and after is None, detail)


def fix_promote(cycle: Cycle, finding: Finding) -> FixOutcome:
    from recsys.promotion import promote_challenger

    move = promote_challenger(cycle.settings, finding.seen, finding.evidence)
    return _after_move(cycle, "promote", move)


def fix_rollback_challenger(cycle: Cycle, finding: Finding) -> FixOutcome:
    from recsys.promotion import reject_challenger

    move = reject_challenger(cycle.settings, finding.seen, finding.evidence)
    return _after_move(cycle, "rollback_challenger", move)


def check_champion_ctr(cycle: Cycle) -> Finding:
    """A champion that replaced another one must not lose CTR against it: the current
    champion's CTR since it took over, against the replaced version's CTR in the baseline."""
    from monitoring.traffic import traffic_by_arm
    from recsys.promotion import aliases

    names = aliases(cycle.settings)
    move = _last_move(cycle, CHAMPION_MOVES)
    if move is None or cycle.baseline is None:
        return Finding(
            "canary", "champion_ctr", True, "the champion never changed: nothing to compare"
        )
    replaced = move.aliases_before.get("champion")
    current_version = names.get("champion")
    if (
        replaced is None
        or replaced == current_version
        or move.aliases_after.get("champion") != current_version
    ):
        return Finding("canary", "champion_ctr", True, "no comparable change of champion")
    changed_at = _epoch(move.at)
    catalog = _catalog_size(cycle)
    before = _arm(
        traffic_by_arm(
            cycle.settings, since=cycle.baseline[0], until=changed_at, catalog_size=catalog
        ),
        "champion",
        replaced,
    )
    after = _arm(
        traffic_by_arm(
            cycle.settings, since=changed_at, until=cycle.current[1], catalog_size=catalog
        ),
        "champion",
        current_version,
    )
    if before.requests == 0:
        return Finding("canary", "champion_ctr", True, f"no traffic of v{replaced} to compare with")
    baseline_ctr, drop = _ctr_drop_between(cycle, before, after)
    evidence = {
        "champion": current_version,
        "replaced": replaced,
        "changed_by": move.action,
        "ctr_now": round(drop.current_ctr, 4),
        "ctr_before": round(baseline_ctr, 4),
        "requests_now": after.requests,
        "requests_before": before.requests,
        "rule": drop.rule,
    }
    if not drop.fired:
        return Finding(
            "canary", "champion_ctr", True, f"champion v{current_version} holds its CTR", evidence
        )
    return Finding(
        "canary",
        "champion_ctr",
        False,
        f"champion v{current_version} CTR {drop.current_ctr:.3f} is {drop.drop:.0%} below "
        f"v{replaced}'s {baseline_ctr:.3f}",
        evidence,
        "rollback_champion",
    )


def fix_rollback_champion(cycle: Cycle, finding: Finding) -> FixOutcome:
    from recsys.promotion import rollback_champion

    move = rollback_champion(cycle.settings, finding.seen, finding.evidence)
    return _after_move(cycle, "rollback_champion", move)


def _after_move(cycle: Cycle, action: str, move) -> FixOutcome:
    """Make the service follow the registry; verified when it serves the new aliases."""
    from recsys.registry import CHALLENGER, CHAMPION, version_for_alias

    detail = {"aliases_before": move.aliases_before, "aliases_after": move.aliases_after}
    if cycle.admin is None:
        return FixOutcome(action, True, detail)
    if version_for_alias(cycle.settings, CHALLENGER) is None:
        cycle.admin.set_canary(0.0)
    cycle.admin.reload()
    cycle.cache.pop("status", None)
    served = cycle.admin.served_versions()
    detail["served"] = served
    verified = served.get(CHAMPION) == version_for_alias(cycle.settings, CHAMPION) and served.get(
        CHALLENGER
    ) == version_for_alias(cycle.settings, CHALLENGER)
    return FixOutcome(action, verified, detail)


def fix_alert(cycle: Cycle, finding: Finding) -> FixOutcome:
    """No automated remedy: page a person (log line and webhook). Verified when delivered."""
    from monitoring.alerts import deliver_alert

    delivery = deliver_alert(
        cycle.settings,
        layer=finding.layer,
        check=finding.check,
        seen=finding.seen,
        evidence=_small(finding.evidence),
    )
    return FixOutcome("alert", bool(delivery["ok"]), {"delivery": delivery})


# ---- the cycle -------------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable[[Cycle], Finding]], ...] = (
    ("delivery", check_delivery),
    ("readiness", check_readiness),
    ("model_version", check_model_version),
    ("cache_version", check_cache_version),
    ("latency", check_latency),
    ("feature_freshness", check_feature_freshness),
    ("feature_skew", check_feature_skew),
    ("drift", check_drift),
    ("ctr_decay", check_ctr_decay),
    ("canary", check_canary),
    ("champion_ctr", check_champion_ctr),
)
"""Every check, in the triage order."""

FIXES: dict[str, Callable[[Cycle, Finding], FixOutcome]] = {
    "redeliver_reingest": fix_redeliver_reingest,
    "rebuild_clean": fix_rebuild_clean,
    "reload": fix_reload,
    "flush_cache": fix_flush_cache,
    "backfill": fix_backfill,
    "retrain": fix_retrain,
    "promote": fix_promote,
    "rollback_challenger": fix_rollback_challenger,
    "resume_canary": fix_resume_canary,
    "rollback_champion": fix_rollback_champion,
    "alert": fix_alert,
}


def run_check(cycle: Cycle, name: str) -> Finding:
    """Run one check; a check that crashes is itself a failing finding (never silent)."""
    check = dict(CHECKS)[name]
    try:
        return check(cycle)
    except Exception as exc:
        logger.exception("check %s failed", name)
        layer = {
            "delivery": "data",
            "drift": "model",
            "ctr_decay": "model",
            "canary": "canary",
            "champion_ctr": "canary",
        }.get(name, "features" if name.startswith("feature") else "serving")
        seen = f"the check itself failed: {type(exc).__name__}: {exc}"
        return Finding(layer, name, False, seen, {}, "alert")


def apply_fix(cycle: Cycle, finding: Finding) -> FixOutcome:
    """Run the fix a failing finding names; a fix that crashes is an unverified outcome."""
    if finding.fix is None:
        return fix_alert(cycle, finding)
    try:
        return FIXES[finding.fix](cycle, finding)
    except Exception as exc:
        logger.exception("fix %s failed", finding.fix)
        return FixOutcome(finding.fix, False, {"error": f"{type(exc).__name__}: {exc}"})


# ---- helpers ---------------------------------------------------------------------------------


def _requests_frame(cycle: Cycle) -> pd.DataFrame:
    from monitoring.traffic import read_requests

    if "requests" not in cycle.cache:
        cycle.cache["requests"] = read_requests(
            cycle.settings, since=cycle.current[0], until=cycle.current[1]
        )
    return cycle.cache["requests"]


def _catalog_size(cycle: Cycle) -> int | None:
    try:
        return len(cycle.settings.lake.read_clean_catalog("items"))
    except RecsysError:
        return None


def _small(payload: Any, limit: int = 20) -> Any:
    """A JSON-able, bounded copy of ``payload`` for evidence (long lists are cut)."""
    if isinstance(payload, dict):
        return {str(k): _small(v, limit) for k, v in list(payload.items())[:limit]}
    if isinstance(payload, list | tuple):
        return [_small(v, limit) for v in payload[:limit]]
    if isinstance(payload, float | int | str | bool) or payload is None:
        return payload
    return str(payload)


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def wall_now() -> float:
    return time.time()
