"""MovieLens loader for the GroupLens ``ml-100k`` layout (``u.data``, ``u.item``, ``u.user``).

Maps the files to the data contract: ratings become ``rating`` interactions (value 1-5), movies
become catalog items whose primary category is their first genre, and users keep age, gender
and occupation. Nothing is downloaded: point ``--data-path`` at a folder that holds the files.

    recsys data movielens --data-path ../shared/data/ml-100k
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import RecsysError

GENRES_FALLBACK = (
    *("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime"),
    *("Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery"),
    *("Romance", "Sci-Fi", "Thriller", "War", "Western"),
)

_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class Dataset:
    """A data set mapped to the contract: interactions, items and users frames."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    name: str


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise RecsysError(
            f"{path} not found: --data-path must be a folder in the GroupLens ml-100k layout "
            "(u.data, u.item, u.user)"
        )
    return path


def read_udata(path: Path) -> pd.DataFrame:
    """Read a ``u.data``-layout file (user, item, rating, unix seconds; tab-separated).

    Returns contract interactions (``event_type`` = ``rating``).

    Raises:
        RecsysError: the file is missing or is not four tab-separated integer columns.
    """
    if not path.is_file():
        raise RecsysError(f"{path} not found")
    try:
        raw = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=["user_id", "item_id", "rating", "ts"],
            dtype="int64",
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise RecsysError(
            f"{path} is not in the u.data layout (user<TAB>item<TAB>rating<TAB>unix_seconds, "
            f"integers): {str(exc).splitlines()[0]}"
        ) from None
    return pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "event_type": "rating",
            "value": raw["rating"].astype("float64"),
            "timestamp": pd.to_datetime(raw["ts"], unit="s", utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )


def load_movielens(data_path: Path | str) -> Dataset:
    """Load MovieLens-100K from ``data_path`` and map it to the contract.

    Items' ``created_at`` is the earlier of 1 January of the title's year and the item's first
    rating (the files carry no catalog dates); users' ``created_at`` is their first rating.

    Raises:
        RecsysError: the folder or a file is missing or malformed.
    """
    folder = Path(data_path).expanduser()
    if not folder.is_dir():
        raise RecsysError(f"--data-path {folder} is not a folder")
    interactions = read_udata(_need(folder, "u.data"))

    genre_file = folder / "u.genre"
    genres = GENRES_FALLBACK
    if genre_file.is_file():
        lines = genre_file.read_text(encoding="latin-1").splitlines()
        parsed = [line.split("|")[0] for line in lines if "|" in line]
        if len(parsed) == len(GENRES_FALLBACK):
            genres = parsed
    item_cols = ["item_id", "title", "release", "video_release", "url", *genres]
    try:
        raw_items = pd.read_csv(
            _need(folder, "u.item"),
            sep="|",
            header=None,
            names=item_cols,
            encoding="latin-1",
            dtype={"item_id": "int64", "title": "string"},
        )
        raw_users = pd.read_csv(
            _need(folder, "u.user"),
            sep="|",
            header=None,
            names=["user_id", "age", "gender", "occupation", "zip"],
            dtype={"user_id": "int64", "age": "Int64", "gender": "string", "occupation": "string"},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise RecsysError(
            f"{folder}: malformed MovieLens file: {str(exc).splitlines()[0]}"
        ) from None

    flags = raw_items[genres].fillna(0).astype(int).to_numpy()
    names = np.array(genres, dtype=object)
    item_genres = ["|".join(names[row.astype(bool)]) or "unknown" for row in flags]
    primary = [
        g.split("|")[-1] if g.startswith("unknown|") else g.split("|")[0] for g in item_genres
    ]
    first_seen = interactions.groupby("item_id")["timestamp"].min()
    years = raw_items["title"].str.extract(_YEAR)[0]
    year_start = pd.to_datetime(years + "-01-01", utc=True, errors="coerce")
    first = raw_items["item_id"].map(first_seen)
    created = pd.concat([year_start, first], axis=1).min(axis=1)
    created = created.fillna(interactions["timestamp"].min())
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"].astype("int64"),
            "title": raw_items["title"].fillna("").astype(str),
            "category": primary,
            "genres": item_genres,
            "created_at": created.astype("datetime64[us, UTC]"),
        }
    )
    user_first = interactions.groupby("user_id")["timestamp"].min()
    users = pd.DataFrame(
        {
            "user_id": raw_users["user_id"],
            "created_at": raw_users["user_id"]
            .map(user_first)
            .fillna(interactions["timestamp"].min())
            .astype("datetime64[us, UTC]"),
            "age": raw_users["age"].astype("Int64"),
            "gender": raw_users["gender"].astype(object),
            "occupation": raw_users["occupation"].astype(object),
        }
    )
    return Dataset(interactions=interactions, items=items, users=users, name="ml-100k")
