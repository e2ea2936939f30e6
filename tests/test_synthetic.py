"""Tests of the synthetic world generator and its ground-truth click model.

Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/pytest tests/test_synthetic.py -q``
"""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.contract import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    validate_interactions,
)
from recsys.errors import RecsysError
from recsys.lake import Lake
from recsys.synthetic import (
    EVENT_NAMES,
    GROUND_TRUTH_FILE,
    WORLD_FILE,
    ClickModel,
    WorldConfig,
    generate_world,
    write_world,
)

SMALL = {"n_users": 300, "n_items": 150, "n_days": 6, "n_interactions": 6_000, "drift_day": 3}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _world_end(cfg: WorldConfig):
    return cfg.start + timedelta(days=cfg.n_days)


def test_same_config_gives_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    cfg = WorldConfig(**SMALL)
    first = write_world(cfg, Lake(tmp_path / "a"))
    second = write_world(WorldConfig(**SMALL), Lake(tmp_path / "b"))
    other = write_world(WorldConfig(**SMALL, seed=7), Lake(tmp_path / "c"))

    hashes = _tree_hashes(tmp_path / "a")
    assert hashes == _tree_hashes(tmp_path / "b")
    assert hashes == first["files"] == second["files"]
    assert len(hashes) == 2 + cfg.n_days + 2  # catalogs, one batch per day, world files
    other_hashes = _tree_hashes(tmp_path / "c")
    assert other_hashes.keys() == hashes.keys()
    differing = [name for name in hashes if hashes[name] != other_hashes[name]]
    assert set(differing) == set(hashes)  # every file changes with the seed
    assert other["summary"] != first["summary"]

    # Landing the same world again is a no-op; a different world is refused (raw is immutable).
    again = write_world(cfg, Lake(tmp_path / "a"))
    assert again["written"] == 0
    assert _tree_hashes(tmp_path / "a") == hashes
    with pytest.raises(RecsysError, match="immutable"):
        write_world(WorldConfig(**SMALL, seed=7), Lake(tmp_path / "a"))


def test_every_batch_passes_the_contract(tmp_path: Path) -> None:
    cfg = WorldConfig(**SMALL)
    lake = Lake(tmp_path)
    manifest = write_world(cfg, lake)
    items = pq.read_table(lake.raw_catalog_path("items"))
    users = pq.read_table(lake.raw_catalog_path("users"))
    assert items.schema.equals(ITEMS_SCHEMA)
    assert users.schema.equals(USERS_SCHEMA)
    items_frame = items.to_pandas()
    assert items_frame["item_id"].tolist() == list(range(1, cfg.n_items + 1))
    assert items_frame["title"].iloc[16] == "Item 17"
    assert items_frame["category"].str.fullmatch(r"cat_\d\d").all()
    assert (items_frame["genres"].str.split("|").str[0] == items_frame["category"]).all()
    users_frame = users.to_pandas()
    assert users_frame["user_id"].tolist() == list(range(1, cfg.n_users + 1))
    assert users_frame[["age", "gender", "occupation"]].isna().any().all()

    assert lake.raw_batches() == manifest["batches"]
    assert manifest["batches"][0] == "2026-01-01"
    total = 0
    for batch in lake.raw_batches():
        path = lake.raw_batch_path(batch)
        assert pq.read_schema(path).equals(INTERACTIONS_SCHEMA)
        frame = lake.read_raw_batch(batch)
        result = validate_interactions(
            frame, known_items=items_frame["item_id"].to_numpy(), now=_world_end(cfg)
        )
        assert result.rejected.empty, result.reason_counts()
        assert (frame["timestamp"].dt.strftime("%Y-%m-%d") == batch).all()
        assert frame["timestamp"].is_monotonic_increasing
        assert frame["user_id"].between(1, cfg.n_users).all()
        assert (frame["value"] == 1.0).all()
        total += len(frame)
    assert total == cfg.n_interactions == manifest["summary"]["n_interactions"]


def test_days_without_interactions_still_get_a_batch(tmp_path: Path) -> None:
    cfg = WorldConfig(n_users=20, n_items=10, n_days=8, n_interactions=3)
    lake = Lake(tmp_path)
    write_world(cfg, lake)
    batches = lake.raw_batches()
    assert len(batches) == 8
    sizes = [len(lake.read_raw_batch(b)) for b in batches]
    assert sum(sizes) == 3
    assert sizes.count(0) >= 5
    assert pq.read_schema(lake.raw_batch_path(batches[sizes.index(0)])).equals(INTERACTIONS_SCHEMA)


