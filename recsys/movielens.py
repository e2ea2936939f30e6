"""MovieLens loader for the GroupLens layouts, found by the files in the folder:

- ``ml-100k``: ``u.data``, ``u.item``, ``u.user`` (and ``u.genre`` if present);
- ``ml-1m`` (also ``ml-10m``): ``ratings.dat``, ``movies.dat``, ``users.dat`` if present,
  ``::``-separated;
- ``ml-latest``, ``ml-latest-small``, ``ml-20m``/``25m``/``32m``: ``ratings.csv`` and
  ``movies.csv`` (no user file).

Maps the files to the data contract: ratings become ``rating`` interactions (value 0.5-5),
movies become catalog items whose primary category is their first genre, and users keep age,
gender and occupation where the layout has them (else null). Nothing is downloaded: point
``--data-path`` at a folder that holds the files.

    recsys data movielens --data-path ../shared/data/ml-100k
"""

from __future__ import annotations

import csv
import io
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


ML1M_OCCUPATIONS = (
    *("other", "academic/educator", "artist", "clerical/admin", "college/grad student"),
    *("customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker"),
    *("K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist"),
    *("self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"),
)
"""``users.dat``'s occupation codes 0-20, as its README lists them."""

LAYOUTS = "u.data (ml-100k), ratings.dat (ml-1m, ml-10m) or ratings.csv (ml-latest, ml-20m+)"


def missing_files(folder: Path) -> list[str]:
    """The files ``folder`` lacks for its GroupLens layout, told by its ratings file (all three
    ratings files' names when it has none)."""
    needs = {
        "u.data": ("u.data", "u.item", "u.user"),
        "ratings.dat": ("ratings.dat", "movies.dat"),
        "ratings.csv": ("ratings.csv", "movies.csv"),
    }
    for ratings, files in needs.items():
        if (folder / ratings).is_file():
            return [name for name in files if not (folder / name).is_file()]
    return ["u.data, ratings.dat or ratings.csv"]


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise RecsysError(f"{path} not found: the MovieLens folder {folder} has no {name}")
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
            dtype={"user_id": "int64", "item_id": "int64", "rating": "float64", "ts": "int64"},
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise RecsysError(
            f"{path} is not in the u.data layout (user<TAB>item<TAB>rating<TAB>unix_seconds, "
            f"numbers): {str(exc).splitlines()[0]}"
        ) from None
    return _ratings(raw["user_id"], raw["item_id"], raw["rating"], raw["ts"])


def _ratings(user_id, item_id, stars, seconds) -> pd.DataFrame:
    """Contract interactions (``rating`` events) from id, star and unix-second columns."""
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_id, dtype=np.int64),
            "item_id": np.asarray(item_id, dtype=np.int64),
            "event_type": "rating",
            "value": np.asarray(stars, dtype=np.float64),
            "timestamp": pd.to_datetime(
                np.asarray(seconds, dtype=np.int64), unit="s", utc=True
            ).astype("datetime64[us, UTC]"),
        }
    )


def _read_dat(path: Path, names: list[str], dtype: dict | None = None) -> pd.DataFrame:
    """A ``::``-separated GroupLens ``.dat`` file (latin-1) as a frame of ``names``."""
    text = path.read_text(encoding="latin-1").replace("::", "\t")
    return pd.read_csv(
        io.StringIO(text),
        sep="\t",
        header=None,
        names=names,
        dtype=dtype,
        quoting=csv.QUOTE_NONE,
        engine="c",
    )


def read_ratings_dat(path: Path) -> pd.DataFrame:
    """Read an ml-1m / ml-10m ``ratings.dat`` (user::movie::stars::unix seconds).

    Raises:
        RecsysError: the file is missing or is not four ``::``-separated numeric columns.
    """
    if not path.is_file():
        raise RecsysError(f"{path} not found")
    try:
        raw = _read_dat(path, ["user_id", "item_id", "rating", "ts"])
        return _ratings(raw["user_id"], raw["item_id"], raw["rating"], raw["ts"])
    except (ValueError, TypeError, pd.errors.ParserError) as exc:
        raise RecsysError(
            f"{path} is not in the ratings.dat layout (user::movie::rating::unix_seconds): "
            f"{str(exc).splitlines()[0]}"
        ) from None


