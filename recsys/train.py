"""Training on the clean lake: temporal holdout, ALS candidates, baselines, the release unit.

Protocol: the last ``test_days`` of the window are held out; ALS and the popularity baseline are
fit on the days before and scored on held-out interactions with seen items removed. The
released model is then refit on the whole window with the same hyperparameters, so it knows the
newest behaviour; ``release.json`` says so next to the metrics.

    recsys train --window-days 30
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.contract import implicit_weight
from recsys.errors import RecsysError
from recsys.evaluation import ranking_metrics, top_k_unseen
from recsys.lake import Lake, file_sha256
from recsys.models.als import ALSCandidates, ALSParams
from recsys.models.base import CandidateSource
from recsys.models.popularity import PopularityCandidates
from recsys.release import Release

logger = logging.getLogger(__name__)

_LIBRARIES = ("implicit", "numpy", "scipy", "pandas", "mlflow", "torch")


@dataclass
class TrainResult:
    """A trained release, its holdout metrics per model and what the run measured."""

    release: Release
    metrics: dict[str, dict[str, float]]
    window: dict[str, str]
    fit_seconds: float
    notes: list[str] = field(default_factory=list)


def als_params(settings, seed: int | None = None) -> ALSParams:
    """ALS hyperparameters from the settings (``RECSYS_ALS_*``); ``seed`` overrides theirs."""
    return ALSParams(
        factors=settings.als_factors,
        regularization=settings.als_regularization,
        alpha=settings.als_alpha,
        iterations=settings.als_iterations,
        seed=settings.seed if seed is None else seed,
    )


def holdout_rows(result: TrainResult) -> tuple[str, list[str], list[list]]:
    """(title, columns, rows) of the holdout metrics table for ``result``."""
    names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage", "novelty"]
    title = (
        f"Holdout at k={result.release.meta.get('k', 10)}: last {result.window['test_days']} "
        f"day(s) from {result.window['holdout_start'][:10]}, "
        f"{result.metrics['als']['users']} users"
    )
    rows = [[model, *(values[n] for n in names)] for model, values in result.metrics.items()]
    return title, ["model", *names], rows


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
    last_day = frame["timestamp"].max().floor("D")
    cut = last_day - timedelta(days=test_days - 1)
    train = frame.loc[frame["timestamp"] < cut]
    test = frame.loc[frame["timestamp"] >= cut]
    if train.empty or test.empty:
        raise RecsysError(
            f"cannot hold out {test_days} day(s): the window has "
            f"{frame['timestamp'].dt.floor('D').nunique()} day(s) of data; use more days"
        )
    return train, test


def user_item_matrix(
    frame: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> sp.csr_matrix:
    """Users x items matrix of summed implicit weights (log-damped) for ids in the indexes."""
    rows = np.searchsorted(user_ids, frame["user_id"].to_numpy())
    cols = np.searchsorted(item_ids, frame["item_id"].to_numpy())
    ok = (rows < len(user_ids)) & (cols < len(item_ids))
    ok &= user_ids[np.minimum(rows, len(user_ids) - 1)] == frame["user_id"].to_numpy()
    ok &= item_ids[np.minimum(cols, len(item_ids) - 1)] == frame["item_id"].to_numpy()
    weights = implicit_weight(frame)[ok]
    matrix = sp.csr_matrix(
        (weights, (rows[ok], cols[ok])), shape=(len(user_ids), len(item_ids)), dtype=np.float64
    )
    matrix.sum_duplicates()
    matrix.data = np.log1p(matrix.data).astype(np.float32)
    return matrix.astype(np.float32)


def fit_release(
    frame: pd.DataFrame,
    item_ids: np.ndarray,
    params: ALSParams,
    meta: dict,
    *,
    show_progress: bool = False,
) -> Release:
    """Fit ALS + popularity on ``frame`` and package them with ``meta`` as a Release."""
    user_ids = np.unique(frame["user_id"].to_numpy())
    matrix = user_item_matrix(frame, user_ids, item_ids)
    als = ALSCandidates.fit(matrix, params, show_progress=show_progress)
    popularity = PopularityCandidates.fit(matrix)
    seen = matrix.copy()
    seen.data = np.ones_like(seen.data)
    return Release(meta, user_ids, item_ids, als, popularity, seen)


def evaluate_sources(
    sources: dict[str, CandidateSource],
    train: pd.DataFrame,
    test: pd.DataFrame,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    k: int,
) -> dict[str, dict[str, float]]:
    """Holdout metrics at ``k`` of each source, for test users that the training data knows."""
    train_matrix = user_item_matrix(train, user_ids, item_ids)
    seen = train_matrix.copy()
    seen.data = np.ones_like(seen.data)
    known_test = test.loc[test["user_id"].isin(user_ids) & test["item_id"].isin(item_ids)]
    eval_users = np.unique(known_test["user_id"].to_numpy())
    user_rows = np.searchsorted(user_ids, eval_users)
    test_matrix = user_item_matrix(known_test, user_ids, item_ids)[user_rows]
    # an item already seen in training can never be recommended, so it cannot count as a miss
    test_matrix = test_matrix - test_matrix.multiply(seen[user_rows] > 0)
    test_matrix.eliminate_zeros()
    relevant = [
        test_matrix.indices[test_matrix.indptr[i] : test_matrix.indptr[i + 1]]
        for i in range(len(user_rows))
    ]
    popularity = np.asarray((seen > 0).sum(axis=0)).ravel()
    results = {}
    for name, source in sources.items():
        recs = top_k_unseen(source, user_rows, seen, k)
        results[name] = ranking_metrics(
            recs,
            relevant,
            k,
            n_items=len(item_ids),
            item_popularity=popularity,
            n_train_users=len(user_ids),
        )
    return results


def train_and_evaluate(
    lake: Lake,
    params: ALSParams,
    *,
    window_days: int | None = None,
    test_days: int | None = None,
    k: int = 10,
    model_name: str = "recsys-recommender",
    show_progress: bool = False,
) -> TrainResult:
    """Train on the clean lake, measure on the temporal holdout, refit the release on the window.

    Raises:
        RecsysError: no clean data, or too few days for a holdout.
    """
    batches = lake.clean_batches()
    frame = select_window(lake.read_clean_interactions(batches), window_days)
    if frame.empty:
        raise RecsysError("the training window holds no interactions")
    n_days = frame["timestamp"].dt.floor("D").nunique()
    test_days = test_days or max(1, round(n_days * 0.15))
    train, test = temporal_split(frame, test_days)
    catalog = lake.read_clean_catalog("items")["item_id"].to_numpy()
    item_ids = np.unique(np.concatenate([catalog, frame["item_id"].to_numpy()]))

    started = time.perf_counter()
    holdout_model = fit_release(train, item_ids, params, {}, show_progress=show_progress)
    metrics = evaluate_sources(
        {"als": holdout_model.als, "popularity": holdout_model.popularity},
        train,
        test,
        holdout_model.user_ids,
        item_ids,
        k,
    )
    notes = []
    if metrics["popularity"]["ndcg"] >= metrics["als"]["ndcg"]:
        notes.append(
            f"WARNING: popularity beats ALS on holdout nDCG@{k} "
            f"({metrics['popularity']['ndcg']:.4f} >= {metrics['als']['ndcg']:.4f})"
        )
    window = {
        "start": frame["timestamp"].min().isoformat(),
        "end": frame["timestamp"].max().isoformat(),
        "holdout_start": test["timestamp"].min().floor("D").isoformat(),
        "test_days": str(test_days),
    }
    meta = {
        "model_name": model_name,
        "created_at": datetime.now(UTC).isoformat(),
        "params": params.as_dict(),
        "k": k,
        "training_window": window,
        "data_fingerprint": data_fingerprint(lake, batches),
        "batches": len(batches),
        "metrics": {"holdout": metrics},
        "metrics_protocol": (
            f"temporal holdout: last {test_days} day(s); models fit on the days before, seen "
            "items removed; the released factors are refit on the whole window"
        ),
        "feature_service": None,
        "library_versions": library_versions(),
        "notes": notes,
    }
    release = fit_release(frame, item_ids, params, meta, show_progress=show_progress)
    fit_seconds = time.perf_counter() - started
    return TrainResult(release, metrics, window, fit_seconds, notes)
