"""Implicit ALS candidates (``implicit.als``), with factors kept as plain arrays.

Training uses the implicit library; scoring is a NumPy dot product so that serving needs
neither implicit nor a pickle: the factors travel as ``.npy`` files in the release unit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from recsys.models.base import CandidateSource, one_blas_thread

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSParams:
    """Hyperparameters of implicit ALS. Confidence of an observed pair = alpha * weight."""

    factors: int = 32
    regularization: float = 25.0
    alpha: float = 4.0
    iterations: int = 20
    seed: int = 42

    def as_dict(self) -> dict:
        return asdict(self)


class ALSCandidates(CandidateSource):
    """Matrix-factorisation candidates: score(user) = item_factors @ user_factor."""

    name = "als"

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)

    @classmethod
    def fit(
        cls, user_items: sp.csr_matrix, params: ALSParams, *, show_progress: bool = False
    ) -> ALSCandidates:
        """Fit ALS on a (users x items) matrix of implicit weights; deterministic for a seed."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from implicit.cpu.als import AlternatingLeastSquares

        with one_blas_thread():  # BLAS threads would fight implicit's own loop
            model = AlternatingLeastSquares(
                factors=params.factors,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                random_state=params.seed,
                num_threads=1,  # one thread keeps results bit-for-bit reproducible
            )
            model.fit(sp.csr_matrix(user_items, dtype=np.float32), show_progress=show_progress)
        return cls(model.user_factors, model.item_factors)

    @property
    def n_items(self) -> int:
        return self.item_factors.shape[0]

    def score(self, user_row: int | None) -> np.ndarray | None:
        if user_row is None or not 0 <= user_row < self.user_factors.shape[0]:
            return None
        return self.item_factors @ self.user_factors[user_row]

    def score_many(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of every item for each of ``user_rows`` (a users x items matrix)."""
        return self.user_factors[user_rows] @ self.item_factors.T
