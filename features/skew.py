"""Online/offline skew check and backfill.

:func:`skew_report` samples entities of each view, reads their online rows
(``get_online_features``) and their offline point-in-time values at ``as_of``
(``get_historical_features``, what training sees) and compares them feature by feature:

* ``missing``: the offline value exists, the online row does not;
* ``type``: the online value has another type or shape than the view declares;
* ``value``: ``|online - offline| > tolerance * max(1, |offline|)`` (element-wise for arrays).

Online rows newer than ``as_of`` (pushed real-time rows) are counted as ``ahead`` and not
compared. Each view also gets its freshness: the age of its newest online row at ``as_of``
against the view's TTL, and whether it is as new as the newest offline snapshot.

:func:`backfill` re-materializes the affected window of the failing views with unconditional
writes, checks again and reports both results. Running it on a healthy store does nothing. An
online store that cannot be read (lost, not a database, tables missing) is rebuilt: the check
cannot run on it (:class:`features.store.OnlineStoreUnreadable`), the backfill sets it aside and
materializes every view from scratch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.offline import offline_days, read_snapshot, read_vocabulary, snapshot_time
from features.spec import (
    AFFINITY,
    JOIN_KEYS,
    RECENT_ITEMS,
    TIMESTAMP_FIELD,
    VIEW_FEATURES,
    VIEW_TTL,
    VIEWS,
    FeaturePaths,
)
from recsys.config import Settings
from recsys.errors import RecsysError

PRESENT = 1  # FieldStatus.PRESENT
FLOAT_KIND, INT_KIND, FLOAT_LIST_KIND = "float_val", "int64_val", "float_list_val"
INT_LIST_KIND = "int64_list_val"


def _expected_kind(feature: str) -> str:
    if feature == AFFINITY:
        return FLOAT_LIST_KIND
    if feature == RECENT_ITEMS:
        return INT_LIST_KIND
    return INT_KIND if feature == "item_category_index" else FLOAT_KIND


def _iso(stamp: float | pd.Timestamp | datetime | None) -> str | None:
    if stamp is None or (isinstance(stamp, float) and math.isnan(stamp)):
        return None
    if isinstance(stamp, int | float | np.integer | np.floating):
        return datetime.fromtimestamp(float(stamp), UTC).isoformat()
    return pd.Timestamp(stamp).isoformat()


@dataclass
class FeatureSkew:
    """Comparison of one feature over the sampled entities of its view."""

    feature: str
    compared: int = 0
    mismatched: int = 0
    missing: int = 0
    type_errors: int = 0
    max_abs_diff: float = 0.0


@dataclass
class Freshness:
    """How new a view's online rows are at ``as_of``.

    ``age_seconds`` = ``as_of`` - newest online event; ``within_ttl`` = age <= TTL;
    ``lag_seconds`` = newest offline snapshot - newest online event (> 0: materialization is
    behind); ``expired_entities``: sampled entities whose online row is older than the TTL.
    """

    as_of: str
    ttl_seconds: float
    newest_online: str | None
    newest_offline: str | None
    age_seconds: float | None
    lag_seconds: float | None
    expired_entities: int
    within_ttl: bool
    up_to_date: bool


@dataclass
class ViewSkew:
    """The skew check of one feature view.

    Entity counts over the ``sampled`` entities: ``compared`` have an offline point-in-time
    row; ``missing_online`` lack the online row or some feature of it; ``stale_entities`` have
    an online row older than their offline row (a skipped materialization); ``ahead_entities``
    have one newer than ``as_of`` (pushed; not compared); ``mismatched_entities`` have a value
    off by more than the tolerance; ``type_errors`` a value of the wrong type or shape.
    ``features`` breaks it down per feature, ``worst`` lists the worst examples.
    """

    view: str
    entity_key: str
    sampled: int
    compared: int
    missing_online: int
    stale_entities: int
    ahead_entities: int
    mismatched_entities: int
    type_errors: int
    features: list[FeatureSkew]
    worst: list[dict[str, Any]]
    freshness: Freshness
    repair_from: str | None = None
    """Oldest event time a backfill must re-read to repair what was found (None: nothing)."""

    @property
    def ok(self) -> bool:
        return (
            self.missing_online == 0
            and self.stale_entities == 0
            and self.mismatched_entities == 0
            and self.type_errors == 0
            and self.freshness.within_ttl
            and self.freshness.up_to_date
        )

    @property
    def problems(self) -> list[str]:
        """Short reasons why the view is not ok (empty when it is)."""
        out = []
        if self.missing_online:
            out.append(f"{self.missing_online} missing online")
        if self.stale_entities:
            out.append(f"{self.stale_entities} older online than offline")
        if self.type_errors:
            out.append(f"{self.type_errors} type errors")
        if self.mismatched_entities:
            out.append(f"{self.mismatched_entities} entities with values off")
        if not self.freshness.up_to_date:
            out.append(f"online behind offline by {self.freshness.lag_seconds / 3600:.1f} h")
        if self.freshness.newest_online is None and self.sampled:
            out.append("no online rows")
        elif not self.freshness.within_ttl:
            out.append("newest online row older than the TTL")
        return out


@dataclass
class SkewReport:
    """Skew check of every view: ``ok`` only if every view is ok."""

    as_of: str
    tolerance: float
    sample_size: int
    project: str
    online_store: str
    checked_at: str
    views: dict[str, ViewSkew] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.views.values())

    def failing_views(self) -> list[str]:
        """Names of the views that are not ok."""
        return [name for name, v in self.views.items() if not v.ok]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``ok`` and each view's ``ok``/``problems`` included)."""
        out = asdict(self)
        out["ok"] = self.ok
        for name, view in self.views.items():
            out["views"][name]["ok"] = view.ok
            out["views"][name]["problems"] = view.problems
        return out


