"""The recommendation pipeline: candidate sources -> merged candidate set -> features -> ranker.

A :class:`Stage` is everything fitted on a history up to ``as_of``: the candidate sources
(ALS, item-kNN, popularity, trending) and the feature tables (features/compute.py). The same
stage code serves three purposes, which is what keeps training and serving consistent:

* ranker training: a stage fit on the days before the label window, labels from the window;
* evaluation: a stage fit on the days before the holdout, scored on the holdout;
* the release: a stage fit on the whole window, shipped in the release unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.compute import ITEM_NUMERIC, USER_NUMERIC, category_vocabulary
from features.compute import item_features as compute_item_features
from features.compute import user_features as compute_user_features
from recsys.models.als import ALSCandidates, ALSParams
from recsys.models.base import CandidateSource, binarised, one_blas_thread, top_k_per_row
from recsys.models.ease import EASECandidates, EASEParams
from recsys.models.itemknn import ItemKNNCandidates, ItemKNNParams
from recsys.models.lowpass import LowPassCandidates, LowPassParams
from recsys.models.popularity import PopularityCandidates
from recsys.models.ranker import Ranker, RankerParams

SOURCES = ("ease", "als", "itemknn", "lowpass", "popularity", "trending")
SOURCE_WEIGHTS = (1.0, 1.0, 0.5, 0.5, 0.25, 0.25)
"""How much each source's ranks count when candidates are merged (rank / weight, lowest wins)."""
_PER_SOURCE = ("score", "zscore", "share_of_top", "rank", "present")
_LOG_FEATURES = {"events", "items", "users", "days"}  # counts and ages: log1p-compressed


