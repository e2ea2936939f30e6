"""The ranker's training features are the Feast offline store's point-in-time values.

The pipeline computes a stage's feature tables with features/compute.py at the label cut;
Feast's get_historical_features at that cut must return exactly the same numbers, so training
on either is training on the offline store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.compute import ITEM_NUMERIC, USER_NUMERIC, item_features, user_features
from features.offline import build_offline_features
from features.store import apply_repo, historical_features
from recsys.config import Settings
from recsys.ingest import ingest_all
from recsys.synthetic import WorldConfig, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("feat-train"))
    write_world(
        WorldConfig(n_users=200, n_items=60, n_days=5, n_interactions=4000, seed=11),
        settings.lake.init(),
    )
    ingest_all(settings.lake)
    build_offline_features(settings)
    apply_repo(settings)
    return settings


def test_training_features_equal_feast_point_in_time_values(world):
    settings = world
    frame = settings.lake.read_clean_interactions()
    catalog = settings.lake.read_clean_catalog("items")
    cut = frame["timestamp"].max().floor("D")  # a label cut at midnight, as training uses
    history = frame.loc[frame["timestamp"] < cut]
    users = user_features(history, catalog, cut).set_index("user_id")
    items = item_features(history, catalog, cut).set_index("item_id")
    sample = frame.loc[frame["timestamp"] >= cut].drop_duplicates("user_id").head(40)
    entity_df = pd.DataFrame(
        {
            "user_id": sample["user_id"].to_numpy(),
            "item_id": sample["item_id"].to_numpy(),
            "event_timestamp": cut,
        }
    )
    offline = historical_features(settings, entity_df)
    known = offline["user_id"].isin(users.index)
    assert known.sum() > 10
    for name in USER_NUMERIC:
        np.testing.assert_allclose(
            offline.loc[known, name].to_numpy(dtype=float),
            users.loc[offline.loc[known, "user_id"], name].to_numpy(dtype=float),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
    created = offline["item_id"].isin(items.index)  # items created after the cut have none
    assert created.sum() > 10
    assert offline.loc[~created, ITEM_NUMERIC[0]].isna().all()
    for name in ITEM_NUMERIC:
        np.testing.assert_allclose(
            offline.loc[created, name].to_numpy(dtype=float),
            items.loc[offline.loc[created, "item_id"], name].to_numpy(dtype=float),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
    affinity = np.stack(offline.loc[known, "user_category_affinity"].to_numpy())
    expected = np.stack(users.loc[offline.loc[known, "user_id"], "user_category_affinity"])
    np.testing.assert_allclose(affinity, expected, rtol=1e-5, atol=1e-6)
