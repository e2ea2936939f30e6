"""Where the ranker's user and item features come from on the serving hot path.

The Feast online store first, through :class:`features.online.OnlineFeatureReader` in table mode
(the user's row is read from the online store, kept for :data:`USER_ROW_TTL_S`, and read for
several users at once when several requests wait on one: :meth:`ServingFeatures.prefetch_users`;
the candidates' rows come from an in-memory item table that reloads in the background when a
materialization is seen). The release's own tables (as of its training cut) fill in whatever
the online store cannot give. Every ranked answer says which it got, in the response field
``features``:

    "online"            every row came from the online store
    "release"           the online store was never materialized: the release's tables, by
                        design (``/admin/status`` features.source says ``not_materialized``)
    "release_fallback"  the online store failed (unreachable, unreadable) or had no row for the
                        user or for some candidates: the release's rows filled in. Counted in
                        ``recsys_serving_feature_fallbacks_total{reason}``

User rows are also read ahead, on one background thread (``RECSYS_USER_ROWS_AHEAD`` users at
most, 0 turns it off): the most active users' rows when a model loads, the rows a new
materialization dropped (last used first), and rows a request used once they are half their
TTL old. So an active user's request waits on the store neither after a restart nor after a
materialization nor every TTL; only a user whose row is not kept (a first visit, an inactive
user) waits for one read.

After a failed read the online store is left alone for :data:`RETRY_S` seconds (answers take the
release's tables meanwhile), so an outage costs one failed read per window, not one per request;
then a fresh reader is opened (in the background; the release's tables answer until it is open):
a connection that failed is never read again, so a store that was replaced (restored from a backup,
rebuilt by a backfill) or repaired is read as soon as it answers. A SQLite online store is also
watched for a new file (another inode at its path, looked at every :data:`WATCH_S` seconds): its
reader is replaced while the old one goes on answering, since an open connection would read the
old, unlinked file for ever.

Freshness: Feast does not enforce a view's TTL on online reads, and neither does this module:
whatever was materialized last is served. What it exports is the age, so a skipped
materialization shows: seconds since the last materialization (the marker's wall-clock stamp) and
the end of each view's materialized window (the data's clock).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd

from features.compute import ITEM_NUMERIC, USER_NUMERIC
from features.spec import AFFINITY, ITEM_FEATURES, RECENT_ITEMS, USER_VIEW, FeaturePaths
from recsys.pipeline import ranker_view

logger = logging.getLogger("recsys.serving")

RETRY_S = 2.0
"""Seconds the online store is left alone after a failed read."""
USER_ROW_TTL_S = 60.0
"""Seconds a user's online row is reused before it is read again (a new materialization
drops every kept row at once: the batch online store changes only when it is materialized)."""
USER_ROWS_KEPT = 100_000
"""Most user rows kept between reads (least recently read first out)."""
WATCH_S = 1.0
"""Seconds between looks at the materialization marker while no reader is open, and at the
online store's file (replaced by a new one?) while one is."""
AHEAD_BATCH = 256
"""Users per store call when rows are read ahead."""
AHEAD_SCAN = 4 * AHEAD_BATCH
"""Most kept rows looked at for a refresh while the lock is held."""
AHEAD_TICK_S = 1.0
"""Longest pause of the read-ahead thread between two looks at what is due."""

ONLINE, RELEASE, RELEASE_FALLBACK = "online", "release", "release_fallback"
_NO_ITEMS = np.zeros(0, dtype=np.int64)
_CATEGORY = ITEM_FEATURES.index("item_category_index")
_ITEM_NUMERIC_COLUMNS = [ITEM_FEATURES.index(name) for name in ITEM_NUMERIC]


@dataclass(frozen=True)
class FeatureRows:
    """One request's user and item features in a release's layout (see ``Stage.features``).

    ``None`` arrays mean "the release's own rows". ``source`` is what the answer reports;
    ``reasons`` say why the release's rows were (partly) used.
    """

    source: str
    reasons: tuple[str, ...] = ()
    user: np.ndarray | None = None
    affinity: np.ndarray | None = None
    items: np.ndarray | None = None
    item_category: np.ndarray | None = None

    def overrides(self) -> dict[str, np.ndarray | None]:
        return {
            "user": self.user,
            "affinity": self.affinity,
            "items": self.items,
            "item_category": self.item_category,
        }


