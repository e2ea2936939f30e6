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
from sequence_source import BLENDED, GRID

import recsys.benchmark as bench
import recsys.pipeline as pipe
from recsys.evaluation import ranking_metrics


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

    train = bench.read_interactions_file(args.split / "train.tsv")
    test = bench.read_interactions_file(args.split / "test.tsv")
    item_ids = np.unique(np.concatenate([train.item_id, test.item_id]))
    catalog = bench.read_items_file(None, item_ids, train)
    stage = pipe.fit_stage(train, catalog, item_ids, pipe.PipelineParams())
    rows = np.arange(len(stage.user_ids))
    seen = stage.user_items.toarray() > 0
    truth = (pipe.user_item_weights(test, stage.user_ids, item_ids).toarray() > 0) & ~seen
    users = np.flatnonzero(truth.any(1))
    relevant = [np.flatnonzero(truth[u]) for u in users]

    def ndcg(scores: np.ndarray) -> float:
        s = np.where(seen, -np.inf, scores)[users]
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        return float(ranking_metrics(top, relevant, 10, n_items=len(item_ids))["ndcg"])

    def ascent(z: list[np.ndarray]) -> tuple[float, list[float]]:
        w = [1.0] + [0.5] * (len(z) - 1)
        best = ndcg(sum(a * b for a, b in zip(w, z, strict=True)))
        for _ in range(2):
            for j in range(1, len(z)):
                for g in GRID:
                    t = [*w[:j], g, *w[j + 1 :]]
                    v = ndcg(sum(a * b for a, b in zip(t, z, strict=True)))
                    if v > best + 1e-6:
                        best, w = v, t
        return best, w

    z = [zscore(np.asarray(stage.sources[n].score_many(rows), dtype=np.float64)) for n in BLENDED]
    base, w = ascent(z)
    print(f"{args.split}: blend of {', '.join(BLENDED)}: {base:.4f} (weights {w})", flush=True)
    binary = sp.csr_matrix(seen.astype(np.float64))
    for exponent in args.exponents:
        scores = eals_scores(binary, exponent)
        best, w = ascent([*z, zscore(scores)])
        print(
            f"  + eALS (exponent {exponent}): alone {ndcg(scores):.4f}, "
            f"blend {best:.4f} ({best - base:+.4f}; its weight {w[-1]})",
            flush=True,
        )


if __name__ == "__main__":
    main()
