"""Training on the clean lake: search, ranker, honest holdout, baselines, the release unit.

Temporal protocol (the product default), on the chosen window of days::

    |---- history ----|- label windows -|-- holdout (test_days) --|
    search:  sources fit before the last label window, scored on it (the holdout is unseen)
    ranker:  for each label window, sources fit on the days before it, labels from it
    holdout: sources fit on everything before the holdout + the ranker, scored on the holdout
             beside ALS alone, item-kNN alone, popularity and trending
    release: sources and features refit on the whole window + the same ranker

    recsys train --window-days 30 --budget-s 60
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.evaluation import ranking_metrics, top_k_unseen
from recsys.lake import Lake, file_sha256
from recsys.models.als import ALSParams
from recsys.models.itemknn import ItemKNNParams
from recsys.models.ranker import Ranker
from recsys.pipeline import (
    PipelineParams,
    SeenBefore,
    Stage,
    feature_names,
    fit_ranker,
    fit_stage,
    rank_users,
    relevant_rows,
    training_set,
)
from recsys.release import Release

logger = logging.getLogger(__name__)

_LIBRARIES = ("implicit", "numpy", "scipy", "pandas", "torch", "mlflow", "feast")
BASELINES = ("ease", "als", "itemknn", "lowpass", "popularity", "trending")
TUNED = ("ease", "als", "itemknn", "lowpass")
"""The sources the search tunes; each trial records ``<name>_ndcg`` for each."""


@dataclass
class TrainResult:
    """A trained release, its holdout metrics per model and what the run measured."""

    release: Release
    metrics: dict[str, dict[str, float]]
    window: dict[str, str]
    fit_seconds: float
    notes: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    ranker_stats: dict[str, float] = field(default_factory=dict)
    holdout: pd.DataFrame | None = None
    pre_holdout: pd.DataFrame | None = None
    earlier: SeenBefore | None = None  # what users had before the training window


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_fingerprint(lake: Lake, batches: list[str]) -> str:
    """sha256 over the clean batch files a model was trained on (names and contents)."""
    digest = hashlib.sha256()
    for name in sorted(batches):
        digest.update(name.encode())
        digest.update(file_sha256(lake.clean_batch_path(name)).encode())
    return digest.hexdigest()


def als_params(settings, seed: int | None = None) -> ALSParams:
    """ALS hyperparameters from the settings (``RECSYS_ALS_*``); ``seed`` overrides theirs."""
    return ALSParams(
        factors=settings.als_factors,
        regularization=settings.als_regularization,
        alpha=settings.als_alpha,
        iterations=settings.als_iterations,
        seed=settings.seed if seed is None else seed,
    )


def pipeline_params(settings, seed: int | None = None) -> PipelineParams:
    """Default pipeline parameters from the settings, one seed for every random choice."""
    seed = settings.seed if seed is None else seed
    base = PipelineParams()
    ranker = replace(
        base.ranker,
        seed=seed,
        max_epochs=settings.ranker_max_epochs,
        n_models=settings.ranker_models,
    )
    return replace(
        base, als=als_params(settings, seed), ranker=ranker, candidates=settings.candidates
    )


def select_window(frame: pd.DataFrame, window_days: int | None) -> pd.DataFrame:
    """Interactions of the last ``window_days`` days (all of them when None)."""
    if window_days is None or frame.empty:
        return frame
    if window_days < 1:
        raise RecsysError(f"--window-days must be at least 1, got {window_days}")
    end = frame["timestamp"].max()
    start = (end - timedelta(days=window_days)).floor("D") + timedelta(days=1)
    return frame.loc[frame["timestamp"] >= start]


def temporal_split(frame: pd.DataFrame, test_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split at midnight UTC ``test_days`` days before the last day: (before, last days)."""
    cut = holdout_start(frame, test_days)
    train = frame.loc[frame["timestamp"] < cut]
    test = frame.loc[frame["timestamp"] >= cut]
    if train.empty or test.empty:
        raise RecsysError(
            f"cannot hold out {test_days} day(s): the window has "
            f"{frame['timestamp'].dt.floor('D').nunique()} day(s) of data; use more days"
        )
    return train, test


