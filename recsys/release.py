"""The release unit: everything that must move together, in one folder, loadable without pickle.

    release.json                 metadata: pipeline params, training window, data fingerprint,
                                 metrics, feature service, categories, library versions, format
    user_ids.npy, item_ids.npy   row -> id indexes (sorted)
    als_user_factors.npy         ALS factors (float32)
    als_item_factors.npy
    user_items_{data,indices,indptr}.npy   the weights users gave items (seen filter, item-kNN)
    seen_before_{user_ids,indices,indptr}.npy  items users had before the training window (seen
                                 filter; only for releases trained on a window of the lake)
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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.errors import RecsysError
from recsys.models.als import ALSCandidates
from recsys.models.base import binarised, top_n
from recsys.models.ease import EASECandidates
from recsys.models.itemknn import ItemKNNCandidates
from recsys.models.lowpass import LowPassCandidates
from recsys.models.popularity import PopularityCandidates
from recsys.models.ranker import Ranker
from recsys.pipeline import CandidateList, PipelineParams, SeenBefore, Stage

FORMAT_VERSION = 3
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


class UnreadableRelease(RecsysError):
    """A release whose files are missing, truncated or corrupt. Reading it again does not help:
    the version itself is broken. (A release of another format version is not broken: loading
    it raises a plain RecsysError.)"""


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user. ``fallback`` names the degraded path taken, if any."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None


@dataclass(frozen=True)
class CandidateBlock:
    """One user's merged candidates and the ranker columns that depend on them alone."""

    cands: CandidateList
    per_source: np.ndarray

    @property
    def nbytes(self) -> int:
        c = self.cands
        return c.items.nbytes + c.scores.nbytes + c.ranks.nbytes + self.per_source.nbytes


@dataclass(frozen=True)
class Ranked:
    """A ranked list in item rows, and the wall time of its candidate and ranking stages."""

    rows: np.ndarray
    scores: np.ndarray
    candidates_s: float = 0.0
    features_s: float = 0.0
    ranking_s: float = 0.0


