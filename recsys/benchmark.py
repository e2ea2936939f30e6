"""Benchmarks that print figures: recommendation quality on a given split, training cost.

    recsys benchmark quality --train TRAIN --test TEST --k 10 --recs-out recs.tsv --json
    recsys benchmark train --users 100000 --items 20000 --interactions 5000000

Quality trains the full pipeline on TRAIN only. With no time order to exploit (a random
split), the ranker's labels come from a random share of each user's TRAIN interactions: the
sources are fit on the rest, the ranker learns which candidates the held-back share contains,
then the sources are refit on all of TRAIN and the ranker ranks their candidates. When TEST
follows TRAIN in time, the labels are TRAIN's last days instead, as in ``recsys train``; when
TEST holds each user's latest rows, the labels are each user's latest TRAIN rows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.contract import (
    INTERACTION_COLUMNS,
    as_int_ids,
    describe_reason,
    to_utc,
    validate_interactions,
)
from recsys.errors import RecsysError
from recsys.evaluation import top_k_unseen
from recsys.models.ranker import Ranker
from recsys.movielens import read_ratings_csv, read_ratings_dat, read_udata
from recsys.pipeline import PipelineParams, Stage, fit_stage, rank_users
from recsys.train import holdout_scorer, lift_over, verdict


def _contract_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A table of ratings or events in the contract's columns: ``rating`` becomes ``value`` of
    ``rating`` events, no value means one ``click`` each, epoch seconds become timestamps.
    Columns the contract does not know are left out (the rows are all kept)."""
    frame = frame.copy()
    if "event_type" not in frame:
        frame["event_type"] = "rating" if "rating" in frame else "click"
    if "value" not in frame:
        frame["value"] = frame.pop("rating") if "rating" in frame else 1.0
    if "timestamp" in frame and pd.api.types.is_numeric_dtype(frame["timestamp"]):
        frame["timestamp"] = _epoch_to_utc(frame["timestamp"])
    return frame[[c for c in frame.columns if c in INTERACTION_COLUMNS]]


_EPOCH_UNITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
"""Epoch units by the largest magnitude each reads as a date before the year 5000 (seconds up
to 1e11 is 5138; 1e11 milliseconds is 1973)."""


def _epoch_to_utc(values: pd.Series) -> pd.Series:
    """Epoch numbers as UTC timestamps, in seconds, milliseconds, microseconds or nanoseconds
    by their magnitude (one unit for the whole column: GroupLens files are in seconds, event
    exports often in milliseconds).

    Raises:
        RecsysError: the numbers are no dates in any unit (negative beyond 1970 by far, or
            past what pandas can hold).
    """
    largest = float(values.abs().max()) if len(values) else 0.0
    unit = next(u for u, bound in _EPOCH_UNITS if largest < bound)
    try:
        return pd.to_datetime(values, unit=unit, utc=True)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
        raise RecsysError(
            f"timestamp numbers up to {largest:.0f} are not epoch seconds, milliseconds, "
            f"microseconds or nanoseconds ({type(exc).__name__}); give ISO 8601 times instead"
        ) from None


def _open_table(path: Path) -> tuple[pd.DataFrame | None, str]:
    """(the frame, "") of a parquet file, or (None, its first line) of a text file, for the
    caller to tell its layout by.

    Raises:
        RecsysError: the file is missing, or a parquet file pyarrow cannot read.
    """
    if not path.is_file():
        raise RecsysError(f"{path} not found")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path), ""
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise RecsysError(f"{path} is not a readable parquet file: {exc}") from None
    with path.open("r", errors="replace") as handle:
        return None, handle.readline()


def _read_delimited(path: Path, head: str, **kwargs) -> pd.DataFrame:
    """A CSV, or a TSV when its first line ``head`` holds a tab."""
    return pd.read_csv(path, sep="\t" if "\t" in head else ",", **kwargs)


