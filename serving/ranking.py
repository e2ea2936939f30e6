"""The recommend pipeline as the service runs it: candidates -> features -> ranker, timed.

:func:`rank_for_user` does what :meth:`recsys.release.Release.recommend` does (same candidates,
same ranker, same order) with two differences: the user and item features come from
:class:`serving.features.ServingFeatures` (the Feast online store, the release's tables as the
fallback), and each stage's wall time is returned, for the stage histograms and the benchmark.
With the release's own features its answer equals ``Release.recommend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.features import FeatureRows, ServingFeatures

STAGES = ("candidates", "features", "ranking")


@dataclass(frozen=True)
class RankedList:
    """A ranked answer. ``fallback`` is ``cold_start`` for users the release does not know;
    ``features`` says where the ranker's features came from (None when no ranker ran, or it had
    no candidate left to rank); ``cacheable`` is False for a cold-start list made before the
    service knew which users the last materialization gave recent items."""

    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str | None = None
    features: str | None = None
    feature_reasons: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    cacheable: bool = True


def rank_for_user(
    release,
    user_id: int,
    k: int,
    exclude: list[int] | None = None,
    features: ServingFeatures | None = None,
) -> RankedList:
    """Top-``k`` unseen items for ``user_id`` that are not in ``exclude``, best first. Unseen:
    neither in the release's history of the user nor, when ``features`` reads the online store,
    in the user's recent items there (events after the release's training cut).

    Unknown users get the release's cold-start list, without their recent items in the online
    store when it has some (users new since the cut). ``features=None`` ranks with the release's
    own feature tables. Raises whatever the model raises (the service degrades on it).
    """
    row = release.user_row(user_id)
    if row is None:
        avoid = list(exclude or [])
        listed, current = (False, True) if features is None else features.has_recent_items(user_id)
        if listed:  # a user new since the training cut: what they had since is seen too
            avoid.extend(features.recent_items(user_id).tolist())
        cold = release.cold_start(k, avoid, user_id)
        return RankedList(cold.item_ids, cold.scores, cold.fallback, cacheable=current)
    rows = FeatureRows("release")
    overrides = None
    avoid = list(exclude or [])
    if features is not None and release.ranker is not None:
        # what the user had since the release's training cut (the online store's recent
        # items): seen too, though the release never saw it
        avoid.extend(features.recent_items(user_id).tolist())

        def overrides(item_rows: np.ndarray) -> dict[str, np.ndarray | None]:
            nonlocal rows
            rows = features.rows(release, user_id, row, item_rows)
            return rows.overrides()

    ranked = release.rank_row(row, k, release.item_rows(avoid), overrides)
    ranker_ran = release.ranker is not None and len(ranked.rows) > 0
    return RankedList(
        release.item_ids[ranked.rows],
        ranked.scores,
        None,
        rows.source if ranker_ran else None,
        rows.reasons if ranker_ran else (),
        {
            "candidates": ranked.candidates_s,
            "features": ranked.features_s,
            "ranking": ranked.ranking_s,
        },
    )