class ServingFeatures:
    """The online-feature source of the service, with the release's tables as the fallback.

    Thread-safe: requests call :meth:`rows`; reloads call :meth:`cover`; a background thread
    opens the reader when a first materialization appears or the store comes back.
    """

    def __init__(
        self,
        settings,
        *,
        retry_s: float = RETRY_S,
        watch_s: float = WATCH_S,
        row_ttl_s: float = USER_ROW_TTL_S,
    ) -> None:
        self.settings = settings
        self.row_ttl_s = row_ttl_s
        self.ahead_limit = min(settings.user_rows_ahead, USER_ROWS_KEPT)
        self.paths = FeaturePaths(settings.data_dir)
        self._marker_path = self.paths.materialized_marker  # built once: asked on every request
        self.retry_s = retry_s
        self.watch_s = watch_s
        self._reader = None
        self._broken = None  # the reader whose read failed: never read again, a fresh one opens
        self._store_file = _store_file(settings)  # None: the online store is not a file (Redis)
        self._store_id: tuple[int, int] | None = None  # its (device, inode) when the reader opened
        self._catalog = np.zeros(0, dtype=np.int64)
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self.state = "not_materialized"
        self.error: str | None = None
        self._retry_at = 0.0
        self._next_watch = 0.0
        self._marker_cache: tuple[float, dict[str, Any] | None] = (-1.0, None)
        self._layouts: dict[tuple, np.ndarray] = {}
        # kept user rows: user -> (read at, row), least recently used first
        self._users: OrderedDict[int, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._users_epoch: str | None = None
        # read ahead: users by read time (oldest first) not yet looked at for a refresh, users a
        # request used since their row was read, the warm list (most active first) and the
        # rows a new materialization dropped (last used first)
        self._by_read: dict[int, float] = {}
        self._used: set[int] = set()
        self._warm: deque[int] = deque()
        self._refetch: deque[int] = deque()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._ahead_thread: threading.Thread | None = None
        self.read_ahead: Counter[str] = Counter()
        self._item_layouts: dict[int, tuple] = {}
        # users the online store holds recent items of (materialization stamp, sorted ids): a
        # user the release does not know is read only if listed (new since the cut)
        self._recent_users: tuple[str | None, np.ndarray] = (None, _NO_ITEMS)
        self._recent_loading: str | None = None
        self.answers: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()

    # ---- opening the online reader ---------------------------------------------------------

    def cover(self, item_ids: np.ndarray, user_ids: list[int] | None = None) -> None:
        """Make the item table hold ``item_ids`` (a release's catalog), opening the online reader
        now if a materialization exists; ``user_ids`` (most active first) go first in the list
        of rows to read ahead. Never raises: a failure is the ``unreachable`` state."""
        if user_ids and self.ahead_limit:
            with self._lock:
                first = list(dict.fromkeys(user_ids))[: self.ahead_limit]
                chosen = set(first)
                rest = [u for u in self._warm if u not in chosen]
                self._warm = deque((first + rest)[: self.ahead_limit])
            self._wake.set()
        ids = np.union1d(self._catalog, np.asarray(item_ids, dtype=np.int64))
        if self._reader is not None and len(ids) == len(self._catalog):
            return
        self._catalog = ids
        if self.marker() is not None:
            self._open()

    def _open(self) -> bool:
        """Build a reader over the current catalog and swap it in; False if the store failed.
        The kept user rows are dropped (read again ahead), except when a reader that failed is
        replaced by one on the same file: its rows are still the store's."""
        from features.online import OnlineFeatureReader

        with self._opening:
            identity = self._file_identity()  # before opening: a newer file is seen next look
            same_store = self._broken is not None and identity == self._store_id
            try:
                reader = OnlineFeatureReader(
                    self.settings, item_mode="table", catalog=self._catalog.tolist()
                )
            except Exception as exc:  # the store is a dependency: its failure is a state
                self._failed(exc, self._reader)  # the reader it was to replace is suspect too
                return False
            with self._lock:
                self._reader = reader
                self._broken = None
                self._store_id = identity
                self._layouts.clear()
                if not same_store:
                    self._drop_rows()
                self._item_layouts.clear()
                self._retry_at = 0.0
            self._set_state("online", None)
            self._start_reading_ahead()
            self._recent_users_due()
            return True

    def _open_in_background(self) -> None:
        if self._opening.locked() or not len(self._catalog):
            return
        threading.Thread(target=self._open, name="recsys-features-open", daemon=True).start()

    def _reopen_if_due(self) -> None:
        """Open a fresh reader now if the current one failed and its retry window has passed
        (on the read-ahead thread: rows are read ahead after an outage with no request)."""
        reader = self._reader
        if reader is None or reader is not self._broken or time.monotonic() < self._retry_at:
            return
        if not self._opening.locked():
            self._open()

    def _set_state(self, state: str, error: str | None) -> None:
        if state != self.state:
            log = logger.info if state == "online" else logger.warning
            log("online features: %s -> %s%s", self.state, state, f" ({error})" if error else "")
        self.state, self.error = state, error

    def _failed(self, exc: BaseException, reader) -> None:
        """A read through ``reader`` (or the opening of its replacement) failed: leave the store
        alone for :attr:`retry_s`, then open a fresh reader (``reader`` is never read again)."""
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_s
            if reader is not None and reader is self._reader:
                self._broken = reader
        self._set_state("unreachable", f"{type(exc).__name__}: {exc}"[:300])

    def _usable(self, reader) -> bool:
        """Whether ``reader`` may be read now: open, not failed, past the retry window."""
        return (
            reader is not None and reader is not self._broken and time.monotonic() >= self._retry_at
        )

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the online store's file, None if it is not a file or is missing."""
        if self._store_file is None:
            return None
        try:
            stat = self._store_file.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _watch_store_file(self, now: float) -> None:
        """Every :attr:`watch_s`: a new file at the online store's path (a restore, a rebuild)
        gets a fresh reader; the current one answers until it is open. Writes into the same
        file (a materialization, a push) are seen by the open connection: its mtime is not
        looked at."""
        if self._store_file is None or now < self._next_watch:
            return
        self._next_watch = now + self.watch_s
        if self._file_identity() != self._store_id:
            self._open_in_background()

    # ---- the hot path ----------------------------------------------------------------------

    def rows(self, release, user_id: int, user_row: int, item_rows: np.ndarray) -> FeatureRows:
        """Features of one user and its candidates (rows of ``release``), never raising for a
        dependency: the online store's values where it has them, the release's elsewhere."""
        rows = self._read(release, user_id, user_row, item_rows)
        with self._lock:
            self.answers[rows.source] += 1
            for reason in rows.reasons:
                self.fallbacks[reason] += 1
        return rows

    def recent_items(self, user_id: int) -> np.ndarray:
        """The items the online store says ``user_id`` had in its last days (``RECENT_ITEMS``:
        events after a release's training cut included, as far as materialized or pushed),
        for the answer's seen filter; empty when the store is not read (not materialized,
        unreachable) or has no row of the user. Never raises; the row read is kept for
        :meth:`rows`, so ranking the same request reads nothing more."""
        reader = self._reader
        if not self._usable(reader):
            return _NO_ITEMS
        try:
            user = self._user_row(reader, int(user_id))
        except Exception as exc:  # unreachable or unreadable store: rows() falls back too
            self._failed(exc, reader)
            return _NO_ITEMS
        if user is None:
            return _NO_ITEMS
        return np.asarray(user.get(RECENT_ITEMS, _NO_ITEMS), dtype=np.int64)

    def kept_recent_items(self, user_id: int) -> np.ndarray:
        """The recent items of ``user_id``'s kept online row (:meth:`recent_items` without a
        read: whatever its age or materialization), empty when no row is kept. For an answer
        that must not wait on the store, such as the degraded path's when a model failed."""
        with self._lock:
            kept = self._users.get(int(user_id))
        if kept is None or kept[1] is None:
            return _NO_ITEMS
        return np.asarray(kept[1].get(RECENT_ITEMS, _NO_ITEMS), dtype=np.int64)

    def has_recent_items(self, user_id: int) -> tuple[bool, bool]:
        """(whether the last materialization gave ``user_id`` recent items in the online store,
        whether that answer is the last materialization's and not still the one before it's,
        while the new list loads). The question for a user the release does not know (new
        since its training cut), whose row is read only when listed, so that ids never seen
        cost no store read. The list of such users is loaded in the background when a
        materialization is seen; a row pushed for a user not in it is not looked for."""
        if self._reader is None:
            return False, True
        loaded, users = self._recent_users
        current = loaded == self._stamp()
        if not current:
            self._recent_users_due()
        pos = int(np.searchsorted(users, user_id))
        return pos < len(users) and int(users[pos]) == user_id, current

    def _recent_users_due(self) -> None:
        """Load the users with recent items of the current materialization on a thread, once."""
        stamp = self._stamp()
        with self._lock:
            if stamp is None or stamp in (self._recent_users[0], self._recent_loading):
                return
            self._recent_loading = stamp
        threading.Thread(
            target=self.load_recent_users, name="recsys-recent-users", daemon=True
        ).start()

    def load_recent_users(self) -> int:
        """Load, now, which users have recent items as of the current materialization (the
        newest offline user snapshot it covers); returns how many. A failure is logged and
        leaves the previous list in place until the next materialization."""
        from features.offline import users_with_recent_items

        marker = self.marker()
        stamp = str(marker.get("at")) if marker else None
        end = ((marker or {}).get("views") or {}).get(USER_VIEW, {}).get("end")
        try:
            users = users_with_recent_items(self.paths, pd.Timestamp(end)) if end else _NO_ITEMS
        except Exception:  # tried once per materialization: the previous list goes on
            logger.exception("reading the users with recent items failed")
            with self._lock:
                self._recent_users = (stamp, self._recent_users[1])
                self._recent_loading = None
            return len(self._recent_users[1])
        with self._lock:
            self._recent_users = (stamp, users)
            self._recent_loading = None
        return len(users)

    def reads_store(self, user_id: int) -> bool:
        """Whether :meth:`rows` for ``user_id`` would read the online store now: the store is
        open and the user's row is not kept, older than :data:`USER_ROW_TTL_S`, or from before
        the last materialization. (The item table never makes a request wait: it is reloaded
        in the background.)"""
        if not self._usable(self._reader):
            return False
        now = time.monotonic()
        epoch = self._stamp()
        with self._lock:
            kept = self._users.get(user_id) if epoch == self._users_epoch else None
        return kept is None or now - kept[0] >= self.row_ttl_s

    def prefetch_users(self, user_ids: list[int]) -> int:
        """Read and keep the online rows of ``user_ids`` now, in one store call (a worker
        thread calls this for the requests waiting on a read, so they then run without waiting
        on the store); a failure marks the store unreachable, as :meth:`rows` would. Returns
        how many rows were kept (none if the store failed or was materialized meanwhile)."""
        reader = self._reader
        if not self._usable(reader) or not user_ids:
            return 0
        epoch = self._stamp()
        now = time.monotonic()
        with self._lock:
            self._follow(epoch)
        try:
            rows = reader.users_features(user_ids)
        except Exception as exc:  # unreachable or unreadable store: the release's rows answer
            self._failed(exc, reader)
            return 0
        if self.state != "online":
            self._set_state("online", None)
        return self._keep(epoch, now, zip(user_ids, rows, strict=True))

    def _read(self, release, user_id: int, user_row: int, item_rows: np.ndarray) -> FeatureRows:
        reader = self._reader
        now = time.monotonic()
        if reader is None or reader is self._broken:  # none yet, or it failed: open a fresh one
            if now >= self._next_watch:
                self._next_watch = now + self.watch_s
                if self.marker() is not None and now >= self._retry_at:
                    self._open_in_background()
            if self.state == "not_materialized":
                return FeatureRows(RELEASE)
            return FeatureRows(RELEASE_FALLBACK, ("unreachable",))
        if now < self._retry_at:
            return FeatureRows(RELEASE_FALLBACK, ("unreachable",))
        self._watch_store_file(now)
        try:
            user = self._user_row(reader, int(user_id))
            table = reader.item_table()
        except Exception as exc:  # unreachable or unreadable store: the release's rows answer
            self._failed(exc, reader)
            return FeatureRows(RELEASE_FALLBACK, ("unreachable",))
        if self.state != "online":
            self._set_state("online", None)
        return self._in_release_layout(release, user_row, item_rows, user, table, reader)

    def _user_row(self, reader, user_id: int) -> dict[str, Any] | None:
        """The user's online row, re-read after :data:`USER_ROW_TTL_S` or a materialization."""
        epoch = self._stamp()
        now = time.monotonic()
        with self._lock:
            self._follow(epoch)
            kept = self._users.get(user_id)
            if kept is not None and now - kept[0] < self.row_ttl_s:
                self._users.move_to_end(user_id)
                self._used.add(user_id)
                return kept[1]
        row = reader.user_features(user_id)  # outside the lock: other requests go on
        self._keep(epoch, now, [(user_id, row)])
        return row

    def _follow(self, epoch: str | None) -> None:
        """Drop the kept rows if ``epoch`` (the last materialization) is new (hold the lock);
        they are read again ahead of their users' next requests, last used first."""
        if epoch != self._users_epoch:
            self._drop_rows()
            self._users_epoch = epoch

    def _drop_rows(self) -> None:
        """Forget every kept user row (hold the lock); they are read again ahead of their users'
        next requests, last used first."""
        if self.ahead_limit and self._users:
            self._refetch = deque(islice(reversed(self._users), self.ahead_limit))
            self._wake.set()
        self._users.clear()
        self._by_read.clear()
        self._used.clear()

    def _keep(self, epoch: str | None, now: float, rows) -> int:
        """Keep ``(user_id, row)`` pairs read at ``now`` under materialization ``epoch`` (a
        read that straddled a new materialization is not kept); returns how many were kept."""
        kept = 0
        with self._lock:
            if epoch != self._users_epoch:
                return 0
            for user_id, row in rows:
                user_id = int(user_id)
                self._users[user_id] = (now, row)
                self._users.move_to_end(user_id)
                self._by_read.pop(user_id, None)
                self._by_read[user_id] = now
                self._used.discard(user_id)
                kept += 1
            while len(self._users) > USER_ROWS_KEPT:
                dropped, _ = self._users.popitem(last=False)
                self._by_read.pop(dropped, None)
                self._used.discard(dropped)
        return kept

    # ---- reading ahead ---------------------------------------------------------------------

    def _start_reading_ahead(self) -> None:
        if not self.ahead_limit:
            return
        with self._lock:
            if self._ahead_thread is None:
                self._ahead_thread = threading.Thread(
                    target=self._ahead_loop, name="recsys-user-rows", daemon=True
                )
                self._ahead_thread.start()
        self._wake.set()

    @property
    def kept_rows(self) -> int:
        """Users whose online row is kept now."""
        return len(self._users)

    def close(self) -> None:
        """Stop the read-ahead thread after its current round (the rows kept stay usable;
        :meth:`read_ahead_now` still reads when called)."""
        self._closed.set()
        self._wake.set()

    def _ahead_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(timeout=min(AHEAD_TICK_S, self.row_ttl_s / 4))
            self._wake.clear()
            try:
                self.read_ahead_now()
            except Exception:  # the thread must outlive any one failure
                logger.exception("reading user rows ahead failed")

    def read_ahead_now(self) -> int:
        """Read, a batch per store call, every row due for reading ahead: the rows a new
        materialization dropped, the rows a request used that are half their TTL old, then the
        warm list's rows not kept. Stops at a store failure (its retry window) or a batch that
        could not be kept (a materialization meanwhile), putting that batch back in its queue,
        or when the kept rows are full. Returns how many rows were read."""
        done = 0
        while True:
            self._reopen_if_due()
            if not self._usable(self._reader):
                break
            epoch = self._stamp()
            with self._lock:
                self._follow(epoch)
                batch, why = self._due(time.monotonic())
            if not batch:
                break
            if not self.prefetch_users(batch):
                if why != "refresh":  # the store failed, or a materialization came meanwhile:
                    with self._lock:  # these go first next round (skipped once kept)
                        queue = self._refetch if why == "materialized" else self._warm
                        queue.extendleft(reversed(batch))
                break
            with self._lock:
                self.read_ahead[why] += len(batch)
            done += len(batch)
        return done

    def _due(self, now: float) -> tuple[list[int], str]:
        """The next batch of users to read ahead and why (hold the lock)."""
        users, room = self._users, USER_ROWS_KEPT - len(self._users)
        batch: list[int] = []
        while self._refetch and len(batch) < AHEAD_BATCH:
            user_id = self._refetch.popleft()
            if user_id not in users:
                batch.append(user_id)
        if batch:
            return batch, "materialized"
        half, looked = self.row_ttl_s / 2, []
        for user_id, read_at in self._by_read.items():  # oldest read first
            if now - read_at < half or len(batch) >= AHEAD_BATCH or len(looked) >= AHEAD_SCAN:
                break
            looked.append(user_id)
            if user_id in self._used:
                batch.append(user_id)
        for user_id in looked:  # looked at once per read: refreshed, or left to expire
            del self._by_read[user_id]
        if batch:
            return batch, "refresh"
        while self._warm and len(batch) < min(AHEAD_BATCH, room):
            user_id = self._warm.popleft()
            if user_id not in users:
                batch.append(user_id)
        return batch, "warm"

    def _in_release_layout(self, release, user_row, item_rows, user, table, reader) -> FeatureRows:
        stage = release.stage
        to_release = self._layout(reader.vocabulary, stage.categories)
        reasons: list[str] = []
        if user is None:
            reasons.append("missing_user")
            user_values, affinity = stage.user_table[user_row], stage.user_affinity[user_row]
        else:
            user_values, affinity = _user_view(user, to_release, len(stage.categories))
        values, category, found = self._items_in_layout(release, table, to_release)
        if not found[item_rows].all():
            reasons.append("missing_items")
        return FeatureRows(
            RELEASE_FALLBACK if reasons else ONLINE,
            tuple(reasons),
            user_values,
            affinity,
            values[item_rows],
            category[item_rows],
        )

    def _items_in_layout(self, release, table, to_release: np.ndarray) -> tuple:
        """The online item table in ``release``'s rows and layout (the ranker's view of the
        values, the release's category indexes), the release's own rows where the online store
        has none; and which rows came from the store. Built once per table and release."""
        kept = self._item_layouts.get(id(release))
        if kept is not None and kept[0] is table and kept[1]() is release:
            return kept[2:]
        stage = release.stage
        values = stage.item_table.astype(np.float32, copy=True)
        category = stage.item_category.astype(np.int64, copy=True)
        found = np.zeros(len(release.item_ids), dtype=bool)
        if table is not None and len(table[0]):
            ids, online, online_found, _ = table
            pos = np.searchsorted(ids, release.item_ids).clip(0, len(ids) - 1)
            hit = (ids[pos] == release.item_ids) & online_found[pos]
            rows = online[pos[hit]]
            values[hit] = ranker_view(ITEM_NUMERIC, rows[:, _ITEM_NUMERIC_COLUMNS])
            cat = np.nan_to_num(rows[:, _CATEGORY], nan=-1).astype(np.int64)
            inside = (cat >= 0) & (cat < len(to_release))
            category[hit] = np.where(inside, to_release[np.clip(cat, 0, len(to_release) - 1)], -1)
            found = hit
        with self._lock:
            if len(self._item_layouts) >= 4:
                self._item_layouts.clear()
            # a weak reference: a retired release is not kept alive by its layout
            self._item_layouts[id(release)] = (table, weakref.ref(release), values, category, found)
        return values, category, found

    def _layout(self, vocabulary: list[str], categories: list[str]) -> np.ndarray:
        """Index of each online category (vocabulary order) in the release's categories, -1 if
        the release does not know it."""
        key = (tuple(vocabulary), tuple(categories))
        layout = self._layouts.get(key)
        if layout is None:
            where = {name: i for i, name in enumerate(categories)}
            layout = np.array([where.get(name, -1) for name in vocabulary], dtype=np.int64)
            self._layouts[key] = layout
        return layout

    # ---- freshness and status --------------------------------------------------------------

    def marker(self) -> dict[str, Any] | None:
        """The last materialization (``features/materialized.json``), re-read when it changes."""
        path = self._marker_path
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime != self._marker_cache[0]:
            try:
                self._marker_cache = (mtime, json.loads(path.read_text()))
            except (OSError, ValueError):  # being replaced right now: keep the last one read
                return self._marker_cache[1]
        return self._marker_cache[1]

    @property
    def epoch(self) -> str:
        """Which generation of features answers: the last materialization's stamp, or
        ``release``. Part of the cache key, so a materialization never serves old answers."""
        stamp = self._stamp() if self._reader is not None else None
        return stamp if stamp is not None else RELEASE

    def _stamp(self) -> str | None:
        """The last materialization's stamp (``at`` of the marker), None if never."""
        marker = self.marker()
        return str(marker.get("at")) if marker else None

    def freshness(self) -> dict[str, Any]:
        """``{"materialized_at", "age_s", "materialized_until": {view: iso}}`` (None: never)."""
        marker = self.marker()
        if not marker or "at" not in marker:
            return {"materialized_at": None, "age_s": None, "materialized_until": {}}
        at = datetime.fromisoformat(str(marker["at"]))
        age = (datetime.now(UTC) - at).total_seconds()
        until = {view: w.get("end") for view, w in (marker.get("views") or {}).items()}
        return {
            "materialized_at": at.isoformat(),
            "age_s": round(age, 3),
            "materialized_until": until,
        }

    def status(self) -> dict[str, Any]:
        reader = self._reader
        with self._lock:
            answers, fallbacks = dict(self.answers), dict(self.fallbacks)
            user_rows = {
                "kept": self.kept_rows,
                "ttl_s": self.row_ttl_s,
                "read_ahead_limit": self.ahead_limit,
                "read_ahead": dict(self.read_ahead),
                "read_ahead_pending": len(self._refetch) + len(self._warm),
                "with_recent_items": len(self._recent_users[1]),
            }
        return {
            "source": self.state,
            "error": self.error,
            "online_store": _describe_store(self.settings),
            **self.freshness(),
            "item_table_items": 0 if reader is None else reader.table_size,
            "answers": answers,
            "fallbacks": fallbacks,
            "retry_s": self.retry_s,
            "user_rows": user_rows,
        }


def _store_file(settings):
    from features.store import online_store_file

    try:
        return online_store_file(settings)
    except Exception:  # a misconfigured prod store: reported by _describe_store, not watched
        return None


def _describe_store(settings) -> str:
    from features.store import describe_online_store

    try:
        return describe_online_store(settings)
    except Exception as exc:  # a misconfigured prod store is reported, not raised
        return f"unconfigured ({exc})"


def _user_view(user: dict[str, Any], to_release: np.ndarray, n_categories: int) -> tuple:
    """(ranker view of the user's numeric features, affinity in the release's categories) of
    one online user row; kept on the row for the category mapping ``to_release`` (built once
    per vocabulary and release categories), so a kept row is converted once, not per request."""
    kept = user.get("_release_view")
    if kept is not None and kept[0] is to_release:
        return kept[1], kept[2]
    raw = np.array([[user[name] for name in USER_NUMERIC]], dtype=np.float32)
    values = ranker_view(USER_NUMERIC, raw)[0]
    shares = np.asarray(user[AFFINITY], dtype=np.float32)
    affinity = np.zeros(n_categories, dtype=np.float32)
    known = to_release[: len(shares)] >= 0
    affinity[to_release[: len(shares)][known]] = shares[known]
    user["_release_view"] = (to_release, values, affinity)
    return values, affinity