def test_event_mix_and_ground_truth_files(tmp_path: Path) -> None:
    cfg = WorldConfig(**SMALL)
    lake = Lake(tmp_path)
    manifest = write_world(cfg, lake)
    events = manifest["summary"]["events"]
    assert set(events) == set(EVENT_NAMES)
    assert events["view"] > cfg.n_interactions / 2
    assert events["view"] > events["click"] > events["add_to_cart"] > 0
    assert 0 < events["purchase"] < events["click"]

    with np.load(lake.world_dir() / GROUND_TRUTH_FILE, allow_pickle=False) as archive:
        names = set(archive.files)
        assert archive["item_vectors"].shape == (cfg.n_items, cfg.dim)
        assert archive["taste_before"].shape == archive["taste_after"].shape
        assert archive["drifted_users"].dtype == bool
        assert archive["item_popularity"].sum() == pytest.approx(1.0)
    assert {"item_popularity", "user_bias", "item_bias", "drifted_users"} <= names
    world_json = (lake.world_dir() / WORLD_FILE).read_text()
    assert '"n_interactions": 6000' in world_json
    assert str(tmp_path) not in world_json  # no absolute paths: the bytes do not depend on them


def test_popularity_is_heavy_tailed() -> None:
    world = generate_world(WorldConfig(n_users=500, n_items=200, n_interactions=20_000))
    counts = np.sort(np.bincount(world.interactions["item_id"], minlength=201))[::-1]
    assert counts[:20].sum() / counts.sum() > 0.4  # top 10% of the items
    flat = generate_world(
        WorldConfig(n_users=500, n_items=200, n_interactions=20_000, popularity_exponent=0.0)
    )
    flat_counts = np.sort(np.bincount(flat.interactions["item_id"], minlength=201))[::-1]
    assert flat_counts[:20].sum() / flat_counts.sum() < 0.3


