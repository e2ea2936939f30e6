"""The recommend pipeline as the service runs it: candidates -> features -> ranker, timed.

:func:`rank_for_user` does what :meth:`recsys.release.Release.recommend` does (same candidates,
same ranker, same order) with two differences: the user and item features come from
:class:`serving.features.ServingFeatures` (the Feast online store, the release's tables as the
fallback), and each stage's wall time is returned, for the stage histograms and the benchmark.
With the release's own features its answer equals ``Release.recommend``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from serving.features import FeatureRows, ServingFeatures

STAGES = ("candidates", "features", "ranking")


@dataclass(frozen=True)
class RankedList:
    """A ranked answer. ``fallback`` is ``cold_start`` for users the release does not know;
    ``features`` says where the ranker's features came from (None when no ranker ran)."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None
    features: str | None = None
    feature_reasons: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)


def item_rows(release, item_ids: list[int]) -> np.ndarray:
    """Rows of the ``item_ids`` the release knows (others are dropped)."""
    if not item_ids:
        return np.zeros(0, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=np.int64)
    catalog = release.item_ids
    pos = np.minimum(np.searchsorted(catalog, ids), len(catalog) - 1)
    return pos[catalog[pos] == ids].astype(np.int64)


def rank_for_user(
    release,
    user_id: int,
    k: int,
    exclude: list[int] | None = None,
    features: ServingFeatures | None = None,
) -> RankedList:
    """Top-``k`` unseen items for ``user_id`` that are not in ``exclude``, best first.

    Unknown users get the release's cold-start list. ``features=None`` ranks with the release's
    own feature tables. Raises whatever the model raises (the service degrades on it).
    """
    row = release.user_row(user_id)
    if row is None:
        cold = release.cold_start(k, exclude)
        return RankedList(cold.item_ids, cold.scores, cold.fallback)
    stage = release.stage
    started = time.perf_counter()
    excluded = item_rows(release, exclude or [])
    cands = stage.candidate_lists(np.array([row]), release.params.candidates, [excluded])[0]
    fetched = time.perf_counter()
    rows = FeatureRows("release")
    if release.ranker is None or not len(cands.items):
        order = np.arange(min(k, len(cands.items)))
        values = -order.astype(np.float32)
        built = ranked = fetched
    else:
        if features is not None:
            rows = features.rows(release, user_id, row, cands.items)
        matrix = stage.features(row, cands, **rows.overrides())
        built = time.perf_counter()
        values_all = release.ranker.score(matrix)
        order = np.argsort(-values_all, kind="stable")[:k]
        values = values_all[order]
        ranked = time.perf_counter()
    return RankedList(
        release.item_ids[cands.items[order]],
        np.asarray(values, dtype=np.float32),
        None,
        rows.source if release.ranker is not None else None,
        rows.reasons,
        {"candidates": fetched - started, "features": built - fetched, "ranking": ranked - built},
    )