def read_interactions_file(path: Path) -> pd.DataFrame:
    """Read interactions from a GroupLens ratings file (``u.data``, ``ratings.dat``, or
    ``ratings.csv`` with ``userId,movieId``), parquet, or CSV/TSV with the contract columns.
    Rows that break the contract make it a RecsysError naming the reasons."""
    path = Path(path)
    frame, head = _open_table(path)
    if frame is not None:
        frame = _contract_columns(frame)
    elif all(col in head for col in ("user_id", "item_id")):
        frame = _contract_columns(_read_delimited(path, head))
    elif all(col in head for col in ("userId", "movieId")):
        frame = read_ratings_csv(path)
    elif "::" in head:
        frame = read_ratings_dat(path)
    else:
        frame = read_udata(path)
    result = validate_interactions(frame)
    if not result.rejected.empty:
        reasons = "; ".join(
            f"{count} {describe_reason(code)} ({code})"
            for code, count in result.reason_counts().items()
        )
        raise RecsysError(
            f"{path}: {len(result.rejected)} row(s) break the data contract: {reasons}"
        )
    return result.clean


def read_items_file(path: Path | None, item_ids: np.ndarray, train: pd.DataFrame) -> pd.DataFrame:
    """The catalog from a GroupLens movie file (``u.item``, ``movies.dat``, ``movies.csv``)
    dated by the ``train`` rows only (never by TEST), or from a table of the contract's item
    columns (:func:`read_catalog_table`), or a one-category stand-in."""
    if path is None:
        return pd.DataFrame(
            {
                "item_id": item_ids,
                "title": [f"item {i}" for i in item_ids],
                "category": "unknown",
                "genres": "unknown",
                "created_at": pd.Timestamp("1990-01-01", tz="UTC"),
            }
        )
    path = Path(path)
    frame, head = _open_table(path)
    if frame is None and "item_id" in head:
        frame = _read_delimited(path, head, dtype={"title": "string"})
    if frame is not None:
        return read_catalog_table(frame, path, train)
    from recsys.movielens import read_catalog

    return read_catalog(path, train)


def read_catalog_table(frame: pd.DataFrame, path: Path, train: pd.DataFrame) -> pd.DataFrame:
    """A catalog given in the contract's item columns. ``item_id`` and ``category`` or
    ``genres`` (``|``-separated) are needed: a missing category is the first genre, missing
    genres the category, a missing title ``item <id>``. ``created_at`` (ISO text, or epoch
    seconds) is the item's first TRAIN row when the column is absent, and when a value is
    empty.

    Raises:
        RecsysError: a needed column is missing, or an id or date is malformed or repeated.
    """
    missing = [] if "item_id" in frame else ["item_id"]
    if "category" not in frame and "genres" not in frame:
        missing.append("category or genres")
    if missing:
        raise RecsysError(
            f"{path}: the catalog needs the column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, frame.columns))}"
        )
    ids, bad = as_int_ids(frame["item_id"])
    bad |= ids.isna()
    if bad.any():
        raise RecsysError(
            f"{path}: {int(bad.sum())} item_id value(s) are not non-negative integers, "
            f"e.g. {frame.loc[bad, 'item_id'].iloc[0]!r}"
        )
    repeated = ids.duplicated(keep=False)
    if repeated.any():
        raise RecsysError(
            f"{path}: {int(ids[repeated].nunique())} item_id value(s) are listed more than once, "
            f"e.g. {int(ids[repeated].iloc[0])}"
        )
    ids = ids.astype("int64")

    def text(column: str) -> pd.Series | None:
        if column not in frame:
            return None
        values = frame[column].astype("string").str.strip()
        return values.where(values.notna() & (values != ""))

    category, genres = text("category"), text("genres")
    if category is None:
        category = genres.str.split("|").str[0]
    if genres is None:
        genres = category
    category = category.fillna("unknown")
    genres = genres.fillna(category)
    title = text("title")
    title = ids.map("item {}".format) if title is None else title.fillna(ids.map("item {}".format))
    first_seen = ids.map(train.groupby("item_id")["timestamp"].min())
    fallback = train["timestamp"].min() if len(train) else pd.Timestamp("1990-01-01", tz="UTC")
    if "created_at" in frame:
        raw = frame["created_at"]
        created = (
            pd.to_datetime(raw, unit="s", utc=True, errors="coerce")
            if pd.api.types.is_numeric_dtype(raw)
            else to_utc(raw)
        )
        unparsed = created.isna() & raw.notna() & (raw.astype("string").str.strip() != "")
        if unparsed.any():
            raise RecsysError(
                f"{path}: {int(unparsed.sum())} created_at value(s) are not dates, "
                f"e.g. {raw[unparsed].iloc[0]!r}"
            )
        created = created.fillna(first_seen)
    else:
        created = first_seen
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": title.astype(str),
            "category": category.astype(str),
            "genres": genres.astype(str),
            "created_at": created.fillna(fallback).astype("datetime64[us, UTC]"),
        }
    ).reset_index(drop=True)


