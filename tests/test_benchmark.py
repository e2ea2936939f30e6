"""`recsys benchmark` commands as a user runs them, on the real MovieLens-100K files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import RecsysError

RECSYS = str(Path(sys.executable).with_name("recsys"))


def run(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RECSYS, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir)},
    )


def one_error_line(argv: list[str], capsys) -> str:
    """Run the CLI in-process (no interpreter start per case); it must exit 2 with exactly one
    ``recsys: error:`` line on stderr, which is returned."""
    from recsys.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("recsys: error:")]
    assert len(errors) == 1, (argv, err)
    return errors[0]


@pytest.fixture(scope="module")
def split(ml100k, tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    proc = run(
        "benchmark",
        "split",
        "--data",
        str(ml100k / "u.data"),
        "--out-dir",
        str(out),
        "--by",
        "item",
        "--seed",
        "42",
        data_dir=out,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "ts"])


def test_a_split_by_time_trains_on_the_past_only(ml100k, tmp_path):
    args = ["benchmark", "split", "--data", str(ml100k / "u.data"), "--out-dir", str(tmp_path)]
    proc = run(*args, "--by", "time", "--train-share", "0.8", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train, test = read(tmp_path / "train.tsv"), read(tmp_path / "test.tsv")
    assert len(train) + len(test) == 100_000
    assert train["ts"].max() < test["ts"].min()
    assert abs(len(train) / 100_000 - 0.8) < 0.01
    proc = run(*args, "--by", "day", data_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "recsys: error: --by must be item, user, time or user-time, not 'day'"
    )

    # TEST follows TRAIN: the ranker learns from TRAIN's last days, as `recsys train` does
    files = ["--train", str(tmp_path / "train.tsv"), "--test", str(tmp_path / "test.tsv")]
    proc = run("benchmark", "quality", *files, "--json", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ranker_labels"] == "time"
    scored = report["metrics"]["pipeline"]["users"]
    assert (
        scored + report["test_users_unknown_to_train"]
        == report["test_users"]
        == test["user"].nunique()
    )


def test_a_split_of_each_users_latest_rows_and_the_labels_that_mimic_each_split(ml100k, tmp_path):
    from recsys.benchmark import label_protocol, random_split, read_interactions_file
    from recsys.errors import RecsysError

    args = ["benchmark", "split", "--data", str(ml100k / "u.data"), "--out-dir", str(tmp_path)]
    proc = run(*args, "--by", "user-time", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train, test = read(tmp_path / "train.tsv"), read(tmp_path / "test.tsv")
    assert len(train) + len(test) == 100_000
    assert (test.groupby("user")["ts"].min() >= train.groupby("user")["ts"].max()).all()
    sizes = pd.concat([train, test]).groupby("user").size()
    assert (test.groupby("user").size() == (sizes * 0.25).round().astype(int)).all()

    frame = read_interactions_file(ml100k / "u.data")
    by_user = (
        read_interactions_file(tmp_path / "train.tsv"),
        read_interactions_file(tmp_path / "test.tsv"),
    )
    cut = frame["timestamp"].quantile(0.75)
    by_time = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]
    by_item = random_split(frame, "item_id", 0.75, seed=1)
    assert label_protocol(*by_time, "auto") == "time"
    assert label_protocol(*by_user, "auto") == "user-time"
    assert label_protocol(*by_item, "auto") == "random"
    assert label_protocol(*by_item, "time") == "time"  # asked for: not second-guessed
    with pytest.raises(RecsysError, match="--labels must be one of auto, random, time, user-time"):
        label_protocol(*by_item, "later")


def test_split_keeps_every_row_and_three_quarters_of_each_item(split):
    train, test = read(split / "train.tsv"), read(split / "test.tsv")
    assert len(train) + len(test) == 100_000
    assert len(pd.concat([train, test]).drop_duplicates()) == 100_000
    share = train.groupby("item").size() / pd.concat([train, test]).groupby("item").size()
    big = share[pd.concat([train, test]).groupby("item").size() >= 20]
    assert big.between(0.70, 0.80).all()


def test_quality_benchmark_writes_unseen_top_k_for_every_test_user(split, tmp_path):
    recs_out = tmp_path / "recs.tsv"
    proc = run(
        "benchmark",
        "quality",
        "--train",
        str(split / "train.tsv"),
        "--test",
        str(split / "test.tsv"),
        "--k",
        "10",
        "--recs-out",
        str(recs_out),
        "--json",
        data_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    metrics = report["metrics"]
    assert set(metrics) >= {"pipeline", "als", "itemknn", "popularity", "trending"}
    assert metrics["pipeline"]["ndcg"] > metrics["popularity"]["ndcg"]
    assert 0 < metrics["pipeline"]["ndcg"] <= 1
    assert report["ranker_labels"] == "random"  # a random split: no time order to learn from
    als = metrics["als"]["ndcg"]
    lift = (metrics["pipeline"]["ndcg"] - als) / als
    assert report["lift_over_als"] == pytest.approx(lift, abs=5.1e-5)  # rounded to 4 decimals
    singles = {name: m["ndcg"] for name, m in metrics.items() if name != "pipeline"}
    assert report["best_single_source"] == max(singles, key=singles.get)
    simpler_wins = max(singles.values()) >= metrics["pipeline"]["ndcg"]
    assert bool(report["notes"]) == simpler_wins
    assert all(note in " ".join(proc.stderr.split()) for note in report["notes"])
    recs = pd.read_csv(recs_out, sep="\t", header=None, names=["user", "rank", "item"])
    test, train = read(split / "test.tsv"), read(split / "train.tsv")
    assert set(recs["user"]) == set(test["user"])
    assert (
        recs.groupby("user")["rank"].apply(list)
        == pd.Series(
            [list(range(1, 11))] * recs["user"].nunique(), index=sorted(recs["user"].unique())
        )
    ).all()
    seen = set(zip(train["user"], train["item"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user"], recs["item"], strict=True))


def test_train_benchmark_reports_time_and_memory_per_phase(tmp_path):
    proc = run(
        "benchmark",
        "train",
        "--users",
        "300",
        "--items",
        "100",
        "--interactions",
        "6000",
        "--days",
        "5",
        "--json",
        data_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for phase in ("als_fit", "itemknn_fit", "lowpass_fit", "ranker_fit"):
        assert report[phase]["seconds"] >= 0 and report[phase]["peak_rss_mb"] > 0
    assert report["interactions"] == 6000


def test_a_malformed_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\tx\n")
    proc = run("benchmark", "quality", "--train", str(bad), "--test", str(bad), data_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("recsys: error:")


def test_ratings_read_the_same_from_udata_csv_and_parquet(tmp_path):
    from recsys.benchmark import read_interactions_file

    ratings = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "item_id": [10, 11, 10, 12],
            "rating": [4, 3, 5, 1],
            "timestamp": [881250949, 881250950, 891717742, 878887116],
        }
    )
    ratings.to_csv(tmp_path / "u.data", sep="\t", header=False, index=False)
    ratings.assign(title="extra column").to_csv(tmp_path / "ratings.csv", index=False)
    ratings.to_parquet(tmp_path / "ratings.parquet")
    as_datetimes = ratings.assign(timestamp=pd.to_datetime(ratings["timestamp"], unit="s"))
    as_datetimes.to_parquet(tmp_path / "datetimes.parquet")
    (tmp_path / "ratings.dat").write_text(  # ml-1m
        "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings.itertuples(index=False))
    )
    ratings.set_axis(["userId", "movieId", "rating", "timestamp"], axis=1).to_csv(
        tmp_path / "latest.csv", index=False
    )
    # event exports in milliseconds or microseconds (read as seconds, an internal error)
    ratings.assign(timestamp=ratings["timestamp"] * 1000).to_csv(tmp_path / "ms.csv", index=False)
    ratings.assign(timestamp=ratings["timestamp"] * 10**6).to_parquet(tmp_path / "us.parquet")
    frames = [
        read_interactions_file(tmp_path / name).reset_index(drop=True)
        for name in (
            *("u.data", "ratings.csv", "ratings.parquet", "datetimes.parquet"),
            *("ratings.dat", "latest.csv", "ms.csv", "us.parquet"),
        )
    ]
    assert list(frames[0]["value"]) == [4.0, 3.0, 5.0, 1.0]
    assert set(frames[0]["event_type"]) == {"rating"}
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0], check_dtype=False)
    ratings.assign(timestamp=1e25).to_parquet(tmp_path / "far.parquet")  # no unit fits
    with pytest.raises(RecsysError, match="are not epoch seconds, milliseconds"):
        read_interactions_file(tmp_path / "far.parquet")


def test_events_without_a_value_are_one_click_each(tmp_path):
    from recsys.benchmark import read_interactions_file

    pd.DataFrame(
        {"user_id": [1, 2], "item_id": [5, 5], "timestamp": [881250949, 881250950]}
    ).to_parquet(tmp_path / "clicks.parquet")
    frame = read_interactions_file(tmp_path / "clicks.parquet")
    assert list(frame["event_type"]) == ["click", "click"]
    assert list(frame["value"]) == [1.0, 1.0]


def test_the_verdict_names_a_simpler_model_that_wins():
    from recsys.train import verdict

    def metrics(**ndcg):
        return {name: {"ndcg": value} for name, value in ndcg.items()}

    scores = dict(ease=0.40, als=0.41, itemknn=0.30, lowpass=0.35, popularity=0.20, trending=0.10)
    assert verdict(metrics(pipeline=0.45, **scores), 10, ranker=object()) == []
    notes = verdict(metrics(pipeline=0.45, **{**scores, "popularity": 0.46}), 10, object())
    assert len(notes) == 1 and "popularity alone beats" in notes[0] and "0.4600" in notes[0]
    assert "no ranker" in verdict(metrics(**scores), 10, ranker=None)[0]
    # a tie is said as a tie, and still loudly: the ranker adds nothing there
    (tie,) = verdict(metrics(pipeline=0.41, **scores), 10, object())
    assert tie.startswith("WARNING: als alone ties with the full pipeline") and "0.4100" in tie


def test_the_lift_over_als_is_undefined_when_als_scores_nothing():
    from recsys.train import lift_over, lift_text

    metrics = {"pipeline": {"ndcg": 0.12}, "als": {"ndcg": 0.10}}
    assert lift_over(metrics) == pytest.approx(0.2)
    assert lift_text(metrics, 10) == "pipeline vs ALS alone: +20.0% nDCG@10"
    zero = {"pipeline": {"ndcg": 0.05}, "als": {"ndcg": 0.0}}
    assert lift_over(zero) is None  # JSON has no infinity: --json writes null
    assert "ALS scores nDCG@10 0, the pipeline 0.0500" in lift_text(zero, 10)


def test_half_stars_survive_a_split(tmp_path):
    from recsys.benchmark import read_interactions_file, write_split

    ratings = pd.DataFrame(
        {"userId": [1, 2], "movieId": [3, 3], "rating": [3.5, 4.0], "timestamp": [1, 2]}
    )
    ratings.assign(timestamp=[881250949, 881250950]).to_csv(tmp_path / "r.csv", index=False)
    write_split(read_interactions_file(tmp_path / "r.csv"), tmp_path / "train.tsv")
    assert list(read_interactions_file(tmp_path / "train.tsv")["value"]) == [3.5, 4.0]


def test_events_other_than_ratings_survive_a_split(tmp_path):
    """Clicks are not written as one-star ratings; a whole file of them neither."""
    from recsys.benchmark import read_interactions_file, write_split

    events = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "item_id": [3, 4, 3],
            "event_type": ["click", "purchase", "rating"],
            "value": [1.0, 2.0, 4.5],
            "timestamp": [881250949.25, 881250950, 881250951],
        }
    )
    events.to_csv(tmp_path / "events.csv", index=False)
    clicks = events[["user_id", "item_id", "timestamp"]]
    clicks.to_csv(tmp_path / "clicks.csv", index=False)
    for name in ("events", "clicks"):
        before = read_interactions_file(tmp_path / f"{name}.csv")
        write_split(before, tmp_path / f"{name}.tsv")
        after = read_interactions_file(tmp_path / f"{name}.tsv")
        pd.testing.assert_frame_equal(after, before)
    assert set(after["event_type"]) == {"click"}


def test_a_catalog_table_fills_what_it_lacks_from_train_only(tmp_path):
    from recsys.benchmark import read_interactions_file, read_items_file

    pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": [10, 10, 11],
            "timestamp": [881250949, 882250949, 883250949],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    train = read_interactions_file(tmp_path / "train.csv")
    pd.DataFrame({"item_id": [10, 11, 12], "genres": ["Drama|Comedy", None, "Action"]}).to_parquet(
        tmp_path / "items.parquet"
    )
    catalog = read_items_file(tmp_path / "items.parquet", None, train).set_index("item_id")
    assert list(catalog["category"]) == ["Drama", "unknown", "Action"]
    assert list(catalog["genres"]) == ["Drama|Comedy", "unknown", "Action"]
    assert catalog.loc[12, "title"] == "item 12"
    created = catalog["created_at"].map(pd.Timestamp.timestamp)
    # each item's first TRAIN row; an item TRAIN never saw: TRAIN's first row
    assert list(created) == [881250949, 883250949, 881250949]

    pd.DataFrame(
        {"item_id": [10, 11], "category": ["a", "b"], "created_at": ["1999-01-02", ""]}
    ).to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    catalog = read_items_file(tmp_path / "items.tsv", None, train)
    assert list(catalog["created_at"].dt.strftime("%Y-%m-%d")) == ["1999-01-02", "1997-12-27"]
    assert list(catalog["genres"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"item_id": [1], "title": ["x"]}, "needs the column(s) category or genres"),
        ({"item_id": [1, 1], "category": ["a", "b"]}, "listed more than once, e.g. 1"),
        ({"item_id": ["b7"], "category": ["a"]}, "not non-negative integers, e.g. 'b7'"),
        ({"item_id": [1], "category": ["a"], "created_at": ["2020-13-01"]}, "are not dates"),
    ],
)
def test_a_malformed_catalog_is_a_one_line_error(tmp_path, data_dir, capsys, table, message):
    pd.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [1, 1],
            "rating": [4, 5],
            "timestamp": [881250949, 881250950],
        }
    ).to_csv(tmp_path / "ratings.csv", index=False)
    pd.DataFrame(table).to_parquet(tmp_path / "items.parquet")
    ratings, items = str(tmp_path / "ratings.csv"), str(tmp_path / "items.parquet")
    argv = ["benchmark", "quality", "--train", ratings, "--test", ratings, "--items", items]
    error = one_error_line(argv, capsys)
    assert error.startswith(f"recsys: error: {tmp_path / 'items.parquet'}: "), error
    assert message in error, error


def test_string_ids_are_a_one_line_error_that_says_so(tmp_path, data_dir, capsys):
    pd.DataFrame(
        {"user_id": ["ann", "bob"], "item_id": ["B0001", "B0002"], "timestamp": [881250949] * 2}
    ).to_csv(tmp_path / "events.csv", index=False)
    events = str(tmp_path / "events.csv")
    error = one_error_line(["benchmark", "quality", "--train", events, "--test", events], capsys)
    assert "2 user_id is not a non-negative integer (type:user_id)" in error
    assert "duplicate" not in error


def test_splits_and_runs_that_cannot_score_anything_are_one_line_errors(tmp_path, data_dir, capsys):
    ratings = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3, 3],
            "item_id": [10, 11, 10, 12, 11, 12],
            "rating": [4, 3, 5, 1, 2, 4],
            "timestamp": [881250949 + i for i in range(6)],
        }
    )
    data = tmp_path / "ratings.csv"
    ratings.to_csv(data, index=False)
    empty = tmp_path / "empty.csv"
    ratings.head(0).to_csv(empty, index=False)
    others = tmp_path / "others.csv"
    ratings.assign(user_id=ratings["user_id"] + 100).to_csv(others, index=False)
    one_each = tmp_path / "one-each.csv"
    ratings.assign(item_id=range(6)).to_csv(one_each, index=False)
    new_items = tmp_path / "new-items.csv"
    ratings.assign(item_id=ratings["item_id"] + 100).to_csv(new_items, index=False)
    split = ["benchmark", "split", "--data", str(data), "--out-dir", str(tmp_path / "out")]
    quality = ["benchmark", "quality", "--train", str(data), "--test"]
    cases = [
        ([*split, "--train-share", "0.99"], "leaves test empty (6 rows): nothing written"),
        ([*split, "--seed", "-1"], "'--seed'"),
        # "lower --train-share" at 0.75 and "raise --train-share" at 0.01: no share can work
        ([*split[:2], "--data", str(one_each), *split[4:]], "has one row: a split by item"),
        ([*split[:2], "--data", str(empty), *split[4:]], "nothing to split:"),
        ([*quality, str(empty)], "empty.csv has no rows: nothing to score"),
        ([*quality, str(others)], "none of the 3 users of"),
        # exit 0 with every metric 0.0000 (and a WARNING of a tie)
        ([*quality, str(new_items)], "none of the items of"),
        ([*quality, str(data)], "to score: every row of a"),
    ]
    for argv, message in cases:
        error = one_error_line(argv, capsys)
        assert message in error, (argv, error)
    assert not (tmp_path / "out").exists()
