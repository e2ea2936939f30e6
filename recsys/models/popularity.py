"""Popularity candidates: the cold-start list and the baseline every model must beat.

``popularity`` counts distinct users per item over the whole history; ``trending`` weighs
recent events more (exponential decay with a half-life in days), so new hits surface fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.models.base import CandidateSource


class PopularityCandidates(CandidateSource):
    """Scores items by how many distinct users interacted with them (the same list for everyone)."""

    name = "popularity"

    def __init__(self, item_scores: np.ndarray, name: str | None = None) -> None:
        self.item_scores = np.asarray(item_scores, dtype=np.float32)
        if name:
            self.name = name

    @classmethod
    def fit(cls, user_items: sp.csr_matrix) -> PopularityCandidates:
        """Count distinct users per item in a (users x items) matrix."""
        binary = user_items.copy()
        binary.data = np.ones_like(binary.data)
        return cls(np.asarray(binary.sum(axis=0)).ravel())

    @classmethod
    def fit_trending(
        cls, frame: pd.DataFrame, item_ids: np.ndarray, as_of: pd.Timestamp, half_life_days: float
    ) -> PopularityCandidates:
        """Decayed event counts per item: an event ``d`` days before ``as_of`` weighs 2^(-d/h)."""
        age_days = (as_of - frame["timestamp"]).dt.total_seconds().to_numpy() / 86400.0
        weights = np.exp2(-np.clip(age_days, 0, None) / half_life_days)
        cols = np.searchsorted(item_ids, frame["item_id"].to_numpy())
        ok = (cols < len(item_ids)) & (
            item_ids[np.minimum(cols, len(item_ids) - 1)] == frame["item_id"].to_numpy()
        )
        scores = np.bincount(cols[ok], weights=weights[ok], minlength=len(item_ids))
        return cls(scores, name="trending")

    @property
    def n_items(self) -> int:
        return len(self.item_scores)

    def score(self, user_row: int | None) -> np.ndarray:
        return self.item_scores

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores, (len(user_rows), self.n_items)).copy()
