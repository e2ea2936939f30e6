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

from recsys.models.base import HistorySource, binarised


@dataclass(frozen=True)
class EASEParams:
    lam: float = 500.0
    max_items: int = 6000

    def as_dict(self) -> dict:
        return asdict(self)


class EASECandidates(HistorySource):
    """Dense item-item weights; empty (scores nothing) when the catalog was too large."""

    name = "ease"

    def __init__(self, weights: np.ndarray | None, user_items: sp.csr_matrix) -> None:
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.user_items = user_items.tocsr().astype(np.float32)

    @classmethod
    def fit(cls, user_items: sp.csr_matrix, params: EASEParams) -> EASECandidates:
        """Fit on the binarised (users x items) matrix; skipped above ``params.max_items``."""
        binary = binarised(user_items)
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

    def _through(self, history: sp.csr_matrix) -> np.ndarray:
        return history @ self.weights
