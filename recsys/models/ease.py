"""EASE candidates (Steck, 2019): a closed-form item-item model, strong on small catalogs.

B = I - P / diag(P) with P = (X'X + lambda I)^-1, zero diagonal; score(user) = x_user @ B.
It inverts an items x items matrix, so it is fit only when the catalog has at most
``max_items`` items (cubic time, quadratic memory); above that the source stays empty and the
pipeline runs on the other sources.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from recsys.models.base import CandidateSource


@dataclass(frozen=True)
class EASEParams:
    lam: float = 500.0
    max_items: int = 6000

    def as_dict(self) -> dict:
        return asdict(self)


class EASECandidates(CandidateSource):
    """Dense item-item weights; empty (scores nothing) when the catalog was too large."""

    name = "ease"

    def __init__(self, weights: np.ndarray | None, user_items: sp.csr_matrix) -> None:
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.user_items = user_items.tocsr().astype(np.float32)

    @classmethod
    def fit(cls, user_items: sp.csr_matrix, params: EASEParams) -> EASECandidates:
        """Fit on the binarised (users x items) matrix; skipped above ``params.max_items``."""
        binary = user_items.copy().tocsr()
        binary.data = np.ones_like(binary.data)
        n_items = binary.shape[1]
        if n_items > params.max_items or n_items == 0:
            return cls(None, binary)
        gram = (binary.T @ binary).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += params.lam
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        return cls(weights, binary)

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    @property
    def n_items(self) -> int:
        return self.user_items.shape[1]

    def score(self, user_row: int | None) -> np.ndarray | None:
        if not self.fitted or user_row is None or not 0 <= user_row < self.user_items.shape[0]:
            return None
        return np.asarray(self.user_items[user_row] @ self.weights).ravel()

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        if not self.fitted:
            return np.full((len(user_rows), self.n_items), -np.inf, dtype=np.float32)
        return np.asarray(self.user_items[user_rows] @ self.weights)
