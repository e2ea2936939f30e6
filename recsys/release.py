"""The release unit: everything that must move together, in one folder, loadable without pickle.

    release.json                 metadata: pipeline params, training window, data fingerprint,
                                 metrics, feature service, categories, library versions, format
    user_ids.npy, item_ids.npy   row -> id indexes (sorted)
    als_user_factors.npy         ALS factors (float32)
    als_item_factors.npy
    user_items_{data,indices,indptr}.npy   the weights users gave items (seen filter, item-kNN)
    knn_{data,indices,indptr}.npy          pruned item-item similarity
    ease_weights.npy             EASE item-item weights (only for catalogs EASE was fit on)
    popularity.npy, trending.npy           non-personal scores (also the cold-start list)
    user_table.npy, user_affinity.npy      user features as of the training cut
    item_table.npy, item_category.npy      item features as of the training cut
    ranker.pt                    torch state dict, loaded with weights_only=True
    ranker_mean.npy, ranker_std.npy        input standardisation

Arrays load with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.errors import RecsysError
from recsys.models.als import ALSCandidates
from recsys.models.base import top_n
from recsys.models.ease import EASECandidates
from recsys.models.itemknn import ItemKNNCandidates
from recsys.models.popularity import PopularityCandidates
from recsys.models.ranker import Ranker
from recsys.pipeline import PipelineParams, Stage, rank_users

FORMAT_VERSION = 2
_DENSE = (
    "user_ids",
    "item_ids",
    "als_user_factors",
    "als_item_factors",
    "popularity",
    "trending",
    "user_table",
    "user_affinity",
    "item_table",
    "item_category",
    "ranker_mean",
    "ranker_std",
)


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user. ``fallback`` names the degraded path taken, if any."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None


class Release:
    """A trained recommender as served: a fitted stage (sources + features) and the ranker."""

    def __init__(
        self,
        meta: dict[str, Any],
        stage: Stage,
        ranker: Ranker | None,
        params: PipelineParams,
    ) -> None:
        self.meta = meta
        self.stage = stage
        self.ranker = ranker
        self.params = params
        self._user_row = {int(u): i for i, u in enumerate(stage.user_ids)}
        self._item_row = {int(v): i for i, v in enumerate(stage.item_ids)}
        cold = stage.sources["trending"].item_scores
        self._cold_scores = cold if cold.any() else stage.sources["popularity"].item_scores

    @property
    def user_ids(self) -> np.ndarray:
        return self.stage.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.stage.item_ids

    @property
    def n_users(self) -> int:
        return len(self.stage.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.stage.item_ids)

    def user_row(self, user_id: int) -> int | None:
        return self._user_row.get(int(user_id))

    def seen_rows(self, user_row: int) -> np.ndarray:
        matrix = self.stage.user_items
        return matrix.indices[matrix.indptr[user_row] : matrix.indptr[user_row + 1]]

    def cold_start(self, k: int, exclude: list[int] | None = None) -> Recommendation:
        """The list for users the model does not know: trending (or popular) items."""
        excluded = np.asarray([self._item_row[i] for i in exclude or [] if i in self._item_row])
        rows = top_n(self._cold_scores, k, excluded.astype(np.int64))
        return Recommendation(self.item_ids[rows], self._cold_scores[rows], "cold_start")

    def recommend(self, user_id: int, k: int, exclude: list[int] | None = None) -> Recommendation:
        """Top-``k`` unseen items for ``user_id`` ranked by the pipeline; unknown users get the
        cold-start list. Items in ``exclude`` never appear."""
        row = self.user_row(user_id)
        if row is None:
            return self.cold_start(k, exclude)
        excluded = np.asarray(
            [self._item_row[i] for i in exclude or [] if i in self._item_row], dtype=np.int64
        )
        recs, scores = rank_users(
            self.stage, self.ranker, np.array([row]), k, self.params.candidates, [excluded]
        )
        keep = recs[0] >= 0
        return Recommendation(self.item_ids[recs[0][keep]], scores[0][keep])

    # ---- persistence ------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write the release to ``folder`` (created); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stage = self.stage
        als = stage.sources["als"]
        knn = stage.sources["itemknn"].similarity
        arrays = {
            "user_ids": stage.user_ids,
            "item_ids": stage.item_ids,
            "als_user_factors": als.user_factors,
            "als_item_factors": als.item_factors,
            "popularity": stage.sources["popularity"].item_scores,
            "trending": stage.sources["trending"].item_scores,
            "user_table": stage.user_table,
            "user_affinity": stage.user_affinity,
            "item_table": stage.item_table,
            "item_category": stage.item_category,
            "user_items_data": stage.user_items.data,
            "user_items_indices": stage.user_items.indices,
            "user_items_indptr": stage.user_items.indptr,
            "knn_data": knn.data,
            "knn_indices": knn.indices,
            "knn_indptr": knn.indptr,
        }
        ease = stage.sources["ease"]
        if ease.fitted:
            arrays["ease_weights"] = ease.weights
        if self.ranker is not None:
            arrays["ranker_mean"] = self.ranker.mean
            arrays["ranker_std"] = self.ranker.std
            (folder / "ranker.pt").write_bytes(self.ranker.state_bytes())
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "pipeline_params": self.params.as_dict(),
            "as_of": stage.as_of.isoformat(),
            "categories": stage.categories,
            "has_ranker": self.ranker is not None,
            "has_ease": bool(ease.fitted),
        }
        (folder / "release.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Release:
        """Load a release written by :meth:`save`, without pickle.

        Raises:
            RecsysError: a file is missing or corrupt, or the format version is not this code's.
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
        names = [n for n in _DENSE if meta.get("has_ranker") or not n.startswith("ranker")]
        names += [f"{m}_{p}" for m in ("user_items", "knn") for p in ("data", "indices", "indptr")]
        names += ["ease_weights"] if meta.get("has_ease") else []
        try:
            a = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in names}
            params = PipelineParams.from_dict(meta["pipeline_params"])
            ranker = None
            if meta.get("has_ranker"):
                ranker = Ranker.from_state(
                    params.ranker,
                    a["ranker_mean"],
                    a["ranker_std"],
                    (folder / "ranker.pt").read_bytes(),
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise RecsysError(f"release at {folder} is incomplete or corrupt: {exc}") from None
        n_users, n_items = len(a["user_ids"]), len(a["item_ids"])
        user_items = sp.csr_matrix(
            (a["user_items_data"], a["user_items_indices"], a["user_items_indptr"]),
            shape=(n_users, n_items),
        )
        knn = sp.csr_matrix(
            (a["knn_data"], a["knn_indices"], a["knn_indptr"]), shape=(n_items, n_items)
        )
        stage = Stage(
            as_of=pd.Timestamp(meta["as_of"]),
            user_ids=a["user_ids"],
            item_ids=a["item_ids"],
            user_items=user_items,
            sources={
                "ease": EASECandidates(a.get("ease_weights"), _binary(user_items)),
                "als": ALSCandidates(a["als_user_factors"], a["als_item_factors"]),
                "itemknn": ItemKNNCandidates(knn, user_items),
                "popularity": PopularityCandidates(a["popularity"]),
                "trending": PopularityCandidates(a["trending"], name="trending"),
            },
            user_table=a["user_table"],
            user_affinity=a["user_affinity"],
            item_table=a["item_table"],
            item_category=a["item_category"],
            categories=list(meta["categories"]),
        )
        if stage.user_table.shape[0] != n_users or stage.item_table.shape[0] != n_items:
            raise RecsysError(f"release at {folder} has arrays of mismatched sizes; rebuild it")
        return cls(meta, stage, ranker, params)


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    out = matrix.copy()
    out.data = np.ones_like(out.data)
    return out