def _rank_in_group(ordered: pd.DataFrame, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's position in its ``by`` group, in ``ordered``'s order, and its group's size."""
    groups = ordered.groupby(by)
    return groups.cumcount().to_numpy(), groups[by].transform("size").to_numpy()


def split_per_user(
    frame: pd.DataFrame, share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random (rest, held) split of each user's rows; users with one row keep it in ``rest``."""
    shuffled = frame.iloc[np.random.default_rng(seed).permutation(len(frame))]
    rank, size = _rank_in_group(shuffled, "user_id")
    held = rank < np.floor(size * share)
    return shuffled.loc[~held].sort_index(), shuffled.loc[held].sort_index()


def random_split(
    frame: pd.DataFrame, by: str, train_share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): each ``by`` group's rows (``user_id`` or ``item_id``) split at random,
    ``train_share`` to train (rounded), the rest to test."""
    if by not in {"user_id", "item_id"}:
        raise RecsysError(f"split by user or item, not {by!r}")
    shuffled = frame.iloc[np.random.default_rng(seed).permutation(len(frame))]
    rank, size = _rank_in_group(shuffled, by)
    in_test = rank < np.round(size * (1 - train_share))
    return shuffled.loc[~in_test].sort_index(), shuffled.loc[in_test].sort_index()


def temporal_split(frame: pd.DataFrame, train_share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) at one moment: the rows before the time that leaves about ``train_share``
    of them in train, and the rest (every row at or after it, so no second is split)."""
    if frame.empty:
        raise RecsysError("nothing to split: no rows")
    times = np.sort(frame["timestamp"].to_numpy())
    cut = times[min(len(times) - 1, round(len(times) * train_share))]
    before = (frame["timestamp"] < cut).to_numpy()
    if not before.any():
        raise RecsysError(f"every row is at {pd.Timestamp(cut)}: no past to train on")
    return frame.loc[before], frame.loc[~before]


def latest_per_user(frame: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, latest): each user's latest ``share`` of rows (rounded; ties in time keep the
    file's order) and the rows before them."""
    ordered = frame.sort_values(["user_id", "timestamp"], kind="stable")
    rank, size = _rank_in_group(ordered, "user_id")
    latest = rank >= size - np.round(size * share)
    return ordered.loc[~latest].sort_index(), ordered.loc[latest].sort_index()


def write_split(frame: pd.DataFrame, path: Path) -> None:
    """Write contract interactions as a split file that reads back the same: ratings alone in
    the u.data layout (stars as values, unix seconds), anything else (clicks, purchases...)
    tab-separated with a header of the contract columns, so no event becomes a rating. Whole
    values are written as integers, half stars as they are."""
    value = frame["value"]
    seconds = frame["timestamp"].astype("int64") / 10**6
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "value": value.astype("int64") if (value % 1 == 0).all() else value,
            "timestamp": seconds.astype("int64") if (seconds % 1 == 0).all() else seconds,
        }
    )
    if (frame["event_type"] == "rating").all():
        out.to_csv(path, sep="\t", header=False, index=False)
    else:
        out.insert(2, "event_type", frame["event_type"])
        out.to_csv(path, sep="\t", index=False)


@dataclass
class StaticModel:
    stage: Stage
    ranker: Ranker | None
    params: PipelineParams
    seconds: float


