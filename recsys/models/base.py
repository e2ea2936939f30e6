"""The one small interface every candidate source shares.

A source scores items for a user row (or for an unknown user, ``user_row=None``) in the item
index space of the release. The pipeline merges sources without caring which one produced a
candidate, the way ``implicit.recommender_base`` lets callers ignore the algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Item rows (index into the release's item index) with the source's scores, best first."""

    items: np.ndarray
    scores: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.items)


def top_n(scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``n`` largest ``scores`` (best first), never one in ``exclude``."""
    scores = np.asarray(scores, dtype=np.float64)
    if exclude is not None and len(exclude):
        scores = scores.copy()
        scores[exclude] = -np.inf
    n = min(n, int(np.isfinite(scores).sum()))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, n - 1)[:n]
    return part[np.argsort(-scores[part], kind="stable")]


class CandidateSource(ABC):
    """Produces scored candidates for a user."""

    name: str = "source"

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Size of the item index this source scores."""

    @abstractmethod
    def score(self, user_row: int | None) -> np.ndarray | None:
        """Scores for every item row, or None when the source knows nothing about the user."""

    def candidates(
        self, user_row: int | None, n: int, exclude: np.ndarray | None = None
    ) -> Candidates:
        """The ``n`` best items for ``user_row`` not in ``exclude``; empty for an unknown user."""
        scores = self.score(user_row)
        if scores is None:
            empty = np.empty(0, dtype=np.int64)
            return Candidates(empty, np.empty(0), self.name)
        rows = top_n(scores, n, exclude)
        return Candidates(rows, scores[rows], self.name)
