"""How much could other signals add to EASE on a MovieLens-100K split? An upper bound.

Not part of the product: a measurement behind docs/benchmarks.md ("2026-11-27: looking for a
better base than EASE"). For each family of signals it scores the signal alone and blended with
EASE (per-user z-scores, ``ease + w * signal``) on TEST, and reports the best blend over a few
weights. The weight is chosen on TEST itself, so each figure is an optimistic upper bound of
what the signal could add; a family whose bound is near EASE alone cannot lift the pipeline
to the issue's target, whatever the ranker does with it.

    python docs/experiments/quality_signals.py --split /tmp/s42 \
        --users ../shared/data/ml-100k/u.user

``--split``: a directory holding train.tsv and test.tsv (``recsys benchmark split``).
Takes 40-45 s on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recsys.evaluation import ranking_metrics
from recsys.models.ease import EASECandidates, EASEParams

WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0)
COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def load(split: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    read = lambda name: pd.read_csv(split / name, sep="\t", header=None, names=COLUMNS)  # noqa: E731
    return read("train.tsv"), read("test.tsv")


class Scorer:
    """nDCG@10 of a users x items score matrix against TEST, seen items removed, by the metric
    code of ``recsys benchmark quality`` (``recsys.evaluation.ranking_metrics``)."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame) -> None:
        self.n_users = int(max(train.user_id.max(), test.user_id.max())) + 1
        self.n_items = int(max(train.item_id.max(), test.item_id.max())) + 1
        self.x = np.zeros((self.n_users, self.n_items))
        self.x[train.user_id, train.item_id] = 1.0
        truth = np.zeros_like(self.x)
        truth[test.user_id, test.item_id] = 1.0
        truth[self.x > 0] = 0.0
        self.users = np.flatnonzero(truth.sum(1) > 0)
        self.relevant = [np.flatnonzero(truth[u]) for u in self.users]

    def ndcg(self, scores: np.ndarray) -> float:
        s = np.where(self.x > 0, -np.inf, np.nan_to_num(scores, nan=0.0))[self.users]
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        return float(ranking_metrics(top, self.relevant, 10, n_items=self.n_items)["ndcg"])


def zscore(s: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(s), s, 0.0)
    return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-9)


def ease_weights(matrix: np.ndarray, lam: float) -> np.ndarray:
    """The product's EASE (``recsys.models.ease``) fit on ``matrix``, whatever its width."""
    params = EASEParams(lam=lam, max_items=matrix.shape[1])
    return EASECandidates.fit(sp.csr_matrix(matrix), params).weights


def edlae_weights(gram: np.ndarray, dropout: float, lam: float) -> np.ndarray:
    """EASE with dropout emphasis (Steck 2020): a per-item penalty p/(1-p) diag(G) + lambda."""
    penalty = dropout / (1 - dropout) * np.diag(gram) + lam
    inverse = np.linalg.inv(gram + np.diag(penalty))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights


def mult_vae(x: np.ndarray, epochs: int, seed: int = 0) -> np.ndarray:
    """Mult-VAE (Liang et al. 2018), 600-200, KL annealed to 0.2; scores from the mean."""
    torch.manual_seed(seed)
    n_items = x.shape[1]
    xt = torch.tensor(x, dtype=torch.float32)
    enc = torch.nn.Sequential(
        torch.nn.Linear(n_items, 600), torch.nn.Tanh(), torch.nn.Linear(600, 400)
    )
    dec = torch.nn.Sequential(
        torch.nn.Linear(200, 600), torch.nn.Tanh(), torch.nn.Linear(600, n_items)
    )
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    steps = epochs * ((len(xt) + 99) // 100)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 100):
            batch = xt[perm[start : start + 100]]
            h = torch.nn.functional.dropout(torch.nn.functional.normalize(batch, dim=1), 0.5)
            mu, logvar = enc(h).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            nll = -(torch.log_softmax(dec(z), 1) * batch).sum(1).mean()
            kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
            loss = nll + min(0.2, 0.2 * step / (0.5 * steps)) * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return dec(enc(torch.nn.functional.normalize(xt, dim=1)).chunk(2, dim=1)[0]).numpy()


def signals(train: pd.DataFrame, sc: Scorer, users_path: Path | None, base_weights: np.ndarray):
    """(family, variant, users x items scores) of every signal tried."""
    x, n_users, n_items = sc.x, sc.n_users, sc.n_items
    gram = x.T @ x
    for lam in (200.0, 350.0, 800.0):
        yield "EASE, other lambda", f"lambda {lam:g}", x @ ease_weights(x, lam)
    for p in (0.25, 0.5):
        yield "EDLAE (dropout emphasis)", f"p {p}, lambda 100", x @ edlae_weights(gram, p, 100.0)
    yield "Mult-VAE", "100 epochs", mult_vae(x, 100)
    for lam in (100.0, 200.0):  # EASE on the items x users matrix: users as the columns
        yield "user-user EASE", f"lambda {lam:g}", ease_weights(x.T, lam).T @ x
    rating = np.zeros_like(x)
    rating[train.user_id, train.item_id] = train.rating
    mean = rating.sum(1) / np.maximum(x.sum(1), 1)
    centred = np.where(x > 0, rating - mean[:, None], 0.0)
    with_ratings = (x + 0.1 * centred) @ base_weights
    yield "rating values in the input", "x + 0.1 (r - user mean)", with_ratings
    day = ((train.timestamp - train.timestamp.min()) // 86400).to_numpy()
    by_item = np.zeros((n_items, day.max() + 1))
    np.add.at(by_item, (train.item_id.to_numpy(), day), 1)
    by_user = np.zeros((n_users, day.max() + 1))
    np.add.at(by_user, (train.user_id.to_numpy(), day), 1)
    for width in (3, 10, 30):
        kernel = np.exp(-0.5 * (np.arange(-3 * width, 3 * width + 1) / width) ** 2)
        smooth = np.apply_along_axis(lambda r, k=kernel: np.convolve(r, k, "same"), 1, by_item)
        share = smooth / (smooth.sum(0, keepdims=True) + 1e-9)
        days = by_user / np.maximum(by_user.sum(1, keepdims=True), 1)
        yield (
            "time: item's share of events on the user's days",
            f"{width}-day kernel",
            np.log(days @ share.T + 1e-6),
        )
    cosine = gram / np.outer(np.sqrt(np.diag(gram)) + 1e-9, np.sqrt(np.diag(gram)) + 1e-9)
    np.fill_diagonal(cosine, 0.0)
    for name, sims in (("cosine", cosine), ("EASE weight", base_weights)):
        top5 = np.zeros_like(x)
        for u in range(n_users):
            seen = np.flatnonzero(x[u])
            if len(seen):
                top5[u] = -np.sort(-sims[seen], axis=0)[: min(5, len(seen))].mean(0)
        yield "nearest-neighbour aggregate", f"mean of top 5 {name}", top5
    if users_path is not None:
        names = ["u", "age", "g", "occ", "zip"]
        people = pd.read_csv(users_path, sep="|", header=None, names=names)
        parts = [pd.cut(people.age, [0, 18, 25, 35, 45, 55, 200]), people.g, people.occ]
        onehot = np.zeros((n_users, 0))
        for part in parts:
            block = np.zeros((n_users, part.nunique()))
            block[people.u] = pd.get_dummies(part).to_numpy(float)
            onehot = np.hstack([onehot, block])
        ridge = np.linalg.solve(onehot.T @ onehot + 10 * np.eye(onehot.shape[1]), onehot.T @ x)
        yield "demographics (age, gender, occupation)", "ridge to items", onehot @ ridge
    ordered = train.sort_values(["user_id", "timestamp", "item_id"])
    follows = np.zeros((n_items, n_items))
    for _, seq in ordered.groupby("user_id").item_id:
        items = seq.to_numpy()
        np.add.at(follows, (items[:-1], items[1:]), 1)
        np.add.at(follows, (items[1:], items[:-1]), 1)
    norm = np.sqrt(np.diag(gram)) + 1e-9
    adjacent = x @ (follows / np.outer(norm, norm))
    yield "sequence: adjacent ratings", "co-occurrence at distance 1", adjacent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--users", type=Path, default=None, help="u.user, for demographics")
    parser.add_argument("--lam", type=float, default=500.0, help="EASE lambda of the base")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, test = load(args.split)
    sc = Scorer(train, test)
    base_weights = ease_weights(sc.x, args.lam)
    base = sc.x @ base_weights
    base_ndcg = sc.ndcg(base)
    print(f"EASE (lambda {args.lam:g}) alone: nDCG@10 {base_ndcg:.4f} over {len(sc.users)} users")
    print("| family | variant | alone | best blend with EASE (w) | gain |")
    print("|---|---|---:|---:|---:|")
    for family, variant, scores in signals(train, sc, args.users, base_weights):
        blends = {w: sc.ndcg(zscore(base) + w * zscore(scores)) for w in WEIGHTS}
        w = max(blends, key=blends.get)
        print(
            f"| {family} | {variant} | {sc.ndcg(scores):.4f} | {blends[w]:.4f} ({w:g}) "
            f"| {blends[w] - base_ndcg:+.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