def fit_static(
    train: pd.DataFrame,
    catalog: pd.DataFrame,
    params: PipelineParams,
    *,
    label_share: float = 0.2,
    label_splits: int = 2,
    k: int = 10,
    labels: str = "random",
) -> StaticModel:
    """Train the pipeline on TRAIN (see the module docstring). ``labels="random"``: the ranker
    learns from ``label_splits`` independent random label splits of each user's rows, stacked;
    ``"time"``: from the last ``label_share`` of TRAIN's time, the sources fit on the rows
    before it (the product's protocol, for a TEST that follows TRAIN in time); ``"user-time"``:
    from each user's latest ``label_share`` of rows (for a TEST of each user's latest rows)."""
    from recsys.pipeline import fit_ranker, training_set

    started = time.perf_counter()
    item_ids = np.unique(np.concatenate([catalog["item_id"].to_numpy(), train["item_id"]]))
    as_of = train["timestamp"].max() + pd.Timedelta(seconds=1)
    if labels == "time":
        rest, held = temporal_split(train, 1 - label_share)
        splits = [(rest, held, held["timestamp"].min())]
    elif labels == "user-time":
        splits = [(*latest_per_user(train, label_share), as_of)]
    else:
        splits = [
            (*split_per_user(train, label_share, params.ranker.seed + split), as_of)
            for split in range(label_splits)
        ]
    sets = []
    for rest, held, label_as_of in splits:
        label_stage = fit_stage(
            rest, catalog, item_ids, params, as_of=label_as_of, count_scale=len(train) / len(rest)
        )
        sets.append(training_set(label_stage, held, params)[:3])
    ranker, _ = fit_ranker(sets, params, k=k)
    stage = fit_stage(train, catalog, item_ids, params, as_of=as_of)
    return StaticModel(stage, ranker, params, time.perf_counter() - started)


LABELS = ("auto", "random", "time", "user-time")


def label_protocol(train: pd.DataFrame, test: pd.DataFrame, labels: str) -> str:
    """Where the ranker's labels come from (:func:`fit_static`). ``auto`` mimics the split:
    ``time`` when TEST follows TRAIN in time, ``user-time`` when each user's TEST rows follow
    their TRAIN rows, else ``random``."""
    if labels not in LABELS:
        raise RecsysError(f"--labels must be one of {', '.join(LABELS)}, not {labels!r}")
    if labels != "auto":
        return labels
    if test.empty or train.empty:
        return "random"
    if test["timestamp"].min() >= train["timestamp"].max():
        return "time"
    last = train.groupby("user_id")["timestamp"].max()
    first = test.groupby("user_id")["timestamp"].min()
    both = first.index.intersection(last.index)
    if len(both) and (first[both] >= last[both]).all():
        return "user-time"
    return "random"


def benchmark_quality(
    train_path: Path,
    test_path: Path,
    *,
    k: int = 10,
    recs_out: Path | None = None,
    items_path: Path | None = None,
    params: PipelineParams | None = None,
    labels: str = "auto",
) -> dict:
    """Train on TRAIN, recommend ``k`` unseen items to every TEST user, score against TEST.

    ``labels`` (:func:`fit_static`): ``random``, ``time`` or ``user-time``; ``auto`` picks the
    one that mimics the split (:func:`label_protocol`).

    Returns the metrics of the pipeline and of each single source (as JSON-able dict)."""
    params = params or PipelineParams()
    train = read_interactions_file(train_path)
    test = read_interactions_file(test_path)
    for path, frame, what in ((train_path, train, "train on"), (test_path, test, "score")):
        if frame.empty:
            raise RecsysError(f"{path} has no rows: nothing to {what}")
    unknown = ~np.isin(test["user_id"].unique(), train["user_id"].unique())
    if unknown.all():
        raise RecsysError(
            f"none of the {len(unknown)} users of {test_path} is in {train_path}: "
            "no user to score (is it the split of another file?)"
        )
    new_items = float((~test["item_id"].isin(train["item_id"])).mean())
    if new_items == 1.0:
        raise RecsysError(
            f"none of the items of {test_path} is in {train_path}: nothing TRAIN learnt can be "
            "recommended (is it the split of another file?)"
        )
    labels = label_protocol(train, test, labels)
    item_ids = np.unique(np.concatenate([train.item_id, test.item_id]))
    catalog = read_items_file(items_path, item_ids, train)
    model = fit_static(train, catalog, params, k=k, labels=labels)
    stage = model.stage
    test_users = np.unique(test["user_id"].to_numpy())
    known = stage.user_rows(test_users) >= 0
    rows, score = holdout_scorer(stage, test, k)
    recs, _ = rank_users(stage, model.ranker, rows, k, params.candidates)
    metrics = {"pipeline": score(recs)}
    if not metrics["pipeline"]["users"]:
        raise RecsysError(
            f"no user of {test_path} to score: every row of a {train_path} user is an item "
            f"{train_path} already has for them (seen items are removed: is {test_path} a "
            f"part of {train_path}?)"
        )
    for name, source in stage.sources.items():
        metrics[name] = score(top_k_unseen(source, rows, stage.seen, k))
    if recs_out is not None:
        _write_recs(recs_out, test_users[known], recs, stage, test_users[~known], k)
    return {
        "k": k,
        "train_rows": len(train),
        "test_rows": len(test),
        "test_users": len(test_users),
        "test_users_unknown_to_train": int((~known).sum()),
        "train_seconds": round(model.seconds, 2),
        "ranker_labels": labels,
        "metrics": metrics,
        "lift_over_als": None if (lift := lift_over(metrics)) is None else round(lift, 4),
        "best_single_source": max(stage.sources, key=lambda name: metrics[name]["ndcg"]),
        "notes": verdict(metrics, k, model.ranker)
        + (
            [
                f"NOTE: {new_items:.0%} of the TEST rows are items TRAIN does not have: no "
                "model can recommend them, every metric is bounded below 1 by that"
            ]
            if new_items > 0.25
            else []
        ),
        "params": params.as_dict(),
    }


