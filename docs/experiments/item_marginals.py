"""Item-marginal calibration of the ranker's scores, screened on one split. Not kept.

Not part of the product: the measurement behind docs/benchmarks.md ("2026-11-29 late: the
items' held-out counts as a constraint"). On a random split each item's held-out ratings are
about a third of its TRAIN ratings, a total known from TRAIN alone. The ranker's softmax over
each TEST user's 200 candidates, times the user's expected held-out count (a third of their
TRAIN rows), gives each item an expected held-out count; Sinkhorn-style column factors ``b_i``
make those match, and a candidate is re-ranked by ``score / T + gamma * log b_i``.

    python docs/experiments/item_marginals.py --split /tmp/s7 --seed 7 \
        --items ../shared/data/ml-100k/u.item

``--split``: a directory holding train.tsv and test.tsv (``recsys benchmark split``); one
pipeline fit (15-25 s on two cores), then a few seconds per setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import recsys.benchmark as bench
import recsys.pipeline as pipe
from recsys.train import holdout_scorer

SETTINGS = [(1.0, g) for g in (-0.25, -0.1, 0.1, 0.25, 0.5, 1.0)] + [(0.5, 0.25), (2.0, 0.25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--items", type=Path)
    args = parser.parse_args()
    params = bench.with_seed(pipe.PipelineParams(), args.seed)
    train = bench.read_interactions_file(args.split / "train.tsv")
    test = bench.read_interactions_file(args.split / "test.tsv")
    item_ids = np.unique(np.concatenate([train.item_id, test.item_id]))
    catalog = bench.read_items_file(args.items, item_ids, train)
    model = bench.fit_static(train, catalog, params, k=10, labels="random")
    stage = model.stage
    rows, score = holdout_scorer(stage, test, 10)
    lists = [
        (cands.items, model.ranker.score(stage.features(int(row), cands)))
        for row, cands in zip(rows, stage.candidate_lists(rows, params.candidates), strict=True)
    ]
    n_user = np.asarray((stage.user_items[rows] > 0).sum(axis=1)).ravel() / 3.0
    n_item = np.asarray((stage.user_items > 0).sum(axis=0)).ravel() / 3.0
    target = n_item * (n_user.sum() / n_item.sum())

    def ndcg(temperature: float, gamma: float, sweeps: int = 30) -> float:
        probs = []
        for _, s in lists:
            p = np.exp((s - s.max()) / temperature)
            probs.append(p / p.sum())
        log_b = np.zeros(len(n_item))
        for _ in range(sweeps if gamma else 0):
            expected = np.zeros(len(n_item))
            for (items, _), p, mass in zip(lists, probs, n_user, strict=True):
                q = p * np.exp(log_b[items])
                np.add.at(expected, items, mass * q / q.sum())
            ratio = np.log(np.maximum(target, 1e-9) / np.maximum(expected, 1e-12))
            log_b += 0.5 * np.where(expected > 0, ratio, 0.0)  # damped
        recs = np.stack(
            [
                items[np.argsort(-(s / temperature + gamma * log_b[items]), kind="stable")[:10]]
                for items, s in lists
            ]
        )
        return score(recs)["ndcg"]

    base = ndcg(1.0, 0.0)
    print(f"{args.split} seed {args.seed}: shipped ranking nDCG@10 {base:.4f}", flush=True)
    for temperature, gamma in SETTINGS:
        value = ndcg(temperature, gamma)
        print(
            f"  T {temperature:g}, gamma {gamma:+g}: {value:.4f} ({value - base:+.4f})", flush=True
        )


if __name__ == "__main__":
    main()
