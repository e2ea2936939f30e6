"""Ingestion as a user meets it: `recsys ingest PATH` through the Prefect ingest flow, exit
codes 0/3/4/2, nothing lost; redeliveries and idempotent re-ingest; the row-count check."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pyarrow as pa
import pytest

from recsys.cli import main
from recsys.contract import INTERACTIONS_SCHEMA, conform
from recsys.ingest import ingest_all, ingest_batch, known_items, reingest_window, row_count_check
from recsys.synthetic import WorldConfig, generate_world, write_world


@pytest.fixture
def small_world(settings):
    cfg = WorldConfig(n_users=120, n_items=60, n_days=6, n_interactions=3000, seed=3)
    write_world(cfg, settings.lake.init())
    ingest_all(settings.lake)
    return settings, generate_world(cfg)


def _shifted_day(lake, days: int = 1) -> tuple[str, pd.DataFrame]:
    """The lake's last clean day's rows moved ``days`` days on, and the name of that day."""
    last = lake.clean_batches()[-1]
    rows = lake.read_clean_interactions([last])
    rows = rows.assign(timestamp=rows["timestamp"] + pd.Timedelta(days=days))
    return (pd.Timestamp(last) + pd.Timedelta(days=days)).strftime("%Y-%m-%d"), rows


def _run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_recsys_ingest_exit_codes_and_nothing_lost(small_world, tmp_path, capsys):
    settings, world = small_world
    frame = next(iter(world.batches()))[1].copy()
    frame["timestamp"] = frame["timestamp"] + pd.Timedelta(days=30)

    good = tmp_path / "2026-02-10.csv"
    frame.to_csv(good, index=False)
    code, out, _ = _run(["ingest", str(good), "--json"], capsys)
    assert code == 0
    payload = json.loads(out)
    assert payload["accepted"] == len(frame) and payload["quarantined"] == 0
    assert payload["already_delivered"] is False
    # the same file again: exit 0 and the same table, and no word that nothing landed
    code, out, _ = _run(["ingest", str(good)], capsys)
    assert code == 0 and "the same rows as the newest delivery of batch 2026-02-10" in out
    assert settings.lake.deliveries("2026-02-10") == ["2026-02-10"]

    bad = frame.copy()
    bad.loc[bad.index[:3], "user_id"] = None
    bad = pd.concat([bad, bad.iloc[5:7]], ignore_index=True)
    bad.loc[bad.index[10], "value"] = -4
    path = tmp_path / "2026-02-11.csv"
    bad.to_csv(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 3
    payload = json.loads(out)
    assert payload["reasons"]["null:user_id"] == 3
    assert payload["reasons"]["duplicate"] == 2
    assert payload["accepted"] + payload["quarantined"] == payload["raw_rows"] == len(bad)
    kept = pd.read_parquet(settings.lake.quarantine_dir("2026-02-11") / "rows.parquet")
    assert len(kept) == payload["quarantined"] and kept["reason"].notna().all()
    # the terminal says why, in words, and where the rows are kept
    code, out, _ = _run(["ingest", str(path), "--batch", "2026-02-15"], capsys)
    assert code == 3
    assert "user_id is empty" in out and "repeats an earlier row exactly" in out
    assert str(settings.lake.quarantine_dir("2026-02-15")) in out.replace("\n", "")
    # and so does re-running the contract over the whole raw zone, summed over batches
    code, out, _ = _run(["data", "ingest"], capsys)
    assert code == 3
    assert "user_id is empty" in out
    assert f"quarantined {payload['quarantined']} row(s) of 2026-02-11" in out

    # a header-only delivery: nothing to quarantine, but a scheduler must see it
    empty = tmp_path / "2026-02-13.csv"
    frame.head(0).to_csv(empty, index=False)
    code, out, _ = _run(["ingest", str(empty), "--json"], capsys)
    assert code == 4
    payload = json.loads(out)
    assert payload["raw_rows"] == 0 and payload["row_count"]["anomalous"]
    code, out, _ = _run(["ingest", str(empty), "--batch", "2026-02-14"], capsys)
    assert code == 4 and "row-count anomaly" in out and "0 clean rows" in out
    nothing = tmp_path / "2026-02-16.csv"  # 0 bytes, a producer's "no events today":
    nothing.write_bytes(b"")  # was unreadable, exit 2, the day not landed
    code, out, _ = _run(["ingest", str(nothing), "--json"], capsys)
    assert code == 4 and json.loads(out)["raw_rows"] == 0
    assert settings.lake.deliveries("2026-02-16") == ["2026-02-16"]

    garbage = tmp_path / "2026-02-12.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    code, _, err = _run(["ingest", str(garbage)], capsys)
    assert code == 2
    # one line: not Prefect's two ERROR lines about the failed run before it
    assert err.strip().splitlines() == [err.strip()], err
    assert err.strip().startswith("recsys: error: cannot read 2026-02-12.parquet")
    kept_dir = settings.lake.quarantine_dir("2026-02-12")
    assert (kept_dir / "unreadable-1.parquet").read_bytes() == garbage.read_bytes()
    report = json.loads((kept_dir / "unreadable-1.json").read_text())
    assert report["reasons"] == {"unreadable": 1}
    assert str(kept_dir / "unreadable-1.parquet") in err.replace("\n", "")


def test_renamed_column_quarantines_the_batch_and_a_redelivery_heals_it(small_world):
    settings, world = small_world
    lake = settings.lake
    name, frame = list(world.batches())[2]
    assert lake.deliveries(name) == [name]
    clean_before = len(lake.read_clean_interactions([name]))

    # the landed day was fine; a second, corrupt delivery of it arrives
    broken = frame.rename(columns={"value": "rating_value"})
    delivery = lake.land_redelivery(name, pa.Table.from_pandas(broken, preserve_index=False))
    assert delivery == f"{name}@r1"
    report = ingest_batch(lake, name, known_items=known_items(lake))
    assert report.clean_rows == 0 and report.quarantined_rows == len(frame)
    assert "schema:unknown_column:rating_value" in report.reasons
    # the source re-sends the day: re-ingest is idempotent and the corrupt delivery stays kept
    fixed = lake.land_redelivery(name, conform(frame, INTERACTIONS_SCHEMA))
    assert fixed == f"{name}@r2"
    for _ in range(2):
        (again,) = reingest_window(lake, [name])
        assert again.clean_rows == clean_before and again.quarantined_rows == 0
    assert (lake.quarantine_dir(f"{name}@r1") / "rows.parquet").is_file()
    assert lake.read_raw_delivery(f"{name}@r1").shape[0] == len(frame)


def test_row_count_check_flags_a_short_batch(small_world):
    settings, _world = small_world
    lake = settings.lake
    last = lake.clean_batches()[-1]
    assert not row_count_check(lake, last).anomalous
    frame = lake.read_clean_interactions([last])
    lake.write_clean_batch(last, frame.head(len(frame) // 10))
    check = row_count_check(lake, last)
    assert check.anomalous and check.ratio < 0.5


def test_days_refused_whole_are_no_baseline_for_the_next_healthy_day(small_world, tmp_path, capsys):
    settings, world = small_world
    lake = settings.lake
    batches = list(world.batches())
    # four days in a row arrive with a renamed column: every row quarantined, 0 clean rows
    for name, frame in batches[2:]:
        lake.land_redelivery(
            name,
            pa.Table.from_pandas(frame.rename(columns={"user_id": "uid"}), preserve_index=False),
        )
        assert ingest_batch(lake, name, known_items=known_items(lake)).clean_rows == 0
        assert row_count_check(lake, name).anomalous
    last_name, last = batches[-1]
    for shift in (1, 2):
        day = (pd.Timestamp(last_name) + pd.Timedelta(days=shift)).strftime("%Y-%m-%d")
        path = tmp_path / f"{day}.csv"
        last.assign(timestamp=last["timestamp"] + pd.Timedelta(days=shift)).to_csv(
            path, index=False
        )
        code, out, _ = _run(["ingest", str(path), "--json"], capsys)
        # a healthy day after the refused ones is not a row-count anomaly (a median over the
        # refused days' zeros would call any day one)
        assert code == 0, out
        check = json.loads(out)["row_count"]
        assert not check["anomalous"]
    # the baseline is the days with clean rows: the first two and the first healthy new one
    counts = sorted(len(lake.read_clean_interactions([n])) for n, _ in batches[:2])
    assert check["baseline_rows"] == float(sorted([*counts, len(last)])[1])


def test_an_empty_batch_is_flagged_without_any_history(small_world):
    settings, _world = small_world
    lake = settings.lake
    first = lake.clean_batches()[0]
    assert not row_count_check(lake, first).anomalous  # no earlier batch to compare with
    lake.write_clean_batch(first, lake.read_clean_interactions([first]).head(0))
    check = row_count_check(lake, first)
    assert check.anomalous and check.clean_rows == 0 and check.rule == "no clean rows in the batch"


def test_a_batch_is_a_delivery_day_and_a_bad_path_keeps_nothing(small_world, tmp_path, capsys):
    # a batch named after any file used to land, then broke `recsys features` (batches are
    # days: raw/interactions/<YYYY-MM-DD>.parquet)
    settings, world = small_world
    lake = settings.lake
    raw_before = lake.raw_batches()
    frame = next(iter(world.batches()))[1].copy()
    plain = tmp_path / "plain.csv"
    frame.to_csv(plain, index=False)
    for argv, needle in [
        (["ingest", str(plain)], "'plain' is not a delivery day"),
        (["ingest", str(plain), "--batch", ""], "'' is not a delivery day"),
        (["ingest", str(plain), "--batch", "2026-02-30"], "--batch YYYY-MM-DD"),
        (["ingest", str(tmp_path)], "is a folder"),
        (["ingest", str(tmp_path / "2026-03-01.csv")], "no such file"),
    ]:
        code, _, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and lines[-1].startswith("recsys: error: ") and needle in lines[-1], err
    # nothing landed, and no quarantine entry claims to keep a file that was never read
    assert lake.raw_batches() == raw_before
    assert not [p.name for p in lake.zone("quarantine").iterdir() if not p.name[:4].isdigit()]
    assert not lake.quarantine_dir("2026-03-01").exists()

    # a second delivery of a day says that its rows replace the day's
    day = raw_before[-1]
    shorter = frame.head(20).assign(timestamp=pd.Timestamp(f"{day}T12:00:00Z"))
    again = tmp_path / f"{day}.csv"
    shorter.to_csv(again, index=False)
    code, out, _ = _run(["ingest", str(again)], capsys)
    assert code == 4 and "redelivery" in out and f"{day}@r1" in out.replace("\n", "")
    assert len(lake.read_clean_interactions([day])) == 20


def test_a_semicolon_separated_file_reads_as_one_unknown_column(small_world, tmp_path, capsys):
    _, world = small_world
    frame = next(iter(world.batches()))[1].copy()
    path = tmp_path / "2026-02-20.csv"
    frame.to_csv(path, index=False, sep=";")
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 3
    reasons = json.loads(out)["reasons"]
    # the header is one column whose name holds ';', the separator of a row's reason codes
    unknown = [r for r in reasons if r.startswith("schema:unknown_column:")]
    assert len(unknown) == 1 and reasons[unknown[0]] == len(frame)
    assert set(reasons) == {unknown[0], *(f"schema:missing_column:{c}" for c in frame.columns)}
    code, out, _ = _run(["data", "ingest"], capsys)
    assert code == 3 and "a ;-separated file?" in out


def test_the_same_events_delivered_again_as_another_day_are_not_counted_twice(
    small_world, tmp_path, capsys
):
    settings, _ = small_world
    lake = settings.lake
    day = lake.clean_batches()[2]
    accepted = lake.read_clean_interactions([day])
    total = len(lake.read_clean_interactions())
    # the producer re-sends that day's file under the next day's name, with two new events
    fresh = accepted.head(2).assign(timestamp=accepted["timestamp"].max() + pd.Timedelta("1h"))
    resent = pd.concat([accepted, fresh], ignore_index=True)
    path = tmp_path / "2030-01-01.csv"
    resent.to_csv(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--batch", "2026-02-01", "--json"], capsys)
    assert code == 3
    payload = json.loads(out)
    assert payload["reasons"] == {f"duplicate:{day}": len(accepted)}
    assert payload["accepted"] == 2 and payload["quarantined"] == len(accepted)
    assert len(lake.read_clean_interactions()) == total + 2  # not total + len(resent)
    kept = pd.read_parquet(lake.quarantine_dir("2026-02-01") / "rows.parquet")
    assert len(kept) == len(accepted) and set(kept["reason"]) == {f"duplicate:{day}"}
    # the first delivery keeps its rows on a re-ingest of everything, in any order
    ingest_all(lake)
    reingest_window(lake, ["2026-02-01", day])
    assert len(lake.read_clean_interactions([day])) == len(accepted)
    assert len(lake.read_clean_interactions()) == total + 2
    code, out, _ = _run(["data", "ingest"], capsys)
    assert code == 3 and f"repeats a row already accepted in batch {day}" in out


def test_ids_beyond_a_float_are_ingested_exact_and_beyond_int64_are_quarantined(
    small_world, tmp_path, capsys
):
    settings, world = small_world
    frame = next(iter(world.batches()))[1].copy()
    frame["timestamp"] = frame["timestamp"] + pd.Timedelta(days=30)
    frame["user_id"] = frame["user_id"].astype(object)
    frame.loc[:2, "user_id"] = ["9007199254740993", "9223372036854775807", "9223372036854775808"]
    path = tmp_path / "2026-02-10.csv"
    frame.to_csv(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 3
    assert json.loads(out)["reasons"] == {"type:user_id": 1}
    clean = settings.lake.read_clean_interactions(["2026-02-10"])
    assert len(clean) == len(frame) - 1
    assert {9007199254740993, 9223372036854775807} <= set(clean["user_id"])
    assert 9007199254740992 not in set(clean["user_id"])  # not rounded through a float
    kept = pd.read_parquet(settings.lake.quarantine_dir("2026-02-10") / "rows.parquet")
    assert kept["user_id"].astype(str).tolist() == ["9223372036854775808"]


def test_a_parquet_batch_with_a_year_3000_timestamp_quarantines_that_row(
    small_world, tmp_path, capsys
):
    # it crashed ingest (OutOfBoundsDatetime), and the landed file blocked every later ingest
    settings, _ = small_world
    lake = settings.lake
    day, frame = _shifted_day(lake)
    frame.loc[3, "timestamp"] = pd.Timestamp("3000-01-01", tz="UTC")
    path = tmp_path / f"{day}.parquet"
    frame.to_parquet(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 3
    payload = json.loads(out)
    assert payload["reasons"] == {"range:timestamp": 1}
    assert payload["accepted"] == len(frame) - 1
    kept = pd.read_parquet(lake.quarantine_dir(day) / "rows.parquet")
    assert kept["timestamp"].astype(str).str.startswith("3000-01-01").tolist() == [True]
    code, out, _ = _run(["data", "ingest"], capsys)
    assert code == 3 and "timestamp before 1990-01-01 or in the future" in out
    assert len(lake.read_clean_interactions([day])) == len(frame) - 1


def _quarantined_files(folder) -> dict[bytes, dict]:
    """The delivered files kept whole in a quarantine folder, by their bytes, with the report
    that names each (its ``source``)."""
    reports = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    kept = {}
    for path in folder.iterdir():
        if path.suffix in (".json",) or path.name == "rows.parquet":
            continue
        about = [r for r in reports if r.get("file") == path.name]
        kept[path.read_bytes()] = about[0] if about else {}
    return kept


def test_every_unreadable_delivery_of_a_day_is_kept_with_its_own_report(
    small_world, tmp_path, capsys
):
    # the second unreadable delivery of a day overwrote the first one and its report, and the
    # day's later clean delivery deleted the report that was left
    settings, world = small_world
    day = "2026-02-12"
    sent = {}
    for n, text in enumerate([b"first broken file", b"second, different broken file"]):
        (tmp_path / str(n)).mkdir()
        path = tmp_path / str(n) / f"{day}.parquet"
        path.write_bytes(text)
        sent[text] = path
        code, _, err = _run(["ingest", str(path)], capsys)
        assert code == 2 and err.strip().startswith(f"recsys: error: cannot read {day}.parquet")
    frame = next(iter(world.batches()))[1].copy()
    frame["timestamp"] = frame["timestamp"] + (pd.Timestamp(day) - pd.Timestamp("2026-01-01"))
    good = tmp_path / f"{day}.csv"
    frame.to_csv(good, index=False)
    code, _, _ = _run(["ingest", str(good)], capsys)
    assert code in (0, 4)
    assert len(settings.lake.read_clean_interactions([day])) == len(frame)
    kept = _quarantined_files(settings.lake.quarantine_dir(day))
    assert set(kept) == set(sent)
    for text, report in kept.items():
        assert report["reasons"] == {"unreadable": 1}
        assert report["source"] == str(sent[text]) and "cannot read" in report["error"]


def test_events_delivered_late_are_not_accepted_again_under_their_own_day(
    small_world, tmp_path, capsys
):
    # a new day's file arrives first under a day weeks later (a late delivery), then again
    # under its own day: the second copy repeats the first, whichever day is earlier
    settings, _ = small_world
    lake = settings.lake
    own_day, rows = _shifted_day(lake)
    late_day = (pd.Timestamp(own_day) + pd.Timedelta(days=19)).strftime("%Y-%m-%d")
    path = tmp_path / "next.csv"
    rows.to_csv(path, index=False)
    total = len(lake.read_clean_interactions())
    code, out, _ = _run(["ingest", str(path), "--batch", late_day, "--json"], capsys)
    assert code == 0 and json.loads(out)["accepted"] == len(rows), out
    code, out, _ = _run(["ingest", str(path), "--batch", own_day, "--json"], capsys)
    assert code == 3, out
    assert json.loads(out)["reasons"] == {f"duplicate:{late_day}": len(rows)}
    assert len(lake.read_clean_interactions()) == total + len(rows)
    kept = pd.read_parquet(lake.quarantine_dir(own_day) / "rows.parquet")
    assert len(kept) == len(rows) and set(kept["reason"]) == {f"duplicate:{late_day}"}


def test_a_redelivery_readmits_rows_another_day_quarantined_as_its_duplicates(
    small_world, tmp_path, capsys
):
    # day B re-sent some events of day A: they were quarantined as duplicate:A; then A was
    # re-sent without them, and they were in no clean batch any more
    settings, _ = small_world
    lake = settings.lake
    day_a, day_b = lake.clean_batches()[2:4]
    rows_a = lake.read_clean_interactions([day_a])
    rows_b = lake.read_clean_interactions([day_b])
    moved = rows_a.tail(5)
    path = tmp_path / f"{day_b}.csv"
    pd.concat([rows_b, moved], ignore_index=True).to_csv(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 3 and json.loads(out)["reasons"] == {f"duplicate:{day_a}": 5}
    path = tmp_path / f"{day_a}.csv"
    rows_a.head(len(rows_a) - 5).to_csv(path, index=False)
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code == 0, out
    # every distinct event of the newest deliveries is in exactly one clean batch
    clean = pd.concat([lake.read_clean_interactions([d]) for d in (day_a, day_b)])
    assert len(clean) == len(rows_a) + len(rows_b)
    assert len(lake.read_clean_interactions([day_b])) == len(rows_b) + 5
    assert not (lake.quarantine_dir(f"{day_b}@r1") / "rows.parquet").exists()
    # and re-running everything keeps it so
    ingest_all(lake)
    assert len(lake.read_clean_interactions([day_b])) == len(rows_b) + 5
    assert len(lake.read_clean_interactions([day_a])) == len(rows_a) - 5


@pytest.mark.parametrize("day", ["0001-01-01", "2025-12-01", "9999-12-31", "2099-01-01"])
def test_a_batch_day_that_is_not_its_rows_delivery_day_is_refused_and_kept(
    small_world, tmp_path, capsys, day
):
    # `--batch 0001-01-01` was accepted, and the features build then made a snapshot per day
    # from year 1 on
    settings, world = small_world
    lake = settings.lake
    raw_before = lake.raw_batches()
    path = tmp_path / "delivery.csv"
    next(iter(world.batches()))[1].to_csv(path, index=False)
    code, _, err = _run(["ingest", str(path), "--batch", day], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recsys: error: "), err
    assert f"batch day {day}" in lines[0] and "--batch" in lines[0]
    assert lake.raw_batches() == raw_before and day not in lake.clean_batches()
    kept = _quarantined_files(lake.quarantine_dir(day))
    assert list(kept) == [path.read_bytes()]
    assert next(iter(kept.values()))["reasons"] == {"batch_day": 1}


def test_a_delivery_before_any_catalog_lands_nothing_and_says_what_to_do(
    settings, tmp_path, capsys
):
    lake = settings.lake
    cfg = WorldConfig(n_users=50, n_items=30, n_days=2, n_interactions=300, seed=5)
    world = generate_world(cfg)
    name, frame = next(iter(world.batches()))
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    code, _, err = _run(["ingest", str(path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recsys: error: "), err
    assert "catalog" in lines[0] and "recsys data catalog FILE" in lines[0]
    assert lake.raw_batches() == [] and lake.clean_batches() == []
    # once the team has delivered its catalog, the same command ingests the file
    items = tmp_path / "items.csv"
    world.items.drop(columns=["created_at"]).to_csv(items, index=False)
    code, out, _ = _run(["data", "catalog", str(items), "--json"], capsys)
    assert code == 0 and json.loads(out)["new_items"] == len(world.items), out
    code, out, _ = _run(["ingest", str(path), "--json"], capsys)
    assert code in (0, 4), out
    assert json.loads(out)["accepted"] == len(frame)


def test_a_team_delivers_its_own_catalog_and_events_that_waited_for_it_are_accepted(
    settings, tmp_path, capsys
):
    # the lake took a catalog only from a generated or MovieLens world: a team's own catalog
    # had no way in, so its events could never be ingested
    import pyarrow.parquet as pq

    lake = settings.lake
    first = tmp_path / "items.csv"
    first.write_text(
        "item_id,title,genres,created_at\n"
        "1,Alpha,Drama|Comedy,2025-06-01\n"
        "2,,Horror,\n"  # no title, no date: "item 2", available from the contract's start
        "x,Broken,Drama,\n"  # not an id
        "3,Future,Drama,3000-01-01\n"  # not created yet
        "4,Delta,Drama,2025-01-01\n"
        "4,Delta,Drama,2025-01-01\n"  # an exact copy
        "5,Eps,Drama,2025-01-01\n"
        "5,Epsilon,Drama,2025-01-01\n"  # the same item with other values: which is right?
    )
    code, out, _ = _run(["data", "catalog", str(first), "--json"], capsys)
    report = json.loads(out)
    assert code == 3
    assert report["raw_rows"] == 8 and report["accepted"] == 3 and report["quarantined_rows"] == 5
    assert report["reasons"] == {
        "conflict:item_id": 2,
        "duplicate": 1,
        "range:created_at": 1,
        "type:item_id": 1,
    }
    kept = pd.read_parquet(lake.zone("quarantine") / "catalog" / "items-0001" / "rows.parquet")
    assert len(kept) == 5 and set(kept["title"]) == {"Broken", "Future", "Delta", "Eps", "Epsilon"}
    catalog = lake.read_clean_catalog("items").set_index("item_id")
    assert list(catalog.index) == [1, 2, 4]
    assert catalog.loc[2, "title"] == "item 2" and catalog.loc[1, "category"] == "Drama"
    assert catalog.loc[2, "created_at"] == pd.Timestamp("1990-01-01", tz="UTC")

    events = pd.DataFrame(
        {
            "user_id": [7, 7, 8, 8],
            "item_id": [1, 3, 3, 4],
            "event_type": ["view", "click", "view", "purchase"],
            "value": [1.0, 1.0, 1.0, 1.0],
            "timestamp": ["2026-02-10T10:00:00Z"] * 4,
        }
    )
    batch = tmp_path / "2026-02-10.csv.gz"  # as producers compress them
    events.to_csv(batch, index=False, compression="gzip")
    code, out, _ = _run(["ingest", str(batch), "--json"], capsys)
    assert code == 3 and json.loads(out)["reasons"] == {"unknown_item": 2}

    # item 3 dated right, item 1 renamed; comma-separated genres (were one genre "Drama, War")
    # and a column the contract does not read (refused the whole catalog)
    second = tmp_path / "items-fixed.csv"
    second.write_text(
        'item_id,title,genres,price\n3,Future,"Drama, War",9.5\n1,Alpha (restored),Drama,2\n'
    )
    code, out, _ = _run(["data", "catalog", str(second)], capsys)
    assert code == 0, out
    assert "ignored (kept in the raw delivery): price" in out
    assert "2 event(s) quarantined as unknown_item" in out and "2026-02-10" in out
    assert len(lake.read_clean_interactions(["2026-02-10"])) == 4  # nothing left waiting
    assert not (lake.quarantine_dir("2026-02-10") / "rows.parquet").exists()
    catalog = lake.read_clean_catalog("items").set_index("item_id")
    assert catalog.loc[1, "title"] == "Alpha (restored)"
    assert catalog.loc[3, "category"] == "Drama" and catalog.loc[3, "genres"] == "Drama|War"
    assert catalog.loc[1, "created_at"] == pd.Timestamp("2025-06-01", tz="UTC")  # kept
    assert list(catalog.index) == [1, 2, 3, 4]

    # the same file again lands nothing new; the catalog is the raw zone's, replayed
    code, out, _ = _run(["data", "catalog", str(second), "--json"], capsys)
    assert code == 0 and json.loads(out)["already_delivered"] is True
    assert len(lake.catalog_deliveries()) == 2
    before = pq.read_table(lake.clean_catalog_path("items"))
    code, _, _ = _run(["data", "ingest"], capsys)
    assert code is None or code == 0
    assert pq.read_table(lake.clean_catalog_path("items")).equals(before)

    unreadable = tmp_path / "broken.parquet"
    unreadable.write_bytes(b"not parquet")
    code, _, err = _run(["data", "catalog", str(unreadable)], capsys)
    assert code == 2 and "cannot read broken.parquet" in err and "kept as" in err
    assert len(lake.catalog_deliveries()) == 2
    assert list((lake.zone("quarantine") / "catalog" / "refused").glob("unreadable-1*"))


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        # pyarrow's message ran over ten lines of its internal fields
        ("dup.parquet", "parquet-dup", "duplicate column user_id"),
        # pandas named the second one user_id.1: "unknown column user_id.1"
        ("dup.csv", b"user_id,item_id,user_id\n1,2,3\n", "duplicate column user_id"),
        # one latin-1 byte: "UnicodeDecodeError ... in position 138"
        ("latin.csv", b"item_id,title\n1,ok\n2,caf\xe9\n", "byte 0xe9 on line 3"),
        # pandas' "Expected 2 fields in line 3, saw 3" and a line break in the message
        ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "line 3 has 3 fields where the header has 2"),
        ("nothing.csv", b"", "the file is empty (0 bytes)"),
        ("x.parquet.gz", b"x", "use .parquet, .csv, .tsv (.csv.gz and .tsv.gz too)"),
    ],
)
def test_an_unreadable_delivery_is_one_line_that_says_why(tmp_path, name, content, said):
    from recsys.errors import RecsysError
    from recsys.ingest import read_batch_file

    path = tmp_path / name
    if content == "parquet-dup":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table([[1], [2], [3]], names=["user_id", "item_id", "user_id"]), path)
    else:
        path.write_bytes(content)
    with pytest.raises(RecsysError) as raised:
        read_batch_file(path)
    message = str(raised.value)
    assert said in message and "\n" not in message and len(message) < 400, message


def test_utf16_gzip_and_empty_deliveries_are_read(tmp_path):
    from recsys.ingest import read_batch_file

    text = "user_id\titem_id\n1\t2\n"
    utf16 = tmp_path / "excel.tsv"  # Excel's "Unicode text"
    utf16.write_bytes(text.encode("utf-16"))
    packed = tmp_path / "day.tsv.gz"
    packed.write_bytes(gzip.compress(("\ufeff" + text).encode("utf-8")))  # with a UTF-8 BOM
    for path in (utf16, packed):
        frame = read_batch_file(path)
        assert list(frame.columns) == ["user_id", "item_id"] and frame.values.tolist() == [
            ["1", "2"]
        ]
    nothing = tmp_path / "2026-02-11.csv"
    nothing.write_bytes(b"")  # a producer's "no events today"
    assert read_batch_file(nothing, empty=pd.DataFrame({"user_id": []})).empty


def test_the_doctor_sees_a_newest_delivery_that_could_not_be_read(small_world, tmp_path, capsys):
    from flows.guardian import live_cycle
    from recsys.guardian import run_check

    settings, world = small_world
    assert run_check(live_cycle(settings), "delivery").ok
    day = "2026-01-07"
    garbage = tmp_path / f"{day}.parquet"
    garbage.write_bytes(b"not parquet")
    code, _, _ = _run(["ingest", str(garbage)], capsys)
    assert code == 2
    finding = run_check(live_cycle(settings), "delivery")
    assert not finding.ok and day in finding.seen and "could not be read" in finding.seen
    # the day arrives readable: the doctor is satisfied again
    frame = list(world.batches())[-1][1].copy()
    frame["timestamp"] = frame["timestamp"] + pd.Timedelta(days=1)
    good = tmp_path / f"{day}.csv"
    frame.to_csv(good, index=False)
    code, _, _ = _run(["ingest", str(good)], capsys)
    assert code == 0
    assert run_check(live_cycle(settings), "delivery").ok
    # an unreadable redelivery of a day that landed before: a normal failing finding (it was
    # not seen), and a brand-new day's refusal is one too (it was "the check itself failed")
    code, _, _ = _run(["ingest", str(garbage)], capsys)
    assert code == 2
    finding = run_check(live_cycle(settings), "delivery")
    assert not finding.ok and finding.fix == "redeliver_reingest"
    assert "the check itself failed" not in finding.seen
    assert f"the newest delivery of {day} could not be read" in finding.seen
    assert finding.evidence["batches"][day]["delivery"] is None
    # the fix: the source sends the day again, as a redelivery or (a day never landed) its first
    from recsys.guardian import apply_fix

    new_day = "2026-01-08"
    (tmp_path / f"{new_day}.parquet").write_bytes(b"not parquet either")
    assert _run(["ingest", str(tmp_path / f"{new_day}.parquet")], capsys)[0] == 2
    again = frame.assign(timestamp=frame["timestamp"] + pd.Timedelta(days=1))
    resent = {day: frame, new_day: again}
    cycle = live_cycle(settings)
    cycle.source = resent.get
    finding = run_check(cycle, "delivery")
    assert set(finding.evidence["batches"]) == {day, new_day}  # newest clean, newest delivered
    outcome = apply_fix(cycle, finding)
    assert outcome.verified, outcome
    assert outcome.detail["landed"][new_day] == new_day  # its first landing
    assert outcome.detail["landed"][day].startswith(f"{day}@r")  # a redelivery
    assert len(settings.lake.read_clean_interactions([new_day])) == len(again)


def test_a_damaged_clean_batch_is_one_line_and_data_ingest_rebuilds_it(
    small_world, tmp_path, capsys
):
    # a truncated clean file made every command an internal error (ArrowInvalid), and nothing
    # rebuilt it
    settings, _ = small_world
    lake = settings.lake
    before = lake.read_clean_interactions()
    batch = lake.clean_batches()[2]
    path = lake.clean_batch_path(batch)
    path.write_bytes(path.read_bytes()[:100])  # a crash mid-write on a disk without fsync
    code, _, err = _run(["train", "--budget-s", "0"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recsys: error:"), err
    assert f"{path} cannot be read" in lines[0] and "`recsys data ingest` rebuilds it" in lines[0]
    # the doctor's delivery check: a traceback and "the check itself failed", no advice
    from flows.guardian import live_cycle
    from recsys.guardian import run_check

    finding = run_check(live_cycle(settings), "delivery")
    assert not finding.ok and finding.fix == "rebuild_clean"
    assert f"clean batch(es) {batch} cannot be read (ArrowInvalid" in finding.seen
    gone = lake.clean_batches()[3]  # deleted: "0% of rows quarantined ({})", no re-send
    moved = lake.clean_batch_path(gone).rename(tmp_path / "gone.parquet")
    finding = run_check(live_cycle(settings), "delivery")
    assert f"clean batch(es) {gone} are missing though landed" in finding.seen
    assert finding.evidence["damaged_clean"] == [batch, gone]
    moved.rename(lake.clean_batch_path(gone))
    code, _, err = _run(["data", "ingest"], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(lake.read_clean_interactions(), before)
    [kept] = (lake.zone("clean") / "damaged").glob(f"{batch}-*.parquet")
    assert len(kept.read_bytes()) == 100  # the damaged file is kept, not deleted

    # a damaged raw delivery stopped the whole re-ingest with an internal error (ArrowInvalid)
    raw = lake.raw_batch_path(lake.raw_batches()[1])
    raw.write_bytes(b"garbage" * 100)
    code, _, err = _run(["data", "ingest"], capsys)
    assert code == 2 and "the raw delivery" in err and "cannot be read" in err, err
    assert "restore the file from a backup, or deliver the day again" in err
    pd.testing.assert_frame_equal(lake.read_clean_interactions(), before)  # nothing changed
