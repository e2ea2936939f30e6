"""The Feast objects of the feature repository: entities, sources, views, push source, service.

The Python API builds them for any data directory with :func:`build_definitions`. For Feast CLI
users the module also defines them at module level for the default data directory (``.recsys``
beside this folder, the same one ``feature_store.yaml`` points at), so inside ``features/``::

    feast apply
    feast materialize-incremental 2026-12-01T00:00:00

work as Feast users expect (``.feastignore`` keeps Feast from importing the other modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    ValueType,
)
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Int64

from features.compute import (
    ITEM_NUMERIC,
    RECENT_ITEMS,
    RECENT_ITEMS_DAYS,
    RECENT_ITEMS_MAX,
    USER_NUMERIC,
)
from features.spec import (
    AFFINITY,
    FEATURE_SERVICE_NAME,
    FEATURE_SERVICE_VERSION,
    ITEM_VIEW,
    RANKER_USER_FEATURES,
    TIMESTAMP_FIELD,
    USER_PUSH_SOURCE,
    USER_VIEW,
    VIEW_TTL,
    FeaturePaths,
)

OWNER = "recsys"


@dataclass(frozen=True)
class FeatureDefinitions:
    """Every Feast object of the repository, for one offline directory."""

    user: Entity
    item: Entity
    user_source: FileSource
    item_source: FileSource
    user_push: PushSource
    user_view: FeatureView
    item_view: FeatureView
    service: FeatureService

    def objects(self) -> list:
        """The objects in the order ``FeatureStore.apply`` wants them."""
        return [
            self.user,
            self.item,
            self.user_source,
            self.item_source,
            self.user_push,
            self.user_view,
            self.item_view,
            self.service,
        ]


def build_definitions(paths: FeaturePaths) -> FeatureDefinitions:
    """Build the Feast objects whose parquet sources live under ``paths.offline_dir``."""
    user = Entity(
        name="user",
        join_keys=["user_id"],
        value_type=ValueType.INT64,
        description="A shopper (contract: users.user_id).",
        owner=OWNER,
    )
    item = Entity(
        name="item",
        join_keys=["item_id"],
        value_type=ValueType.INT64,
        description="A catalog item (contract: items.item_id).",
        owner=OWNER,
    )
    user_source = FileSource(
        name="user_features_source",
        path=str(paths.view_dir(USER_VIEW)),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_FIELD,
        description="Daily as-of snapshots of user features (features/compute.py).",
    )
    item_source = FileSource(
        name="item_features_source",
        path=str(paths.view_dir(ITEM_VIEW)),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_FIELD,
        description="Daily as-of snapshots of item features (features/compute.py).",
    )
    user_push = PushSource(
        name=USER_PUSH_SOURCE,
        batch_source=user_source,
        description="Real-time user activity: fresher user feature rows pushed online.",
    )
    user_view = FeatureView(
        name=USER_VIEW,
        entities=[user],
        ttl=VIEW_TTL[USER_VIEW],
        schema=[
            Field(name="user_id", dtype=Int64),
            *(Field(name=name, dtype=Float32) for name in USER_NUMERIC),
            Field(
                name=AFFINITY,
                dtype=Array(Float32),
                description="Share of the user's implicit weight per category, in the order "
                "of features/offline/category_vocabulary.json.",
            ),
            Field(
                name=RECENT_ITEMS,
                dtype=Array(Int64),
                description=f"The user's distinct items of the last {RECENT_ITEMS_DAYS} days, "
                f"newest first (at most {RECENT_ITEMS_MAX}): serving leaves them out of answers.",
            ),
        ],
        source=user_push,
        online=True,
        description="Activity counts over 1/7/30 days, recency, mean weights, category affinity.",
        tags={"snapshot": "daily"},
        owner=OWNER,
    )
    item_view = FeatureView(
        name=ITEM_VIEW,
        entities=[item],
        ttl=VIEW_TTL[ITEM_VIEW],
        schema=[
            Field(name="item_id", dtype=Int64),
            *(Field(name=name, dtype=Float32) for name in ITEM_NUMERIC),
            Field(name="item_category_index", dtype=Int64),
        ],
        source=item_source,
        online=True,
        description="Popularity over 1/7/30 days, trend, age, mean rating, category.",
        tags={"snapshot": "daily"},
        owner=OWNER,
    )
    service = FeatureService(
        name=FEATURE_SERVICE_NAME,
        # the ranker's inputs: the recent items are the serving filter's, not a ranker feature
        features=[user_view[list(RANKER_USER_FEATURES)], item_view],
        description="The features the ranker is trained against and served from.",
        tags={"version": str(FEATURE_SERVICE_VERSION)},
        owner=OWNER,
    )
    return FeatureDefinitions(
        user, item, user_source, item_source, user_push, user_view, item_view, service
    )


# ---- module-level objects for `feast apply` inside features/ (default data dir) ---------------

# Relative to this file (not features.spec), so a copied repository uses its own data dir.
_CLI = build_definitions(FeaturePaths(Path(__file__).resolve().parent.parent / ".recsys"))
user = _CLI.user
item = _CLI.item
user_features_source = _CLI.user_source
item_features_source = _CLI.item_source
user_activity_push = _CLI.user_push
user_features = _CLI.user_view
item_features = _CLI.item_view
ranker_service = _CLI.service
