"""The feature store from the recsys settings: apply, materialize, training sets, status, push.

:func:`feature_store` is the one factory that looks at ``settings.profile``: local builds a
SQLite online store at ``<data_dir>/features/online.db``; prod a Redis online store from
``RECSYS_REDIS_URL``. Both keep a file registry and read the parquet offline sources under
``<data_dir>/features/offline/`` (see :mod:`features.spec` for the layout).

Typical use::

    from recsys.config import get_settings
    from features.store import materialize, historical_features
    settings = get_settings()
    materialize(settings)                       # offline build + apply + materialize
    training = historical_features(settings, labels[["user_id", "item_id", "event_timestamp"]])
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import pandas as pd

from features.offline import (
    build_offline_features,
    clear_online_pending,
    newest_snapshot,
    offline_days,
    online_pending,
    read_manifest,
    snapshot_time,
)
from features.spec import (
    FEATURE_REPO_DIR,
    FEATURE_SERVICE_NAME,
    FEATURE_SERVICE_VERSION,
    JOIN_KEYS,
    REGISTRY_STORE_TYPE,
    TIMESTAMP_FIELD,
    USER_PUSH_SOURCE,
    USER_VIEW,
    VIEW_FEATURES,
    VIEW_TTL,
    VIEWS,
    FeaturePaths,
    feast_project,
)
from recsys.config import Settings, mask_url
from recsys.errors import RecsysError
from recsys.lake import write_json
from recsys.pausepoints import pause_point

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

os.environ.setdefault("FEAST_USAGE", "False")
logger = logging.getLogger(__name__)

__all__ = [
    "apply_repo",
    "build_offline_features",
    "feature_status",
    "feature_store",
    "historical_features",
    "materialize",
    "online_store_problem",
    "push_user_features",
    "redis_connection_string",
    "repo_config",
]


# ---- the factory ----------------------------------------------------------------------------


def redis_connection_string(url: str) -> str:
    """Turn ``redis://[:password@]host:port[/db]`` (or ``rediss://``) into Feast's
    ``host:port[,db=N][,password=...][,ssl=true]``.

    Raises:
        RecsysError: the URL is not a redis URL.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise RecsysError(
            f"RECSYS_REDIS_URL={mask_url(url)} is not a redis URL; use redis://host:port[/db]"
        )
    # redis-py also takes them as query parameters (?password=...&db=...): none may be dropped
    query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"db", "password", "username", "ssl"})
    if unknown:
        raise RecsysError(
            f"RECSYS_REDIS_URL={mask_url(url)} has ?{unknown[0]}=, which the Feast online store "
            "cannot take; use redis[s]://[user:password@]host:port[/db] (or ?db=, ?password=, "
            "?username=, ?ssl=true)"
        )
    parts = [f"{parsed.hostname}:{parsed.port or 6379}"]
    db = parsed.path.strip("/") or query.get("db", "")
    if db:
        if not db.isdigit():
            raise RecsysError(f"RECSYS_REDIS_URL={mask_url(url)}: the db must be a number")
        parts.append(f"db={int(db)}")
    username = unquote(parsed.username) if parsed.username else query.get("username")
    if username and username != "default":
        parts.append(f"username={username}")
    password = unquote(parsed.password) if parsed.password else query.get("password")
    if password:
        parts.append(f"password={password}")
    if parsed.scheme == "rediss" or query.get("ssl", "").lower() in ("true", "1", "yes"):
        parts.append("ssl=true")
    return ",".join(parts)


def _online_store_config(settings: Settings, *, overwrite: bool) -> dict[str, Any]:
    if settings.profile == "prod":
        if not settings.redis_url:
            raise RecsysError(
                "profile prod keeps online features in Redis: set RECSYS_REDIS_URL "
                "(redis://host:port)"
            )
        # skip_dedup: a backfill must overwrite rows whose timestamp did not change.
        return {
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
            "skip_dedup": overwrite,
        }
    return {"type": "sqlite", "path": str(FeaturePaths(settings.data_dir).online_db)}


