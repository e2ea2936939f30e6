"""A synthetic shop with a known ground truth: items, users, daily interactions and a click model.

The world is small enough to reason about and big enough to stress the pipeline:

* Items belong to a primary category (plus up to two secondary ones); their latent vectors sit
  around category centroids and their popularity follows a Zipf-like power law. A share of the
  items is created after day 0 and can only be interacted with from its creation day on.
* Users like 1-3 categories: their taste vector mixes those centroids plus noise. How active a
  user is follows a power law (Pareto).
* Each day gets a share of the interactions (weekly seasonality plus noise), at uniform times.
  Every interaction draws a few candidate items from the popularity distribution and picks one
  by a softmax of user·item affinity (Gumbel-max). Its event type (view, click, add_to_cart,
  purchase) is more engaged the higher the affinity.
* From ``drift_day`` on, a share of the users switches to other categories (concept drift).
* :class:`ClickModel` is the ground truth: the probability that a user clicks a shown item on a
  given day. It is stored without pickle and can be loaded back with :meth:`ClickModel.load`.

Everything comes from ``np.random.default_rng(seed)``: the same config gives the same bytes.

Run it (a default world into ``./.recsys``)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -c "
    from pathlib import Path
    from recsys.lake import Lake
    from recsys.synthetic import WorldConfig, write_world
    print(write_world(WorldConfig(), Lake(Path('.recsys')), show_progress=True)['summary'])"

In Python, :func:`generate_world` builds the same world in memory without writing anything.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from recsys.contract import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, conform
from recsys.errors import RecsysError
from recsys.lake import Lake, atomic_write_bytes, file_sha256, write_json

GROUND_TRUTH_FILE = "ground_truth.npz"
WORLD_FILE = "world.json"
WORLD_FORMAT_VERSION = 1

EVENT_NAMES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
"""Event types the synthetic world emits, from least to most engaged."""

# Shape of the world (fixed so that WorldConfig stays small; change with care: changes the data).
N_CANDIDATES = 16  # items drawn from the popularity distribution per interaction
CHOICE_SCALE = 2.0  # softmax inverse temperature of the choice among candidates
CENTROID_NORM = 2.0  # a user's affinity to a favourite category is about CENTROID_NORM**2
ITEM_NOISE = 0.6  # norm of an item's offset from its category mix
TASTE_NOISE = 0.6  # norm of a user's offset from the mix of favourite categories
SECONDARY_WEIGHT = 0.25  # how much secondary categories pull an item's vector
ACTIVITY_SHAPE = 2.0  # Pareto shape of user activity (smaller: heavier tail)
WEEKLY_AMPLITUDE = 0.15  # weekend peak of daily volume
DAY_NOISE = 0.05  # log-normal day-to-day noise of daily volume
OLD_ITEM_MAX_AGE_DAYS = 365
USER_MAX_AGE_DAYS = 730
DAY_US = 86_400_000_000
CHUNK_ROWS = 131_072  # interactions processed at once (bounds the candidate tensors)

# Ground-truth click model: sigmoid(bias + scale * affinity + pop_weight * log_popularity),
# where bias = CLICK_BIAS + user bias + item bias and log_popularity = log(n_items * share).
CLICK_BIAS = -2.5
CLICK_SCALE = 0.6
CLICK_POP_WEIGHT = 0.1
USER_BIAS_SD = 0.3
ITEM_BIAS_SD = 0.3
# Given a click: add_to_cart with sigmoid(CART_BIAS + CART_SCALE * affinity); given a cart:
# purchase with sigmoid(PURCHASE_BIAS + PURCHASE_SCALE * affinity).
CART_BIAS = -2.0
CART_SCALE = 0.4
PURCHASE_BIAS = -1.5
PURCHASE_SCALE = 0.3

OCCUPATIONS = (
    "student",
    "engineer",
    "teacher",
    "artist",
    "healthcare",
    "sales",
    "retired",
    "self-employed",
    "administrator",
    "other",
)
GENDERS = ("F", "M", "X")


@dataclass
class WorldConfig:
    """Knobs of a synthetic world. Invalid values raise :class:`RecsysError` at construction.

    ``n_interactions`` is the total over all days (0 is allowed: every day gets an empty batch).
    From ``drift_day`` on (0-based, ``None``: never), ``drift_share`` of the users have new
    tastes. ``new_item_share`` of the items are created after day 0 (none if ``n_days == 1``).
    """

    n_users: int = 2000
    n_items: int = 500
    n_days: int = 14
    n_interactions: int = 60_000
    n_categories: int = 12
    dim: int = 16
    popularity_exponent: float = 1.1
    start_date: str = "2026-01-01"
    seed: int = 42
    drift_day: int | None = None
    drift_share: float = 0.3
    new_item_share: float = 0.1

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("n_users", "n_items", "n_days", "n_categories", "dim"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.n_interactions) or self.n_interactions < 0:
            problems.append(f"n_interactions must be an integer >= 0, got {self.n_interactions!r}")
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not _is_real(self.popularity_exponent) or not 0 <= self.popularity_exponent <= 10:
            problems.append(
                f"popularity_exponent must be a number in [0, 10], got {self.popularity_exponent!r}"
            )
        for name in ("drift_share", "new_item_share"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value <= 1:
                problems.append(f"{name} must be a share in [0, 1], got {value!r}")
        if self.drift_day is not None and (
            not _is_int(self.drift_day)
            or not (_is_int(self.n_days) and 0 <= self.drift_day < self.n_days)
        ):
            problems.append(
                f"drift_day must be None or an integer in [0, n_days={self.n_days}), "
                f"got {self.drift_day!r}"
            )
        try:
            start = date.fromisoformat(self.start_date)
            if len(self.start_date) != 10 or start.year < 1990:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(
                f"start_date must be a YYYY-MM-DD date from 1990 on, got {self.start_date!r}"
            )
        if problems:
            raise RecsysError("invalid WorldConfig: " + "; ".join(problems))

    @property
    def start(self) -> datetime:
        """Midnight UTC of day 0."""
        return datetime.combine(date.fromisoformat(self.start_date), datetime.min.time(), UTC)

    def batch_name(self, day: int) -> str:
        """The raw batch name (``YYYY-MM-DD``) of ``day`` (0-based)."""
        return (date.fromisoformat(self.start_date) + timedelta(days=day)).isoformat()

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able plain Python values."""
        return {k: v.item() if isinstance(v, np.generic) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> WorldConfig:
        """Build a config from a dict (e.g. ``world.json["config"]``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise RecsysError(f"unknown WorldConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(payload))


def refuse_future_days(cfg: WorldConfig, today: date | None = None) -> None:
    """Refuse a world whose last day is after ``today`` (UTC): the ingest contract quarantines
    rows from the future (``range:timestamp``), so those days would land only to be rejected.

    Raises:
        RecsysError: naming the latest start date for ``cfg.n_days`` days and the most days
            from ``cfg.start_date``.
    """
    today = today or datetime.now(UTC).date()
    first = date.fromisoformat(cfg.start_date)
    last = first + timedelta(days=cfg.n_days - 1)
    if last <= today:
        return
    latest_start = (today - timedelta(days=cfg.n_days - 1)).isoformat()
    if first > today:
        fix = f"use --start-date {latest_start} or earlier for {cfg.n_days} day(s)"
    else:
        most = (today - first).days + 1
        fix = f"use --days {most} or fewer, or --start-date {latest_start} or earlier"
    raise RecsysError(
        f"{cfg.n_days} day(s) from {cfg.start_date} end on {last.isoformat()}, after today "
        f"({today.isoformat()} UTC): the ingest contract would quarantine the future days; {fix}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


# ---- ground truth: the click model ---------------------------------------------------------------


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    # Clipping keeps the result strictly inside (0, 1) in float64.
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0)))


def _affinity(taste_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Row-wise dot products; einsum (not BLAS) so results do not depend on thread counts."""
    return np.einsum("...d,...d->...", taste_rows, item_rows)


@dataclass(frozen=True)
class ClickModel:
    """The true probability that a user clicks a shown item on a given day.

    ``p = sigmoid(bias + scale * affinity + pop_weight * log_popularity)`` with
    ``bias = global bias + user bias + item bias``, ``affinity = taste(user, day) · item`` and
    ``log_popularity = log(n_items * popularity share)``. ``taste(user, day)`` is the drifted
    taste for drifted users from ``drift_day`` on, the original taste otherwise.
    Ids are 1-based like the data (``user_id`` 1..n_users, ``item_id`` 1..n_items).
    """

    item_vectors: np.ndarray
    log_popularity: np.ndarray
    item_bias: np.ndarray
    user_bias: np.ndarray
    taste_before: np.ndarray
    taste_after: np.ndarray
    drifted: np.ndarray
    drift_day: int | None
    bias: float = CLICK_BIAS
    scale: float = CLICK_SCALE
    pop_weight: float = CLICK_POP_WEIGHT

    @property
    def n_users(self) -> int:
        return int(self.taste_before.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    def taste(self, user_ids: np.ndarray, day: int) -> np.ndarray:
        """Taste vectors (one row per id) the users have on ``day`` (0-based; may be negative)."""
        users = self._index(user_ids, self.n_users, "user_id")
        return self._taste_rows(users, _check_day(day))

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray, day: int) -> np.ndarray:
        """``taste(user, day) · item`` for each (broadcast) pair of ids, as float64."""
        users, items = self._pairs(user_ids, item_ids)
        rows = self._taste_rows(users, _check_day(day))
        return _affinity(rows, self.item_vectors[items]).astype(np.float64)

    def click_probability(self, user_ids: np.ndarray, item_ids: np.ndarray, day: int) -> np.ndarray:
        """True click probabilities, strictly in (0, 1), shaped like the broadcast ids.

        Raises:
            RecsysError: an id is not an integer in ``1..n`` or ``day`` is not an integer.
        """
        users, items = self._pairs(user_ids, item_ids)
        rows = self._taste_rows(users, _check_day(day))
        affinity = _affinity(rows, self.item_vectors[items]).astype(np.float64)
        return _sigmoid(
            self.bias
            + self.user_bias[users]
            + self.item_bias[items]
            + self.scale * affinity
            + self.pop_weight * self.log_popularity[items]
        )

    def _pairs(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        users = self._index(user_ids, self.n_users, "user_id")
        items = self._index(item_ids, self.n_items, "item_id")
        try:
            return np.broadcast_arrays(users, items)
        except ValueError:
            raise RecsysError(
                f"user_ids {users.shape} and item_ids {items.shape} do not broadcast together"
            ) from None

    def _taste_rows(self, users: np.ndarray, day: int) -> np.ndarray:
        if self.drift_day is None or day < self.drift_day:
            return self.taste_before[users]
        mask = self.drifted[users][..., None]
        return np.where(mask, self.taste_after[users], self.taste_before[users])

    @staticmethod
    def _index(ids: np.ndarray, n: int, name: str) -> np.ndarray:
        values = np.asarray(ids)
        integral_floats = values.dtype.kind == "f" and bool(
            np.all(np.isfinite(values) & (values % 1 == 0))
        )
        if values.dtype.kind not in "iu":
            if not (integral_floats or values.size == 0):
                raise RecsysError(f"{name}s must be integers, got dtype {values.dtype}")
            values = values.astype(np.int64)
        bad = (values < 1) | (values > n)
        if np.any(bad):
            examples = np.unique(values[bad])[:5].tolist()
            raise RecsysError(
                f"unknown {name}s {examples} (this world has {name} 1..{n}); "
                "ids must come from the same synthetic world"
            )
        return values.astype(np.int64) - 1

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model as plain arrays (no objects), the keys :meth:`from_arrays` reads."""
        return {
            "item_vectors": self.item_vectors,
            "item_log_popularity": self.log_popularity,
            "item_bias": self.item_bias,
            "user_bias": self.user_bias,
            "taste_before": self.taste_before,
            "taste_after": self.taste_after,
            "drifted_users": self.drifted,
            "drift_day": np.int64(-1 if self.drift_day is None else self.drift_day),
            "click_bias": np.float64(self.bias),
            "click_scale": np.float64(self.scale),
            "click_pop_weight": np.float64(self.pop_weight),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ClickModel:
        """Rebuild the model from :meth:`to_arrays` output (e.g. a loaded ``ground_truth.npz``)."""
        try:
            drift_day = int(arrays["drift_day"])
            return cls(
                item_vectors=np.asarray(arrays["item_vectors"]),
                log_popularity=np.asarray(arrays["item_log_popularity"]),
                item_bias=np.asarray(arrays["item_bias"]),
                user_bias=np.asarray(arrays["user_bias"]),
                taste_before=np.asarray(arrays["taste_before"]),
                taste_after=np.asarray(arrays["taste_after"]),
                drifted=np.asarray(arrays["drifted_users"], dtype=bool),
                drift_day=None if drift_day < 0 else drift_day,
                bias=float(arrays["click_bias"]),
                scale=float(arrays["click_scale"]),
                pop_weight=float(arrays["click_pop_weight"]),
            )
        except KeyError as exc:
            raise RecsysError(
                f"ground truth is missing {exc}; regenerate the world with this version"
            ) from None

    @classmethod
    def load(cls, world_dir: Path) -> ClickModel:
        """Load the click model of the world written under ``world_dir`` (no pickle involved).

        Raises:
            RecsysError: there is no readable ``ground_truth.npz`` in ``world_dir``.
        """
        path = Path(world_dir) / GROUND_TRUTH_FILE
        if not path.is_file():
            raise RecsysError(
                f"no synthetic world ground truth at {path}; generate a world first "
                "(recsys.synthetic.write_world)"
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise RecsysError(f"cannot read {path}: {exc}; regenerate the world") from None
        return cls.from_arrays(arrays)


def _check_day(day: int) -> int:
    if not _is_int(day):
        raise RecsysError(f"day must be an integer (0-based day of the world), got {day!r}")
    return int(day)


# ---- the world -----------------------------------------------------------------------------------


@dataclass
class World:
    """A generated world: the three contract frames plus the ground truth behind them.

    ``interactions`` is sorted by timestamp, timestamps are unique, and ``day_counts[d]`` rows
    belong to day ``d``. Index ``i`` of an item (user) array is ``item_id`` (``user_id``) ``i + 1``.
    ``click_bias``, ``click_scale`` and ``click_pop_weight`` are the click model's constants (the
    synthetic world's by default; a world built from real data calibrates its own).
    """

    config: WorldConfig
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    day_counts: np.ndarray
    centroids: np.ndarray
    item_category: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray
    item_created_day: np.ndarray
    item_bias: np.ndarray
    user_activity: np.ndarray
    user_bias: np.ndarray
    category_weights_before: np.ndarray
    category_weights_after: np.ndarray
    taste_before: np.ndarray
    taste_after: np.ndarray
    drifted: np.ndarray
    click_bias: float = CLICK_BIAS
    click_scale: float = CLICK_SCALE
    click_pop_weight: float = CLICK_POP_WEIGHT

    @property
    def batch_names(self) -> list[str]:
        return [self.config.batch_name(d) for d in range(self.config.n_days)]

    def batches(self) -> Iterator[tuple[str, pd.DataFrame]]:
        """``(YYYY-MM-DD, frame)`` per day, including days without interactions."""
        ends = np.cumsum(self.day_counts)
        starts = ends - self.day_counts
        for name, start, end in zip(self.batch_names, starts, ends, strict=True):
            yield name, self.interactions.iloc[int(start) : int(end)]

    def click_model(self) -> ClickModel:
        """The ground-truth click model of this world."""
        return ClickModel(
            item_vectors=self.item_vectors,
            log_popularity=np.log(self.item_popularity * self.config.n_items),
            item_bias=self.item_bias,
            user_bias=self.user_bias,
            taste_before=self.taste_before,
            taste_after=self.taste_after,
            drifted=self.drifted,
            drift_day=self.config.drift_day,
            bias=self.click_bias,
            scale=self.click_scale,
            pop_weight=self.click_pop_weight,
        )

    def ground_truth(self) -> dict[str, np.ndarray]:
        """Every hidden array of the world, as plain numeric arrays (what ``ground_truth.npz``
        holds); includes the :meth:`ClickModel.to_arrays` keys."""
        arrays = {
            "centroids": self.centroids,
            "item_category": self.item_category,
            "item_popularity": self.item_popularity,
            "item_created_day": self.item_created_day,
            "user_activity": self.user_activity,
            "category_weights_before": self.category_weights_before,
            "category_weights_after": self.category_weights_after,
            "day_counts": self.day_counts,
        }
        arrays.update(self.click_model().to_arrays())
        return arrays

    def summary(self) -> dict[str, Any]:
        """Counts that describe the world (JSON-able)."""
        events = self.interactions["event_type"].value_counts()
        return {
            "n_users": self.config.n_users,
            "n_items": self.config.n_items,
            "n_new_items": int((self.item_created_day > 0).sum()),
            "n_drifted_users": int(self.drifted.sum()),
            "n_interactions": len(self.interactions),
            "events": {name: int(events.get(name, 0)) for name in EVENT_NAMES},
            "days": {
                name: int(count)
                for name, count in zip(self.batch_names, self.day_counts, strict=True)
            },
            "start": self.config.start.isoformat(),
            "end": (self.config.start + timedelta(days=self.config.n_days)).isoformat(),
        }


def _distinct_categories(
    rng: np.random.Generator, n_rows: int, n_categories: int, k: int
) -> np.ndarray:
    """``(n_rows, k)`` distinct categories per row, uniformly random subsets in random order.

    Floyd's sampling, vectorised over rows, then a per-row shuffle (O(rows * k), not categories).
    """
    k = min(k, n_categories)
    out = np.empty((n_rows, k), dtype=np.int64)
    for col, top in enumerate(range(n_categories - k, n_categories)):
        pick = rng.integers(0, top + 1, size=n_rows)
        seen = (out[:, :col] == pick[:, None]).any(axis=1)
        out[:, col] = np.where(seen, top, pick)
    order = np.argsort(rng.random((n_rows, k)), axis=1)
    return np.take_along_axis(out, order, axis=1)


def _centroids(rng: np.random.Generator, n_categories: int, dim: int) -> np.ndarray:
    """Category centroids of norm CENTROID_NORM, orthogonal when there are at most ``dim``."""
    raw = rng.standard_normal((dim, max(n_categories, dim)))
    if n_categories <= dim:
        q, _ = np.linalg.qr(raw[:, :n_categories])
        directions = q.T
    else:
        directions = raw[:, :n_categories].T
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return (CENTROID_NORM * directions).astype(np.float32)


def _noise(rng: np.random.Generator, n: int, dim: int, norm: float) -> np.ndarray:
    return (rng.standard_normal((n, dim)) * (norm / math.sqrt(dim))).astype(np.float32)


def _category_weights(
    rng: np.random.Generator, favourites: np.ndarray, n_favourites: np.ndarray, n_categories: int
) -> np.ndarray:
    """Dense ``(rows, n_categories)`` weights summing to 1 over each row's favourites."""
    rows = favourites.shape[0]
    used = np.arange(favourites.shape[1])[None, :] < n_favourites[:, None]
    mix = rng.gamma(2.0, size=favourites.shape) * used
    mix /= mix.sum(axis=1, keepdims=True)
    weights = np.zeros((rows, n_categories), dtype=np.float64)
    row_index = np.arange(rows)
    for col in range(favourites.shape[1]):
        weights[row_index, favourites[:, col]] += mix[:, col]
    return weights


def _category_names(codes: np.ndarray, n_categories: int) -> np.ndarray:
    width = max(2, len(str(n_categories - 1)))
    names = np.array([f"cat_{c:0{width}d}" for c in range(n_categories)], dtype=object)
    return names[codes]


def _timestamps(offsets_us: np.ndarray) -> pd.Series:
    return pd.Series(offsets_us.astype("datetime64[us]")).dt.tz_localize("UTC")


def _start_us(cfg: WorldConfig) -> int:
    return int(cfg.start.timestamp()) * 1_000_000


def _make_items(rng: np.random.Generator, cfg: WorldConfig, centroids: np.ndarray) -> dict:
    n, n_cat = cfg.n_items, cfg.n_categories
    cats = _distinct_categories(rng, n, n_cat, 3)
    n_secondary = np.minimum(rng.choice(3, size=n, p=[0.5, 0.35, 0.15]), cats.shape[1] - 1)
    primary = cats[:, 0]
    secondary_mix = np.zeros((n, cfg.dim), dtype=np.float32)
    for col in range(1, cats.shape[1]):
        has = (n_secondary >= col)[:, None]
        secondary_mix += np.where(has, centroids[cats[:, col]], 0.0).astype(np.float32)
    secondary_mix /= np.maximum(n_secondary, 1)[:, None].astype(np.float32)
    pull = np.where(n_secondary > 0, SECONDARY_WEIGHT, 0.0)[:, None].astype(np.float32)
    vectors = (1 - pull) * centroids[primary] + pull * secondary_mix
    vectors = (vectors + _noise(rng, n, cfg.dim, ITEM_NOISE)).astype(np.float32)

    ranks = rng.permutation(n) + 1
    popularity = ranks.astype(np.float64) ** -cfg.popularity_exponent
    popularity /= popularity.sum()

    n_new = 0 if cfg.n_days == 1 else min(round(cfg.new_item_share * n), n - 1)
    created_day = np.zeros(n, dtype=np.int64)
    new = rng.choice(n, size=n_new, replace=False)
    created_day[new] = rng.integers(1, max(cfg.n_days, 2), size=n_new)
    item_bias = rng.normal(0.0, ITEM_BIAS_SD, size=n)
    age_s = rng.integers(1, OLD_ITEM_MAX_AGE_DAYS * 86_400, size=n, endpoint=True)
    created_us = np.where(created_day > 0, created_day * DAY_US, -age_s * 1_000_000)

    genre_names = _category_names(cats, n_cat)
    genres = [
        "|".join(row[: 1 + k])
        for row, k in zip(genre_names.tolist(), n_secondary.tolist(), strict=True)
    ]
    frame = pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype=np.int64),
            "title": [f"Item {i}" for i in range(1, n + 1)],
            "category": genre_names[:, 0],
            "genres": genres,
            "created_at": _timestamps(_start_us(cfg) + created_us),
        }
    )
    return {
        "frame": frame,
        "category": primary,
        "vectors": vectors,
        "popularity": popularity,
        "created_day": created_day,
        "bias": item_bias,
    }