def read_ratings_csv(path: Path) -> pd.DataFrame:
    """Read an ml-latest style ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    Raises:
        RecsysError: the file is missing, lacks those columns or holds non-numbers.
    """
    if not path.is_file():
        raise RecsysError(f"{path} not found")
    try:
        raw = pd.read_csv(path)
        return _ratings(raw["userId"], raw["movieId"], raw["rating"], raw["timestamp"])
    except (KeyError, ValueError, TypeError, pd.errors.ParserError) as exc:
        raise RecsysError(
            f"{path} is not in the ratings.csv layout (userId,movieId,rating,timestamp): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def load_movielens(data_path: Path | str) -> Dataset:
    """Load a MovieLens folder in any of the GroupLens layouts (module doc) and map it to the
    contract.

    Items' ``created_at`` is the earlier of 1 January of the title's year and the item's first
    rating (the files carry no catalog dates); users' ``created_at`` is their first rating.
    Users without a user file are the raters, with null age, gender and occupation.

    Raises:
        RecsysError: the folder is missing, holds no known layout, or a file is malformed.
    """
    folder = Path(data_path).expanduser()
    if not folder.is_dir():
        raise RecsysError(f"--data-path {folder} is not a folder")
    try:
        if (folder / "u.data").is_file():
            interactions = read_udata(folder / "u.data")
            items, users, name = _items_100k(folder), _users_100k(folder), "ml-100k"
        elif (folder / "ratings.dat").is_file():
            interactions = read_ratings_dat(folder / "ratings.dat")
            items = _raw_items(_need(folder, "movies.dat"))
            users = _users_1m(folder) if (folder / "users.dat").is_file() else None
            name = "ml-1m" if users is not None else "ml-10m"
        elif (folder / "ratings.csv").is_file():
            interactions = read_ratings_csv(folder / "ratings.csv")
            items = _raw_items(_need(folder, "movies.csv"))
            users, name = None, folder.name
        else:
            raise RecsysError(f"{folder} holds no MovieLens ratings: expected {LAYOUTS}")
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise _malformed(folder, exc) from None
    return _to_contract(interactions, items, users, name)


def _malformed(where: Path, exc: Exception) -> RecsysError:
    return RecsysError(f"{where}: malformed MovieLens file: {str(exc).splitlines()[0]}")


def read_catalog(path: Path | str, interactions: pd.DataFrame) -> pd.DataFrame:
    """The contract catalog from one GroupLens movie file (``u.item``, ``movies.dat`` or
    ``movies.csv``), dated by ``interactions`` alone (an item's ``created_at`` is the earlier of
    its title's year and its first event there, as in :func:`load_movielens`). The folder's
    ratings are not read: a benchmark dates the catalog by its TRAIN rows, never by TEST.

    Raises:
        RecsysError: the file is missing, not a GroupLens movie file, or malformed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecsysError(f"no such file: {path}")
    try:
        return _items_to_contract(_raw_items(path), interactions)
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise _malformed(path, exc) from None


def _raw_items(path: Path) -> pd.DataFrame:
    """item_id, title and genres from a GroupLens movie file, told by its name."""
    if path.name == "u.item":
        return _items_100k(path.parent)
    if path.suffix == ".dat":
        return _read_dat(
            path,
            ["item_id", "title", "genres"],
            {"item_id": "int64", "title": "string", "genres": "string"},
        )
    if path.suffix == ".csv":
        return pd.read_csv(
            path, dtype={"movieId": "int64", "title": "string", "genres": "string"}
        ).rename(columns={"movieId": "item_id"})
    raise RecsysError(f"{path.name} is not a GroupLens movie file: use u.item, movies.dat or .csv")


def _items_100k(folder: Path) -> pd.DataFrame:
    """``u.item`` as item_id, title and ``|``-joined genres from its genre flags."""
    genre_file = folder / "u.genre"
    genres = GENRES_FALLBACK
    if genre_file.is_file():
        lines = genre_file.read_text(encoding="latin-1").splitlines()
        parsed = [line.split("|")[0] for line in lines if "|" in line]
        if len(parsed) == len(GENRES_FALLBACK):
            genres = parsed
    raw = pd.read_csv(
        _need(folder, "u.item"),
        sep="|",
        header=None,
        names=["item_id", "title", "release", "video_release", "url", *genres],
        encoding="latin-1",
        dtype={"item_id": "int64", "title": "string"},
    )
    flags = raw[list(genres)].fillna(0).astype(int).to_numpy().astype(bool)
    names = np.array(genres, dtype=object)
    return pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["title"],
            "genres": ["|".join(names[row]) for row in flags],
        }
    )


def _users_100k(folder: Path) -> pd.DataFrame:
    return pd.read_csv(
        _need(folder, "u.user"),
        sep="|",
        header=None,
        names=["user_id", "age", "gender", "occupation", "zip"],
        dtype={"user_id": "int64", "age": "Int64", "gender": "string", "occupation": "string"},
    )


def _users_1m(folder: Path) -> pd.DataFrame:
    """``users.dat``: the age is its bracket's lower bound (1, 18, 25, ...), the occupation
    the name of its code."""
    raw = _read_dat(
        folder / "users.dat",
        ["user_id", "gender", "age", "occupation", "zip"],
        {"user_id": "int64", "gender": "string", "age": "Int64", "occupation": "Int64"},
    )
    codes = raw["occupation"]
    names = np.array(ML1M_OCCUPATIONS, dtype=object)
    known = codes.notna() & codes.between(0, len(names) - 1)
    occupation = pd.Series(pd.NA, index=raw.index, dtype="string")
    occupation[known] = names[codes[known].astype(int).to_numpy()]
    return raw.assign(occupation=occupation)


def _to_contract(
    interactions: pd.DataFrame, raw_items: pd.DataFrame, raw_users: pd.DataFrame | None, name: str
) -> Dataset:
    """Items and users in the contract's columns, from item_id/title/genres and
    user_id/age/gender/occupation (``raw_users`` None: the raters, nothing known of them)."""
    items = _items_to_contract(raw_items, interactions)
    if raw_users is None:
        raw_users = pd.DataFrame(
            {
                "user_id": np.unique(interactions["user_id"].to_numpy()),
                "age": pd.NA,
                "gender": pd.NA,
                "occupation": pd.NA,
            }
        )
    user_first = interactions.groupby("user_id")["timestamp"].min()
    users = pd.DataFrame(
        {
            "user_id": raw_users["user_id"].astype("int64"),
            "created_at": raw_users["user_id"]
            .map(user_first)
            .fillna(interactions["timestamp"].min())
            .astype("datetime64[us, UTC]"),
            "age": raw_users["age"].astype("Int64"),
            "gender": raw_users["gender"].astype(object),
            "occupation": raw_users["occupation"].astype(object),
        }
    )
    return Dataset(interactions=interactions, items=items, users=users, name=name)


def _items_to_contract(raw_items: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Catalog items in the contract's columns: the first genre is the category (the last
    when the first is ``unknown``); ``created_at`` the earlier of the title's year and the
    item's first event in ``interactions``."""
    item_genres = [
        "unknown" if pd.isna(g) or g in ("", "(no genres listed)") else str(g)
        for g in raw_items["genres"]
    ]
    primary = [
        g.split("|")[-1] if g.startswith("unknown|") else g.split("|")[0] for g in item_genres
    ]
    first_seen = interactions.groupby("item_id")["timestamp"].min()
    years = raw_items["title"].str.extract(_YEAR)[0]
    year_start = pd.to_datetime(years + "-01-01", utc=True, errors="coerce")
    first = raw_items["item_id"].map(first_seen)
    created = pd.concat([year_start, first], axis=1).min(axis=1)
    created = created.fillna(interactions["timestamp"].min())
    return pd.DataFrame(
        {
            "item_id": raw_items["item_id"].astype("int64"),
            "title": raw_items["title"].fillna("").astype(str),
            "category": primary,
            "genres": item_genres,
            "created_at": created.astype("datetime64[us, UTC]"),
        }
    )
