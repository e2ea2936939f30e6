"""The one small interface every candidate source shares.

A source scores items for a user row (or for an unknown user, ``user_row=None``) in the item
index space of the release. The pipeline merges sources without caring which one produced a
candidate, the way ``implicit.recommender_base`` lets callers ignore the algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS on one thread inside (usable as a decorator). A threaded matrix product splits
    its work by the thread count, and the last bits of its results with it: ALS scores of a
    block of users differ by ~1e-5 between one and two threads, and a ranker trained on them
    comes out different. Fitting and evaluating inside this gives the same model and metrics on
    any machine; ``OPENBLAS_NUM_THREADS`` cannot, once numpy is imported."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


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

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of every item for each of ``user_rows`` (users x items); sources override
        this with one vectorised product."""
        return np.vstack([np.asarray(self.score(int(r)), dtype=np.float64) for r in user_rows])


def binarised(user_items: sp.spmatrix) -> sp.csr_matrix:
    """A CSR copy of ``user_items`` with every stored interaction set to 1 (explicit zeros
    dropped first: they are no interaction)."""
    out = sp.csr_matrix(user_items, copy=True)
    out.eliminate_zeros()
    out.data = np.ones_like(out.data)
    return out


class HistorySource(CandidateSource):
    """A source that scores a user by passing their history row (``user_items``) through
    fitted weights; it scores nothing while unfitted (a catalog too large, nothing to fit)."""

    user_items: sp.csr_matrix

    @property
    @abstractmethod
    def fitted(self) -> bool:
        """Whether there are weights to score with."""

    @abstractmethod
    def _through(self, history: sp.csr_matrix) -> np.ndarray:
        """Scores (rows x items) of the history rows ``history``; only called when fitted."""

    @property
    def n_items(self) -> int:
        return self.user_items.shape[1]

    def score(self, user_row: int | None) -> np.ndarray | None:
        if not self.fitted or user_row is None or not 0 <= user_row < self.user_items.shape[0]:
            return None
        return np.asarray(self._through(self.user_items[user_row])).ravel()

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        if not self.fitted:
            return np.full((len(user_rows), self.n_items), -np.inf, dtype=np.float32)
        return np.asarray(self._through(self.user_items[user_rows]))


def top_k_per_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest scores, best first (``k`` <= columns)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