def _make_users(rng: np.random.Generator, cfg: WorldConfig, centroids: np.ndarray) -> dict:
    n, n_cat = cfg.n_users, cfg.n_categories
    favourites = _distinct_categories(rng, n, n_cat, 3)
    n_fav = np.minimum(rng.integers(1, 4, size=n), favourites.shape[1])
    weights_before = _category_weights(rng, favourites, n_fav, n_cat)
    taste_before = (
        np.einsum("uk,kd->ud", weights_before, centroids.astype(np.float64))
        + _noise(rng, n, cfg.dim, TASTE_NOISE)
    ).astype(np.float32)
    activity = 1.0 + rng.pareto(ACTIVITY_SHAPE, size=n)
    user_bias = rng.normal(0.0, USER_BIAS_SD, size=n)

    # Drift is drawn even when disabled, so drift_day only changes the days from drift_day on.
    drifted = np.zeros(n, dtype=bool)
    drifted[rng.choice(n, size=round(cfg.drift_share * n), replace=False)] = True
    pool = _distinct_categories(rng, n, n_cat, 6)
    is_old = weights_before[np.arange(n)[:, None], pool] > 0
    new_first = np.take_along_axis(pool, np.argsort(is_old, axis=1, kind="stable"), axis=1)
    new_favourites = new_first[:, : min(3, pool.shape[1])]
    n_new_fav = np.minimum(rng.integers(1, 4, size=n), new_favourites.shape[1])
    weights_new = _category_weights(rng, new_favourites, n_new_fav, n_cat)
    taste_new = (
        np.einsum("uk,kd->ud", weights_new, centroids.astype(np.float64))
        + _noise(rng, n, cfg.dim, TASTE_NOISE)
    ).astype(np.float32)
    if cfg.drift_day is None:
        drifted[:] = False
    weights_after = np.where(drifted[:, None], weights_new, weights_before)
    taste_after = np.where(drifted[:, None], taste_new, taste_before)

    age = pd.array(rng.integers(16, 80, size=n), dtype="Int64")
    age[rng.random(n) < 0.15] = pd.NA
    gender = np.asarray(GENDERS, dtype=object)[rng.choice(3, size=n, p=[0.48, 0.48, 0.04])]
    gender[rng.random(n) < 0.1] = None
    occupation = np.asarray(OCCUPATIONS, dtype=object)[rng.integers(0, len(OCCUPATIONS), size=n)]
    occupation[rng.random(n) < 0.2] = None
    age_s = rng.integers(1, USER_MAX_AGE_DAYS * 86_400, size=n, endpoint=True)
    frame = pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64),
            "created_at": _timestamps(_start_us(cfg) - age_s * 1_000_000),
            "age": age,
            "gender": gender,
            "occupation": occupation,
        }
    )
    return {
        "frame": frame,
        "activity": activity,
        "bias": user_bias,
        "weights_before": weights_before,
        "weights_after": weights_after,
        "taste_before": taste_before,
        "taste_after": taste_after,
        "drifted": drifted,
    }