# ---- reading both sides ---------------------------------------------------------------------


def _offline_population(paths: FeaturePaths, view: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """Entities known offline at ``as_of``: ``key`` and the time of their newest row.

    Reads the snapshots inside the TTL window plus the newest one before ``as_of``, so an
    ``as_of`` past the TTL still samples entities (their online rows are then expired).
    """
    key = JOIN_KEYS[view]
    ttl = VIEW_TTL[view]
    before = [d for d in offline_days(paths) if snapshot_time(d) <= as_of]
    days = sorted({d for d in before if snapshot_time(d) >= as_of - ttl} | set(before[-1:]))
    if not days:
        return pd.DataFrame({key: pd.Series(dtype="int64"), TIMESTAMP_FIELD: []})
    frames = [read_snapshot(paths, view, d)[[key, TIMESTAMP_FIELD]] for d in days]
    rows = pd.concat(frames, ignore_index=True)
    return rows.sort_values(TIMESTAMP_FIELD).drop_duplicates(key, keep="last")


def _online_rows(store, view: str, ids: list[int]) -> tuple[dict[str, list], np.ndarray]:
    """Raw online values ``{feature: [(kind, value) | None]}`` and event times (epoch s, 0)."""
    key = JOIN_KEYS[view]
    response = store.get_online_features(
        features=[f"{view}:{f}" for f in VIEW_FEATURES[view]], entity_rows={key: ids}
    )
    proto = response.proto
    times = np.zeros(len(ids), dtype=np.int64)
    out: dict[str, list] = {}
    for name, result in zip(proto.metadata.feature_names.val, proto.results, strict=True):
        if name == key:
            continue
        cells = []
        for i, (value, status) in enumerate(zip(result.values, result.statuses, strict=True)):
            if status != PRESENT:
                cells.append(None)
                continue
            times[i] = max(times[i], result.event_timestamps[i].seconds)
            kind = value.WhichOneof("val")
            raw = getattr(value, kind) if kind else None
            cells.append((kind, list(raw.val) if kind and kind.endswith("_list_val") else raw))
        out[name] = cells
    return out, times


def _offline_values(store, view: str, ids: list[int], as_of: pd.Timestamp) -> pd.DataFrame:
    from features.store import quiet_feast

    key = JOIN_KEYS[view]
    entity_df = pd.DataFrame({key: ids, TIMESTAMP_FIELD: [as_of] * len(ids)})
    refs = [f"{view}:{f}" for f in VIEW_FEATURES[view]]
    with quiet_feast():
        found = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    return entity_df[[key]].merge(found.drop(columns=[TIMESTAMP_FIELD]), on=key, how="left")


def _compare(
    kind: str | None, online: Any, offline: Any, feature: str, width: int | None, tolerance: float
) -> tuple[str | None, float]:
    """Return (problem, abs_diff): problem is None, 'type' or 'value'."""
    expected = _expected_kind(feature)
    if kind != expected:
        return "type", math.inf
    if expected == INT_LIST_KIND:  # ids: equal, in the same order
        a, b = list(map(int, online)), list(map(int, offline))
        return (None, 0.0) if a == b else ("value", math.inf)
    if expected == FLOAT_LIST_KIND:
        a = np.asarray(online, dtype=np.float64)
        b = np.asarray(offline, dtype=np.float64)
        if a.shape != b.shape or (width is not None and len(a) != width):
            return "type", math.inf
        if a.size == 0:
            return None, 0.0
        diff = np.abs(a - b)
        worst = float(np.nanmax(diff)) if not np.isnan(diff).all() else math.inf
        allowed = tolerance * np.maximum(1.0, np.abs(b))
        return (None if np.all(diff <= allowed) else "value"), worst
    diff = abs(float(online) - float(offline))
    allowed = tolerance * max(1.0, abs(float(offline)))
    return (None if diff <= allowed else "value"), diff


def _check_view(
    store,
    paths: FeaturePaths,
    view: str,
    as_of: pd.Timestamp,
    sample_size: int,
    seed: int,
    examples: int,
    width: int | None,
    tolerance: float,
) -> ViewSkew:
    key = JOIN_KEYS[view]
    ttl = VIEW_TTL[view]
    population = _offline_population(paths, view, as_of)
    if len(population) > sample_size:
        population = population.sample(n=sample_size, random_state=seed)
    population = population.sort_values(key).reset_index(drop=True)
    ids = [int(i) for i in population[key]]
    offline_time = population[TIMESTAMP_FIELD].map(lambda t: pd.Timestamp(t).timestamp())
    offline_time = offline_time.to_numpy(dtype=np.float64)
    # A row older than the TTL is no point-in-time value: training would see null there.
    offline_time[offline_time < (as_of - ttl).timestamp()] = np.nan
    online, online_time = _online_rows(store, view, ids) if ids else ({}, np.zeros(0))
    offline = _offline_values(store, view, ids, as_of) if ids else pd.DataFrame()

    as_of_s = as_of.timestamp()
    found = online_time > 0
    stale = found & (online_time < offline_time)
    ahead = found & (online_time > as_of_s)
    stats = {f: FeatureSkew(f) for f in VIEW_FEATURES[view]}
    bad_entity = np.zeros(len(ids), dtype=bool)
    type_entity = np.zeros(len(ids), dtype=bool)
    missing_entity = np.zeros(len(ids), dtype=bool)
    issues: list[dict[str, Any]] = []
    for feature in VIEW_FEATURES[view]:
        cells = online.get(feature, [None] * len(ids))
        for i, entity in enumerate(ids):
            if ahead[i]:
                continue
            offline_value = offline[feature].iat[i]
            if offline_value is None or (np.isscalar(offline_value) and pd.isna(offline_value)):
                continue  # Feast found no point-in-time row: nothing to compare against
            stats[feature].compared += 1
            cell = cells[i]
            if cell is None:
                stats[feature].missing += 1
                missing_entity[i] = True
                problem, diff, online_value = "missing", math.inf, None
            else:
                problem, diff = _compare(cell[0], cell[1], offline_value, feature, width, tolerance)
                online_value = cell[1]
                if problem == "type":
                    stats[feature].type_errors += 1
                    type_entity[i] = True
                elif problem == "value":
                    stats[feature].mismatched += 1
                    bad_entity[i] = True
                if problem != "type" and math.isfinite(diff):
                    stats[feature].max_abs_diff = max(stats[feature].max_abs_diff, diff)
            if problem:
                issues.append(
                    {
                        "entity": entity,
                        "feature": feature,
                        "kind": problem,
                        "online": _plain(online_value),
                        "offline": _plain(offline_value),
                        "abs_diff": diff if math.isfinite(diff) else None,
                        "online_time": _iso(float(online_time[i])) if found[i] else None,
                        "offline_time": _iso(float(offline_time[i])),
                        "_rank": diff,
                    }
                )
    issues.sort(key=lambda x: -x["_rank"])
    worst = [{k: v for k, v in x.items() if k != "_rank"} for x in issues[:examples]]
    compared_entities = ~ahead & ~np.isnan(offline_time)
    missing = compared_entities & (~found | missing_entity)
    affected = (bad_entity | type_entity | missing | stale) & compared_entities
    repair = None
    if affected.any():
        times = np.where(found[affected], online_time[affected], offline_time[affected])
        repair = _iso(float(np.min(np.minimum(times, offline_time[affected]))))

    has_offline = ~np.isnan(offline_time)
    newest_offline = float(offline_time[has_offline].max()) if has_offline.any() else None
    current = found & ~ahead
    newest_online = float(online_time[found].max()) if found.any() else None
    age = as_of_s - newest_online if newest_online is not None else None
    lag = (
        newest_offline - newest_online
        if newest_offline is not None and newest_online is not None
        else None
    )
    expired = int(np.sum(current & (as_of_s - online_time > ttl.total_seconds())))
    freshness = Freshness(
        as_of=as_of.isoformat(),
        ttl_seconds=ttl.total_seconds(),
        newest_online=_iso(newest_online),
        newest_offline=_iso(newest_offline),
        age_seconds=age,
        lag_seconds=lag,
        expired_entities=expired,
        within_ttl=(age is not None and age <= ttl.total_seconds()) or not ids,
        up_to_date=lag is None or lag <= 0,
    )
    if repair is None and not freshness.up_to_date and newest_online is not None:
        repair = _iso(newest_online)
    return ViewSkew(
        view=view,
        entity_key=key,
        sampled=len(ids),
        compared=int(compared_entities.sum()),
        missing_online=int(missing.sum()),
        stale_entities=int((stale & compared_entities).sum()),
        ahead_entities=int(ahead.sum()),
        mismatched_entities=int((bad_entity & ~type_entity).sum()),
        type_errors=int(type_entity.sum()),
        features=list(stats.values()),
        worst=worst,
        freshness=freshness,
        repair_from=repair,
    )


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, np.ndarray | list | tuple):
        return [round(float(v), 6) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    return value


# ---- public API -----------------------------------------------------------------------------


def skew_report(
    settings: Settings,
    sample_size: int = 500,
    as_of: datetime | str | None = None,
    tolerance: float = 1e-5,
    *,
    views: list[str] | None = None,
    examples: int = 5,
) -> SkewReport:
    """Compare online values with offline point-in-time values, per view (see module doc).

    Args:
        sample_size: entities per view (sampled with ``settings.seed`` from those that have an
            offline point-in-time row at ``as_of``).
        as_of: the point in time (default: the newest offline snapshot, the data's "now").
        tolerance: allowed ``|online - offline| / max(1, |offline|)``.
        views: views to check (default: all).
        examples: worst examples kept per view.

    Raises:
        OnlineStoreUnreadable: the online store cannot be read (a backfill rebuilds it).
        RecsysError: nothing built or applied yet, or an unknown view.
    """
    from features.store import (
        _as_utc,
        _require_applied,
        _require_offline,
        describe_online_store,
        feature_store,
        require_online_store,
    )

    if sample_size < 1:
        raise RecsysError(f"sample size must be >= 1, got {sample_size}")
    if not tolerance >= 0:
        raise RecsysError(f"tolerance must be >= 0, got {tolerance}")
    views = list(views or VIEWS)
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise RecsysError(f"unknown feature views {unknown}; the views are {list(VIEWS)}")
    newest = _require_offline(settings)
    stamp = pd.Timestamp(_as_utc(as_of)) if as_of is not None else newest
    store = feature_store(settings)
    _require_applied(store, settings)
    require_online_store(settings)
    paths = FeaturePaths(settings.data_dir)
    width = len(read_vocabulary(paths))
    report = SkewReport(
        as_of=stamp.isoformat(),
        tolerance=tolerance,
        sample_size=sample_size,
        project=store.project,
        online_store=describe_online_store(settings),
        checked_at=datetime.now(UTC).isoformat(),
    )
    for view in views:
        report.views[view] = _check_view(
            store, paths, view, stamp, sample_size, settings.seed, examples, width, tolerance
        )
    return report


@dataclass
class BackfillResult:
    """What a backfill did: the views and window re-materialized, the checks before and after;
    ``rebuilt`` (``{"problem", "moved_to"}``) when the online store could not be read and was
    made anew (``before`` is then the check of the new, empty store)."""

    views: list[str]
    start: str | None
    end: str | None
    rematerialized: bool
    before: SkewReport
    after: SkewReport
    rebuilt: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.after.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "views": self.views,
            "start": self.start,
            "end": self.end,
            "rematerialized": self.rematerialized,
            "rebuilt": self.rebuilt,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
        }