def _favourite_share(world, users: np.ndarray, day_mask: np.ndarray) -> float:
    """Share of the interactions of ``users`` on ``day_mask`` days in their original categories."""
    frame = world.interactions
    day = ((frame["timestamp"] - world.config.start) // pd.Timedelta(days=1)).to_numpy()
    rows = np.isin(frame["user_id"].to_numpy() - 1, users) & day_mask[day]
    user = frame["user_id"].to_numpy()[rows] - 1
    category = world.item_category[frame["item_id"].to_numpy()[rows] - 1]
    return float((world.category_weights_before[user, category] > 0).mean())


def test_drift_moves_drifted_users_to_other_categories() -> None:
    cfg = WorldConfig(
        n_users=400, n_items=200, n_days=10, n_interactions=40_000, drift_day=5, drift_share=0.5
    )
    world = generate_world(cfg)
    drifted = np.flatnonzero(world.drifted)
    stable = np.flatnonzero(~world.drifted)
    assert len(drifted) == 200
    before = np.arange(cfg.n_days) < cfg.drift_day
    after = ~before

    drifted_before = _favourite_share(world, drifted, before)
    drifted_after = _favourite_share(world, drifted, after)
    stable_before = _favourite_share(world, stable, before)
    stable_after = _favourite_share(world, stable, after)
    assert drifted_before > 0.45
    assert drifted_after < drifted_before - 0.25
    assert abs(stable_after - stable_before) < 0.05
    np.testing.assert_array_equal(world.taste_before[stable], world.taste_after[stable])
    assert not np.allclose(world.taste_before[drifted], world.taste_after[drifted])


def test_drift_day_only_changes_the_days_from_drift_day_on() -> None:
    base = {"n_users": 200, "n_items": 100, "n_days": 6, "n_interactions": 3_000}
    without = generate_world(WorldConfig(**base))
    with_drift = generate_world(WorldConfig(**base, drift_day=3))
    assert not without.drifted.any()
    np.testing.assert_array_equal(without.taste_before, without.taste_after)
    days_a, days_b = dict(without.batches()), dict(with_drift.batches())
    for day, name in enumerate(without.batch_names):
        same = days_a[name].reset_index(drop=True).equals(days_b[name].reset_index(drop=True))
        assert same == (day < 3), name


def test_new_items_never_appear_before_they_exist() -> None:
    cfg = WorldConfig(n_users=300, n_items=200, n_days=8, n_interactions=20_000, new_item_share=0.4)
    world = generate_world(cfg)
    created = world.items.set_index("item_id")["created_at"]
    new_items = created[created > cfg.start]
    assert len(new_items) == 80
    assert (new_items.dt.floor("D") == new_items).all()  # created at midnight of a later day
    assert (world.item_created_day > 0).sum() == 80
    joined = world.interactions.join(created.rename("created_at"), on="item_id")
    assert (joined["timestamp"] >= joined["created_at"]).all()
    assert joined["item_id"].isin(new_items.index).any()  # new items do get interactions


def test_click_model_probabilities_follow_the_taste() -> None:
    cfg = WorldConfig(n_users=200, n_items=240, n_days=4, n_interactions=1_000, drift_day=2)
    world = generate_world(cfg)
    model = world.click_model()
    users = np.arange(1, cfg.n_users + 1)[:, None]
    items = np.arange(1, cfg.n_items + 1)[None, :]
    for day in (0, 3):
        probability = model.click_probability(users, items, day)
        assert probability.shape == (cfg.n_users, cfg.n_items)
        assert ((probability > 0) & (probability < 1)).all()

    probability = model.click_probability(users, items, 0)
    favourite = world.category_weights_before.argmax(axis=1)
    in_favourite = favourite[:, None] == world.item_category[None, :]
    fav_mean = np.nanmean(np.where(in_favourite, probability, np.nan), axis=1)
    other_mean = np.nanmean(np.where(in_favourite, np.nan, probability), axis=1)
    assert (fav_mean > other_mean).mean() > 0.95
    assert fav_mean.mean() > 2 * other_mean.mean()

    # After the drift, drifted users prefer their new favourite category; others do not change.
    late = model.click_probability(users, items, 3)
    drifted = world.drifted
    np.testing.assert_array_equal(late[~drifted], probability[~drifted])
    new_favourite = world.category_weights_after.argmax(axis=1)
    in_new = new_favourite[:, None] == world.item_category[None, :]
    late_new = np.nanmean(np.where(in_new, late, np.nan), axis=1)[drifted]
    early_new = np.nanmean(np.where(in_new, probability, np.nan), axis=1)[drifted]
    assert (late_new > early_new).mean() > 0.9


def test_click_model_round_trips_from_disk(tmp_path: Path) -> None:
    cfg = WorldConfig(**SMALL)
    lake = Lake(tmp_path)
    write_world(cfg, lake)
    loaded = ClickModel.load(lake.world_dir())
    expected = generate_world(cfg).click_model()
    rng = np.random.default_rng(0)
    users = rng.integers(1, cfg.n_users + 1, size=500)
    items = rng.integers(1, cfg.n_items + 1, size=500)
    for day in (0, cfg.drift_day, cfg.n_days - 1):
        np.testing.assert_array_equal(
            loaded.click_probability(users, items, day),
            expected.click_probability(users, items, day),
        )
    assert loaded.drift_day == cfg.drift_day
    assert loaded.click_probability(np.array([1]), np.array([2.0]), 0).shape == (1,)


@pytest.mark.parametrize(
    ("users", "items", "day", "message"),
    [
        ([0], [1], 0, "unknown user_id"),
        ([301], [1], 0, "unknown user_id"),
        ([1], [151], 0, "unknown item_id"),
        ([1], [-3], 0, "unknown item_id"),
        (["a"], [1], 0, "must be integers"),
        ([1, 2], [1, 2, 3], 0, "do not broadcast"),
        ([1], [1], 1.5, "day must be an integer"),
    ],
)
def test_click_model_rejects_unknown_ids(users, items, day, message) -> None:
    model = generate_world(WorldConfig(**SMALL)).click_model()
    with pytest.raises(RecsysError, match=message):
        model.click_probability(np.array(users), np.array(items), day)


def test_click_model_load_without_world_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="no synthetic world"):
        ClickModel.load(tmp_path)
    (tmp_path / GROUND_TRUTH_FILE).write_bytes(b"not a zip")
    with pytest.raises(RecsysError, match="cannot read"):
        ClickModel.load(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": -5}, "n_items"),
        ({"n_days": 0}, "n_days"),
        ({"n_categories": 0}, "n_categories"),
        ({"dim": 2.5}, "dim"),
        ({"n_interactions": -1}, "n_interactions"),
        ({"seed": -1}, "seed"),
        ({"popularity_exponent": -0.5}, "popularity_exponent"),
        ({"popularity_exponent": float("nan")}, "popularity_exponent"),
        ({"drift_share": 1.5}, "drift_share"),
        ({"new_item_share": -0.1}, "new_item_share"),
        ({"drift_day": 14}, "drift_day"),
        ({"drift_day": -1}, "drift_day"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"n_users": True}, "n_users"),
    ],
)
def test_bad_config_is_a_readable_error(overrides: dict, field: str) -> None:
    with pytest.raises(RecsysError, match=field):
        WorldConfig(**overrides)


def test_config_round_trips_through_a_dict() -> None:
    cfg = WorldConfig(**SMALL)
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(RecsysError, match="unknown WorldConfig keys"):
        WorldConfig.from_dict({"n_user": 5})


def test_medium_world_scales() -> None:
    cfg = WorldConfig(n_users=20_000, n_items=5_000, n_days=10, n_interactions=500_000, drift_day=6)
    started = time.perf_counter()
    world = generate_world(cfg)
    elapsed = time.perf_counter() - started
    frame = world.interactions
    assert len(frame) == 500_000 == int(world.day_counts.sum())
    assert frame["user_id"].between(1, cfg.n_users).all()
    assert frame["item_id"].between(1, cfg.n_items).all()
    assert frame["timestamp"].is_unique and frame["timestamp"].is_monotonic_increasing
    assert frame["user_id"].nunique() > 0.9 * cfg.n_users
    assert world.summary()["n_drifted_users"] == round(cfg.drift_share * cfg.n_users)
    assert len(world.items) == cfg.n_items and len(world.users) == cfg.n_users
    assert elapsed < 10  # about 1 s on a 2-core machine
