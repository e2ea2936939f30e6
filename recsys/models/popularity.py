"""Popularity candidates: the cold-start list and the baseline every model must beat."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.models.base import CandidateSource


class PopularityCandidates(CandidateSource):
    """Scores items by how many distinct users interacted with them (the same list for everyone)."""

    name = "popularity"

    def __init__(self, item_scores: np.ndarray) -> None:
        self.item_scores = np.asarray(item_scores, dtype=np.float32)

    @classmethod
    def fit(cls, user_items: sp.csr_matrix) -> PopularityCandidates:
        """Count distinct users per item in a (users x items) matrix."""
        binary = user_items.copy()
        binary.data = np.ones_like(binary.data)
        return cls(np.asarray(binary.sum(axis=0)).ravel())

    @property
    def n_items(self) -> int:
        return len(self.item_scores)

    def score(self, user_row: int | None) -> np.ndarray:
        return self.item_scores
