"""Two ranker-side knobs of ``recsys benchmark quality``, screened on one split. Not kept.

Not part of the product: the measurement behind docs/benchmarks.md (the "Two ranker-side knobs"
table after the per-user seeds). ``recsys benchmark quality``'s code (``benchmark_quality``),
once as shipped and once per change:

* ``share=F``: the ranker's labels from random ``F`` shares of each user's TRAIN rows, the
  sources fit on the rest (``fit_static``'s ``label_share``; the product uses 0.2);
* ``drop=raw`` / ``drop=share``: the per-source raw scores / shares of the user's top score
  set to 0 in every ranker row (``Stage.source_features``), for training and ranking alike.

    python docs/experiments/ranker_knobs.py --split /tmp/s7 --seed 7 \
        --items ../shared/data/ml-100k/u.item share=0.1 share=0.3 drop=raw drop=share

``--split``: a directory holding train.tsv and test.tsv (``recsys benchmark split``); 20-25 s
per run on two cores.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import recsys.benchmark as bench
import recsys.pipeline as pipe

COLUMNS = {"raw": 0, "share": 2}  # offsets in each source's block of pipe._PER_SOURCE


def run(split: Path, items: Path | None, seed: int, change: str | None) -> float:
    fit_static, source_features = bench.fit_static, pipe.Stage.source_features
    try:
        if change and change.startswith("share="):
            share = float(change.split("=", 1)[1])
            bench.fit_static = functools.partial(fit_static, label_share=share)
        elif change and change.startswith("drop="):
            offset = COLUMNS[change.split("=", 1)[1]]

            def dropped(self, cands):
                out = source_features(self, cands)
                out[:, offset :: len(pipe._PER_SOURCE)] = 0
                return out

            pipe.Stage.source_features = dropped
        elif change:
            raise SystemExit(f"unknown change {change!r}: share=F, drop=raw or drop=share")
        report = bench.benchmark_quality(
            split / "train.tsv",
            split / "test.tsv",
            items_path=items,
            params=bench.with_seed(pipe.PipelineParams(), seed),
        )
    finally:
        bench.fit_static, pipe.Stage.source_features = fit_static, source_features
    return report["metrics"]["pipeline"]["ndcg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--items", type=Path)
    parser.add_argument("changes", nargs="*", default=["share=0.1", "share=0.3", "drop=raw"])
    args = parser.parse_args()
    base = run(args.split, args.items, args.seed, None)
    print(f"{args.split} seed {args.seed}: shipped pipeline nDCG@10 {base:.4f}", flush=True)
    for change in args.changes:
        value = run(args.split, args.items, args.seed, change)
        print(f"  {change}: {value:.4f} ({value - base:+.4f})", flush=True)


if __name__ == "__main__":
    main()