def holdout_days(
    frame: pd.DataFrame,
    test_days: int | None,
    *,
    for_training: bool = True,
    windowed: bool = False,
) -> tuple[int, int]:
    """(days of data in ``frame``, days to hold out: ``test_days`` or 15% of them).
    ``windowed``: ``frame`` is a ``--window-days`` window of the lake (the error says so).

    Raises:
        RecsysError: too few days are left before the holdout: training needs a label window
            and a day before it; evaluation (``for_training=False``) one day to fit on.
    """
    n_days = int(frame["timestamp"].dt.floor("D").nunique())
    test_days = test_days or max(1, round(n_days * 0.15))
    if n_days < test_days + (2 if for_training else 1):
        data = "the window" if windowed else "the lake"
        keep = "a label window" if for_training else "a day"
        more = "a wider --window-days or more days of data" if windowed else "more days of data"
        hint = f"lower --test-days or use {more}" if test_days > 1 else f"use {more}"
        raise RecsysError(
            f"{data} has {n_days} day(s) of data: too few to hold out {test_days} day(s) and "
            f"keep {keep} before them; {hint}"
        )
    return n_days, test_days


def holdout_start(frame: pd.DataFrame, test_days: int) -> pd.Timestamp:
    return frame["timestamp"].max().floor("D") - timedelta(days=test_days - 1)


# ---- evaluation -----------------------------------------------------------------------------


def holdout_scorer(
    stage: Stage, future: pd.DataFrame, k: int
) -> tuple[np.ndarray, Callable[[np.ndarray], dict[str, float]]]:
    """(user rows of ``future``'s users known to ``stage``, a function scoring a users x k
    matrix of recommended item rows for them against what they did in ``future``)."""
    users = np.unique(future["user_id"].to_numpy())
    rows = stage.user_rows(users)
    rows = rows[rows >= 0]
    relevant = relevant_rows(stage, future, rows)
    popularity = np.asarray((stage.user_items > 0).sum(axis=0)).ravel()

    def score(recs: np.ndarray) -> dict[str, float]:
        return ranking_metrics(
            recs,
            relevant,
            k,
            n_items=len(stage.item_ids),
            item_popularity=popularity,
            n_train_users=len(stage.user_ids),
        )

    return rows, score


def evaluate_stage(
    stage: Stage,
    ranker: Ranker | None,
    future: pd.DataFrame,
    k: int,
    n_candidates: int,
    *,
    baselines: tuple[str, ...] = BASELINES,
) -> dict[str, dict[str, float]]:
    """Metrics at ``k`` on ``future`` for the pipeline and each single source, for users the
    stage knows (seen items removed; only items new to the user count as relevant)."""
    rows, score = holdout_scorer(stage, future, k)
    results = {}
    if ranker is not None:
        results["pipeline"] = score(rank_users(stage, ranker, rows, k, n_candidates)[0])
    for name in baselines:
        results[name] = score(top_k_unseen(stage.sources[name], rows, stage.seen, k))
    return results


# ---- search ---------------------------------------------------------------------------------


def search_space_sample(rng: np.random.Generator, base: PipelineParams) -> PipelineParams:
    """One random point of the (fixed) search space over the candidate sources."""
    als = replace(
        base.als,
        factors=int(rng.choice([16, 32, 64, 128])),
        regularization=float(np.exp(rng.uniform(np.log(0.1), np.log(100.0)))),
        alpha=float(np.exp(rng.uniform(np.log(0.3), np.log(10.0)))),
        iterations=int(rng.choice([10, 15, 20])),
    )
    knn = ItemKNNParams(
        neighbors=int(rng.choice([20, 50, 100, 200, 400])),
        shrink=float(rng.choice([0.0, 5.0, 10.0, 50.0, 100.0])),
    )
    ease = replace(base.ease, lam=float(rng.choice([50.0, 150.0, 500.0, 1000.0, 2000.0])))
    lowpass = replace(base.lowpass, factors=int(rng.choice([16, 32, 48, 64, 128])))
    return replace(base, als=als, itemknn=knn, ease=ease, lowpass=lowpass)


def search_sources(
    history: pd.DataFrame,
    validation: pd.DataFrame,
    catalog: pd.DataFrame,
    item_ids: np.ndarray,
    base: PipelineParams,
    *,
    budget_s: float,
    k: int,
    on_trial: Callable[[dict], None] | None = None,
    earlier: SeenBefore | None = None,
) -> tuple[PipelineParams, list[dict]]:
    """Random search of source hyperparameters within ``budget_s`` seconds, scored by nDCG@k
    of each source alone on ``validation`` (never the holdout). Trial 0 is ``base``, so the
    result is never worse than the defaults on validation."""
    rng = np.random.default_rng(base.als.seed)
    trials: list[dict] = []
    best = {name: (getattr(base, name), -1.0) for name in TUNED}
    started = time.perf_counter()
    trial = 0
    while trial == 0 or time.perf_counter() - started < budget_s:
        params = base if trial == 0 else search_space_sample(rng, base)
        t0 = time.perf_counter()
        stage = fit_stage(history, catalog, item_ids, params, earlier=earlier)
        scores = evaluate_stage(stage, None, validation, k, params.candidates, baselines=TUNED)
        record = {"trial": trial, "seconds": 0.0}
        for name in TUNED:
            record[name] = getattr(params, name).as_dict()
            record[f"{name}_ndcg"] = scores[name]["ndcg"]
            if scores[name]["ndcg"] > best[name][1]:
                best[name] = (getattr(params, name), scores[name]["ndcg"])
        record["seconds"] = time.perf_counter() - t0
        trials.append(record)
        if on_trial:
            on_trial(record)
        trial += 1
        if budget_s <= 0:
            break
    return replace(base, **{name: value for name, (value, _) in best.items()}), trials


