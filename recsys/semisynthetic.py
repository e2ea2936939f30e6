"""A semi-synthetic world from MovieLens (any GroupLens layout, :mod:`recsys.movielens`): real
users, real movies, simulated days.

The ground truth is fit on the real ratings, then the days are simulated from it with the
synthetic world's machinery (:func:`recsys.synthetic.world_from_arrays`), so the world has the
same interface as a synthetic one (batches, click model, ground truth, summary):

* **Catalogs**: the real users (age, gender, occupation) and the real movies (title, genres; the
  primary genre is the category), ids as in the files when they are ``1..n`` (ml-100k), else
  renumbered ``1..n`` in the files' id order. Their ``created_at`` keep the real dates,
  moved by one offset so that the last real rating falls on the eve of day 0.
* **Tastes and item vectors**: implicit ALS (:class:`recsys.models.als.ALSCandidates`) fit on
  all the real ratings (a rating's stars are its confidence). The average user's factor is
  taken out of every taste: what every user shares is popularity, which the click model has
  as a term of its own and the days get from drawing candidates by popularity.
* **Popularity and activity**: the real rating counts of the items and of the users.
* **Biases**: an item's (user's) click bias is its shrunk mean rating as a z-score, times the
  synthetic world's ``ITEM_BIAS_SD`` (``USER_BIAS_SD``): good movies, and generous users,
  click more.
* **Drift**: from ``drift_day`` on, ``drift_share`` of the users take the taste of another real
  user, the least similar of ``DONOR_CANDIDATES`` drawn at random.
* **Calibration** (two constants solved from the data, nothing tuned by hand): the vectors are
  scaled so that a choice says as much about a user's taste as in the synthetic world (the
  KL divergence of the user's choices from popularity, ``TARGET_CHOICE_INFORMATION`` nats),
  and the global click bias is solved so that showing each user their true top 10 gets the
  synthetic world's request-level CTR (``TARGET_ORACLE_CTR``). Both targets are what
  :func:`calibration_stats` measures on the synthetic demo world (1,200 users, 300 items).
  Matching the spread of affinities instead leaves choices half as informative (0.97 nats:
  the synthetic tastes are concentrated on a few categories, real ones are not), and a
  recommender barely beats popularity.

The same data, options and seed give the same world (one ALS thread, seeded generators)::

    from recsys.semisynthetic import movielens_world
    world = movielens_world("../shared/data/ml-100k", n_days=20, n_interactions=60_000)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit, logsumexp

from recsys.errors import RecsysError
from recsys.models.base import one_blas_thread
from recsys.movielens import Dataset, load_movielens
from recsys.synthetic import (
    CHOICE_SCALE,
    CLICK_POP_WEIGHT,
    CLICK_SCALE,
    ITEM_BIAS_SD,
    USER_BIAS_SD,
    World,
    WorldConfig,
    world_from_arrays,
)

DIM = 16  # latent dimensions of tastes and item vectors (the synthetic world's default)
ALS_REGULARIZATION = 20.0
ALS_ALPHA = 2.0
ALS_ITERATIONS = 20
RATING_SHRINKAGE = 10.0  # pseudo-ratings at the global mean in a shrunk mean rating
DONOR_CANDIDATES = 20  # users a drifted user may take the taste of; the least similar wins
TOP_K = 10  # the request size of the demo's traffic (calibration target)

# Calibration targets: calibration_stats() of the synthetic demo world
# (WorldConfig(n_users=1200, n_items=300)): 2.07-2.20 nats and 0.823-0.832 over seeds 1, 7, 42.
TARGET_CHOICE_INFORMATION = 2.1
TARGET_ORACLE_CTR = 0.83


@dataclass
class MovieLensWorldConfig(WorldConfig):
    """A :class:`WorldConfig` whose users, items and categories come from MovieLens.

    ``popularity_exponent`` and ``new_item_share`` do not apply (popularity is the real counts,
    every movie is there from day 0) and are left out of :meth:`to_dict`.
    """

    source: str = "ml-100k"
    new_item_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        payload = super().to_dict()
        for name in ("popularity_exponent", "new_item_share"):
            payload.pop(name, None)
        return payload


def movielens_world(
    data_path: Path | str,
    *,
    n_days: int,
    n_interactions: int,
    seed: int = 42,
    drift_day: int | None = None,
    drift_share: float = 0.5,
    start_date: str = "2026-01-01",
    show_progress: bool = False,
) -> World:
    """The semi-synthetic MovieLens world (see the module doc) over ``n_days`` days holding
    ``n_interactions`` interactions in all; drift as in :class:`WorldConfig`. Its users, items
    and categories are the data's. BLAS runs on one thread: the same bytes on any machine.

    Raises:
        RecsysError: the data is missing or malformed, or rates users or items its user or
            movie file does not list.
    """
    dataset = load_movielens(data_path)
    with one_blas_thread():
        return _build(
            dataset,
            n_days=n_days,
            n_interactions=n_interactions,
            seed=seed,
            drift_day=drift_day,
            drift_share=drift_share,
            start_date=start_date,
            show_progress=show_progress,
        )


def _build(
    dataset: Dataset,
    *,
    n_days: int,
    n_interactions: int,
    seed: int,
    drift_day: int | None,
    drift_share: float,
    start_date: str,
    show_progress: bool,
) -> World:
    dataset = _dense_ids(dataset)
    ratings = dataset.interactions
    n_users, n_items = len(dataset.users), len(dataset.items)
    vocab = np.array(sorted(dataset.items["category"].astype(str).unique()), dtype=object)
    cfg = MovieLensWorldConfig(
        n_users=n_users,
        n_items=n_items,
        n_days=n_days,
        n_interactions=n_interactions,
        n_categories=len(vocab),
        dim=DIM,
        start_date=start_date,
        seed=seed,
        drift_day=drift_day,
        drift_share=drift_share,
        source=dataset.name,
    )
    rng = np.random.default_rng(seed)
    users = ratings["user_id"].to_numpy() - 1
    items = ratings["item_id"].to_numpy() - 1
    stars = ratings["value"].to_numpy(dtype=np.float64)

    item_counts = np.bincount(items, minlength=n_items).astype(np.float64)
    popularity = np.maximum(item_counts, 1.0)
    popularity /= popularity.sum()
    activity = np.bincount(users, minlength=n_users).astype(np.float64)
    item_category = np.searchsorted(vocab, dataset.items["category"].astype(str).to_numpy())
    weights_before = np.zeros((n_users, len(vocab)))
    np.add.at(weights_before, (users, item_category[items]), 1.0)
    weights_before /= np.maximum(weights_before.sum(axis=1, keepdims=True), 1.0)

    taste, vectors = fit_tastes(users, items, stars, n_users, n_items, seed)
    scale = solve_vector_scale(taste, vectors, popularity, activity, TARGET_CHOICE_INFORMATION)
    taste, vectors = taste * np.sqrt(scale), vectors * np.sqrt(scale)

    # drift is drawn even when disabled, so drift_day only changes the days from drift_day on
    drifted = np.zeros(n_users, dtype=bool)
    drifted[rng.choice(n_users, size=round(drift_share * n_users), replace=False)] = True
    donors = _donors(rng, taste)
    if drift_day is None:
        drifted[:] = False
    taste_after = np.where(drifted[:, None], taste[donors], taste)
    weights_after = np.where(drifted[:, None], weights_before[donors], weights_before)

    item_bias = ITEM_BIAS_SD * _shrunk_mean_z(items, stars, n_items)
    user_bias = USER_BIAS_SD * _shrunk_mean_z(users, stars, n_users)
    log_popularity = np.log(popularity * n_items)
    click_bias = solve_click_bias(
        taste, vectors, item_bias, user_bias, log_popularity, activity, TARGET_ORACLE_CTR
    )
    return world_from_arrays(
        cfg,
        items=_shift(dataset.items, "created_at", ratings, cfg),
        users=_shift(dataset.users, "created_at", ratings, cfg),
        item_vectors=vectors.astype(np.float32),
        item_popularity=popularity,
        item_category=item_category.astype(np.int64),
        user_activity=activity,
        taste_before=taste.astype(np.float32),
        taste_after=taste_after.astype(np.float32),
        drifted=drifted,
        item_bias=item_bias,
        user_bias=user_bias,
        category_weights_before=weights_before,
        category_weights_after=weights_after,
        click_bias=click_bias,
        rng=rng,
        show_progress=show_progress,
    )


def fit_tastes(
    users: np.ndarray,
    items: np.ndarray,
    stars: np.ndarray,
    n_users: int,
    n_items: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit ALS on the ratings (0-based indices; stars as confidence), one thread, seeded.

    Returns (tastes, item vectors) as float64; the activity-weighted mean taste (what every
    user shares: popularity) is taken out of the tastes.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from recsys.models.als import ALSCandidates, ALSParams

    matrix = sp.csr_matrix((stars, (users, items)), shape=(n_users, n_items), dtype=np.float32)
    params = ALSParams(
        factors=DIM,
        regularization=ALS_REGULARIZATION,
        alpha=ALS_ALPHA,
        iterations=ALS_ITERATIONS,
        seed=seed,
    )
    als = ALSCandidates.fit(matrix, params)
    taste = als.user_factors.astype(np.float64)
    activity = np.bincount(users, minlength=n_users).astype(np.float64)
    taste -= (activity / activity.sum()) @ taste
    return taste, als.item_factors.astype(np.float64)


def choice_information(
    taste: np.ndarray, vectors: np.ndarray, popularity: np.ndarray, activity: np.ndarray
) -> float:
    """How much a user's choice says about their taste, in nats: the KL divergence of the
    user's choice distribution (``popularity * exp(CHOICE_SCALE * affinity)``, normalised: the
    many-candidates limit of the world's choice) from popularity, averaged by activity."""
    return _choice_kl(_affinities(taste, vectors), popularity, activity)


