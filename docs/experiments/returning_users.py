"""Users who come back after a release's training window: their earlier items, or trending?

Not part of the product: the measurement behind docs/benchmarks.md ("Returning users of a
windowed release"). A release trained with ``--window-days N`` has no row for a user active
only before the window; it answers them with the cold-start list (trending, their earlier
items left out). The alternative screened here scores them by an item-item source from their
earlier items (EASE, else low-pass, else item-kNN), alone or fused with the trending list.

Users active both before and in the window stand in for returning users: each is scored from
their items before the window only, against their items in the window (new to them).

    recsys data movielens --data-path ../shared/data/ml-100k      # RECSYS_DATA_DIR=/tmp/ml
    python docs/experiments/returning_users.py --data-dir /tmp/ml --window-days 14

One training run (``train_and_evaluate``, no search), then a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.config import Settings
from recsys.train import pipeline_params, train_and_evaluate

SOURCES = ("ease", "lowpass", "itemknn")


def history_scores(release, rows: np.ndarray) -> np.ndarray:
    """The first fitted item-item source's scores of a history of item ``rows``."""
    history = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (np.zeros(len(rows), dtype=np.int64), rows)),
        shape=(1, release.n_items),
    )
    for name in SOURCES:
        source = release.stage.sources[name]
        if name == "itemknn":
            return np.asarray((history @ source.similarity).todense()).ravel()
        if source.fitted:
            return np.asarray(source._through(history)).ravel()
    raise SystemExit("no item-item source is fitted")


def ranked(scores: np.ndarray, tiebreak: np.ndarray, drop: np.ndarray) -> np.ndarray:
    order = np.lexsort((-tiebreak, -scores))
    return order[~np.isin(order, drop)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--window-days", type=int, required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir)
    result = train_and_evaluate(
        settings.lake, pipeline_params(settings), window_days=args.window_days, k=args.k
    )
    release, k = result.release, args.k
    events = settings.lake.read_clean_interactions()
    start = pd.Timestamp(result.window["start"])
    before = events[events["timestamp"] < start].groupby("user_id")["item_id"].agg(set)
    after = events[events["timestamp"] >= start].groupby("user_id")["item_id"].agg(set)
    cold = release.stage.sources["trending"].item_scores
    if not cold.any():
        cold = release.stage.sources["popularity"].item_scores
    discounts = 1 / np.log2(np.arange(2, k + 2))
    totals = {"cold start": 0.0, "history": 0.0, "fused (RRF 60)": 0.0}
    users = 0
    for user in before.index.intersection(after.index):
        had = release.item_rows(sorted(before[user]))
        future = release.item_rows(sorted(after[user] - before[user]))
        if not len(future):
            continue
        users += 1
        cold_order = ranked(cold, cold, had)
        hist_order = ranked(history_scores(release, had), cold, had)
        fused = np.zeros(release.n_items)
        fused[cold_order] += 1 / (60 + np.arange(len(cold_order)))
        fused[hist_order] += 1 / (60 + np.arange(len(hist_order)))
        lists = {
            "cold start": cold_order[:k],
            "history": hist_order[:k],
            "fused (RRF 60)": ranked(fused, cold, had)[:k],
        }
        ideal = discounts[: min(k, len(future))].sum()
        for name, items in lists.items():
            totals[name] += (np.isin(items, future) * discounts[: len(items)]).sum() / ideal
    print(f"{users} users active before and in the last {args.window_days} days; nDCG@{k}:")
    for name, total in totals.items():
        print(f"  {name:15s} {total / max(users, 1):.4f}")


if __name__ == "__main__":
    main()
