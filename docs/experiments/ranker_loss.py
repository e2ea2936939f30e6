"""The ranker's listwise loss against approxNDCG, screened on one split. Not kept.

Not part of the product: the measurement behind docs/benchmarks.md ("A loss that targets
nDCG", 2026-11-29 evening). ``recsys benchmark quality``'s code (``benchmark_quality``) with
the ranker's mini-batches (``recsys.models.ranker._listwise_steps``) yielding another loss:

* ``ce``: the shipped softmax cross-entropy over each user's candidates;
* ``approx``: approxNDCG (Qin, Liu and Li, 2010): each candidate's rank made smooth,
  ``1 + sum_j sigmoid((s_j - s_i) / T)``, and minus the nDCG over the list computed with it;
* ``mix``: the sum of both.

    python docs/experiments/ranker_loss.py --split /tmp/s7 --seed 7 \
        --items ../shared/data/ml-100k/u.item ce approx approx:0.5 mix

``approx:T`` sets the temperature (default 1). ``--split``: a directory holding train.tsv and
test.tsv (``recsys benchmark split``); 15-35 s per run on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ranker_knobs  # beside this file: run as a script, its folder is on sys.path
import torch

import recsys.models.ranker as rk

SHIPPED = rk._listwise_steps


def steps(loss: str, temperature: float):
    def make(xt, yt, groups, train_mask, params):
        index, valid_all = rk.padded_lists(groups, train_mask)
        discounts = 1.0 / torch.log2(torch.arange(2, index.shape[1] + 2, dtype=torch.float32))
        ideal_by_count = torch.cat([torch.ones(1), torch.cumsum(discounts, 0)])

        def batches(net, generator):
            perm = torch.randperm(len(index), generator=generator)
            for start in range(0, len(perm), params.batch_users):
                users = perm[start : start + params.batch_users]
                idx, valid = index[users], valid_all[users]
                scores = net(xt[idx].reshape(-1, xt.shape[1])).reshape(idx.shape)
                labels = yt[idx] * valid
                log_p = torch.log_softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
                log_p = log_p.masked_fill(~valid, 0.0)
                ce = -((log_p * labels).sum(1) / labels.sum(1).clamp(min=1)).mean()
                if loss == "ce":
                    yield ce
                    continue
                s = scores.masked_fill(~valid, -1e4)
                above = torch.sigmoid((s[:, None, :] - s[:, :, None]) / temperature)
                ranks = 0.5 + (above * valid[:, None, :]).sum(2)  # the self-term adds 0.5
                positives = labels.sum(1)
                dcg = (labels / torch.log2(1 + ranks)).sum(1)
                ndcg = dcg / ideal_by_count[positives.long()]
                approx = -ndcg[positives > 0].mean()
                yield approx + ce if loss == "mix" else approx

        return batches

    return make


def run(split: Path, items: Path | None, seed: int, variant: str) -> float:
    loss, _, temperature = variant.partition(":")
    if loss not in ("ce", "approx", "mix"):
        raise SystemExit(f"unknown loss {variant!r}: ce, approx[:T] or mix[:T]")
    rk._listwise_steps = steps(loss, float(temperature or 1.0))
    try:  # the shipped benchmark_quality, as ranker_knobs.py runs it
        return ranker_knobs.run(split, items, seed, None)
    finally:
        rk._listwise_steps = SHIPPED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--items", type=Path)
    parser.add_argument("variants", nargs="*", default=["ce", "approx"])
    args = parser.parse_args()
    for variant in args.variants:
        value = run(args.split, args.items, args.seed, variant)
        print(f"{args.split} seed {args.seed} {variant}: nDCG@10 {value:.4f}", flush=True)


if __name__ == "__main__":
    main()
