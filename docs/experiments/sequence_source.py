"""Would a source of items taken close together in time lift the pipeline? Not kept.

Not part of the product: the measurement behind docs/benchmarks.md ("2026-11-29: figures move
with the machine; two more sources screened, neither kept"). The source: each pair of a user's
distinct items ``d`` places apart in their time-ordered history (``d`` <= ``window``) adds
``1 / d`` to the pair's similarity, divided by ``(degree_i * degree_j) ** exponent``; a user is
scored through it as item-kNN scores (``recsys.models.itemknn``). Two measurements on one split:

* ``blend``: the product's own EASE, ALS, item-kNN and low-pass scores (``fit_stage`` with the
  default parameters) blended by per-user z-scores, weights found by coordinate ascent on TEST
  (an upper bound, as in quality_signals.py), without and with the sequence source;
* ``pipeline``: ``recsys benchmark quality``'s code (``benchmark_quality``) with the source
  patched in as a seventh candidate source (merge weight 0.5, its ranker features included),
  beside the unpatched pipeline.

    python docs/experiments/sequence_source.py --split /tmp/s7 --seed 7 \
        --items ../shared/data/ml-100k/u.item --what both

``--split``: a directory holding train.tsv and test.tsv (``recsys benchmark split``). The
blend takes about a minute per setting, the pipeline 20-25 s per run, on two cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from quality_signals import zscore  # the sibling script: this folder is on sys.path when run

import recsys.benchmark as bench
import recsys.pipeline as pipe
from recsys.evaluation import ranking_metrics
from recsys.models.itemknn import ItemKNNCandidates, _prune_rows

BLENDED = ("ease", "als", "itemknn", "lowpass")
GRID = (0, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0)


class SequenceCandidates(ItemKNNCandidates):
    name = "sequence"

    @classmethod
    def fit_history(cls, history, user_ids, item_ids, user_items, window=25, exponent=0.8):
        """Fit on ``history`` (user_id, item_id, timestamp) in the stage's indexes; a user's
        first event of an item places it; ties in time are ordered by item id."""
        n_items = len(item_ids)
        u = np.searchsorted(user_ids, history["user_id"].to_numpy())
        i = np.searchsorted(item_ids, history["item_id"].to_numpy())
        events = pd.DataFrame({"u": u, "i": i, "t": history["timestamp"].to_numpy()})
        events = events.sort_values(["u", "t", "i"], kind="stable").drop_duplicates(["u", "i"])
        u, i = events["u"].to_numpy(), events["i"].to_numpy()
        counts = sp.csr_matrix((n_items, n_items), dtype=np.float64)
        for d in range(1, window + 1):
            same = np.flatnonzero(u[d:] == u[:-d])
            step = sp.csr_matrix(
                (np.full(len(same), 1.0 / d), (i[same], i[same + d])), shape=(n_items, n_items)
            )
            counts = counts + step + step.T
        scale = np.maximum(np.bincount(i, minlength=n_items), 1).astype(np.float64) ** -exponent
        similarity = (sp.diags(scale) @ counts @ sp.diags(scale)).tocsr()
        similarity.setdiag(0)
        similarity.eliminate_zeros()
        return cls(_prune_rows(similarity.astype(np.float32), 400), user_items)


class BlendBench:
    """The product's own source scores on one split (``fit_stage`` with the default parameters,
    TRAIN only) and nDCG@10 on its TEST; :meth:`ascent` finds blend weights on TEST itself, so a
    blend's figure is an upper bound. Shared by the screens in this folder."""

    def __init__(self, split: Path, items: Path | None) -> None:
        self.train = bench.read_interactions_file(split / "train.tsv")
        test = bench.read_interactions_file(split / "test.tsv")
        self.item_ids = np.unique(np.concatenate([self.train.item_id, test.item_id]))
        catalog = bench.read_items_file(items, self.item_ids, self.train)
        self.stage = pipe.fit_stage(self.train, catalog, self.item_ids, pipe.PipelineParams())
        self.rows = np.arange(len(self.stage.user_ids))
        self.seen = self.stage.user_items.toarray() > 0
        truth = pipe.user_item_weights(test, self.stage.user_ids, self.item_ids).toarray() > 0
        truth &= ~self.seen
        self.users = np.flatnonzero(truth.any(1))
        self.relevant = [np.flatnonzero(truth[u]) for u in self.users]
        self.z = [
            zscore(np.asarray(self.stage.sources[n].score_many(self.rows), dtype=np.float64))
            for n in BLENDED
        ]

    def ndcg(self, scores: np.ndarray) -> float:
        s = np.where(self.seen, -np.inf, scores)[self.users]
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        n_items = len(self.item_ids)
        return float(ranking_metrics(top, self.relevant, 10, n_items=n_items)["ndcg"])

    def ascent(self, z: list[np.ndarray], passes: int = 3) -> tuple[float, list[float]]:
        """Coordinate ascent over ``GRID`` for every weight but the first (fixed at 1)."""
        w = [1.0] + [0.5] * (len(z) - 1)
        best = self.ndcg(sum(a * b for a, b in zip(w, z, strict=True)))
        for _ in range(passes):
            for j in range(1, len(z)):
                for g in GRID:
                    t = [*w[:j], g, *w[j + 1 :]]
                    v = self.ndcg(sum(a * b for a, b in zip(t, z, strict=True)))
                    if v > best + 1e-6:
                        best, w = v, t
        return best, w