def _affinities(taste: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return np.asarray(taste, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T


def _choice_kl(affinity: np.ndarray, popularity: np.ndarray, activity: np.ndarray) -> float:
    log_pop = np.log(np.maximum(popularity, 1e-300))
    logit = CHOICE_SCALE * affinity + log_pop[None, :]
    log_norm = logsumexp(logit, axis=1, keepdims=True)
    choice = np.exp(logit - log_norm)
    kl = (choice * (CHOICE_SCALE * affinity - log_norm)).sum(axis=1)
    return float(np.average(kl, weights=activity))


def solve_vector_scale(
    taste: np.ndarray,
    vectors: np.ndarray,
    popularity: np.ndarray,
    activity: np.ndarray,
    target: float,
) -> float:
    """The factor ``c`` by which ``taste · item`` must be multiplied for
    :func:`choice_information` to equal ``target`` (bisection on ``log c``; it grows with c)."""
    affinity = _affinities(taste, vectors)
    lo, hi = np.log(1e-3), np.log(1e3)
    for _ in range(40):
        mid = (lo + hi) / 2
        if _choice_kl(affinity * np.exp(mid), popularity, activity) < target:
            lo = mid
        else:
            hi = mid
    return float(f"{np.exp((lo + hi) / 2):.9g}")


def oracle_ctr(probability: np.ndarray, activity: np.ndarray, k: int = TOP_K) -> float:
    """Request-level CTR (P(at least one click), position bias as in the traffic simulator) of
    showing each user their ``k`` items of highest click probability, averaged by activity."""
    from recsys.simulate import position_bias

    top = -np.sort(-np.partition(probability, -k, axis=1)[:, -k:], axis=1)
    seen = top * position_bias(np.arange(k))
    return float(np.average(1.0 - np.prod(1.0 - seen, axis=1), weights=activity))


def solve_click_bias(
    taste: np.ndarray,
    vectors: np.ndarray,
    item_bias: np.ndarray,
    user_bias: np.ndarray,
    log_popularity: np.ndarray,
    activity: np.ndarray,
    target: float,
) -> float:
    """The global click bias at which :func:`oracle_ctr` equals ``target`` (bisection; the
    other terms of the click logit are the synthetic world's)."""
    logit = (
        CLICK_SCALE * (taste @ vectors.T)
        + user_bias[:, None]
        + item_bias[None, :]
        + CLICK_POP_WEIGHT * log_popularity[None, :]
    )
    top = np.partition(logit, -TOP_K, axis=1)[:, -TOP_K:]  # the order does not depend on bias
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if oracle_ctr(expit(top + mid), activity) < target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 6)


def calibration_stats(world: World, day: int = 0) -> dict[str, float]:
    """What the calibration matches, measured on any world on ``day``:
    ``choice_information`` (:func:`choice_information`) and ``oracle_ctr`` (:func:`oracle_ctr`)."""
    model = world.click_model()
    user_ids = np.arange(1, model.n_users + 1)
    item_ids = np.arange(1, model.n_items + 1)
    taste = model.taste(user_ids, day)
    probability = model.click_probability(user_ids[:, None], item_ids[None, :], day)
    return {
        "choice_information": choice_information(
            taste, world.item_vectors, world.item_popularity, world.user_activity
        ),
        "oracle_ctr": oracle_ctr(probability, world.user_activity),
    }


def _dense_ids(dataset: Dataset) -> Dataset:
    """``dataset`` with users and items numbered ``1..n`` in id order (the world's arrays are
    indexed by id - 1); unchanged when they already are.

    Raises:
        RecsysError: a rating names a user or item the user or movie file does not list.
    """
    users = np.sort(dataset.users["user_id"].to_numpy())
    items = np.sort(dataset.items["item_id"].to_numpy())
    ratings = dataset.interactions
    for what, known in (("user_id", users), ("item_id", items)):
        unlisted = ~np.isin(ratings[what].to_numpy(), known)
        if unlisted.any():
            raise RecsysError(
                f"{dataset.name}: {int(unlisted.sum())} rating(s) name a {what} that its "
                f"{'user' if what == 'user_id' else 'movie'} file does not list"
            )

    def numbered(ids: pd.Series) -> bool:
        return ids.tolist() == list(range(1, len(ids) + 1))

    if numbered(dataset.users["user_id"]) and numbered(dataset.items["item_id"]):
        return dataset

    def renumber(frame: pd.DataFrame, column: str, ids: np.ndarray) -> pd.DataFrame:
        return frame.assign(**{column: np.searchsorted(ids, frame[column].to_numpy()) + 1})

    return Dataset(
        interactions=renumber(renumber(ratings, "user_id", users), "item_id", items),
        items=renumber(dataset.items, "item_id", items).sort_values("item_id", ignore_index=True),
        users=renumber(dataset.users, "user_id", users).sort_values("user_id", ignore_index=True),
        name=dataset.name,
    )


def _donors(rng: np.random.Generator, taste: np.ndarray) -> np.ndarray:
    """For each user, another user with a dissimilar taste: the lowest cosine similarity among
    ``DONOR_CANDIDATES`` other users drawn at random."""
    n = taste.shape[0]
    candidates = rng.integers(0, n - 1, size=(n, DONOR_CANDIDATES))
    candidates += candidates >= np.arange(n)[:, None]  # never the user themselves
    unit = taste / np.maximum(np.linalg.norm(taste, axis=1, keepdims=True), 1e-12)
    similarity = np.einsum("ud,ukd->uk", unit, unit[candidates])
    return candidates[np.arange(n), np.argmin(similarity, axis=1)]


def _shrunk_mean_z(index: np.ndarray, stars: np.ndarray, n: int) -> np.ndarray:
    """Each row's mean rating shrunk towards the global mean, as a z-score over the rows."""
    total = np.bincount(index, weights=stars, minlength=n)
    count = np.bincount(index, minlength=n)
    mean = (total + RATING_SHRINKAGE * stars.mean()) / (count + RATING_SHRINKAGE)
    return (mean - mean.mean()) / max(float(mean.std()), 1e-12)


def _shift(frame: pd.DataFrame, column: str, ratings: pd.DataFrame, cfg: WorldConfig):
    """``frame`` with ``column`` moved so that the last real rating's day is the eve of day 0."""
    last_day = ratings["timestamp"].max().floor("D")
    offset = pd.Timestamp(cfg.start) - timedelta(days=1) - last_day
    out = frame.copy()
    out[column] = (out[column] + offset).astype("datetime64[us, UTC]")
    return out
