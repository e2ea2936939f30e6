"""Lake rules, the MovieLens loader on the real files, and ingestion with quarantine."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from recsys.contract import INTERACTIONS_SCHEMA, conform, validate_interactions
from recsys.errors import RecsysError
from recsys.ingest import ingest_all, ingest_batch, land_dataset
from recsys.lake import Lake, file_sha256
from recsys.movielens import load_movielens, read_catalog, read_udata


def small_batch(n: int = 5, start: str = "2026-01-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": range(1, n + 1),
            "item_id": [1] * n,
            "event_type": ["click"] * n,
            "value": [1.0] * n,
            "timestamp": pd.date_range(start, periods=n, freq="h", tz="UTC"),
        }
    )


# ---- lake -----------------------------------------------------------------------------------


def test_raw_zone_is_immutable(tmp_path):
    lake = Lake(tmp_path).init()
    path = lake.raw_batch_path("2026-01-01")
    table = conform(small_batch(), INTERACTIONS_SCHEMA)
    assert lake.write_raw(path, table) is True
    digest = file_sha256(path)
    assert lake.write_raw(path, table) is False  # same bytes: a no-op
    with pytest.raises(RecsysError, match="immutable"):
        lake.write_raw(path, conform(small_batch(6), INTERACTIONS_SCHEMA))
    assert file_sha256(path) == digest
    assert not list(path.parent.glob("*.tmp"))


def test_reading_an_empty_lake_says_what_to_do(tmp_path):
    with pytest.raises(RecsysError, match="recsys data generate"):
        Lake(tmp_path).read_clean_interactions()


# ---- MovieLens ------------------------------------------------------------------------------


def test_movielens_loader_maps_the_real_files_to_the_contract(ml100k):
    data = load_movielens(ml100k)
    assert len(data.interactions) == 100_000
    assert data.interactions["user_id"].nunique() == 943
    assert len(data.items) == 1682 and len(data.users) == 943
    assert set(data.interactions["event_type"]) == {"rating"}
    assert data.interactions["value"].between(1, 5).all()
    assert str(data.interactions["timestamp"].dt.tz) == "UTC"
    assert data.interactions["timestamp"].min().year == 1997
    result = validate_interactions(data.interactions, known_items=set(data.items["item_id"]))
    assert result.rejected.empty
    toy_story = data.items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert toy_story["category"] == "Animation"
    assert (data.users["gender"].isin(["M", "F"])).all()
    # an item is never created after its first rating
    first = data.interactions.groupby("item_id")["timestamp"].min()
    created = data.items.set_index("item_id")["created_at"]
    assert (created.loc[first.index] <= first).all()


def test_movielens_loader_errors_are_readable(tmp_path):
    with pytest.raises(RecsysError, match="not a folder"):
        load_movielens(tmp_path / "missing")
    with pytest.raises(RecsysError, match=r"u\.data"):
        load_movielens(tmp_path)
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\tthree\t4\n")
    with pytest.raises(RecsysError, match=r"u\.data layout"):
        read_udata(bad)


RATINGS = [
    (1, 10, 4, 881250949),
    (1, 30, 3, 881250950),
    (2, 10, 5, 891717742),
    (7, 20, 1, 878887116),
]
MOVIES = [
    (10, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (20, 'Sabrina, "the" Remake (1995)', "Comedy|Romance"),
    (30, "Unknown Thing", ""),
]


def _write_layouts(root):
    """The same four ratings of three movies in the three GroupLens layouts."""
    from recsys.movielens import GENRES_FALLBACK

    k100 = root / "ml-100k"
    k100.mkdir()
    (k100 / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    flags = [
        "|".join("1" if g in genres.split("|") else "0" for g in GENRES_FALLBACK)
        for _, _, genres in MOVIES
    ]
    (k100 / "u.item").write_text(
        "".join(
            f"{i}|{t}|01-Jan-1995||url|{f}\n" for (i, t, _), f in zip(MOVIES, flags, strict=True)
        )
    )
    users = [(1, 24, "M", "technician"), (2, 53, "F", "other"), (7, 30, "M", "writer")]
    (k100 / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|12345\n" for u, a, g, o in users))
    m1 = root / "ml-1m"
    m1.mkdir()
    (m1 / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    (m1 / "movies.dat").write_text("".join(f"{i}::{t}::{g}\n" for i, t, g in MOVIES))
    (m1 / "users.dat").write_text("1::M::18::17::1\n2::F::50::0::2\n7::M::25::20::3\n")
    latest = root / "ml-latest-small"
    latest.mkdir()
    pd.DataFrame(RATINGS, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(
        latest / "ratings.csv", index=False
    )
    pd.DataFrame(
        [(i, t, g or "(no genres listed)") for i, t, g in MOVIES],
        columns=["movieId", "title", "genres"],
    ).to_csv(latest / "movies.csv", index=False)
    return k100, m1, latest


def test_the_three_grouplens_layouts_load_the_same_ratings_and_movies(tmp_path):
    loaded = [load_movielens(folder) for folder in _write_layouts(tmp_path)]
    assert [d.name for d in loaded] == ["ml-100k", "ml-1m", "ml-latest-small"]
    for data in loaded:
        pd.testing.assert_frame_equal(data.interactions, loaded[0].interactions)
        pd.testing.assert_frame_equal(data.items, loaded[0].items)
        assert validate_interactions(data.interactions).rejected.empty
        assert data.users["user_id"].tolist() == [1, 2, 7]
    assert loaded[0].items["category"].tolist() == ["Animation", "Comedy", "unknown"]
    assert loaded[0].items["title"][1] == 'Sabrina, "the" Remake (1995)'
    one_m = loaded[1].users
    assert one_m["occupation"].tolist() == ["technician/engineer", "other", "writer"]
    assert one_m["age"].tolist() == [18, 50, 25] and one_m["gender"].tolist() == ["M", "F", "M"]
    latest = loaded[2].users  # no user file: the raters, nothing known of them
    assert latest[["age", "gender", "occupation"]].isna().all().all()
    assert latest["created_at"].tolist() == loaded[0].users["created_at"].tolist()


def test_a_catalog_read_alone_is_dated_by_the_rows_given_only(tmp_path):
    """``recsys benchmark quality --items`` dates the catalog by TRAIN: an item without a year
    in its title gets its first TRAIN rating as ``created_at``, whatever TEST holds."""
    folders = _write_layouts(tmp_path)
    full = load_movielens(folders[0])
    ratings = full.interactions
    later = ratings.assign(timestamp=ratings["timestamp"] + pd.Timedelta(days=30))
    first_rating = full.items.set_index("item_id")["created_at"][30]  # "Unknown Thing": no year
    for folder, name in zip(folders, ("u.item", "movies.dat", "movies.csv"), strict=True):
        pd.testing.assert_frame_equal(read_catalog(folder / name, ratings), full.items)
        moved = read_catalog(folder / name, later).set_index("item_id")["created_at"]
        assert moved[30] == first_rating + pd.Timedelta(days=30)
        assert moved[10] == pd.Timestamp("1995-01-01", tz="UTC")  # its title's year comes first
    with pytest.raises(RecsysError, match="not a GroupLens movie file"):
        read_catalog(folders[0] / "u.data", ratings)
    with pytest.raises(RecsysError, match="no such file"):
        read_catalog(folders[0] / "movies.dat", ratings)


def test_an_unknown_or_broken_layout_is_a_readable_error(tmp_path):
    with pytest.raises(RecsysError, match=r"u\.data \(ml-100k\), ratings\.dat .* ratings\.csv"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").write_text("user,movie\n1,2\n")
    with pytest.raises(RecsysError, match=r"ratings\.csv layout \(userId,movieId"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").unlink()
    (tmp_path / "ratings.dat").write_text("1::2::4::881250949\n")
    with pytest.raises(RecsysError, match=r"movies\.dat not found"):
        load_movielens(tmp_path)


def test_the_semi_synthetic_world_numbers_sparse_ids_densely(tmp_path):
    from recsys.semisynthetic import _dense_ids

    _, _, latest = _write_layouts(tmp_path)
    data = _dense_ids(load_movielens(latest))
    assert data.items["item_id"].tolist() == [1, 2, 3]
    assert data.users["user_id"].tolist() == [1, 2, 3]
    titles = data.items.set_index("item_id")["title"]
    rated = [
        (u, titles[i])
        for u, i in zip(data.interactions["user_id"], data.interactions["item_id"], strict=True)
    ]
    assert rated == [
        (1, "Toy Story (1995)"),
        (1, "Unknown Thing"),
        (2, "Toy Story (1995)"),
        (3, 'Sabrina, "the" Remake (1995)'),
    ]
    dense = load_movielens(tmp_path / "ml-100k")
    dense.users = dense.users.assign(user_id=[1, 2, 3])
    dense.items = dense.items.assign(item_id=[1, 2, 3])
    dense.interactions = data.interactions
    assert _dense_ids(dense) is dense  # already 1..n: untouched
    dense.interactions = dense.interactions.assign(item_id=[1, 3, 1, 9])
    with pytest.raises(RecsysError, match=r"1 rating.* item_id that its movie file does not list"):
        _dense_ids(dense)


# ---- ingest ---------------------------------------------------------------------------------


def test_movielens_lands_as_daily_batches_and_ingests_without_loss(ml100k, tmp_path):
    lake = Lake(tmp_path).init()
    batches = land_dataset(lake, load_movielens(ml100k))
    assert len(batches) > 200 and batches == sorted(batches)
    reports = ingest_all(lake)
    assert sum(r.raw_rows for r in reports) == 100_000
    assert sum(r.clean_rows for r in reports) == 100_000
    before = {b: file_sha256(lake.clean_batch_path(b)) for b in lake.clean_batches()}
    ingest_all(lake)  # idempotent
    assert before == {b: file_sha256(lake.clean_batch_path(b)) for b in lake.clean_batches()}


def test_a_corrupted_batch_is_quarantined_row_by_row(tmp_path):
    lake = Lake(tmp_path).init()
    frame = small_batch(10).astype({"user_id": "object", "value": "object"})
    frame.loc[2, "user_id"] = None
    frame.loc[4, "value"] = -3.0
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    lake.write_raw(lake.raw_batch_path("2026-01-01"), pa.Table.from_pandas(frame))
    report = ingest_batch(lake, "2026-01-01", known_items={1})
    assert report.raw_rows == 11
    assert report.clean_rows == 8 and report.quarantined_rows == 3
    assert report.reasons == {"duplicate": 1, "null:user_id": 1, "range:value": 1}
    rows = pd.read_parquet(lake.quarantine_dir("2026-01-01") / "rows.parquet")
    assert len(rows) == 3 and "reason" in rows.columns
    saved = json.loads((lake.quarantine_dir("2026-01-01") / "report.json").read_text())
    assert saved["quarantined_rows"] == 3 and saved["raw_rows"] == 11
    assert len(lake.read_clean_interactions()) == 8


def test_recsys_data_movielens_lands_every_layout(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    recsys = str(Path(sys.executable).with_name("recsys"))
    for folder in _write_layouts(tmp_path):
        data_dir = tmp_path / f"data-{folder.name}"
        proc = subprocess.run(
            [recsys, "data", "movielens", "--data-path", str(folder)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RECSYS_DATA_DIR": str(data_dir), "COLUMNS": "200"},
        )
        assert proc.returncode == 0, proc.stderr
        assert "landed 4 ratings, 3 items, 3 users" in proc.stdout
        clean = Lake(data_dir).read_clean_interactions(Lake(data_dir).clean_batches())
        assert sorted(clean["item_id"]) == [10, 10, 20, 30]
