"""Feature computation from the clean lake: one definition for training, offline and online.

Every feature is computed *as of* a timestamp from interactions strictly before it, so a
snapshot taken at ``as_of`` can never contain an event from its own future. Snapshots are what
the Feast offline sources hold (``event_timestamp`` = ``as_of``), what the ranker trains on,
and what materialization copies to the online store.

User features (entity ``user_id``):
    user_events_1d/7d/30d, user_events_total, user_items_total, user_days_since_last,
    user_days_since_first, user_mean_weight, user_mean_rating, user_category_affinity
    (share of the user's implicit weight per category, in ``category_vocabulary`` order),
    user_recent_items (the distinct items of the user's last RECENT_ITEMS_DAYS days, newest
    first, at most RECENT_ITEMS_MAX: not a ranker input; serving leaves them out of answers,
    so items a user had after a release's training cut are not recommended again)
Item features (entity ``item_id``):
    item_events_1d/7d/30d, item_events_total, item_users_total, item_trend (last day vs the
    7-day daily mean), item_age_days, item_mean_rating, item_category_index
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.contract import implicit_weight

WINDOWS_DAYS = (1, 7, 30)
USER_NUMERIC = (
    *(f"user_events_{d}d" for d in WINDOWS_DAYS),
    "user_events_total",
    "user_items_total",
    "user_days_since_last",
    "user_days_since_first",
    "user_mean_weight",
    "user_mean_rating",
)
ITEM_NUMERIC = (
    *(f"item_events_{d}d" for d in WINDOWS_DAYS),
    "item_events_total",
    "item_users_total",
    "item_trend",
    "item_age_days",
    "item_mean_rating",
)
NEVER_DAYS = 3650.0  # "days since" for an entity with no event yet
RECENT_ITEMS = "user_recent_items"
RECENT_ITEMS_DAYS = 7
RECENT_ITEMS_MAX = 100


def category_vocabulary(items: pd.DataFrame) -> list[str]:
    """The sorted primary categories of the catalog: the order of affinity vectors."""
    return sorted(items["category"].astype(str).unique().tolist())


def _before(interactions: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    return interactions.loc[interactions["timestamp"] < as_of]


def _window_counts(frame: pd.DataFrame, key: str, as_of: pd.Timestamp, prefix: str) -> pd.DataFrame:
    out = {}
    for days in WINDOWS_DAYS:
        recent = frame.loc[frame["timestamp"] >= as_of - pd.Timedelta(days=days)]
        out[f"{prefix}_events_{days}d"] = recent.groupby(key).size()
    out[f"{prefix}_events_total"] = frame.groupby(key).size()
    return pd.DataFrame(out)


def user_features(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp | str,
    *,
    recent: bool = True,
) -> pd.DataFrame:
    """One row per user seen before ``as_of``: ``user_id``, ``event_timestamp`` and features
    (``recent=False``: without RECENT_ITEMS, which the ranker does not use)."""
    as_of = pd.Timestamp(as_of)
    frame = _before(interactions, as_of)
    vocab = category_vocabulary(items)
    columns = ["user_id", "event_timestamp", *USER_NUMERIC, "user_category_affinity"]
    columns += [RECENT_ITEMS] if recent else []
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.assign(weight=implicit_weight(frame))
    stats = _window_counts(frame, "user_id", as_of, "user")
    grouped = frame.groupby("user_id")
    stats["user_items_total"] = grouped["item_id"].nunique()
    stats["user_days_since_last"] = (as_of - grouped["timestamp"].max()).dt.total_seconds() / 86400
    stats["user_days_since_first"] = (as_of - grouped["timestamp"].min()).dt.total_seconds() / 86400
    stats["user_mean_weight"] = grouped["weight"].mean()
    ratings = frame.loc[frame["event_type"] == "rating"]
    stats["user_mean_rating"] = ratings.groupby("user_id")["value"].mean()
    stats = stats.fillna(0.0)

    category = frame["item_id"].map(items.set_index("item_id")["category"].astype(str))
    codes = pd.Categorical(category, categories=vocab).codes
    users = stats.index.to_numpy()
    rows = np.searchsorted(users, frame["user_id"].to_numpy())
    affinity = np.zeros((len(users), len(vocab)), dtype=np.float32)
    known = codes >= 0
    np.add.at(affinity, (rows[known], codes[known]), frame["weight"].to_numpy()[known])
    totals = affinity.sum(axis=1, keepdims=True)
    affinity = np.divide(affinity, totals, out=np.zeros_like(affinity), where=totals > 0)

    out = stats.reset_index(names="user_id")
    out.insert(1, "event_timestamp", as_of)
    out["user_category_affinity"] = list(affinity)
    if recent:
        out[RECENT_ITEMS] = recent_items(frame, users, as_of)
    return out[columns].astype({c: "float32" for c in USER_NUMERIC})


def recent_items(frame: pd.DataFrame, users: np.ndarray, as_of: pd.Timestamp) -> list[np.ndarray]:
    """Per user of ``users`` (sorted), the distinct items of their events in the last
    RECENT_ITEMS_DAYS days before ``as_of``, newest first, at most RECENT_ITEMS_MAX (int64)."""
    recent = frame.loc[frame["timestamp"] >= as_of - pd.Timedelta(days=RECENT_ITEMS_DAYS)]
    recent = recent.sort_values(["user_id", "timestamp"], ascending=[True, False], kind="stable")
    recent = recent.drop_duplicates(["user_id", "item_id"])
    recent = recent.groupby("user_id", sort=False).head(RECENT_ITEMS_MAX)  # keeps the order
    ids = recent["user_id"].to_numpy()
    items = recent["item_id"].to_numpy(dtype=np.int64)
    starts, ends = np.searchsorted(ids, users, "left"), np.searchsorted(ids, users, "right")
    return [items[a:b] for a, b in zip(starts, ends, strict=True)]


def item_features(
    interactions: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp | str
) -> pd.DataFrame:
    """One row per catalog item created before ``as_of``: ``item_id``, ``event_timestamp``,
    features. Items without events get zero counts (they exist, nobody touched them yet)."""
    as_of = pd.Timestamp(as_of)
    frame = _before(interactions, as_of)
    catalog = items.loc[items["created_at"] < as_of].set_index("item_id")
    stats = _window_counts(frame, "item_id", as_of, "item").reindex(catalog.index)
    stats["item_users_total"] = frame.groupby("item_id")["user_id"].nunique()
    ratings = frame.loc[frame["event_type"] == "rating"]
    stats["item_mean_rating"] = ratings.groupby("item_id")["value"].mean()
    stats = stats.fillna(0.0)
    stats["item_trend"] = stats["item_events_1d"] / (stats["item_events_7d"] / 7.0 + 1.0)
    stats["item_age_days"] = (as_of - catalog["created_at"]).dt.total_seconds() / 86400
    vocab = category_vocabulary(items)
    stats["item_category_index"] = pd.Categorical(
        catalog["category"].astype(str), categories=vocab
    ).codes.astype("int64")
    out = stats.reset_index(names="item_id")
    out.insert(1, "event_timestamp", as_of)
    return out[["item_id", "event_timestamp", *ITEM_NUMERIC, "item_category_index"]].astype(
        {c: "float32" for c in ITEM_NUMERIC}
    )
