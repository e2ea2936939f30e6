"""The release unit: everything that must move together, in one folder, loadable without pickle.

    release.json            metadata: params, training window, data fingerprint, metrics,
                            feature service, library versions, format version
    user_ids.npy            user row -> user_id (sorted)
    item_ids.npy            item row -> item_id (sorted)
    als_user_factors.npy    ALS factors (float32)
    als_item_factors.npy
    popularity.npy          cold-start scores per item row
    seen_indptr.npy         CSR of items each user already interacted with (to filter them)
    seen_indices.npy

All arrays load with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import RecsysError
from recsys.models.als import ALSCandidates
from recsys.models.base import top_n
from recsys.models.popularity import PopularityCandidates

FORMAT_VERSION = 1
_ARRAYS = (
    "user_ids",
    "item_ids",
    "als_user_factors",
    "als_item_factors",
    "popularity",
    "seen_indptr",
    "seen_indices",
)


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user. ``fallback`` names the degraded path taken, if any."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None


class Release:
    """A trained recommender as served: ALS candidates, popularity fallback, seen-item filter."""

    def __init__(
        self,
        meta: dict[str, Any],
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        als: ALSCandidates,
        popularity: PopularityCandidates,
        seen: sp.csr_matrix,
    ) -> None:
        self.meta = meta
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.als = als
        self.popularity = popularity
        self.seen = seen
        self._user_row = {int(u): i for i, u in enumerate(self.user_ids)}
        self._item_row = {int(v): i for i, v in enumerate(self.item_ids)}
        if not (len(self.item_ids) == als.n_items == popularity.n_items == seen.shape[1]):
            raise RecsysError("release arrays disagree on the number of items; rebuild it")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_row(self, user_id: int) -> int | None:
        return self._user_row.get(int(user_id))

    def seen_rows(self, user_row: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[user_row] : self.seen.indptr[user_row + 1]]

    def recommend(self, user_id: int, k: int, exclude: list[int] | None = None) -> Recommendation:
        """Top-``k`` unseen items for ``user_id``; unknown users get the popular list."""
        excluded = [self._item_row[i] for i in (exclude or []) if i in self._item_row]
        row = self.user_row(user_id)
        if row is None:
            rows = top_n(self.popularity.item_scores, k, np.asarray(excluded, dtype=np.int64))
            return Recommendation(
                self.item_ids[rows], self.popularity.item_scores[rows], "cold_start"
            )
        drop = np.concatenate([self.seen_rows(row), np.asarray(excluded, dtype=np.int64)])
        scores = self.als.score(row)
        rows = top_n(scores, k, drop)
        return Recommendation(self.item_ids[rows], scores[rows])

    # ---- persistence ------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write the release to ``folder`` (created); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "als_user_factors": self.als.user_factors,
            "als_item_factors": self.als.item_factors,
            "popularity": self.popularity.item_scores,
            "seen_indptr": self.seen.indptr.astype(np.int64),
            "seen_indices": self.seen.indices.astype(np.int32),
        }
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        meta = {**self.meta, "format_version": FORMAT_VERSION}
        (folder / "release.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Release:
        """Load a release written by :meth:`save`, without pickle.

        Raises:
            RecsysError: a file is missing, or the format version is not this code's.
        """
        folder = Path(folder)
        meta_path = folder / "release.json"
        if not meta_path.is_file():
            raise RecsysError(f"{folder} is not a release (no release.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise RecsysError(
                f"release at {folder} has format {meta.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; retrain or upgrade"
            )
        try:
            arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in _ARRAYS}
        except (OSError, ValueError) as exc:
            raise RecsysError(f"release at {folder} is incomplete or corrupt: {exc}") from None
        n_users, n_items = len(arrays["user_ids"]), len(arrays["item_ids"])
        seen = sp.csr_matrix(
            (
                np.ones(len(arrays["seen_indices"]), dtype=np.float32),
                arrays["seen_indices"],
                arrays["seen_indptr"],
            ),
            shape=(n_users, n_items),
        )
        return cls(
            meta,
            arrays["user_ids"],
            arrays["item_ids"],
            ALSCandidates(arrays["als_user_factors"], arrays["als_item_factors"]),
            PopularityCandidates(arrays["popularity"]),
            seen,
        )