def repo_config(settings: Settings, *, overwrite: bool = False) -> RepoConfig:
    """The Feast ``RepoConfig`` of this profile (the only place that looks at the profile).

    ``overwrite=True`` makes online writes unconditional (Redis otherwise skips a row whose event
    timestamp is not newer than the stored one); backfills use it.
    """
    from feast import RepoConfig

    paths = FeaturePaths(settings.data_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=feast_project(),
        provider="local",
        registry={
            "registry_type": "file",
            "registry_store_type": REGISTRY_STORE_TYPE,  # atomic writes (registry_store.py)
            "path": str(paths.registry(settings.profile)),
            "cache_ttl_seconds": 60,
        },
        online_store=_online_store_config(settings, overwrite=overwrite),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=FEATURE_REPO_DIR,
    )


def feature_store(
    settings: Settings, *, overwrite: bool = False, check_online: bool = True
) -> FeatureStore:
    """A Feast ``FeatureStore`` for ``settings`` (see :func:`repo_config`).

    Raises:
        RecsysError: ``check_online`` and the Redis online store does not answer a ping.
    """
    from feast import FeatureStore

    from features.dask_tokens import install as cheaper_dask_tokens

    cheaper_dask_tokens()  # the file offline store's dask steps: see features/dask_tokens.py
    config = repo_config(settings, overwrite=overwrite)
    if check_online and config.online_store.type == "redis":
        _ping_redis(settings)
    return FeatureStore(config=config)


def _ping_redis(settings: Settings) -> None:
    import redis

    url = settings.redis_url or ""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        raise RecsysError(
            f"the Redis online store at {mask_url(url)} does not answer ({exc}); start Redis "
            "or fix RECSYS_REDIS_URL"
        ) from None


def definitions(settings: Settings):
    """The Feast objects (:class:`features.definitions.FeatureDefinitions`) for this data dir."""
    from features.definitions import build_definitions

    return build_definitions(FeaturePaths(settings.data_dir))