@dataclass(frozen=True)
class PipelineParams:
    """Everything a retrain may tune. Plain values so it round-trips through JSON."""

    als: ALSParams = field(default_factory=ALSParams)
    itemknn: ItemKNNParams = field(default_factory=ItemKNNParams)
    ease: EASEParams = field(default_factory=EASEParams)
    lowpass: LowPassParams = field(default_factory=LowPassParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    candidates: int = 200
    trending_half_life_days: float = 2.0

    def as_dict(self) -> dict:
        return {
            "als": self.als.as_dict(),
            "itemknn": self.itemknn.as_dict(),
            "ease": self.ease.as_dict(),
            "lowpass": self.lowpass.as_dict(),
            "ranker": self.ranker.as_dict(),
            "candidates": self.candidates,
            "trending_half_life_days": self.trending_half_life_days,
        }

    @classmethod
    def from_dict(cls, payload: dict) -> PipelineParams:
        return cls(
            als=ALSParams(**payload["als"]),
            itemknn=ItemKNNParams(**payload["itemknn"]),
            ease=EASEParams(**payload["ease"]),
            lowpass=LowPassParams(**payload.get("lowpass", {})),
            ranker=RankerParams.from_dict(payload["ranker"]),
            candidates=int(payload["candidates"]),
            trending_half_life_days=float(payload["trending_half_life_days"]),
        )


def feature_names() -> list[str]:
    """Names of the ranker's input columns, in order."""
    per_source = [f"{s}_{what}" for s in SOURCES for what in _PER_SOURCE]
    return [*per_source, *USER_NUMERIC, *ITEM_NUMERIC, "user_category_affinity_of_item"]


def user_item_weights(
    frame: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> sp.csr_matrix:
    """Users x items matrix of summed implicit weights (log-damped), ids outside the indexes
    ignored."""
    from recsys.contract import implicit_weight

    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    rows = np.searchsorted(user_ids, users)
    cols = np.searchsorted(item_ids, items)
    ok = (rows < len(user_ids)) & (cols < len(item_ids))
    ok &= user_ids[np.minimum(rows, len(user_ids) - 1)] == users
    ok &= item_ids[np.minimum(cols, len(item_ids) - 1)] == items
    matrix = sp.csr_matrix(
        (implicit_weight(frame)[ok], (rows[ok], cols[ok])),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float64,
    )
    matrix.sum_duplicates()
    matrix.data = np.log1p(matrix.data)
    return matrix.astype(np.float32)


@lru_cache(maxsize=64)
def _compressed_columns(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``names`` are log1p-compressed, and which of those are count-scaled."""
    logged = [j for j, n in enumerate(names) if any(part in n for part in _LOG_FEATURES)]
    scaled = [j for j in logged if "events" in names[j] or names[j].endswith("_total")]
    return np.asarray(logged, dtype=np.int64), np.asarray(scaled, dtype=np.int64)


def _compress(names: tuple[str, ...], table: np.ndarray, count_scale: float = 1.0) -> np.ndarray:
    """log1p of counts and ages; counts multiplied by ``count_scale`` first, so a stage fit on
    a share of the data yields features on the scale of one fit on all of it."""
    out = table.astype(np.float32, copy=True)
    logged, scaled = _compressed_columns(tuple(names))
    if count_scale != 1.0 and len(scaled):
        out[:, scaled] *= count_scale
    if len(logged):
        out[:, logged] = np.log1p(np.clip(out[:, logged], 0, None))
    return out


def ranker_view(names: tuple[str, ...], raw: np.ndarray) -> np.ndarray:
    """Raw feature values (features/compute.py, the Feast stores) as a release's tables hold
    them, i.e. what the ranker sees: log1p of counts and ages."""
    return _compress(names, raw)


@dataclass(frozen=True)
class SeenBefore:
    """Which items each user interacted with before a history began: a stage fit on a window
    (``recsys train --window-days``, the guardian's retrain) knows only the window's events,
    and without this would recommend items a user had before it, and treat users active only
    before it as never seen. Rows: ``user_ids`` (sorted); columns: a stage's item rows."""

    user_ids: np.ndarray
    matrix: sp.csr_matrix  # (len(user_ids), n_items), 1 where seen

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, item_ids: np.ndarray) -> SeenBefore:
        """Who had what in ``frame`` (any event counts); items outside ``item_ids`` dropped:
        they cannot be recommended anyway."""
        user_ids = np.unique(frame["user_id"].to_numpy()).astype(np.int64)
        matrix = binarised(user_item_weights(frame, user_ids, item_ids))
        return cls(user_ids, matrix)

    @classmethod
    def from_arrays(cls, user_ids, indices, indptr, n_items: int) -> SeenBefore:
        """Raises ValueError when the arrays do not form such an index (a corrupt file)."""
        data = np.ones(len(indices), dtype=np.float32)
        matrix = sp.csr_matrix((data, indices, indptr), shape=(len(user_ids), n_items))
        matrix.check_format(full_check=True)
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if len(user_ids) > 1 and not (np.diff(user_ids) > 0).all():
            raise ValueError("user ids are not sorted and unique")
        return cls(user_ids, matrix)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def rows_of(self, user_id: int) -> np.ndarray:
        """The item rows ``user_id`` had (empty for a user without earlier events)."""
        pos = int(np.searchsorted(self.user_ids, user_id))
        if pos >= len(self.user_ids) or self.user_ids[pos] != user_id:
            return np.zeros(0, dtype=np.int64)
        m = self.matrix
        return m.indices[m.indptr[pos] : m.indptr[pos + 1]].astype(np.int64)

    def aligned(self, user_ids: np.ndarray) -> sp.csr_matrix:
        """The rows of ``user_ids`` (empty rows for users without earlier events)."""
        pos = np.minimum(np.searchsorted(self.user_ids, user_ids), max(self.n_users - 1, 0))
        found = (
            self.user_ids[pos] == user_ids if self.n_users else np.zeros(len(user_ids), dtype=bool)
        )
        pick = sp.csr_matrix(
            (np.ones(int(found.sum()), dtype=np.float32), (np.flatnonzero(found), pos[found])),
            shape=(len(user_ids), self.n_users),
        )
        return (pick @ self.matrix).tocsr()


@dataclass
class CandidateList:
    """One user's merged candidates: item rows with each source's score and rank."""

    items: np.ndarray  # (m,) item rows
    scores: np.ndarray  # (m, n_sources) source score, 0 where the source did not propose it
    ranks: np.ndarray  # (m, n_sources) 1-based rank, 0 where absent
    top: np.ndarray  # (n_sources,) the source's best score for this user (0 if none)


@dataclass
class Stage:
    """Candidate sources and feature tables fitted on a history up to ``as_of``."""

    as_of: pd.Timestamp
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_items: sp.csr_matrix
    sources: dict[str, CandidateSource]
    user_table: np.ndarray  # (n_users, len(USER_NUMERIC)), compressed
    user_affinity: np.ndarray  # (n_users, n_categories)
    item_table: np.ndarray  # (n_items, len(ITEM_NUMERIC)), compressed
    item_category: np.ndarray  # (n_items,), -1 when unknown
    categories: list[str]
    seen_before: sp.csr_matrix | None = None  # (n_users, n_items): had before ``user_items``
    _seen: sp.csr_matrix | None = field(default=None, repr=False, compare=False)

    @property
    def seen(self) -> sp.csr_matrix:
        """Every (user, item) this stage's users interacted with: its history and, for a stage
        fit on a window, what they had before it. Never recommended; never relevant."""
        if self.seen_before is None or not self.seen_before.nnz:
            return self.user_items
        if self._seen is None:
            self._seen = binarised(self.user_items + self.seen_before)  # weights >= 0
        return self._seen

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Rows of ``user_ids`` in this stage (-1 for users it has never seen)."""
        pos = np.searchsorted(self.user_ids, user_ids)
        pos = np.minimum(pos, max(len(self.user_ids) - 1, 0))
        return (
            np.where(self.user_ids[pos] == user_ids, pos, -1)
            if len(self.user_ids)
            else (np.full(len(user_ids), -1))
        )

    def candidate_lists(
        self, user_rows: np.ndarray, n: int, exclude: list[np.ndarray] | None = None
    ) -> list[CandidateList]:
        """Merged top-``n`` candidates of every source for each known user row; seen items and
        ``exclude[i]`` never appear. Order: by the best rank any source gives the item."""
        out: list[CandidateList] = []
        n = min(n, len(self.item_ids))
        for start in range(0, len(user_rows), 256):
            rows = user_rows[start : start + 256]
            seen = self.seen[rows].tocoo()
            tops, mats = [], []
            for name in SOURCES:
                scores = np.asarray(self.sources[name].score_many(rows), dtype=np.float32)
                scores[seen.row, seen.col] = -np.inf
                for i, extra in enumerate(exclude[start : start + len(rows)] if exclude else []):
                    if len(extra):
                        scores[i, extra] = -np.inf
                tops.append(top_k_per_row(scores, n))
                mats.append(scores)
            for i in range(len(rows)):
                out.append(_merge(i, tops, mats, n))
        return out

    def source_features(self, cands: CandidateList) -> np.ndarray:
        """The ranker's per-source columns of ``cands`` (len(cands) x 5 per source): they depend
        on the candidate list only, so a server may compute them once per user and release."""
        m = len(cands.items)
        n_sources = cands.scores.shape[1]
        width = len(_PER_SOURCE)
        present = cands.ranks > 0
        count = np.maximum(present.sum(axis=0), 1)
        mean = (cands.scores * present).sum(axis=0) / count
        var = (((cands.scores - mean) * present) ** 2).sum(axis=0) / count
        per_source = np.empty((m, width * n_sources), dtype=np.float32)
        per_source[:, 0::width] = cands.scores
        per_source[:, 1::width] = np.where(present, (cands.scores - mean) / np.sqrt(var + 1e-9), 0)
        per_source[:, 2::width] = np.where(
            present & (cands.top > 0), cands.scores / np.where(cands.top > 0, cands.top, 1), 0
        )
        per_source[:, 3::width] = np.where(present, np.log1p(cands.ranks), np.log1p(1000))
        per_source[:, 4::width] = present
        return per_source

    def features(
        self,
        user_row: int,
        cands: CandidateList,
        *,
        user: np.ndarray | None = None,
        affinity: np.ndarray | None = None,
        items: np.ndarray | None = None,
        item_category: np.ndarray | None = None,
        per_source: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ranker input rows (len(cands) x len(feature_names())) for one user.

        ``user`` (one row of the user table), ``affinity`` (per category of this stage),
        ``items`` (item table rows of ``cands.items``) and ``item_category`` replace the stage's
        own rows when given: serving passes online-store values in the stage's layout.
        ``per_source``: :meth:`source_features` of ``cands``, when already computed."""
        m = len(cands.items)
        if per_source is None:
            per_source = self.source_features(cands)
        user_row_values = self.user_table[user_row] if user is None else user
        item = self.item_table[cands.items] if items is None else items
        category = self.item_category[cands.items] if item_category is None else item_category
        shares = self.user_affinity[user_row] if affinity is None else affinity
        of_item = np.where(category >= 0, shares[np.maximum(category, 0)], 0.0)
        width, n_user = per_source.shape[1], self.user_table.shape[1]
        out = np.empty((m, width + n_user + item.shape[1] + 1), dtype=np.float32)
        out[:, :width] = per_source
        out[:, width : width + n_user] = user_row_values
        out[:, width + n_user : -1] = item
        out[:, -1] = of_item
        return out


def _merge(i: int, tops: list[np.ndarray], mats: list[np.ndarray], n: int) -> CandidateList:
    """Union of the sources' top lists for block row ``i``, ordered by best rank, capped at n."""
    n_sources = len(tops)
    items_all = np.concatenate([top[i] for top in tops])
    ranks_all = np.concatenate(
        [np.arange(1, top.shape[1] + 1) / w for top, w in zip(tops, SOURCE_WEIGHTS, strict=True)]
    )
    finite = np.concatenate([np.isfinite(m[i, top[i]]) for m, top in zip(mats, tops, strict=True)])
    items_all, ranks_all = items_all[finite], ranks_all[finite]
    unique, inverse = np.unique(items_all, return_inverse=True)
    best = np.full(len(unique), np.inf)
    np.minimum.at(best, inverse, ranks_all)
    items = unique[np.lexsort((unique, best))][:n]
    scores = np.zeros((len(items), n_sources), dtype=np.float32)
    ranks = np.zeros((len(items), n_sources), dtype=np.float32)
    best_scores = np.zeros(n_sources, dtype=np.float32)
    for s, top in enumerate(tops):
        row = top[i]
        if len(row) and np.isfinite(mats[s][i, row[0]]):
            best_scores[s] = mats[s][i, row[0]]
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        pos = np.minimum(np.searchsorted(sorted_row, items), len(row) - 1)
        found = sorted_row[pos] == items
        found &= np.isfinite(mats[s][i, items])
        ranks[found, s] = order[pos[found]] + 1
        scores[found, s] = mats[s][i, items[found]]
    return CandidateList(items.astype(np.int64), scores, ranks, best_scores)


@one_blas_thread()
def fit_stage(
    history: pd.DataFrame,
    catalog: pd.DataFrame,
    item_ids: np.ndarray,
    params: PipelineParams,
    as_of: pd.Timestamp | None = None,
    *,
    count_scale: float = 1.0,
    show_progress: bool = False,
    earlier: SeenBefore | None = None,
) -> Stage:
    """Fit every candidate source and compute the feature tables on ``history``.

    ``count_scale`` rescales count features (see _compress) when ``history`` is a random
    share of the data the ranker will later be applied to. ``earlier``: what users had before
    ``history`` began (a training window): never recommended, never relevant, no signal."""
    as_of = as_of if as_of is not None else history["timestamp"].max() + pd.Timedelta(seconds=1)
    user_ids = np.unique(history["user_id"].to_numpy())
    matrix = user_item_weights(history, user_ids, item_ids)
    sources: dict[str, CandidateSource] = {
        "ease": EASECandidates.fit(matrix, params.ease),
        "als": ALSCandidates.fit(matrix, params.als, show_progress=show_progress),
        "itemknn": ItemKNNCandidates.fit(matrix, params.itemknn),
        "lowpass": LowPassCandidates.fit(matrix, params.lowpass),
        "popularity": PopularityCandidates.fit(matrix),
        "trending": PopularityCandidates.fit_trending(
            history, item_ids, as_of, params.trending_half_life_days
        ),
    }
    users = compute_user_features(history, catalog, as_of, recent=False)
    users = users.set_index("user_id").reindex(user_ids)
    user_table = _compress(
        USER_NUMERIC, users[list(USER_NUMERIC)].fillna(0).to_numpy(), count_scale
    )
    categories = category_vocabulary(catalog)
    affinity = np.zeros((len(user_ids), len(categories)), dtype=np.float32)
    present = users["user_category_affinity"].notna().to_numpy()
    if present.any():
        affinity[present] = np.stack(users.loc[present, "user_category_affinity"].to_numpy())
    items = compute_item_features(history, catalog, as_of).set_index("item_id").reindex(item_ids)
    item_table = _compress(
        ITEM_NUMERIC, items[list(ITEM_NUMERIC)].fillna(0).to_numpy(), count_scale
    )
    item_category = items["item_category_index"].fillna(-1).to_numpy().astype(np.int64)
    return Stage(
        as_of=as_of,
        user_ids=user_ids,
        item_ids=item_ids,
        user_items=matrix,
        sources=sources,
        user_table=user_table,
        user_affinity=affinity,
        item_table=item_table,
        item_category=item_category,
        categories=categories,
        seen_before=earlier.aligned(user_ids) if earlier is not None and earlier.n_users else None,
    )


def relevant_rows(stage: Stage, future: pd.DataFrame, user_rows: np.ndarray) -> list[np.ndarray]:
    """For each user row, the item rows it interacted with in ``future`` and had not seen."""
    matrix = user_item_weights(future, stage.user_ids, stage.item_ids)[user_rows]
    matrix = matrix - matrix.multiply(stage.seen[user_rows] > 0)
    matrix.eliminate_zeros()
    return [matrix.indices[matrix.indptr[i] : matrix.indptr[i + 1]] for i in range(len(user_rows))]


@one_blas_thread()
def training_set(
    stage: Stage, future: pd.DataFrame, params: PipelineParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """(features, labels, groups, stats) for the ranker: candidates of users active in
    ``future`` (the label window), label 1 when the user interacted with the candidate there.

    Negatives are subsampled per user; users whose candidates hold no positive are dropped.
    """
    rng = np.random.default_rng(params.ranker.seed)
    active = np.unique(future["user_id"].to_numpy())
    rows = stage.user_rows(active)
    rows = rows[rows >= 0]
    if len(rows) > params.ranker.max_train_users:
        rows = np.sort(rng.choice(rows, params.ranker.max_train_users, replace=False))
    relevant = relevant_rows(stage, future, rows)
    keep = np.array([len(r) > 0 for r in relevant], dtype=bool)
    rows = rows[keep]
    relevant = [r for r, k in zip(relevant, keep, strict=True) if k]
    lists = stage.candidate_lists(rows, params.candidates)
    xs, ys, gs = [], [], []
    reached = 0
    for row, rel, cands in zip(rows, relevant, lists, strict=True):
        label = np.isin(cands.items, rel)
        if not label.any():
            continue
        reached += 1
        negatives = np.flatnonzero(~label)
        if len(negatives) > params.ranker.negatives_per_user:
            negatives = rng.choice(negatives, params.ranker.negatives_per_user, replace=False)
        pick = np.sort(np.concatenate([np.flatnonzero(label), negatives]))
        xs.append(stage.features(int(row), _subset(cands, pick)))
        ys.append(label[pick])
        gs.append(np.full(len(pick), row))
    if not xs:
        empty = np.empty((0, len(feature_names())), dtype=np.float32)
        return empty, np.empty(0), np.empty(0, dtype=np.int64), {"users": 0.0}
    stats = {
        "users": float(len(rows)),
        "candidate_recall_users": reached / max(len(rows), 1),
    }
    return np.vstack(xs), np.concatenate(ys).astype(np.float32), np.concatenate(gs), stats


def _subset(cands: CandidateList, pick: np.ndarray) -> CandidateList:
    return CandidateList(cands.items[pick], cands.scores[pick], cands.ranks[pick], cands.top)


@one_blas_thread()
def rank_users(
    stage: Stage,
    ranker: Ranker | None,
    user_rows: np.ndarray,
    k: int,
    n_candidates: int,
    exclude: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item rows and scores per user row (-1 / -inf padded), ranked by ``ranker``
    (or by the candidate order when ``ranker`` is None) among ``n_candidates`` candidates, or
    ``k`` when that is more."""
    n_candidates = max(n_candidates, k)
    recs = np.full((len(user_rows), k), -1, dtype=np.int64)
    scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
    for i, (row, cands) in enumerate(
        zip(user_rows, stage.candidate_lists(user_rows, n_candidates, exclude), strict=True)
    ):
        if not len(cands.items):
            continue
        if ranker is None:
            order = np.arange(len(cands.items))[:k]
            values = -np.arange(len(order), dtype=np.float32)
        else:
            values_all = ranker.score(stage.features(int(row), cands))
            order = np.argsort(-values_all, kind="stable")[:k]
            values = values_all[order]
        recs[i, : len(order)] = cands.items[order]
        scores[i, : len(order)] = values
    return recs, scores


def fit_ranker(
    sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], params: PipelineParams, *, k: int = 10
) -> tuple[Ranker | None, dict[str, float]]:
    """Stack (features, labels, groups) training sets and fit one ranker (early stopping).

    The same user in two sets is two candidate lists. None when there is no positive label."""
    sets = [(x, y, g) for x, y, g in sets if len(x)]
    if not sets or sum(float(y.sum()) for _, y, _ in sets) == 0:
        return None, {}
    x = np.vstack([x for x, _, _ in sets])
    y = np.concatenate([y for _, y, _ in sets])
    groups = np.concatenate([g + j * 10**9 for j, (_, _, g) in enumerate(sets)])
    ranker = Ranker.fit(x, y, groups, params.ranker, k=k)
    return ranker, {
        "rows": float(len(x)),
        "positives": float(y.sum()),
        "epochs": float(ranker.epochs_trained),
        "best_val_ndcg": max((h.get("val_ndcg", 0.0) for h in ranker.history), default=0.0),
    }
