"""Would eALS, ALS with popularity-weighted missing entries, lift the blend of sources? Not kept.

Not part of the product: the measurement behind docs/benchmarks.md ("2026-11-29: figures move
with the machine; two more sources screened, neither kept", its eALS table). eALS (He et al.,
SIGIR 2016) weights each missing (user, item) entry by the item's popularity to the power
``exponent`` (mean weight 1; exponent 0 is plain iALS); observed entries weigh ``observed`` and
both factor matrices are regularised by ``regularization``, the values the product's ALS works
at (confidence 1 + 4 x log1p(1), regularization 25). Fit by exact alternating least squares in
numpy, 64 factors, 12 sweeps.

For each exponent the script prints the source alone and its gain in the blend of the product's
own EASE, ALS, item-kNN and low-pass scores (``fit_stage`` with the default parameters; per-user
z-scores, weights found by coordinate ascent on TEST, so the gain is an upper bound, as in
quality_signals.py and sequence_source.py).

    python docs/experiments/eals_source.py --split /tmp/s7 --exponents -0.25 0 0.25 0.5 1

``--split``: a directory holding train.tsv and test.tsv (``recsys benchmark split``). About
20 s per exponent and a minute for the base blend, on one core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from quality_signals import zscore  # the sibling scripts: this folder is on sys.path when run
from sequence_source import BLENDED, BlendBench


def eals_scores(
    seen: sp.csr_matrix,
    exponent: float,
    *,
    factors: int = 64,
    observed: float = 3.76,
    regularization: float = 25.0,
    sweeps: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """Users x items scores of eALS fit on the binary matrix ``seen``."""
    rng = np.random.default_rng(seed)
    n_users, n_items = seen.shape
    missing = (np.asarray(seen.sum(0)).ravel() + 1.0) ** exponent
    missing /= missing.mean()
    x = rng.normal(0, 0.1, (n_users, factors))
    y = rng.normal(0, 0.1, (n_items, factors))
    by_item = seen.tocsc()
    eye = regularization * np.eye(factors)
    for _ in range(sweeps):
        gram = (y * missing[:, None]).T @ y  # every item as missing, then corrected per user
        for u in range(n_users):
            items = seen.indices[seen.indptr[u] : seen.indptr[u + 1]]
            yu = y[items]
            a = gram + (yu * (observed - missing[items])[:, None]).T @ yu + eye
            x[u] = np.linalg.solve(a, observed * yu.sum(0))
        gram = x.T @ x
        for i in range(n_items):
            users = by_item.indices[by_item.indptr[i] : by_item.indptr[i + 1]]
            xi = x[users]
            a = missing[i] * gram + (observed - missing[i]) * (xi.T @ xi) + eye
            y[i] = np.linalg.solve(a, observed * xi.sum(0))
    return x @ y.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--exponents", type=float, nargs="+", default=[-0.25, 0, 0.25, 0.5, 1])
    args = parser.parse_args()

    b = BlendBench(args.split, None)
    base, w = b.ascent(b.z, passes=2)
    print(f"{args.split}: blend of {', '.join(BLENDED)}: {base:.4f} (weights {w})", flush=True)
    binary = sp.csr_matrix(b.seen.astype(np.float64))
    for exponent in args.exponents:
        scores = eals_scores(binary, exponent)
        best, w = b.ascent([*b.z, zscore(scores)], passes=2)
        print(
            f"  + eALS (exponent {exponent}): alone {b.ndcg(scores):.4f}, "
            f"blend {best:.4f} ({best - base:+.4f}; its weight {w[-1]})",
            flush=True,
        )


if __name__ == "__main__":
    main()
