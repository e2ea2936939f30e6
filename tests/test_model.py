"""The trained model: metrics computed right, honest holdout, behaviour users would notice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.errors import RecsysError
from recsys.evaluation import ranking_metrics
from recsys.models.als import ALSParams
from recsys.release import Release
from recsys.train import fit_release, temporal_split


def test_ranking_metrics_match_a_hand_computed_example():
    recs = np.array([[3, 1, 2], [5, 6, 7]])
    relevant = [np.array([1, 2]), np.array([9])]
    m = ranking_metrics(recs, relevant, 3, n_items=10)
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    idcg = 1 + 1 / np.log2(3)
    assert m["ndcg"] == pytest.approx((dcg / idcg + 0) / 2)
    assert m["precision"] == pytest.approx((2 / 3) / 2)
    assert m["recall"] == pytest.approx(0.5)
    assert m["hit_rate"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2) / 2)
    assert m["coverage"] == pytest.approx(6 / 10)


def test_holdout_is_strictly_after_training(trained_world):
    settings, _, result = trained_world
    frame = settings.lake.read_clean_interactions()
    train, test = temporal_split(frame, int(result.window["test_days"]))
    assert train["timestamp"].max() < test["timestamp"].min()
    assert result.window["holdout_start"] == test["timestamp"].min().floor("D").isoformat()


def test_als_beats_popularity_on_the_synthetic_holdout(trained_world):
    _, _, result = trained_world
    assert result.metrics["als"]["users"] > 50
    assert result.metrics["als"]["ndcg"] > result.metrics["popularity"]["ndcg"]
    assert result.metrics["als"]["coverage"] > result.metrics["popularity"]["coverage"]
    assert not result.notes


def test_recommendations_never_contain_seen_or_excluded_items(trained_world):
    _, _, result = trained_world
    release = result.release
    for user_id in release.user_ids[:100]:
        row = release.user_row(user_id)
        seen = set(release.item_ids[release.seen_rows(row)].tolist())
        rec = release.recommend(int(user_id), 20, exclude=[int(release.item_ids[0])])
        assert not seen & set(rec.item_ids.tolist())
        assert int(release.item_ids[0]) not in rec.item_ids
        assert len(set(rec.item_ids.tolist())) == len(rec.item_ids)
        assert np.all(np.diff(rec.scores) <= 1e-6)  # best first


def test_unknown_user_gets_the_cold_start_list(trained_world):
    _, _, result = trained_world
    rec = result.release.recommend(10**9, 5)
    assert rec.fallback == "cold_start" and len(rec.item_ids) == 5


def test_same_seed_same_model_and_other_seed_another(trained_world):
    settings, _, _ = trained_world
    frame = settings.lake.read_clean_interactions()
    items = np.unique(frame["item_id"])
    a = fit_release(frame, items, ALSParams(seed=3, iterations=5), {})
    b = fit_release(frame, items, ALSParams(seed=3, iterations=5), {})
    c = fit_release(frame, items, ALSParams(seed=4, iterations=5), {})
    assert np.array_equal(a.als.item_factors, b.als.item_factors)
    assert not np.array_equal(a.als.item_factors, c.als.item_factors)


def test_a_user_who_only_watched_one_category_gets_mostly_that_category(trained_world):
    settings, _, _ = trained_world
    frame = settings.lake.read_clean_interactions()
    catalog = settings.lake.read_clean_catalog("items").set_index("item_id")["category"]
    category = catalog.value_counts().index[0]
    liked = catalog[catalog == category].index.to_numpy()[:15]
    fan = pd.DataFrame(
        {
            "user_id": 10**7,
            "item_id": liked,
            "event_type": "purchase",
            "value": 1.0,
            "timestamp": frame["timestamp"].max(),
        }
    )
    release = fit_release(
        pd.concat([frame, fan], ignore_index=True), catalog.index.to_numpy(), ALSParams(), {}
    )
    rec = release.recommend(10**7, 10)
    share = (catalog.loc[rec.item_ids] == category).mean()
    base_rate = (catalog == category).mean()
    assert share >= 0.6 and share > 2 * base_rate


def test_release_round_trips_without_pickle(trained_world, tmp_path):
    _, _, result = trained_world
    folder = result.release.save(tmp_path / "release")
    for array in folder.glob("*.npy"):
        np.load(array, allow_pickle=False)  # raises if anything needed pickle
    loaded = Release.load(folder)
    user = int(result.release.user_ids[0])
    assert np.array_equal(
        loaded.recommend(user, 10).item_ids, result.release.recommend(user, 10).item_ids
    )
    assert loaded.meta["data_fingerprint"] == result.release.meta["data_fingerprint"]


def test_a_broken_release_is_a_readable_error(tmp_path, trained_world):
    _, _, result = trained_world
    folder = result.release.save(tmp_path / "release")
    (folder / "als_item_factors.npy").write_bytes(b"not an array")
    with pytest.raises(RecsysError, match="corrupt"):
        Release.load(folder)
    with pytest.raises(RecsysError, match="not a release"):
        Release.load(tmp_path)
