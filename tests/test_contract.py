"""The data contract: every bad row is caught with its reason, and no row is lost."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from recsys.contract import (
    INTERACTIONS_SCHEMA,
    conform,
    implicit_weight,
    validate_interactions,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def batch(**overrides) -> pd.DataFrame:
    rows = {
        "user_id": [1, 2, 3],
        "item_id": [10, 11, 12],
        "event_type": ["click", "view", "rating"],
        "value": [1.0, 1.0, 4.0],
        "timestamp": pd.to_datetime(["2026-05-01T10:00:00Z"] * 3),
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def test_a_valid_batch_passes_whole_with_exact_types():
    result = validate_interactions(batch(), known_items={10, 11, 12}, now=NOW)
    assert len(result.clean) == 3 and result.rejected.empty
    table = conform(result.clean, INTERACTIONS_SCHEMA)
    assert table.schema.equals(INTERACTIONS_SCHEMA)
    assert str(result.clean["timestamp"].dt.tz) == "UTC"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_id": [1, None, 3]}, "null:user_id"),
        ({"item_id": [10, 11.5, 12]}, "type:item_id"),
        ({"user_id": [1, -2, 3]}, "type:user_id"),
        ({"event_type": ["click", "teleport", "rating"]}, "domain:event_type"),
        ({"value": [1.0, 1.0, 9.0]}, "range:value"),
        ({"value": [1.0, np.inf, 4.0]}, "range:value"),
        ({"value": [1.0, "lots", 4.0]}, "type:value"),
        (
            {"timestamp": ["2026-05-01T10:00:00Z", "yesterday", "2026-05-01T10:00:00Z"]},
            "type:timestamp",
        ),
        (
            {"timestamp": pd.to_datetime(["2026-05-01", "2031-01-01", "2026-05-01"], utc=True)},
            "range:timestamp",
        ),
        (
            {"timestamp": pd.to_datetime(["2026-05-01", "1970-01-02", "2026-05-01"], utc=True)},
            "range:timestamp",
        ),
        ({"item_id": [10, 999, 12]}, "unknown_item"),
    ],
)
def test_each_bad_row_is_rejected_with_its_reason(overrides, reason):
    result = validate_interactions(batch(**overrides), known_items={10, 11, 12}, now=NOW)
    assert len(result.clean) == 2
    assert len(result.rejected) == 1
    assert reason in result.rejected.loc[0, "reason"].split(";")
    assert result.n_input == 3


def test_exact_duplicates_are_quarantined_not_dropped():
    frame = pd.concat([batch(), batch().iloc[[0, 0]]], ignore_index=True)
    result = validate_interactions(frame, now=NOW)
    assert len(result.clean) == 3
    assert result.reason_counts() == {"duplicate": 2}
    assert len(result.clean) + len(result.rejected) == len(frame)


def test_a_renamed_column_rejects_the_whole_batch_with_the_schema_reason():
    frame = batch().rename(columns={"item_id": "itemId"})
    result = validate_interactions(frame, now=NOW)
    assert result.clean.empty and len(result.rejected) == 3
    assert "schema:missing_column:item_id" in result.schema_errors
    assert "schema:unknown_column:itemId" in result.schema_errors
    assert "itemId" in result.rejected.columns  # the original data is kept


def test_several_problems_in_one_row_are_all_named():
    frame = batch(user_id=[1, None, 3], event_type=["click", "bogus", "rating"])
    result = validate_interactions(frame, now=NOW)
    assert set(result.rejected.loc[0, "reason"].split(";")) == {"null:user_id", "domain:event_type"}


def test_naive_timestamps_are_taken_as_utc_and_numbers_are_not_timestamps():
    naive = batch(timestamp=pd.to_datetime(["2026-05-01 10:00"] * 3))
    result = validate_interactions(naive, now=NOW)
    assert result.clean["timestamp"].iloc[0] == pd.Timestamp("2026-05-01 10:00", tz="UTC")
    numeric = batch(timestamp=[1_700_000_000] * 3)
    assert validate_interactions(numeric, now=NOW).reason_counts() == {"type:timestamp": 3}


def test_implicit_weight_grows_with_event_strength_and_ratings_are_binary():
    frame = batch(event_type=["view", "purchase", "rating"], value=[1.0, 1.0, 4.5])
    weights = implicit_weight(frame)
    assert weights[1] > weights[0]
    assert (
        weights[2]
        == implicit_weight(batch(event_type=["view", "purchase", "rating"], value=[1.0, 1.0, 1.0]))[
            2
        ]
        == 1.0
    )


def test_rows_whose_ids_did_not_parse_are_not_called_duplicates():
    """Two different malformed ids both read as missing: they are type errors, not repeats."""
    frame = batch(user_id=["u1", "u2", 7], item_id=[10, 10, 10], event_type=["click"] * 3)
    frame["value"] = 1.0
    result = validate_interactions(frame, now=NOW)
    assert result.reason_counts() == {"type:user_id": 2}
    assert list(result.clean["user_id"]) == [7]


def test_every_rejection_reason_reads_as_words():
    from recsys.contract import describe_reason

    frame = pd.DataFrame(
        {
            "user_id": ["u1", None, 3, 4, 5, 5, 6],
            "item_id": [10, "x", 999, 11, 12, 12, 10],
            "event_type": ["click", "view", "rating", "teleport", "click", "click", "rating"],
            "value": [1.0, "many", 4.0, 1.0, 1.0, 1.0, 9.0],
            "timestamp": ["2026-05-01T10:00:00Z"] * 4 + ["2026-05-01T10:00:01Z"] * 2 + ["soon"],
        }
    )
    codes = validate_interactions(frame, known_items={10, 11, 12}, now=NOW).reason_counts()
    assert {"type:user_id", "null:user_id", "type:item_id", "type:value", "unknown_item"} <= set(
        codes
    )
    assert {"domain:event_type", "duplicate", "range:value", "type:timestamp"} <= set(codes)
    schema = validate_interactions(frame.rename(columns={"value": "v"}), now=NOW).schema_errors
    for code in [*codes, *schema, "range:timestamp"]:
        words = describe_reason(code)
        assert words != code and " " in words, code
    assert (
        describe_reason("range:value") == "a rating outside 0.5-5 or an event value outside 0-1e+06"
    )


BIG = 2**53 + 1  # the first integer a float64 cannot hold
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    "user_id",
    [
        pd.Series([BIG, INT64_MAX, 0], dtype="int64"),
        pd.Series([BIG, INT64_MAX, 0], dtype="uint64"),
        pd.Series([BIG, INT64_MAX, 0], dtype="Int64"),
        pd.Series([str(BIG), str(INT64_MAX), "0"]),  # as a CSV reads them
        pd.Series([f" +{BIG} ", f"{INT64_MAX}.0", "000"]),
        pd.Series([BIG, str(INT64_MAX), 0], dtype=object),
    ],
)
def test_ids_above_2_to_the_53_are_kept_exact(user_id):
    result = validate_interactions(batch(user_id=user_id), now=NOW)
    assert result.rejected.empty
    assert list(result.clean["user_id"]) == [BIG, INT64_MAX, 0]


@pytest.mark.parametrize(
    "user_id",
    [
        pd.Series([2**63, 2**64 - 1, 1], dtype="uint64"),
        pd.Series([str(2**63), "1" + "0" * 25, "1"]),
        pd.Series([2**63, -(2**63), 1], dtype=object),
        pd.Series([2.0**63, 1e300, 1.0]),
        pd.Series([f"{2**63}.0", "-1", "1"]),
        pd.Series([True, False, True], dtype=object).where([True, True, False], 1),
        pd.Series(["true", "False", "1"]),
    ],
)
def test_ids_outside_int64_or_bools_are_quarantined_not_wrapped(user_id):
    result = validate_interactions(batch(user_id=user_id), now=NOW)
    assert result.reason_counts() == {"type:user_id": 2}
    assert list(result.clean["user_id"]) == [1]  # the third row, untouched
    # the rejected rows keep the id as it was delivered
    assert list(result.rejected["user_id"]) == list(user_id[:2])


def test_a_bool_column_is_not_read_as_ids_0_and_1():
    result = validate_interactions(batch(item_id=[True, False, True]), now=NOW)
    assert result.clean.empty
    assert result.reason_counts() == {"type:item_id": 3}


@pytest.mark.parametrize(
    "timestamp",
    [
        ["2026-05-01T10:00:00+05:00", "2026-05-01 10:00:00", "2026-05-01T10:00:00-03:00"],
        ["2026-05-01T10:00:00.000+0500", "2026-05-01T10:00", "2026-05-01T07:00:00-06:00"],
        ["2026-05-01T05:00:00Z", "2026-05-01 10:00:00", "2026-05-01T13:00:00+00:00"],
        # BigQuery's and PostgreSQL's exports say UTC in words (was type:timestamp)
        ["2026-05-01 05:00:00 UTC", "2026-05-01 10:00:00", "2026-05-01 13:00:00.000000 UTC"],
        [
            datetime.fromisoformat("2026-05-01T10:00:00+05:00"),
            datetime(2026, 5, 1, 10),
            pd.Timestamp("2026-05-01T10:00:00-03:00"),
        ],
    ],
)
def test_a_naive_timestamp_is_utc_whatever_offset_the_rows_before_it_carry(timestamp):
    # pandas gave a naive value the offset of the previous row: 10:00 read as 05:00 UTC
    result = validate_interactions(batch(timestamp=timestamp), now=NOW)
    assert result.rejected.empty
    expected = ["2026-05-01 05:00", "2026-05-01 10:00", "2026-05-01 13:00"]
    assert list(result.clean["timestamp"]) == list(pd.to_datetime(expected, utc=True))


def test_a_day_without_a_time_after_an_offset_is_utc_midnight():
    timestamp = ["2026-05-01T10:00:00+05:00", "2026-05-02", "2026-05-01T23:00:00-03:00"]
    result = validate_interactions(batch(timestamp=timestamp), now=NOW)
    expected = ["2026-05-01 05:00", "2026-05-02 00:00", "2026-05-02 02:00"]
    assert list(result.clean["timestamp"]) == list(pd.to_datetime(expected, utc=True))


def test_all_naive_text_timestamps_are_utc_and_epoch_text_is_not_a_timestamp():
    timestamp = ["2026-05-01 10:00:00", "2026-05-01T11:00:00.5", "1777777777"]
    result = validate_interactions(batch(timestamp=timestamp), now=NOW)
    assert list(result.clean["timestamp"]) == [
        pd.Timestamp("2026-05-01 10:00:00", tz="UTC"),
        pd.Timestamp("2026-05-01 11:00:00.5", tz="UTC"),
    ]
    assert result.reason_counts() == {"type:timestamp": 1}
    from recsys.contract import describe_reason

    # the producer of epoch seconds is told why, not only that it is "not a date"
    assert "bare numbers are refused" in describe_reason("type:timestamp")


def _seconds(*days: str) -> pd.Series:
    return pd.Series(np.array(days, dtype="datetime64[s]")).dt.tz_localize("UTC")


@pytest.mark.parametrize(
    "timestamp",
    [
        ["2026-05-01T10:00:00Z", "3000-01-01T00:00:00Z", "2026-05-01T10:00:00Z"],
        ["2026-05-01 10:00:00", "3000-01-01 05:00:00+05:00", "2026-05-01 10:00:00"],
        ["2026-05-01T10:00:00Z", "1677-09-21", "2026-05-01T10:00:00Z"],
        pd.Series(pd.to_datetime(["2026-05-01T10:00"] * 3, utc=True).as_unit("us")).where(
            [True, False, True], pd.Timestamp("3000-01-01", tz="UTC")
        ),
        _seconds("2026-05-01T10:00", "300000-01-01", "2026-05-01T10:00"),
    ],
)
def test_a_timestamp_beyond_pandas_nanosecond_range_is_out_of_range_not_a_crash(timestamp):
    # the clean rows of another batch: comparing with them hashed every row in nanoseconds
    elsewhere = validate_interactions(batch(), now=NOW).clean.assign(batch="2026-04-30")
    result = validate_interactions(
        batch(user_id=[7, 8, 9], timestamp=timestamp), now=NOW, elsewhere=elsewhere
    )
    assert result.reason_counts() == {"range:timestamp": 1}
    assert list(result.clean["user_id"]) == [7, 9]
    assert result.rejected.loc[0, "user_id"] == 8


def test_a_delivered_catalog_without_its_columns_is_refused_whole():
    from recsys.contract import describe_reason, validate_items

    frame = pd.DataFrame({"id": [1, 2], "title": ["a", "b"], "price": [3, 4]})
    result = validate_items(frame)
    assert result.clean.empty and len(result.rejected) == 2
    assert result.schema_errors == [
        "schema:missing_column:item_id",
        "schema:missing_column:category",
        "schema:unknown_column:id",  # named: an id where item_id was meant
        "schema:unknown_column:price",
    ]
    assert "neither category nor genres" in describe_reason(result.schema_errors[1])
    # genres alone name the category (their first); a category alone is the genres
    ok = validate_items(pd.DataFrame({"item_id": ["7", "8"], "genres": ["Sci-Fi | Drama", None]}))
    assert ok.reason_counts() == {"null:category": 1}
    assert ok.clean[["item_id", "category", "genres"]].values.tolist() == [
        [7, "Sci-Fi", "Sci-Fi|Drama"]
    ]
    assert ok.clean["created_at"].isna().all()  # the lake fills it, not the contract


def test_a_catalogs_genres_split_at_any_separator_and_its_other_columns_are_ignored():
    from recsys.contract import validate_items

    genres = ["Drama, War", "Comedy;Romance", '["Horror", "Thriller"]', "Sci-Fi|Drama", "Noir"]
    frame = pd.DataFrame({"item_id": [1, 2, 3, 4, 5], "genres": genres, "price": [1] * 5})
    result = validate_items(frame)
    assert result.rejected.empty and result.ignored_columns == ["price"]
    assert result.clean["genres"].tolist() == [
        "Drama|War",
        "Comedy|Romance",
        "Horror|Thriller",
        "Sci-Fi|Drama",
        "Noir",
    ]
    assert result.clean["category"].tolist() == ["Drama", "Comedy", "Horror", "Sci-Fi", "Noir"]