# ---- the whole training run -----------------------------------------------------------------


def label_cuts(test_start: pd.Timestamp, label_days: int, windows: int) -> list[pd.Timestamp]:
    """Start of each label window, newest first, ending at ``test_start``."""
    return [test_start - timedelta(days=label_days * (j + 1)) for j in range(windows)]


def train_ranker(
    frame: pd.DataFrame,
    catalog: pd.DataFrame,
    item_ids: np.ndarray,
    params: PipelineParams,
    cuts: list[pd.Timestamp],
    label_days: int,
    k: int,
    earlier: SeenBefore | None = None,
) -> tuple[Ranker | None, dict[str, float]]:
    """Stack (features, labels) from every label window and fit one ranker (early stopping).
    ``earlier``: what users had before ``frame`` began (never a candidate, never a label)."""
    sets = []
    stats: dict[str, float] = {"windows": 0.0}
    for j, cut in enumerate(cuts):
        history = frame.loc[frame["timestamp"] < cut]
        future = frame.loc[
            (frame["timestamp"] >= cut) & (frame["timestamp"] < cut + timedelta(days=label_days))
        ]
        if history.empty or future.empty:
            continue
        stage = fit_stage(history, catalog, item_ids, params, as_of=cut, earlier=earlier)
        x, y, groups, window_stats = training_set(stage, future, params)
        if len(x):
            sets.append((x, y, groups))
            stats["windows"] += 1
            stats[f"window{j}_users"] = window_stats["users"]
    ranker, fit_stats = fit_ranker(sets, params, k=k)
    return ranker, stats | fit_stats


