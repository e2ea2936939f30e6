"""Item-item candidates: cosine similarity between item columns, pruned to the top neighbours.

score(user) = (the user's interaction weights) @ S, where S keeps each item's ``neighbors``
most similar items. The pruned matrix stays sparse, so a 20k-item catalog costs megabytes,
not the gigabytes a dense item-item matrix would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from recsys.models.base import CandidateSource


@dataclass(frozen=True)
class ItemKNNParams:
    neighbors: int = 400
    shrink: float = 0.0  # damps similarities supported by few co-occurrences

    def as_dict(self) -> dict:
        return asdict(self)


class ItemKNNCandidates(CandidateSource):
    """Sparse item-item similarity; the user's history is the query."""

    name = "itemknn"

    def __init__(self, similarity: sp.csr_matrix, user_items: sp.csr_matrix) -> None:
        self.similarity = similarity.tocsr().astype(np.float32)
        self.user_items = user_items.tocsr().astype(np.float32)

    @classmethod
    def fit(cls, user_items: sp.csr_matrix, params: ItemKNNParams) -> ItemKNNCandidates:
        """Cosine similarity of the columns of a (users x items) weight matrix, top-N pruned."""
        x = sp.csc_matrix(user_items, dtype=np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        co = (x.T @ x).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        coo = co.tocoo()
        denom = norms[coo.row] * norms[coo.col] + params.shrink
        data = coo.data / np.maximum(denom, 1e-12)
        sim = sp.csr_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=co.shape)
        return cls(_prune_rows(sim, params.neighbors), user_items)

    @property
    def n_items(self) -> int:
        return self.similarity.shape[0]

    def score(self, user_row: int | None) -> np.ndarray | None:
        if user_row is None or not 0 <= user_row < self.user_items.shape[0]:
            return None
        return np.asarray((self.user_items[user_row] @ self.similarity).todense()).ravel()

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        return np.asarray((self.user_items[user_rows] @ self.similarity).todense())


def _prune_rows(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest entries of each row."""
    matrix = matrix.tocsr()
    indptr, indices, data = [0], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[start:end]
        cols = matrix.indices[start:end]
        if len(values) > keep:
            top = np.argpartition(-values, keep - 1)[:keep]
            values, cols = values[top], cols[top]
        indices.append(cols)
        data.append(values)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix(
        (
            np.concatenate(data) if data else np.empty(0, np.float32),
            np.concatenate(indices) if indices else np.empty(0, np.int32),
            np.asarray(indptr),
        ),
        shape=matrix.shape,
    )
