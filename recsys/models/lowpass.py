"""Low-pass candidates: the ideal low-pass graph filter of GF-CF (Shen et al., CIKM 2021).

The binarised user x item matrix X is normalised by the degrees of both sides,
R = D_u^-1/2 X D_i^-1/2, and its top ``factors`` right singular vectors V (items x factors)
span the smoothest signals on the item-item graph. A user's history x is filtered through
them: score(user) = ((x * d_i^-1/2) @ V @ V') * d_i^1/2. It is PureSVD on the
degree-normalised matrix, with item popularity put back on the way out.

Why a source of its own: on MovieLens-100K per-item splits it ranks worse than EASE or ALS
alone, but it is wrong on other users and items than they are; blended with both, it added
+0.001 to +0.007 nDCG@10 on four splits (docs/benchmarks.md, 2026-11-28). Its fit is one
truncated SVD of a sparse matrix (ARPACK, deterministic start vector; the exact SVD of the
dense matrix where ARPACK fails on a degenerate spectrum), so it scales with the number of
interactions, not with the catalog squared as EASE does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, svds

from recsys.models.base import HistorySource, binarised

logger = logging.getLogger(__name__)

DENSE_SVD_LIMIT = 25_000_000
"""Most matrix entries (users x items) whose exact dense SVD is taken when ARPACK fails
(200 MB of float64)."""


@dataclass(frozen=True)
class LowPassParams:
    factors: int = 48

    def as_dict(self) -> dict:
        return asdict(self)


class LowPassCandidates(HistorySource):
    """score(user) = (x_user @ in_factors) @ out_factors'; empty when nothing to filter."""

    name = "lowpass"

    def __init__(
        self,
        in_factors: np.ndarray | None,
        out_factors: np.ndarray | None,
        user_items: sp.csr_matrix,
    ) -> None:
        as32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        self.in_factors = as32(in_factors)
        self.out_factors = as32(out_factors)
        self.user_items = user_items.tocsr().astype(np.float32)

    @classmethod
    def fit(cls, user_items: sp.csr_matrix, params: LowPassParams) -> LowPassCandidates:
        """Fit on the binarised (users x items) matrix. The SVD keeps at most
        ``min(users, items) - 1`` factors (ARPACK's limit); with fewer than two users or items
        the source stays empty."""
        binary = binarised(user_items).astype(np.float64)
        k = min(params.factors, min(binary.shape) - 1)
        if k < 1 or binary.nnz == 0:
            return cls(None, None, binary)
        user_deg = np.asarray(binary.sum(axis=1)).ravel()
        item_deg = np.asarray(binary.sum(axis=0)).ravel()
        inv_user = 1.0 / np.sqrt(np.maximum(user_deg, 1.0))
        inv_item = 1.0 / np.sqrt(np.maximum(item_deg, 1.0))
        normalised = sp.diags(inv_user) @ binary @ sp.diags(inv_item)
        vt = _top_right_singular_vectors(normalised, k)
        if vt is None:
            return cls(None, None, binary)
        v = vt.T  # items x k; the order and signs of the vectors do not matter to V V'
        return cls(v * inv_item[:, None], v / inv_item[:, None], binary)

    @property
    def fitted(self) -> bool:
        return self.in_factors is not None

    def _through(self, history: sp.csr_matrix) -> np.ndarray:
        return np.asarray(history @ self.in_factors) @ self.out_factors.T


def _top_right_singular_vectors(matrix: sp.spmatrix, k: int) -> np.ndarray | None:
    """The top ``k`` right singular vectors (k x items) of ``matrix``; None when they cannot be
    computed (the source then stays empty, with a warning).

    ARPACK, from a fixed start vector (its default is random, and so would the release be).
    It fails on some spectra with many equal singular values ("ARPACK error 3: no shifts could
    be applied"), which a short history gives: a label window's stage of a day or two, each
    user with one or two items. Then the exact SVD of the dense matrix, when it is small
    enough; else ARPACK once more with a wider Krylov space."""
    n = min(matrix.shape)
    start = np.full(n, 1.0 / np.sqrt(n))
    try:
        return svds(matrix, k=k, v0=start, solver="arpack")[2]
    except ArpackError as exc:
        failure = exc
    if matrix.shape[0] * matrix.shape[1] <= DENSE_SVD_LIMIT:
        vt = np.linalg.svd(matrix.toarray(), full_matrices=False)[2]
        return vt[:k]
    try:
        return svds(matrix, k=k, v0=start, solver="arpack", ncv=min(n, 4 * k + 1))[2]
    except ArpackError as exc:
        logger.warning(
            "low-pass source left empty: ARPACK failed on the %d x %d matrix (%s, then %s)",
            *matrix.shape,
            failure,
            exc,
        )
        return None