def train_and_evaluate(
    lake: Lake,
    params: PipelineParams | None = None,
    *,
    window_days: int | None = None,
    test_days: int | None = None,
    label_windows: int = 3,
    budget_s: float = 0.0,
    k: int = 10,
    model_name: str = "recsys-recommender",
    on_trial: Callable[[dict], None] | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Search, train the ranker, measure on the temporal holdout, refit the release.

    Raises:
        RecsysError: no clean data, or too few days for the holdout and a label window.
    """
    params = params or PipelineParams()
    batches = lake.clean_batches()
    everything = lake.read_clean_interactions(batches)
    frame = select_window(everything, window_days)
    if frame.empty:
        raise RecsysError("the training window holds no interactions")
    n_days, test_days = holdout_days(frame, test_days, windowed=window_days is not None)
    catalog = lake.read_clean_catalog("items")
    item_ids = np.unique(np.concatenate([catalog["item_id"].to_numpy(), frame["item_id"]]))
    # seen-item filter over the whole lake, not only the window: what users had before it
    earlier = SeenBefore.from_frame(
        everything.loc[everything["timestamp"] < frame["timestamp"].min()], item_ids
    )
    del everything
    start_of_test = holdout_start(frame, test_days)
    label_days = max(1, min(test_days, (n_days - test_days) // (label_windows + 1)))
    cuts = label_cuts(start_of_test, label_days, label_windows)
    started = time.perf_counter()

    trials: list[dict] = []
    if budget_s > 0:
        newest = cuts[0]
        params, trials = search_sources(
            frame.loc[frame["timestamp"] < newest],
            frame.loc[(frame["timestamp"] >= newest) & (frame["timestamp"] < start_of_test)],
            catalog,
            item_ids,
            params,
            budget_s=budget_s,
            k=k,
            on_trial=on_trial,
            earlier=earlier,
        )
    ranker, ranker_stats = train_ranker(
        frame, catalog, item_ids, params, cuts, label_days, k, earlier
    )

    pre_holdout = frame.loc[frame["timestamp"] < start_of_test]
    holdout = frame.loc[frame["timestamp"] >= start_of_test]
    eval_stage = fit_stage(
        pre_holdout, catalog, item_ids, params, as_of=start_of_test, earlier=earlier
    )
    metrics = evaluate_stage(eval_stage, ranker, holdout, k, params.candidates)
    notes = verdict(metrics, k, ranker)

    window = {
        "start": frame["timestamp"].min().isoformat(),
        "end": frame["timestamp"].max().isoformat(),
        "holdout_start": start_of_test.isoformat(),
        "test_days": str(test_days),
        "label_days": str(label_days),
        "label_windows": str(int(ranker_stats.get("windows", 0))),
    }
    from features.store_meta import FEATURE_SERVICE_NAME, FEATURE_SERVICE_VERSION

    meta = {
        "model_name": model_name,
        "created_at": datetime.now(UTC).isoformat(),
        "k": k,
        "training_window": window,
        "data_fingerprint": data_fingerprint(lake, batches),
        "batches": len(batches),
        "metrics": {"holdout": metrics},
        "metrics_protocol": (
            f"temporal holdout: last {test_days} day(s) from {start_of_test.date()}; sources "
            f"and features fit on the days before, ranker trained on {label_days}-day label "
            "windows before that; seen items removed; the released sources and features are "
            "refit on the whole window with the same ranker"
        ),
        "feature_service": {"name": FEATURE_SERVICE_NAME, "version": FEATURE_SERVICE_VERSION},
        "feature_names": feature_names(),
        "ranker_stats": ranker_stats,
        "search_trials": len(trials),
        # the seen filter's share from before the window (0 when trained on the whole lake)
        "seen_before": {"users": earlier.n_users, "pairs": int(earlier.matrix.nnz)},
        "library_versions": library_versions(),
        "notes": notes,
    }
    stage = fit_stage(
        frame, catalog, item_ids, params, show_progress=show_progress, earlier=earlier
    )
    release = Release(meta, stage, ranker, params, seen_before=earlier)
    return TrainResult(
        release,
        metrics,
        window,
        time.perf_counter() - started,
        notes,
        trials,
        ranker_stats,
        holdout,
        pre_holdout,
        earlier,
    )


def verdict(metrics: dict[str, dict[str, float]], k: int, ranker: Ranker | None) -> list[str]:
    """Loud notes when a simpler model wins the holdout."""
    if ranker is None or "pipeline" not in metrics:
        return [
            "WARNING: no ranker could be trained (no label signal); serving falls back to "
            "the candidate order"
        ]
    ours = metrics["pipeline"]["ndcg"]
    best_name = max(BASELINES, key=lambda n: metrics[n]["ndcg"])
    best = metrics[best_name]["ndcg"]
    if best > ours:
        return [
            f"WARNING: {best_name} alone beats the full pipeline on holdout nDCG@{k} "
            f"({best:.4f} > {ours:.4f})"
        ]
    if best == ours:
        return [
            f"WARNING: {best_name} alone ties with the full pipeline on holdout nDCG@{k} "
            f"({best:.4f}): the ranker adds nothing there"
        ]
    return []


def lift_over(metrics: dict[str, dict[str, float]], baseline: str = "als") -> float | None:
    """Relative nDCG lift of the pipeline over ``baseline`` (0.07 = +7%); None when the
    baseline's nDCG is 0 (no relative lift is defined, and JSON has no infinity)."""
    base = metrics[baseline]["ndcg"]
    return (metrics["pipeline"]["ndcg"] - base) / base if base > 0 else None


def lift_text(metrics: dict[str, dict[str, float]], k: int, baseline: str = "als") -> str:
    """One line for people: the pipeline's nDCG@k lift over ``baseline`` alone."""
    lift = lift_over(metrics, baseline)
    name = {"als": "ALS"}.get(baseline, baseline)
    if lift is None:
        return (
            f"pipeline vs {name} alone: {name} scores nDCG@{k} 0, the pipeline "
            f"{metrics['pipeline']['ndcg']:.4f} (no relative lift)"
        )
    return f"pipeline vs {name} alone: {lift:+.1%} nDCG@{k}"


def holdout_rows(result: TrainResult) -> tuple[str, list[str], list[list]]:
    """(title, columns, rows) of the holdout metrics table for ``result``."""
    names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage", "novelty"]
    title = (
        f"Holdout at k={result.release.meta.get('k', 10)}: last {result.window['test_days']} "
        f"day(s) from {result.window['holdout_start'][:10]}, "
        f"{next(iter(result.metrics.values()))['users']} users"
    )
    rows = [[model, *(values[n] for n in names)] for model, values in result.metrics.items()]
    return title, ["model", *names], rows