def _write_recs(
    path: Path, users: np.ndarray, recs: np.ndarray, stage: Stage, cold: np.ndarray, k: int
) -> None:
    """``user_id<TAB>rank<TAB>item_id`` lines; unknown users get the popular list."""
    from recsys.models.base import top_n

    popular = stage.item_ids[top_n(stage.sources["popularity"].item_scores, k)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for user, row in zip(users, recs, strict=True):
            for rank, item_row in enumerate(row[row >= 0], start=1):
                out.write(f"{user}\t{rank}\t{stage.item_ids[item_row]}\n")
        for user in cold:
            for rank, item in enumerate(popular, start=1):
                out.write(f"{user}\t{rank}\t{item}\n")


# ---- training cost --------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` in bytes since reset."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def reset(self) -> None:
        self.peak = self._process.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def phase(name: str, rss: PeakRSS, out: dict) -> Iterator[None]:
    rss.reset()
    started = time.perf_counter()
    yield
    out[name] = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
    }


def benchmark_training(frame: pd.DataFrame, catalog: pd.DataFrame, params: PipelineParams) -> dict:
    """Fit time and peak memory of each part of the pipeline on ``frame``."""
    from recsys.models.als import ALSCandidates
    from recsys.models.itemknn import ItemKNNCandidates
    from recsys.models.lowpass import LowPassCandidates
    from recsys.pipeline import training_set, user_item_weights

    rss = PeakRSS()
    out: dict = {}
    try:
        item_ids = np.unique(np.concatenate([catalog["item_id"].to_numpy(), frame["item_id"]]))
        user_ids = np.unique(frame["user_id"].to_numpy())
        with phase("matrix", rss, out):
            matrix = user_item_weights(frame, user_ids, item_ids)
        with phase("als_fit", rss, out):
            ALSCandidates.fit(matrix, params.als)
        with phase("itemknn_fit", rss, out):
            ItemKNNCandidates.fit(matrix, params.itemknn)
        with phase("lowpass_fit", rss, out):
            LowPassCandidates.fit(matrix, params.lowpass)
        cut = frame["timestamp"].max().floor("D")
        history = frame.loc[frame["timestamp"] < cut]
        future = frame.loc[frame["timestamp"] >= cut]
        with phase("stage_fit (all sources + features)", rss, out):
            stage = fit_stage(history, catalog, item_ids, params, as_of=cut)
        with phase("ranker_training_set", rss, out):
            x, y, groups, _ = training_set(stage, future, params)
        with phase("ranker_fit", rss, out):
            ranker = Ranker.fit(x, y, groups, params.ranker)
        out["ranker_rows"] = len(x)
        out["ranker_epochs"] = ranker.epochs_trained
    finally:
        rss.stop()
    out["interactions"] = len(frame)
    out["users"] = len(np.unique(frame["user_id"]))
    out["items"] = len(catalog)
    return out


def to_json(payload: dict) -> str:
    return json.dumps(payload, indent=2, default=float)


def with_seed(params: PipelineParams, seed: int) -> PipelineParams:
    return replace(
        params, als=replace(params.als, seed=seed), ranker=replace(params.ranker, seed=seed)
    )