@contextlib.contextmanager
def quiet_feast() -> Iterator[None]:
    """Keep Feast's prints and progress bars out of the caller's terminal."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _require_applied(store: FeatureStore, settings: Settings) -> None:
    from feast.errors import FeatureServiceNotFoundException

    try:
        store.get_feature_service(FEATURE_SERVICE_NAME)
    except FeatureServiceNotFoundException:
        raise RecsysError(
            f"the feature repository is not applied to {repo_config(settings).registry.path}; "
            "run `recsys features apply` (or `recsys features materialize`)"
        ) from None


class OnlineStoreUnreadable(RecsysError):
    """The online store cannot be read (its file is missing, is not a database, or lacks the
    views' tables); ``problem`` says which. A backfill or a materialization rebuilds it."""

    def __init__(self, settings: Settings, problem: str, *, rebuildable: bool = True) -> None:
        advice = (
            "run `recsys features backfill` to rebuild it from the offline store"
            if rebuildable
            else "check the file's permissions and whether another process holds it, then retry"
        )
        super().__init__(
            f"the online store ({describe_online_store(settings)}) cannot be read: {problem}; "
            + advice
        )
        self.problem = problem


_CORRUPT = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


def _probe_online_store(settings: Settings) -> tuple[str, str] | None:
    """(why the online store cannot be read, which kind: ``missing``, ``no_tables``,
    ``corrupt`` (its file is no database: set it aside) or ``unavailable`` (locked, no
    permission: not ours to rebuild)), or None if it can be read. A SQLite file is opened
    read-only (looking creates nothing); a Redis store's check is its ping (:func:`feature_store`).
    """
    path = online_store_file(settings)
    if path is None:
        return None
    if not path.is_file():
        return f"{path.name} is missing", "missing"
    tables = {f"{feast_project()}_{view}" for view in VIEWS}
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            found = {
                name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for table in sorted(tables & found):  # a page of each: a torn file fails here
                db.execute(f'SELECT * FROM "{table}" LIMIT 1').fetchall()
    except sqlite3.Error as exc:
        corrupt = getattr(exc, "sqlite_errorname", None) in _CORRUPT
        return f"{path.name}: {exc}", "corrupt" if corrupt else "unavailable"
    missing = sorted(tables - found)
    if missing:
        return f"{path.name} has no table {', '.join(missing)}", "no_tables"
    return None


def online_store_problem(settings: Settings) -> str | None:
    """Why the online store of an applied repository cannot be read (its file is missing, is
    not a database, lacks a view's table), None if it can. Reads no feature values."""
    found = _probe_online_store(settings)
    return found[0] if found else None


def require_online_store(settings: Settings) -> None:
    """Raises:
    OnlineStoreUnreadable: the online store cannot be read (see :func:`online_store_problem`).
    """
    found = _probe_online_store(settings)
    if found is not None:
        raise OnlineStoreUnreadable(settings, found[0], rebuildable=found[1] != "unavailable")


def set_aside_unreadable_online_store(settings: Settings) -> dict[str, Any] | None:
    """Make room for a new online store if this one cannot be read: a file that is no database
    is moved (with its journal) to ``online.db.corrupt-<UTC time>`` beside it, so nothing is
    lost; a missing file or a missing table needs no move. The caller applies and materializes
    from scratch (:func:`materialize` and :func:`features.skew.backfill` do).

    Returns:
        None if the store can be read, else ``{"problem", "moved_to"}`` (``moved_to`` None:
        nothing was moved).

    Raises:
        OnlineStoreUnreadable: the file cannot be opened now (locked, no permission): a healthy
            store is never set aside.
    """
    found = _probe_online_store(settings)
    if found is None:
        return None
    problem, kind = found
    if kind == "unavailable":
        raise OnlineStoreUnreadable(settings, problem, rebuildable=False)
    moved_to = None
    path = online_store_file(settings)
    if kind == "corrupt" and path is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, target)
        for suffix in ("-journal", "-wal", "-shm"):  # a journal must not roll into the new file
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
        moved_to = str(target)
    logger.warning(
        "online store cannot be read (%s): rebuilding it%s",
        problem,
        f"; the unreadable file is kept at {moved_to}" if moved_to else "",
    )
    return {"problem": problem, "moved_to": moved_to}


def _require_offline(settings: Settings) -> pd.Timestamp:
    return newest_snapshot(FeaturePaths(settings.data_dir))


# ---- apply and materialize ------------------------------------------------------------------


def apply_repo(settings: Settings) -> dict[str, Any]:
    """Register the entities, sources, views and feature service; create online tables.

    Idempotent: applying unchanged definitions changes nothing. Works before any offline
    feature exists (the sources declare their schema).

    Returns:
        ``{"project", "registry", "online_store", "objects": [names], "feature_service"}``.
    """
    from features.registry_store import set_aside_unparsable

    defs = definitions(settings)
    moved = set_aside_unparsable(FeaturePaths(settings.data_dir).registry(settings.profile))
    if moved is not None:
        logger.warning(
            "the Feast registry could not be parsed: kept as %s, registered again", moved
        )
    store = feature_store(settings)
    with quiet_feast():
        store.apply(defs.objects())
    return {
        "project": store.project,
        "registry": str(store.config.registry.path),
        "online_store": describe_online_store(settings),
        "objects": [obj.name for obj in defs.objects()],
        "feature_service": f"{FEATURE_SERVICE_NAME} (version {FEATURE_SERVICE_VERSION})",
    }


def online_store_file(settings: Settings) -> Path | None:
    """The file that holds the online store (SQLite), None if it is not a file (Redis)."""
    online = _online_store_config(settings, overwrite=False)
    return Path(online["path"]) if online["type"] == "sqlite" else None


def describe_online_store(settings: Settings) -> str:
    """Where the online store is, with any password masked."""
    online = _online_store_config(settings, overwrite=False)
    if online["type"] == "redis":
        masked = ",".join(
            "password=***" if p.startswith("password=") else p
            for p in online["connection_string"].split(",")
        )
        return f"redis {masked}"
    return f"sqlite {online['path']}"


def _as_utc(value: datetime | str | pd.Timestamp | None) -> datetime | None:
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise RecsysError(
            f"{value!r} is not a timestamp; use ISO 8601 like 2026-01-07 or 2026-01-07T00:00:00Z"
        ) from None
    if pd.isna(stamp):
        raise RecsysError(f"{value!r} is not a timestamp; use ISO 8601 like 2026-01-07")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _write_marker(settings: Settings, views: dict[str, dict[str, Any]]) -> None:
    paths = FeaturePaths(settings.data_dir)
    previous: dict[str, Any] = {}
    if paths.materialized_marker.exists():
        previous = json.loads(paths.materialized_marker.read_text())
    merged = {**previous.get("views", {}), **views}
    write_json(
        paths.materialized_marker,
        {"at": datetime.now(UTC).isoformat(), "project": feast_project(), "views": merged},
    )


def materialize_window(
    settings: Settings,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    views: list[str] | None = None,
    *,
    overwrite: bool = False,
    from_scratch: bool = False,
) -> dict[str, dict[str, Any]]:
    """Copy the offline rows of ``views`` with ``start <= event_timestamp <= end`` online.

    ``end`` defaults to the newest offline snapshot; ``start`` to where the view's last
    materialization ended, or ``end - ttl`` for the first one (on the data's clock, not the wall
    clock, so replayed and historical data materialize too). ``from_scratch`` (a new, empty
    online store) starts every view at ``end - ttl`` at the latest, whatever was materialized
    before. Per entity the newest row of the window wins. Returns ``{view: {"start", "end"}}``.

    Raises:
        OnlineStoreUnreadable: the online store cannot be read (backfill rebuilds it).
    """
    views = list(views or VIEWS)
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise RecsysError(f"unknown feature views {unknown}; the views are {list(VIEWS)}")
    newest = _require_offline(settings)
    end_at = _as_utc(end) or newest.to_pydatetime()
    asked = _as_utc(start)
    if asked is not None and asked > end_at:
        bound = "end" if end is not None else "the newest offline snapshot"
        raise RecsysError(
            f"start {asked.isoformat()} is after {bound} {end_at.isoformat()}: nothing to "
            "materialize; omit --start to continue where the last materialization stopped"
        )
    store = feature_store(settings, overwrite=overwrite)
    _require_applied(store, settings)
    require_online_store(settings)
    done: dict[str, dict[str, Any]] = {}
    for view in views:
        start_at = _as_utc(start)
        if from_scratch:
            start_at = min(start_at or end_at, end_at - VIEW_TTL[view])
        elif start_at is None:
            last = store.get_feature_view(view).most_recent_end_time
            start_at = _as_utc(last) if last else end_at - VIEW_TTL[view]
        start_at = min(start_at, end_at)
        with quiet_feast():
            store.materialize(start_date=start_at, end_date=end_at, feature_views=[view])
        done[view] = {"start": start_at.isoformat(), "end": end_at.isoformat()}
    _write_marker(settings, done)
    return done


def materialize(
    settings: Settings,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    build: bool = True,
) -> dict[str, Any]:
    """Bring the online store up to date: build offline snapshots, apply, materialize.

    Args:
        settings: the profile decides the online store.
        start, end: the window of offline event timestamps to copy online (inclusive). Defaults:
            ``end`` = newest offline snapshot, ``start`` = end of the previous materialization
            (or ``end - ttl`` the first time). Incremental and idempotent. Snapshots that
            changed after they were materialized (a re-ingested batch) are rewritten online,
            also when the run that rebuilt them was killed before copying them.
        build: first compute new or changed offline days (:func:`build_offline_features`).

    An online store that cannot be read (a lost file, a file that is no database, missing
    tables) is rebuilt: set aside (:func:`set_aside_unreadable_online_store`), created anew and
    materialized from scratch.

    Returns:
        ``{"offline": build report or None, "views": {view: {"start", "end", "entities"}},
        "rebuilt": None or {"problem", "moved_to"}}``.

    Raises:
        RecsysError: no clean data / no offline features, or a bad window.
    """
    start_at, end_at = _as_utc(start), _as_utc(end)
    if start_at and end_at and start_at > end_at:
        raise RecsysError(f"start {start_at.isoformat()} is after end {end_at.isoformat()}")
    paths = FeaturePaths(settings.data_dir)
    offline = build_offline_features(settings) if build else None
    pause_point("features.after_offline")
    store_file = online_store_file(settings)
    first = not paths.materialized_marker.exists() and not (store_file and store_file.exists())
    rebuilt = None if first else set_aside_unreadable_online_store(settings)
    apply_repo(settings)  # creates the online tables (of a new store too)
    replaced = online_pending(paths)  # this build's and any a killed run left
    if replaced:
        # Snapshots that were already online changed (a re-ingest): rewrite them from the
        # oldest one on, unconditionally (Redis keeps a row whose timestamp is not newer).
        oldest = snapshot_time(min(replaced)).to_pydatetime()
        start_at = min(start_at, oldest) if start_at else oldest
    views = materialize_window(
        settings, start_at, end_at, overwrite=bool(replaced), from_scratch=rebuilt is not None
    )
    if replaced:
        clear_online_pending(paths, pd.Timestamp(min(w["end"] for w in views.values())))
    manifest = read_manifest(paths)["days"]
    for view, window in views.items():
        days = [d for d, e in manifest.items() if e["event_timestamp"] <= window["end"]]
        window["entities"] = int(manifest[max(days)]["rows"][view]) if days else 0
    return {"offline": offline, "views": views, "rebuilt": rebuilt}


# ---- training sets --------------------------------------------------------------------------


def historical_features(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time training set through ``get_historical_features`` and the feature service.

    Args:
        entity_df: one row per label with ``user_id``, ``item_id`` and ``event_timestamp`` (the
            label time, UTC; naive values are taken as UTC); other columns are passed through.

    Returns:
        ``entity_df`` (same rows, same order, same index) plus every feature of
        :data:`FEATURE_SERVICE_NAME`. A row gets the newest snapshot with
        ``event_timestamp <= label time`` and not older than the view's TTL; nothing written
        after the label time can reach it. Features with no such snapshot are null.

    Raises:
        RecsysError: a required column is missing, or nothing was built/applied yet.
    """
    needed = [*JOIN_KEYS.values(), TIMESTAMP_FIELD]
    missing = [c for c in needed if c not in entity_df.columns]
    if missing:
        raise RecsysError(
            f"entity_df lacks columns {missing}; it needs user_id, item_id and event_timestamp "
            "(the label time, UTC)"
        )
    _require_offline(settings)
    store = feature_store(settings)
    _require_applied(store, settings)
    label_time = pd.to_datetime(entity_df[TIMESTAMP_FIELD], utc=True)
    result = entity_df.copy()
    service = store.get_feature_service(FEATURE_SERVICE_NAME)
    # One query per view on unique (key, time) pairs, joined back here: Feast's file offline
    # store drops entity rows without a match inside the TTL and collapses rows that share a
    # key and time across views, so the entity_df is never handed over whole.
    for projection in service.feature_view_projections:
        key = JOIN_KEYS[projection.name]
        pairs = pd.DataFrame({key: entity_df[key].to_numpy(), TIMESTAMP_FIELD: label_time})
        pairs = pairs.drop_duplicates(ignore_index=True)
        refs = [f"{projection.name}:{f.name}" for f in projection.features]
        with quiet_feast():
            found = store.get_historical_features(entity_df=pairs, features=refs).to_df()
        found[TIMESTAMP_FIELD] = pd.to_datetime(found[TIMESTAMP_FIELD], utc=True)
        names = [f.name for f in projection.features]
        joined = pd.DataFrame({key: entity_df[key].to_numpy(), TIMESTAMP_FIELD: label_time})
        joined = joined.merge(found[[key, TIMESTAMP_FIELD, *names]], how="left")
        for name in names:
            result[name] = joined[name].to_numpy()
    return result


# ---- real-time push -------------------------------------------------------------------------


def push_user_features(settings: Settings, frame: pd.DataFrame) -> int:
    """Push fresher user feature rows (same columns as the user view) to the online store.

    Rows go online only (the offline snapshots stay the daily truth); a later materialization
    or backfill replaces them. Returns the number of rows pushed.
    """
    from feast.data_source import PushMode

    needed = ["user_id", TIMESTAMP_FIELD, *VIEW_FEATURES[USER_VIEW]]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise RecsysError(f"pushed user rows lack columns {missing}")
    store = feature_store(settings)
    _require_applied(store, settings)
    require_online_store(settings)
    with quiet_feast():
        store.push(USER_PUSH_SOURCE, frame[needed], to=PushMode.ONLINE)
    return len(frame)


# ---- status ---------------------------------------------------------------------------------


def feature_status(settings: Settings) -> dict[str, Any]:
    """What is built, applied and materialized, without touching the online data.

    Returns:
        ``{"profile", "project", "online_store", "registry", "applied", "feature_service",
        "offline": {"days", "first", "newest", "pending_days", "rows"}, "views": {view:
        {"ttl_seconds", "materialized_until", "lag_seconds"}}}``. ``pending_days`` counts days
        whose clean inputs changed since their snapshot was built (or that are missing);
        ``lag_seconds`` is how far the online store is behind the newest offline snapshot.
    """
    from features.offline import _calendar_days, _fingerprints

    paths = FeaturePaths(settings.data_dir)
    days = offline_days(paths)
    manifest = read_manifest(paths)["days"]
    pending: int | None = None
    batches = settings.lake.clean_batches()
    if batches and settings.lake.clean_catalog_path("items").exists():
        all_days = _calendar_days(batches[0], batches[-1])
        prints = _fingerprints(settings, all_days)
        pending = sum(1 for d in all_days if manifest.get(d, {}).get("fingerprint") != prints[d])
    newest = snapshot_time(days[-1]) if days else None
    status: dict[str, Any] = {
        "profile": settings.profile,
        "project": feast_project(),
        "online_store": describe_online_store(settings),
        "registry": str(paths.registry(settings.profile)),
        "applied": False,
        "feature_service": {"name": FEATURE_SERVICE_NAME, "version": FEATURE_SERVICE_VERSION},
        "offline": {
            "dir": str(paths.offline_dir),
            "days": len(days),
            "first": snapshot_time(days[0]).isoformat() if days else None,
            "newest": newest.isoformat() if newest is not None else None,
            "pending_days": pending,
            "rows": manifest[days[-1]]["rows"] if days and days[-1] in manifest else {},
        },
        "views": {},
    }
    if not paths.registry(settings.profile).exists():
        return status
    store = feature_store(settings, check_online=False)  # status reads the registry only
    applied = {fv.name: fv for fv in store.list_feature_views()}
    status["applied"] = all(v in applied for v in VIEWS)
    for view in VIEWS:
        fv = applied.get(view)
        until = _as_utc(fv.most_recent_end_time) if fv and fv.most_recent_end_time else None
        # Materialized past the newest snapshot (e.g. `feast materialize-incremental <now>`): 0.
        lag = (
            max((newest.to_pydatetime() - until).total_seconds(), 0.0) if until and newest else None
        )
        status["views"][view] = {
            "ttl_seconds": VIEW_TTL[view].total_seconds(),
            "materialized_until": until.isoformat() if until else None,
            "lag_seconds": lag,
        }
    return status
