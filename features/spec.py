"""What the feature repository holds, without importing Feast (cheap to import anywhere).

Names, versions, TTLs, the feature columns of each view (from :mod:`features.compute`) and the
file layout under ``<data_dir>/features/``::

    features/offline/user_features/<YYYY-MM-DD>.parquet   one as-of snapshot per batch day
    features/offline/item_features/<YYYY-MM-DD>.parquet   (event_timestamp = next midnight UTC)
    features/offline/category_vocabulary.json             order of user_category_affinity
    features/offline/manifest.json                        input fingerprint + sha256 per day
    features/online.db                                    SQLite online store (local profile)
    features/registry.db, registry-prod.db                Feast file registry per profile
    features/materialized.json                            last materialization (readers watch it)

The release unit records :data:`FEATURE_SERVICE_NAME` and :data:`FEATURE_SERVICE_VERSION`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from features.compute import ITEM_NUMERIC, RECENT_ITEMS, USER_NUMERIC

FEATURE_REPO_DIR = Path(__file__).resolve().parent
"""The Feast repository folder (``feature_store.yaml``, ``definitions.py``)."""

DEFAULT_PROJECT = "recsys"
PROJECT_ENV = "RECSYS_FEAST_PROJECT"
"""Overrides the Feast project (and so the Redis key suffix); tests use it for isolation."""

FEATURE_SERVICE_VERSION = 1
FEATURE_SERVICE_NAME = f"ranker_v{FEATURE_SERVICE_VERSION}"
"""The feature service the ranker trains against and serves from."""

USER_VIEW = "user_features"
ITEM_VIEW = "item_features"
VIEWS = (USER_VIEW, ITEM_VIEW)
USER_PUSH_SOURCE = "user_activity_push"

AFFINITY = "user_category_affinity"
USER_FEATURES: tuple[str, ...] = (*USER_NUMERIC, AFFINITY, RECENT_ITEMS)
RANKER_USER_FEATURES: tuple[str, ...] = (*USER_NUMERIC, AFFINITY)
"""The user features of the ranker's feature service (RECENT_ITEMS is for serving's filter)."""
ITEM_FEATURES: tuple[str, ...] = (*ITEM_NUMERIC, "item_category_index")
VIEW_FEATURES: dict[str, tuple[str, ...]] = {USER_VIEW: USER_FEATURES, ITEM_VIEW: ITEM_FEATURES}
JOIN_KEYS: dict[str, str] = {USER_VIEW: "user_id", ITEM_VIEW: "item_id"}
TIMESTAMP_FIELD = "event_timestamp"

# Snapshots are daily: a value older than two snapshots means the pipeline stopped.
VIEW_TTL: dict[str, timedelta] = {USER_VIEW: timedelta(days=2), ITEM_VIEW: timedelta(days=2)}

REGISTRY_STORE_TYPE = "features.registry_store.AtomicFileRegistryStore"
"""Feast's file registry with atomic writes (``features/registry_store.py``)."""

FEATURE_CODE_VERSION = "2"  # 2: user_recent_items
"""Bump when features/compute.py changes meaning: every offline snapshot is then recomputed."""


def feast_project() -> str:
    """The Feast project name: ``$RECSYS_FEAST_PROJECT`` or ``recsys``."""
    return os.environ.get(PROJECT_ENV) or DEFAULT_PROJECT


@dataclass(frozen=True)
class FeaturePaths:
    """Where the feature store keeps its files under one data directory."""

    data_dir: Path

    @property
    def root(self) -> Path:
        return self.data_dir / "features"

    @property
    def offline_dir(self) -> Path:
        return self.root / "offline"

    def view_dir(self, view: str) -> Path:
        return self.offline_dir / view

    def snapshot_path(self, view: str, day: str) -> Path:
        return self.view_dir(view) / f"{day}.parquet"

    @property
    def vocabulary_path(self) -> Path:
        return self.offline_dir / "category_vocabulary.json"

    @property
    def manifest_path(self) -> Path:
        return self.offline_dir / "manifest.json"

    @property
    def online_db(self) -> Path:
        return self.root / "online.db"

    def registry(self, profile: str) -> Path:
        # One registry per profile: it records what was materialized into which online store.
        return self.root / ("registry.db" if profile == "local" else f"registry-{profile}.db")

    @property
    def materialized_marker(self) -> Path:
        return self.root / "materialized.json"