def _day_counts(rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """Interactions per day: weekly seasonality (weekend peak) times log-normal noise."""
    first_weekday = date.fromisoformat(cfg.start_date).weekday()
    weekday = (first_weekday + np.arange(cfg.n_days)) % 7
    level = 1.0 + WEEKLY_AMPLITUDE * np.cos(2 * np.pi * (weekday - 5.5) / 7)
    level *= rng.lognormal(0.0, DAY_NOISE, size=cfg.n_days)
    return rng.multinomial(cfg.n_interactions, level / level.sum()).astype(np.int64)


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """Indices drawn with probability proportional to the increments of ``cdf``."""
    picks = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    last = int(np.flatnonzero(np.diff(cdf, prepend=0.0) > 0)[-1])
    return np.minimum(picks, last)


def _unique_day_times(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` sorted, strictly increasing microsecond offsets inside one day."""
    times = np.sort(rng.integers(0, DAY_US - count, size=count))
    steps = np.arange(count, dtype=np.int64)
    return np.maximum.accumulate(times - steps) + steps


def _simulate_day(
    rng: np.random.Generator,
    count: int,
    activity_cdf: np.ndarray,
    item_cdf: np.ndarray,
    taste: np.ndarray,
    items: dict,
    user_bias: np.ndarray,
    log_popularity: np.ndarray,
    click: tuple[float, float, float] = (CLICK_BIAS, CLICK_SCALE, CLICK_POP_WEIGHT),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One day's (user index, item index, event code, time offset), in time order.

    ``click`` is the click model's (bias, scale, pop_weight)."""
    click_bias, click_scale, click_pop_weight = click
    times = _unique_day_times(rng, count)
    users = _draw(rng, activity_cdf, count)
    chosen = np.empty(count, dtype=np.int64)
    events = np.empty(count, dtype=np.int8)
    vectors = items["vectors"]
    for start in range(0, count, CHUNK_ROWS):
        u = users[start : start + CHUNK_ROWS]
        m = len(u)
        candidates = _draw(rng, item_cdf, (m, N_CANDIDATES))
        logits = _affinity(taste[u][:, None, :], vectors[candidates])
        pick = np.argmax(CHOICE_SCALE * logits + rng.gumbel(size=(m, N_CANDIDATES)), axis=1)
        rows = np.arange(m)
        item = candidates[rows, pick]
        affinity = logits[rows, pick].astype(np.float64)
        p_click = _sigmoid(
            click_bias
            + user_bias[u]
            + items["bias"][item]
            + click_scale * affinity
            + click_pop_weight * log_popularity[item]
        )
        draws = rng.random((m, 3))
        clicked = draws[:, 0] < p_click
        carted = clicked & (draws[:, 1] < _sigmoid(CART_BIAS + CART_SCALE * affinity))
        bought = carted & (draws[:, 2] < _sigmoid(PURCHASE_BIAS + PURCHASE_SCALE * affinity))
        chosen[start : start + m] = item
        events[start : start + m] = clicked.astype(np.int8) + carted + bought
    return users, chosen, events, times


def generate_world(cfg: WorldConfig, *, show_progress: bool = False) -> World:
    """Build the whole world in memory; the same ``cfg`` always gives the same world.

    Interactions are simulated one day at a time (in chunks of at most CHUNK_ROWS) with
    vectorised numpy; ``user_id``/``item_id`` are int64 from 1, timestamps UTC and unique.
    """
    rng = np.random.default_rng(cfg.seed)
    centroids = _centroids(rng, cfg.n_categories, cfg.dim)
    items = _make_items(rng, cfg, centroids)
    users = _make_users(rng, cfg, centroids)
    return world_from_arrays(
        cfg,
        items=items["frame"],
        users=users["frame"],
        item_vectors=items["vectors"],
        item_popularity=items["popularity"],
        item_category=items["category"],
        user_activity=users["activity"],
        taste_before=users["taste_before"],
        taste_after=users["taste_after"],
        drifted=users["drifted"],
        item_bias=items["bias"],
        user_bias=users["bias"],
        item_created_day=items["created_day"],
        category_weights_before=users["weights_before"],
        category_weights_after=users["weights_after"],
        centroids=centroids,
        rng=rng,
        show_progress=show_progress,
    )


def world_from_arrays(
    cfg: WorldConfig,
    *,
    items: pd.DataFrame,
    users: pd.DataFrame,
    item_vectors: np.ndarray,
    item_popularity: np.ndarray,
    item_category: np.ndarray,
    user_activity: np.ndarray,
    taste_before: np.ndarray,
    taste_after: np.ndarray | None = None,
    drifted: np.ndarray | None = None,
    item_bias: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
    item_created_day: np.ndarray | None = None,
    category_weights_before: np.ndarray | None = None,
    category_weights_after: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    click_bias: float = CLICK_BIAS,
    click_scale: float = CLICK_SCALE,
    click_pop_weight: float = CLICK_POP_WEIGHT,
    rng: np.random.Generator | None = None,
    show_progress: bool = False,
) -> World:
    """A world from given catalogs and ground truth: the daily interactions are simulated from
    them exactly as :func:`generate_world` does (daily volumes, users drawn by ``user_activity``,
    candidates by ``item_popularity``, a softmax choice by affinity, events by the click model).

    ``items``/``users`` are the contract frames with ids ``1..cfg.n_items``/``1..cfg.n_users`` in
    order; row ``i`` of an item (user) array belongs to id ``i + 1``. Vectors have ``cfg.dim``
    columns; ``item_popularity`` sums to 1; ``item_category`` holds codes in
    ``0..cfg.n_categories - 1``. Omitted arrays default to: no drift (``taste_after`` =
    ``taste_before``), zero biases, every item there from day 0, zero category weights and
    centroids the mean item vector of each category. ``rng`` defaults to
    ``np.random.default_rng(cfg.seed)``.

    Raises:
        RecsysError: a frame or an array does not fit ``cfg``.
    """
    n_users, n_items, n_cat = cfg.n_users, cfg.n_items, cfg.n_categories
    rng = np.random.default_rng(cfg.seed) if rng is None else rng
    taste_after = taste_before if taste_after is None else taste_after
    drifted = np.zeros(n_users, dtype=bool) if drifted is None else drifted
    item_bias = np.zeros(n_items) if item_bias is None else item_bias
    user_bias = np.zeros(n_users) if user_bias is None else user_bias
    if item_created_day is None:
        item_created_day = np.zeros(n_items, dtype=np.int64)
    if category_weights_before is None:
        category_weights_before = np.zeros((n_users, n_cat))
    if category_weights_after is None:
        category_weights_after = category_weights_before
    _check_world_arrays(
        cfg,
        items=items,
        users=users,
        shapes={
            "item_vectors": (item_vectors, (n_items, cfg.dim)),
            "item_popularity": (item_popularity, (n_items,)),
            "item_category": (item_category, (n_items,)),
            "item_bias": (item_bias, (n_items,)),
            "item_created_day": (item_created_day, (n_items,)),
            "user_activity": (user_activity, (n_users,)),
            "user_bias": (user_bias, (n_users,)),
            "taste_before": (taste_before, (n_users, cfg.dim)),
            "taste_after": (taste_after, (n_users, cfg.dim)),
            "drifted": (drifted, (n_users,)),
            "category_weights_before": (category_weights_before, (n_users, n_cat)),
            "category_weights_after": (category_weights_after, (n_users, n_cat)),
        },
    )
    if centroids is None:
        centroids = np.zeros((n_cat, cfg.dim), dtype=np.float32)
        for code in np.unique(item_category):
            centroids[code] = item_vectors[item_category == code].mean(axis=0)
    day_counts = _day_counts(rng, cfg)
    click = (click_bias, click_scale, click_pop_weight)
    item_arrays = {"vectors": item_vectors, "bias": item_bias}

    log_popularity = np.log(item_popularity * cfg.n_items)
    activity_cdf = np.cumsum(user_activity)
    parts: list[tuple[np.ndarray, ...]] = []
    days = range(cfg.n_days)
    for day in tqdm(days, desc="simulate days", unit="day", disable=not show_progress):
        drifted_now = cfg.drift_day is not None and day >= cfg.drift_day
        taste = taste_after if drifted_now else taste_before
        item_cdf = np.cumsum(item_popularity * (item_created_day <= day))
        u, i, e, t = _simulate_day(
            rng,
            int(day_counts[day]),
            activity_cdf,
            item_cdf,
            taste,
            item_arrays,
            user_bias,
            log_popularity,
            click,
        )
        parts.append((u, i, e, t + day * DAY_US))

    user_idx, item_idx, event_code, offsets = (
        np.concatenate(col) for col in zip(*parts, strict=True)
    )
    interactions = pd.DataFrame(
        {
            "user_id": user_idx.astype(np.int64) + 1,
            "item_id": item_idx + 1,
            "event_type": np.asarray(EVENT_NAMES, dtype=object)[event_code],
            "value": np.ones(len(user_idx), dtype=np.float64),
            "timestamp": _timestamps(_start_us(cfg) + offsets),
        }
    )
    return World(
        config=cfg,
        items=items,
        users=users,
        interactions=interactions,
        day_counts=day_counts,
        centroids=centroids,
        item_category=item_category,
        item_vectors=item_vectors,
        item_popularity=item_popularity,
        item_created_day=item_created_day,
        item_bias=item_bias,
        user_activity=user_activity,
        user_bias=user_bias,
        category_weights_before=category_weights_before,
        category_weights_after=category_weights_after,
        taste_before=taste_before,
        taste_after=taste_after,
        drifted=drifted,
        click_bias=click_bias,
        click_scale=click_scale,
        click_pop_weight=click_pop_weight,
    )


def _check_world_arrays(
    cfg: WorldConfig,
    *,
    items: pd.DataFrame,
    users: pd.DataFrame,
    shapes: dict[str, tuple[np.ndarray, tuple[int, ...]]],
) -> None:
    problems = [
        f"{name} has shape {np.shape(array)}, expected {shape}"
        for name, (array, shape) in shapes.items()
        if np.shape(array) != shape
    ]
    for key, frame, n in (("item_id", items, cfg.n_items), ("user_id", users, cfg.n_users)):
        if key not in frame or frame[key].tolist() != list(range(1, n + 1)):
            problems.append(f"the {key.split('_')[0]} frame must hold {key} 1..{n} in order")
    if not problems:
        popularity = shapes["item_popularity"][0]
        if np.any(popularity < 0) or not math.isclose(float(popularity.sum()), 1.0, abs_tol=1e-9):
            problems.append("item_popularity must be non-negative and sum to 1")
        codes = shapes["item_category"][0]
        if len(codes) and (codes.min() < 0 or codes.max() >= cfg.n_categories):
            problems.append(f"item_category codes must be in 0..{cfg.n_categories - 1}")
        if np.any(shapes["user_activity"][0] < 0) or not shapes["user_activity"][0].sum() > 0:
            problems.append("user_activity must be non-negative with a positive sum")
    if problems:
        raise RecsysError("world arrays do not fit the config: " + "; ".join(problems))


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (the ``np.savez`` layout) with fixed entry dates: same arrays, same
    bytes. ``np.savez`` itself stamps the wall-clock time into the zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in sorted(arrays):
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.asarray(arrays[name]), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, payload.getvalue())
    return buffer.getvalue()


def write_ground_truth(world: World, lake: Lake) -> Path:
    """Write the world's hidden arrays and config under ``world/`` (no raw data)."""
    world_dir = lake.world_dir()
    atomic_write_bytes(world_dir / GROUND_TRUTH_FILE, _npz_bytes(world.ground_truth()))
    write_json(
        world_dir / WORLD_FILE,
        {
            "format_version": WORLD_FORMAT_VERSION,
            "config": world.config.to_dict(),
            "summary": world.summary(),
        },
    )
    return world_dir


def write_world(cfg: WorldConfig, lake: Lake, show_progress: bool = False) -> dict[str, Any]:
    """Generate the world of ``cfg`` and land it in ``lake``; returns a manifest.

    Writes, in this order: the raw item and user catalogs, one raw interaction batch per day
    (``YYYY-MM-DD``, empty days included), then ``world/ground_truth.npz`` and
    ``world/world.json``. Raw files are immutable: re-writing the same world is a no-op.

    Returns:
        ``{"config", "summary", "batches", "files": {path relative to the lake root: sha256},
        "written": number of raw files newly written}``.

    Raises:
        RecsysError: the lake already holds a different world (checked before any work).
    """
    landed_file = lake.world_dir() / WORLD_FILE
    if landed_file.is_file():
        landed = json.loads(landed_file.read_text()).get("config")
        if landed and landed != cfg.to_dict():
            raise RecsysError(
                f"{lake.root} already holds a different synthetic world (raw data is "
                "immutable); use a fresh RECSYS_DATA_DIR or the same options as before"
            )
    world = generate_world(cfg, show_progress=show_progress)
    written = 0
    paths: list[Path] = []
    for what, frame, schema in (
        ("items", world.items, ITEMS_SCHEMA),
        ("users", world.users, USERS_SCHEMA),
    ):
        path = lake.raw_catalog_path(what)
        written += lake.write_raw(path, conform(frame, schema))
        paths.append(path)
    batches = list(world.batches())
    for name, frame in tqdm(batches, desc="write batches", unit="day", disable=not show_progress):
        path = lake.raw_batch_path(name)
        written += lake.write_raw(path, conform(frame, INTERACTIONS_SCHEMA))
        paths.append(path)

    world_dir = lake.world_dir()
    atomic_write_bytes(world_dir / GROUND_TRUTH_FILE, _npz_bytes(world.ground_truth()))
    summary = world.summary()
    write_json(
        world_dir / WORLD_FILE,
        {
            "format_version": WORLD_FORMAT_VERSION,
            "config": cfg.to_dict(),
            "summary": summary,
            "click_model": {
                "formula": "sigmoid(bias + user_bias + item_bias + scale * affinity"
                " + pop_weight * log(n_items * popularity))",
                "bias": CLICK_BIAS,
                "scale": CLICK_SCALE,
                "pop_weight": CLICK_POP_WEIGHT,
            },
        },
    )
    paths += [world_dir / GROUND_TRUTH_FILE, world_dir / WORLD_FILE]
    return {
        "config": cfg.to_dict(),
        "summary": summary,
        "batches": world.batch_names,
        "files": {p.relative_to(lake.root).as_posix(): file_sha256(p) for p in paths},
        "written": written,
    }