def backfill(
    settings: Settings,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    views: list[str] | None = None,
    *,
    sample_size: int = 500,
    tolerance: float = 1e-5,
) -> BackfillResult:
    """Repair the online store from the offline store, then verify.

    Runs :func:`skew_report`; re-materializes ``views`` (default: the failing ones) over
    ``[start, end]`` (defaults: the oldest event time the check found wrong, and the newest
    offline snapshot) with unconditional writes, then checks again. ``end`` earlier than the
    newest snapshot is extended to it, so the online store never goes back in time. With no
    failing view and no explicit ``views``/``start``/``end`` it writes nothing; re-running a
    backfill rewrites the same values, so running it twice changes nothing.

    An online store that cannot be read is rebuilt first
    (:func:`features.store.set_aside_unreadable_online_store`: a corrupt file is kept beside it),
    and every view is materialized from scratch (from ``end - ttl``, or ``start`` if earlier):
    a sample's repair window would leave the unsampled entities out.

    Raises:
        RecsysError: nothing built or applied yet, a bad window or an unknown view.
    """
    from features.store import (
        _as_utc,
        _require_offline,
        apply_repo,
        materialize_window,
        set_aside_unreadable_online_store,
    )

    explicit = views is not None or start is not None or end is not None
    if views is not None:
        unknown = sorted(set(views) - set(VIEWS))
        if unknown:
            raise RecsysError(f"unknown feature views {unknown}; the views are {list(VIEWS)}")
    rebuilt = set_aside_unreadable_online_store(settings)
    if rebuilt is not None:
        apply_repo(settings)  # a new online store with the views' tables
    before = skew_report(settings, sample_size=sample_size, tolerance=tolerance)
    targets = list(views) if views is not None else before.failing_views()
    if rebuilt is not None:
        targets = list(VIEWS)  # the whole store is new
    if not targets and explicit:
        targets = list(VIEWS)
    if not targets:
        return BackfillResult([], None, None, False, before, before)
    newest = _require_offline(settings).to_pydatetime()
    end_at = max(_as_utc(end) or newest, newest)
    start_at = _as_utc(start)
    if start_at is None and rebuilt is None:
        found = [before.views[v].repair_from for v in targets if v in before.views]
        found = [_as_utc(f) for f in found if f]
        start_at = min(found) if found else end_at - max(VIEW_TTL[v] for v in targets)
    if start_at is not None and start_at > end_at:
        raise RecsysError(f"backfill start {start_at.isoformat()} is after {end_at.isoformat()}")
    done = materialize_window(
        settings, start_at, end_at, targets, overwrite=True, from_scratch=rebuilt is not None
    )
    start_at = min(_as_utc(w["start"]) for w in done.values())
    after = skew_report(settings, sample_size=sample_size, tolerance=tolerance)
    return BackfillResult(
        targets, start_at.isoformat(), end_at.isoformat(), True, before, after, rebuilt
    )