class Release:
    """A trained recommender as served: a fitted stage (sources + features) and the ranker.

    A user's candidate set depends on the release alone, so it is computed once per user and
    kept (with its per-source ranker columns) in a bounded memo: :meth:`warm` fills it for the
    most active users up to a memory budget before a server takes traffic; other users fill
    it on their first request, least recently used first out.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        stage: Stage,
        ranker: Ranker | None,
        params: PipelineParams,
        seen_before: SeenBefore | None = None,
    ) -> None:
        self.meta = meta
        self.stage = stage
        self.ranker = ranker
        self.params = params
        # what users had before the training window: the stage masks it for the users it
        # knows; users it does not know (active only before the window) are looked up here
        self.seen_before = seen_before if seen_before is not None and seen_before.n_users else None
        if self.seen_before is not None and stage.seen_before is None:
            stage.seen_before = self.seen_before.aligned(stage.user_ids)
        self._user_row = {int(u): i for i, u in enumerate(stage.user_ids)}
        cold = stage.sources["trending"].item_scores
        self._cold_scores = cold if cold.any() else stage.sources["popularity"].item_scores
        self._memo: OrderedDict[int, CandidateBlock] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._memo_bytes = 0
        self.memo_limit_bytes = 0

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
        """Item rows the user of ``user_row`` has seen (in the window and before it)."""
        matrix = self.stage.seen
        return matrix.indices[matrix.indptr[user_row] : matrix.indptr[user_row + 1]]

    def seen_item_ids(self, user_id: int) -> np.ndarray:
        """Items ``user_id`` has seen up to the training cut, as far as this release knows:
        its window's events and, for a release trained on a window, the lake before it."""
        row = self.user_row(user_id)
        if row is not None:
            return self.item_ids[self.seen_rows(row)]
        if self.seen_before is not None:
            return self.item_ids[self.seen_before.rows_of(int(user_id))]
        return np.zeros(0, dtype=self.item_ids.dtype)

    def cold_start(
        self, k: int, exclude: list[int] | None = None, user_id: int | None = None
    ) -> Recommendation:
        """The list for users the model does not know: trending (or popular) items, without
        ``exclude`` and, for a ``user_id`` active before the training window, what they had."""
        excluded = self.item_rows(exclude or [])
        if user_id is not None and self.seen_before is not None:
            excluded = np.concatenate([excluded, self.seen_before.rows_of(int(user_id))])
        rows = top_n(self._cold_scores, k, excluded)
        return Recommendation(self.item_ids[rows], self._cold_scores[rows], "cold_start")

    def recommend(self, user_id: int, k: int, exclude: list[int] | None = None) -> Recommendation:
        """Top-``k`` unseen items for ``user_id`` ranked by the pipeline; unknown users get the
        cold-start list. Items in ``exclude`` never appear."""
        row = self.user_row(user_id)
        if row is None:
            return self.cold_start(k, exclude, user_id)
        ranked = self.rank_row(row, k, self.item_rows(exclude or []))
        return Recommendation(self.item_ids[ranked.rows], ranked.scores)

    def item_rows(self, item_ids: list[int] | np.ndarray) -> np.ndarray:
        """Rows of the ``item_ids`` this release knows (others are dropped)."""
        if not len(item_ids):
            return np.zeros(0, dtype=np.int64)
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        return pos[self.item_ids[pos] == ids].astype(np.int64)

    def rank_row(
        self,
        row: int,
        k: int,
        excluded: np.ndarray,
        overrides: Callable[[np.ndarray], dict[str, np.ndarray | None]] | None = None,
    ) -> Ranked:
        """Top-``k`` item rows for user ``row``: its candidates, ranked, then ``excluded`` item
        rows filtered out. When the filter would leave fewer than ``k`` candidates, the
        candidates are drawn again with ``excluded`` removed first. ``overrides(item_rows)``
        gives feature rows that replace the release's (see ``Stage.features``): serving passes
        the online store's. A ``k`` above the release's candidate count draws ``k`` candidates
        (not memoised), so the list is never cut short by it."""
        started = time.perf_counter()
        block = self._block(row, n=k) if k > self.params.candidates else self.candidate_block(row)
        keep = None
        if len(excluded):
            keep = _not_in(block.cands.items, excluded)
            if keep.sum() < min(k, len(block.cands.items)):
                block, keep = self._block(row, [excluded], n=k), None
        items = block.cands.items
        fetched = time.perf_counter()
        if self.ranker is None or not len(items):
            values_all = -np.arange(len(items), dtype=np.float32)
            built = fetched
        else:
            extra = overrides(items) if overrides is not None else {}
            matrix = self.stage.features(row, block.cands, per_source=block.per_source, **extra)
            built = time.perf_counter()
            values_all = self.ranker.score(matrix)
        if keep is not None:
            values_all = np.where(keep, values_all, -np.inf)
        order = np.argsort(-values_all, kind="stable")[: min(k, len(items))]
        if keep is not None:
            order = order[keep[order]]
        ranked = time.perf_counter()
        return Ranked(
            items[order],
            np.asarray(values_all[order], dtype=np.float32),
            fetched - started,
            built - fetched,
            ranked - built,
        )

    def candidate_block(self, row: int) -> CandidateBlock:
        """The user's candidates and per-source ranker columns, from the memo when kept."""
        block = self._memo.get(row)
        if block is not None:
            with self._memo_lock:
                if row in self._memo:
                    self._memo.move_to_end(row)
            return block
        block = self._block(row)
        self._keep(row, block)
        return block

    def _block(
        self, row: int, exclude: list[np.ndarray] | None = None, n: int = 0
    ) -> CandidateBlock:
        """``row``'s candidates: the release's count of them, or ``n`` when more."""
        count = max(self.params.candidates, n)
        cands = self.stage.candidate_lists(np.array([row]), count, exclude)[0]
        return CandidateBlock(cands, self.stage.source_features(cands))

    def _keep(self, row: int, block: CandidateBlock) -> None:
        if self.memo_limit_bytes <= 0:
            return
        with self._memo_lock:
            if row in self._memo:
                return
            self._memo[row] = block
            self._memo_bytes += block.nbytes
            while self._memo_bytes > self.memo_limit_bytes and len(self._memo) > 1:
                _, dropped = self._memo.popitem(last=False)
                self._memo_bytes -= dropped.nbytes

    def warm(self, limit_mb: float, *, batch: int = 256, budget_s: float | None = None) -> int:
        """Keep up to ``limit_mb`` MB of candidate blocks, computing them now for the most
        active users first (most interactions), for at most ``budget_s`` seconds of wall time
        (the rest are computed on their first request, or by another call: users already kept
        are skipped). Returns the number of users kept."""
        self.memo_limit_bytes = int(limit_mb * 1024 * 1024)
        if self.memo_limit_bytes <= 0 or not self.n_users:
            return 0
        deadline = None if budget_s is None else time.monotonic() + budget_s
        order = self._rows_by_activity()
        for start in range(0, len(order), batch):
            if deadline is not None and time.monotonic() >= deadline:
                break
            rows = np.array([r for r in order[start : start + batch] if r not in self._memo])
            if not len(rows):
                continue
            lists = self.stage.candidate_lists(rows, self.params.candidates)
            for row, cands in zip(rows, lists, strict=True):
                block = CandidateBlock(cands, self.stage.source_features(cands))
                if self._memo_bytes + block.nbytes > self.memo_limit_bytes:
                    return len(self._memo)
                self._keep(int(row), block)
        return len(self._memo)

    def _rows_by_activity(self) -> np.ndarray:
        """User rows, most interactions in the training data first."""
        return np.argsort(-np.diff(self.stage.user_items.indptr), kind="stable")

    def users_by_activity(self, limit: int | None = None) -> list[int]:
        """User ids, most interactions in the training data first (the first ``limit``)."""
        return self.user_ids[self._rows_by_activity()[:limit]].tolist()

    @property
    def memo_status(self) -> dict[str, float]:
        """Users kept in the candidate memo and their size."""
        return {
            "users": len(self._memo),
            "mb": round(self._memo_bytes / 2**20, 2),
            "limit_mb": round(self.memo_limit_bytes / 2**20, 2),
        }

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
        lowpass = stage.sources["lowpass"]
        if lowpass.fitted:
            arrays["lowpass_in_factors"] = lowpass.in_factors
            arrays["lowpass_out_factors"] = lowpass.out_factors
        if self.seen_before is not None:
            arrays["seen_before_user_ids"] = self.seen_before.user_ids
            arrays["seen_before_indices"] = self.seen_before.matrix.indices
            arrays["seen_before_indptr"] = self.seen_before.matrix.indptr
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
            "has_lowpass": bool(lowpass.fitted),
            "has_seen_before": self.seen_before is not None,
        }
        (folder / "release.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Release:
        """Load a release written by :meth:`save`, without pickle.

        Raises:
            UnreadableRelease: a file is missing or corrupt.
            RecsysError: the format version is not this code's.
        """
        folder = Path(folder)
        meta_path = folder / "release.json"
        if not meta_path.is_file():
            raise UnreadableRelease(f"{folder} is not a release (no release.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise UnreadableRelease(
                f"release at {folder} has a corrupt release.json: {exc}"
            ) from None
        if not isinstance(meta, dict):
            raise UnreadableRelease(f"release at {folder} has a corrupt release.json")
        if meta.get("format_version") != FORMAT_VERSION:
            # not broken: written by other code (an upgrade half done); a person decides
            raise RecsysError(
                f"release at {folder} has format {meta.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; retrain or upgrade"
            )
        names = [n for n in _DENSE if meta.get("has_ranker") or not n.startswith("ranker")]
        names += [f"{m}_{p}" for m in ("user_items", "knn") for p in ("data", "indices", "indptr")]
        names += ["ease_weights"] if meta.get("has_ease") else []
        if meta.get("has_lowpass"):
            names += ["lowpass_in_factors", "lowpass_out_factors"]
        if meta.get("has_seen_before"):  # absent in releases written before it existed
            names += [f"seen_before_{p}" for p in ("user_ids", "indices", "indptr")]
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
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise UnreadableRelease(
                f"release at {folder} is incomplete or corrupt: {exc}"
            ) from None
        n_users, n_items = len(a["user_ids"]), len(a["item_ids"])
        user_items = sp.csr_matrix(
            (a["user_items_data"], a["user_items_indices"], a["user_items_indptr"]),
            shape=(n_users, n_items),
        )
        knn = sp.csr_matrix(
            (a["knn_data"], a["knn_indices"], a["knn_indptr"]), shape=(n_items, n_items)
        )
        history = binarised(user_items)  # what EASE and low-pass score from
        stage = Stage(
            as_of=pd.Timestamp(meta["as_of"]),
            user_ids=a["user_ids"],
            item_ids=a["item_ids"],
            user_items=user_items,
            sources={
                "ease": EASECandidates(a.get("ease_weights"), history),
                "als": ALSCandidates(a["als_user_factors"], a["als_item_factors"]),
                "itemknn": ItemKNNCandidates(knn, user_items),
                "lowpass": LowPassCandidates(
                    a.get("lowpass_in_factors"), a.get("lowpass_out_factors"), history
                ),
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
        seen_before = None
        if meta.get("has_seen_before"):
            try:
                seen_before = SeenBefore.from_arrays(
                    a["seen_before_user_ids"],
                    a["seen_before_indices"],
                    a["seen_before_indptr"],
                    n_items,
                )
            except ValueError as exc:
                raise UnreadableRelease(
                    f"release at {folder} has a corrupt seen-before index: {exc}"
                ) from None
        return cls(meta, stage, ranker, params, seen_before)


def _not_in(items: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``~np.isin(items, excluded)``, without isin's sort for the few ids a request excludes."""
    if len(excluded) > 16:
        return ~np.isin(items, excluded)
    keep = np.ones(len(items), dtype=bool)
    for item in excluded:
        keep &= items != item
    return keep
