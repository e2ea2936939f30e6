"""Ranking metrics at k, computed on held-out data only, with seen items removed.

``precision``, ``recall``, ``ndcg``, ``map`` and ``hit_rate`` are averaged over evaluated users;
``coverage`` is the share of the catalog recommended to anyone; ``novelty`` is the mean
self-information (-log2 of the item's share of training users) of recommended items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.models.base import CandidateSource, top_k_per_row

METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage", "novelty")


def top_k_unseen(
    source: CandidateSource,
    user_rows: np.ndarray,
    seen: sp.csr_matrix,
    k: int,
    *,
    chunk: int = 2048,
) -> np.ndarray:
    """Top-``k`` item rows per user (``-1`` padded), never an item the user has already seen."""
    out = np.full((len(user_rows), k), -1, dtype=np.int64)
    for start in range(0, len(user_rows), chunk):
        rows = user_rows[start : start + chunk]
        scores = np.asarray(source.score_many(rows), dtype=np.float64)
        block_seen = seen[rows].tocoo()
        scores[block_seen.row, block_seen.col] = -np.inf
        kk = min(k, scores.shape[1])
        best = top_k_per_row(scores, kk)
        finite = np.isfinite(np.take_along_axis(scores, best, axis=1))
        out[start : start + len(rows), :kk] = np.where(finite, best, -1)
    return out


def ranking_metrics(
    recommended: np.ndarray,
    relevant: list[np.ndarray],
    k: int,
    *,
    n_items: int,
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
) -> dict[str, float]:
    """Metrics at ``k`` for ``recommended`` (users x k item rows, -1 = empty) against ``relevant``.

    Users with no relevant item are skipped (they cannot be scored); if none remain, every
    metric is 0.
    """
    keep = [i for i, rel in enumerate(relevant) if len(rel)]
    if not keep:
        return dict.fromkeys(METRICS, 0.0) | {"users": 0, "ndcg_se": 0.0}
    recs = recommended[keep, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision = recall = ap = hit = 0.0
    per_user_ndcg = np.empty(len(keep))
    for j, (recs_row, i) in enumerate(zip(recs, keep, strict=True)):
        rel = relevant[i]
        hits = np.isin(recs_row, rel) & (recs_row >= 0)
        n_hit = hits.sum()
        precision += n_hit / k
        recall += n_hit / len(rel)
        ideal = discounts[: min(len(rel), k)].sum()
        per_user_ndcg[j] = (hits * discounts).sum() / ideal
        if n_hit:
            ap += (np.cumsum(hits) / np.arange(1, k + 1))[hits].sum() / min(len(rel), k)
            hit += 1
    n = len(keep)
    shown = recs[recs >= 0]
    metrics = {
        "precision": precision / n,
        "recall": recall / n,
        "ndcg": per_user_ndcg.mean(),
        "map": ap / n,
        "hit_rate": hit / n,
        "coverage": len(np.unique(shown)) / max(n_items, 1),
    }
    if item_popularity is not None and n_train_users and len(shown):
        share = np.clip(item_popularity[shown] / n_train_users, 1e-12, 1.0)
        metrics["novelty"] = float(np.mean(-np.log2(share)))
    else:
        metrics["novelty"] = 0.0
    metrics = {name: float(value) for name, value in metrics.items()}
    metrics["users"] = n
    # standard error of the mean nDCG over users: how far two models may differ by chance
    metrics["ndcg_se"] = float(per_user_ndcg.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return metrics