def blend(split: Path, items: Path | None, settings: list[tuple[int, float]]) -> None:
    b = BlendBench(split, items)
    base, w = b.ascent(b.z)
    print(f"{split}: blend of {', '.join(BLENDED)}: {base:.4f} (weights {w})", flush=True)
    for window, exponent in settings:
        source = SequenceCandidates.fit_history(
            b.train, b.stage.user_ids, b.item_ids, b.stage.user_items, window, exponent
        )
        scores = source.score_many(b.rows)
        best, w = b.ascent([*b.z, zscore(scores)])
        print(
            f"  + sequence (window {window}, exponent {exponent}): alone {b.ndcg(scores):.4f}, "
            f"blend {best:.4f} ({best - base:+.4f}; weights {w})",
            flush=True,
        )


def pipeline(split: Path, items: Path | None, seed: int, window: int, exponent: float) -> None:
    def run() -> float:
        report = bench.benchmark_quality(
            split / "train.tsv",
            split / "test.tsv",
            items_path=items,
            params=bench.with_seed(pipe.PipelineParams(), seed),
        )
        return report["metrics"]["pipeline"]["ndcg"]

    without = run()
    fit_stage = pipe.fit_stage

    def patched(history, catalog, item_ids, params, as_of=None, **kwargs):
        stage = fit_stage(history, catalog, item_ids, params, as_of, **kwargs)
        stage.sources["sequence"] = SequenceCandidates.fit_history(
            history, stage.user_ids, stage.item_ids, stage.user_items, window, exponent
        )
        return stage

    pipe.SOURCES, pipe.SOURCE_WEIGHTS = (*pipe.SOURCES, "sequence"), (*pipe.SOURCE_WEIGHTS, 0.5)
    pipe.fit_stage = bench.fit_stage = patched
    with_source = run()
    print(json.dumps({"split": str(split), "seed": seed, "pipeline": round(without, 4),
                      "with_sequence": round(with_source, 4)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--items", type=Path, help="u.item, as recsys benchmark quality's --items")
    parser.add_argument("--seed", type=int, default=42, help="the pipeline's --seed")
    parser.add_argument("--what", choices=("blend", "pipeline", "both"), default="both")
    args = parser.parse_args()
    if args.what in ("blend", "both"):
        blend(args.split, args.items, [(10, 0.6), (10, 0.8), (25, 0.6), (25, 0.8), (50, 0.8)])
    if args.what in ("pipeline", "both"):
        pipeline(args.split, args.items, args.seed, 25, 0.8)


if __name__ == "__main__":
    main()
