"""What the served model did and how users took it, from the service's own logs, per day.

Two Evidently 0.7 reports beside the interaction drift reports (``monitoring.drift``):

* **prediction drift** (:func:`prediction_drift`): the scores the service served in a day (each
  ranked item of each logged answer of one model version) and the popularity percentile of the
  served items, against the same model's scores on its own holdout users at training time
  (:func:`reference_predictions`: the release ranks the users active in its holdout window, as
  the service would). The reference is computed from the release when a report first needs it
  and kept beside the reports (``prediction-reference-v<version>.parquet``).
* **ranking quality** (:func:`ranking_quality`): per variant and model version, CTR (share of
  logged answers with at least one click, as ``monitoring.traffic``), and hit rate, precision,
  nDCG and MRR at k of the served lists against the clicks, computed by Evidently's ranking
  metrics (``evidently.metrics.HitRate``, ``PrecisionTopK``, ``NDCG``, ``MRR``) with one ranking
  definition per arm, every logged answer counted (``no_feedback_users=True``).

Each report is written as ``<name>.html`` (Evidently's page, with our verdict or table at its top)
and ``<name>.json`` (our numbers plus Evidently's snapshot under ``evidently``).
:func:`daily_model_reports` writes both for a window of the logs; :func:`cycle_reports` is what
the monitor flow calls each cycle.

    reports = daily_model_reports(settings, since, until, settings.data_dir / "reports", "day-3")
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import DriftResult, _subsample, annotate_html, evidently_drift
from monitoring.incidents import json_safe
from monitoring.traffic import CLICK_EVENTS, read_feedback, read_requests
from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS: tuple[str, ...] = ("score", "popularity_pct")
"""Columns of the prediction drift test: the served score, and the popularity percentile (in the
release's catalog, 0 = least popular) of the served item."""
MAX_ROWS = 20_000
"""Served scores per side handed to Evidently (a seeded subsample beyond it)."""
REFERENCE_USERS = 300
"""Holdout users whose lists make the reference (a seeded sample beyond it)."""


def _arm_label(variant: Any, version: Any) -> str:
    return f"{variant or 'unrouted'} v{version or '-'}"


# ---- prediction drift -------------------------------------------------------------------------


def item_popularity(release) -> pd.Series:
    """item_id -> percentile of the item's popularity in ``release`` (its training counts): the
    share of the release's items that are less popular, in [0, 1)."""
    scores = np.asarray(release.stage.sources["popularity"].item_scores, dtype=float)
    order = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    return pd.Series(order / max(len(scores), 1), index=np.asarray(release.item_ids))


def reference_predictions(
    release,
    interactions: pd.DataFrame,
    k: int = 10,
    *,
    max_users: int = REFERENCE_USERS,
    seed: int = 0,
) -> pd.DataFrame:
    """The top-``k`` scores ``release`` gives the users of its holdout window (the rows of
    ``interactions`` from ``training_window.holdout_start`` to ``training_window.end`` whose
    users the release knows; at most ``max_users``, a seeded sample), ranked as the service ranks
    them (seen items left out), one row per listed item: ``user_id``, ``rank`` (1-based),
    ``item_id``, ``score``, ``popularity_pct``.

    Raises:
        RecsysError: the release has no training window or none of its holdout users is known.
    """
    from recsys.pipeline import rank_users

    window = release.meta.get("training_window") or {}
    if "holdout_start" not in window or "end" not in window:
        raise RecsysError("the release has no training window: no holdout to take a reference on")
    stamps = pd.to_datetime(interactions["timestamp"], utc=True)
    start = pd.Timestamp(window["holdout_start"])
    end = pd.Timestamp(window["end"])
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    users = np.unique(interactions.loc[(stamps >= start) & (stamps <= end), "user_id"].to_numpy())
    rows = release.stage.user_rows(users)
    rows = np.sort(rows[rows >= 0])
    if not len(rows):
        raise RecsysError(
            f"none of the {len(users)} users of the holdout window {start} .. {end} is known to "
            "the release: no reference scores"
        )
    if len(rows) > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    recs, scores = rank_users(release.stage, release.ranker, rows, k, release.params.candidates)
    listed = recs >= 0
    item_ids = np.asarray(release.item_ids)[recs[listed]]
    popularity = item_popularity(release)
    return pd.DataFrame(
        {
            "user_id": np.asarray(release.user_ids)[rows][np.nonzero(listed)[0]],
            "rank": np.nonzero(listed)[1] + 1,
            "item_id": item_ids,
            "score": scores[listed].astype(float),
            "popularity_pct": popularity.reindex(item_ids).to_numpy(dtype=float),
        }
    )


def served_predictions(
    requests: pd.DataFrame, model_version: str, popularity: pd.Series
) -> pd.DataFrame:
    """One row per item that ``model_version`` ranked in the logged answers of ``requests``
    (a ``monitoring.traffic.read_requests`` frame): ``rank``, ``item_id``, ``score``,
    ``popularity_pct`` (from ``popularity``, see :func:`item_popularity`). Answers that the model
    did not rank (cold start, degraded, a cached answer of a failed model) are left out, and so
    are answers logged without scores (a service older than the ``scores`` field).

    Raises:
        RecsysError: a logged answer has a different number of scores than items.
    """
    if requests.empty or "scores" not in requests:
        return pd.DataFrame(columns=["rank", "item_id", "score", "popularity_pct"])
    ranked = requests[
        (requests["model_version"].astype(str) == str(model_version))
        & requests["fallback"].map(lambda f: not (isinstance(f, str) and f))
        & requests["scores"].map(lambda s: isinstance(s, list))
        & requests["items"].map(lambda s: isinstance(s, list))
    ]
    ranks, items, scores = [], [], []
    for request_id, listed, scored in ranked[["request_id", "items", "scores"]].itertuples(
        index=False
    ):
        if len(listed) != len(scored):
            raise RecsysError(
                f"request {request_id} logged {len(listed)} items but {len(scored)} scores"
            )
        ranks.extend(range(1, len(listed) + 1))
        items.extend(int(i) for i in listed)
        scores.extend(float(s) for s in scored)
    item_ids = np.asarray(items, dtype=np.int64)
    return pd.DataFrame(
        {
            "rank": np.asarray(ranks, dtype=np.int64),
            "item_id": item_ids,
            "score": np.asarray(scores, dtype=float),
            "popularity_pct": popularity.reindex(item_ids).to_numpy(dtype=float),
        }
    )


def prediction_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path,
    name: str,
    *,
    model_version: str | None = None,
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> DriftResult:
    """Evidently drift of the served predictions ``current`` against ``reference`` (frames with
    the columns of :data:`PREDICTION_COLUMNS`, e.g. from :func:`served_predictions` and
    :func:`reference_predictions`; at most ``max_rows`` per side, a seeded subsample). A drifted
    column of either kind is prediction drift. Column tests are Evidently's defaults
    (normed Wasserstein distance above 0.1 with over 1000 reference values, a K-S p-value below
    0.05 otherwise). Writes ``<out_dir>/<name>.html`` (the verdict at the top of Evidently's
    page) and ``<out_dir>/<name>.json``.

    Raises:
        RecsysError: either side is empty or lacks the columns.
    """
    for side, frame in (("reference", reference), ("current", current)):
        missing = [c for c in PREDICTION_COLUMNS if c not in frame]
        if missing:
            raise RecsysError(f"{side} predictions lack columns {missing}")
        if frame["score"].notna().sum() == 0:
            raise RecsysError(
                f"prediction drift needs served scores on both sides; {side} has none"
            )
    started = time.perf_counter()
    result = evidently_drift(
        _subsample(reference[list(PREDICTION_COLUMNS)], max_rows, seed),
        _subsample(current[list(PREDICTION_COLUMNS)], max_rows, seed),
        numerical=PREDICTION_COLUMNS,
        categorical=(),
        share_threshold=0.5,
        decisive=PREDICTION_COLUMNS,
        what="prediction",
        decisive_label="prediction",
        out_dir=out_dir,
        name=name,
        started=started,
        extra={"model_version": model_version, "kind": "prediction_drift"},
    )
    stats = [
        [
            column,
            float(reference[column].mean()),
            float(current[column].mean()),
            float(reference[column].std()),
            float(current[column].std()),
            result.methods.get(column),
            result.columns.get(column),
            result.thresholds.get(column),
            "drifted" if column in result.drifted_columns else "stable",
        ]
        for column in PREDICTION_COLUMNS
    ]
    what = f"model v{model_version}" if model_version is not None else "the model"
    annotate_html(
        result.html_path,
        f"Prediction drift of {what}: {'DRIFT' if result.drifted else 'no drift'}",
        [
            f"Served predictions ({len(current)} ranked items) against the same model's "
            f"predictions on its holdout users at training time ({len(reference)}). Either "
            "column drifting is prediction drift.",
            result.summary,
        ],
        [
            "column",
            "reference mean",
            "served mean",
            "reference std",
            "served std",
            "test",
            "drift score",
            "threshold",
            "verdict",
        ],
        stats,
    )
    logger.info("prediction drift %s: %s", name, result.summary)
    return result


# ---- ranking quality --------------------------------------------------------------------------


@dataclass
class ArmQuality:
    """How the lists one arm (variant x model version) served did against the clicks.

    ``ctr``: share of answers with at least one click (any item); ``hit_rate``, ``precision``,
    ``ndcg``, ``mrr``: Evidently's metrics at ``k`` over every answer (answers without clicks
    count as zero), clicks on served items as binary relevance. ``k`` is the requested k cut to
    the arm's longest list. Precision divides by the list length when a list is shorter than
    ``k`` (Evidently's definition)."""

    variant: str | None
    model_version: str | None
    k: int
    requests: int
    impressions: int
    clicked_requests: int
    clicks: int
    ctr: float
    hit_rate: float | None = None
    precision: float | None = None
    ndcg: float | None = None
    mrr: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class RankingQuality:
    """The ranking-quality report of a window of the logs."""

    k: int
    arms: list[ArmQuality]
    html_path: Path | None = None
    json_path: Path | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "k": self.k,
                "arms": [a.as_dict() for a in self.arms],
                "html_path": self.html_path,
                "json_path": self.json_path,
                "seconds": self.seconds,
            }
        )


def served_impressions(requests: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """One row per item of each logged answer (the first log line of a request_id): the
    ``request_id``, ``variant``, ``model_version``, ``rank`` (1-based), ``item_id`` and
    ``clicked`` (1 when a click event of that request names that item)."""
    columns = ["request_id", "variant", "model_version", "rank", "item_id", "clicked"]
    if requests.empty:
        return pd.DataFrame(columns=columns)
    requests = requests.drop_duplicates("request_id", keep="first")
    rows = [
        (request_id, variant, version, rank, int(item))
        for request_id, variant, version, listed in requests[
            ["request_id", "variant", "model_version", "items"]
        ].itertuples(index=False)
        if isinstance(listed, list)
        for rank, item in enumerate(listed, start=1)
    ]
    frame = pd.DataFrame(rows, columns=columns[:-1])
    clicks = feedback[feedback["event"].isin(CLICK_EVENTS)] if not feedback.empty else feedback
    clicked = (
        set(zip(clicks["request_id"], pd.to_numeric(clicks["item_id"]).astype(int), strict=True))
        if len(clicks)
        else set()
    )
    frame["clicked"] = [
        int((r, i) in clicked) for r, i in zip(frame["request_id"], frame["item_id"], strict=True)
    ]
    return frame


def _arm_counts(requests: pd.DataFrame, feedback: pd.DataFrame, k: int) -> list[ArmQuality]:
    """Requests, impressions, clicks and CTR per (variant, model version) of the logged answers."""
    requests = requests.drop_duplicates("request_id", keep="first")
    clicks = feedback[feedback["event"].isin(CLICK_EVENTS)] if not feedback.empty else feedback
    per_request = clicks.groupby("request_id").size() if len(clicks) else pd.Series(dtype=np.int64)
    counts = requests["request_id"].map(per_request).fillna(0).astype(int)
    arms = []
    frame = requests.assign(_clicks=counts.to_numpy())
    for (variant, version), group in frame.groupby(
        ["variant", "model_version"], dropna=False, sort=False
    ):
        variant = None if _missing(variant) else variant
        version = None if _missing(version) else str(version)
        n = len(group)
        clicked = int((group["_clicks"] > 0).sum())
        arms.append(
            ArmQuality(
                variant=variant,
                model_version=version,
                k=k,
                requests=n,
                impressions=int(
                    group["items"].map(lambda s: len(s) if isinstance(s, list) else 0).sum()
                ),
                clicked_requests=clicked,
                clicks=int(group["_clicks"].sum()),
                ctr=clicked / n if n else 0.0,
            )
        )
    arms.sort(key=lambda a: (-a.requests, str(a.variant), str(a.model_version)))
    return arms


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def ranking_quality(
    requests: pd.DataFrame,
    feedback: pd.DataFrame,
    out_dir: Path,
    name: str,
    k: int = 10,
) -> RankingQuality:
    """Per arm (variant x model version) of the logged answers in ``requests``: CTR and
    Evidently's hit rate, precision, nDCG and MRR at ``k`` of the served lists against the
    click events of ``feedback`` (frames of ``monitoring.traffic.read_requests`` /
    ``read_feedback``; feedback counts through its request_id). ``k`` is cut to an arm's longest
    list. Writes ``<out_dir>/<name>.html`` (Evidently's page with the arm table at its top) and
    ``<out_dir>/<name>.json`` (the table and Evidently's snapshot).

    Raises:
        RecsysError: ``k`` is not positive or there is no logged answer.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import Recsys
    from evidently.metrics import MRR, NDCG, HitRate, PrecisionTopK

    if k <= 0:
        raise RecsysError(f"k must be positive, got {k}")
    if requests.empty:
        raise RecsysError("no logged answer in the window: no ranking quality to report")
    started = time.perf_counter()
    arms = _arm_counts(requests, feedback, k)
    impressions = served_impressions(requests, feedback)
    rankings, metrics, names = [], [], {}
    frame = impressions[["item_id", "rank", "clicked"]].astype({"item_id": str}).copy()
    labels = pd.Series(
        [
            _arm_label(None if _missing(v) else v, None if _missing(m) else str(m))
            for v, m in zip(impressions["variant"], impressions["model_version"], strict=True)
        ],
        index=impressions.index,
        dtype=object,
    )
    for i, arm in enumerate(arms):
        mine = labels == _arm_label(arm.variant, arm.model_version)
        if not mine.any():
            continue  # an arm whose answers listed nothing: only its counts are reported
        column, label = f"request_{i}", _arm_label(arm.variant, arm.model_version)
        frame[column] = impressions["request_id"].where(mine)
        arm_k = min(k, int(impressions.loc[mine, "rank"].max()))
        arm.k = arm_k
        names[label] = (arm, arm_k)
        rankings.append(
            Recsys(
                name=label,
                user_id=column,
                item_id="item_id",
                target="clicked",
                prediction="rank",
                recommendations_type="rank",
            )
        )
        metrics += [
            metric(k=arm_k, ranking_name=label, no_feedback_users=True)
            for metric in (HitRate, PrecisionTopK, NDCG, MRR)
        ]
    if not metrics:
        raise RecsysError("no logged answer listed an item: no ranking quality to report")
    definition = DataDefinition(
        numerical_columns=["rank", "clicked"],
        categorical_columns=["item_id", *(r.user_id for r in rankings)],
        ranking=rankings,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas chatter inside Evidently's legacy metrics
        snapshot = Report(metrics).run(Dataset.from_pandas(frame, data_definition=definition))
    evidently = snapshot.dict()
    _read_ranking_metrics(evidently, names)
    result = RankingQuality(k, arms)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.html_path, result.json_path = out_dir / f"{name}.html", out_dir / f"{name}.json"
    snapshot.save_html(str(result.html_path))
    table = [
        [
            a.variant,
            a.model_version,
            a.requests,
            a.impressions,
            a.clicks,
            a.ctr,
            a.k if _arm_label(a.variant, a.model_version) in names else None,
            a.hit_rate,
            a.precision,
            a.ndcg,
            a.mrr,
        ]
        for a in arms
    ]
    annotate_html(
        result.html_path,
        "Ranking quality of the served lists against the clicks",
        [
            "One row per variant and model version. CTR: share of answers with at least one "
            "click. Hit rate, precision, nDCG and MRR at k (Evidently's ranking metrics below, "
            "one ranking per arm): the served list against the items clicked in it, every "
            "answer counted, answers without a click as zero. Evidently's widgets below do not "
            "name the arm: they follow this table's order, four per arm with a k (hit rate, "
            "precision, nDCG, MRR); their NDCG and MRR plots label k one too high."
        ],
        [
            "variant",
            "model version",
            "answers",
            "impressions",
            "clicks",
            "CTR",
            "k",
            "hit rate@k",
            "precision@k",
            "nDCG@k",
            "MRR@k",
        ],
        table,
    )
    result.seconds = round(time.perf_counter() - started, 3)
    payload = {**result.as_dict(), "kind": "ranking_quality", "evidently": json_safe(evidently)}
    result.json_path.write_text(json.dumps(json_safe(payload), indent=1, sort_keys=True))
    logger.info("ranking quality %s: %d arm(s) (%.2f s)", name, len(arms), result.seconds)
    return result


def _read_ranking_metrics(
    evidently: dict[str, Any], names: dict[str, tuple[ArmQuality, int]]
) -> None:
    """Fill each arm's metrics from the snapshot's ``dict()``: the value at ``k`` of each metric.

    Evidently 0.7 labels NDCG's and MRR's ranks one too high (their legacy series start at 1 and
    the wrapper adds 1 again), so the value is taken by position: the k-th, in rank order."""
    fields = {"HitRate": "hit_rate", "PrecisionTopK": "precision", "NDCG": "ndcg", "MRR": "mrr"}
    for metric in evidently.get("metrics", []):
        config = metric.get("config", {})
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        if kind not in fields or config.get("ranking_name") not in names:
            continue
        arm, arm_k = names[config["ranking_name"]]
        value = metric["value"]
        ordered = sorted(zip(value["rank"].values(), value["value"].values(), strict=True))
        if len(ordered) < arm_k:
            raise RecsysError(
                f"Evidently's {kind} of {config['ranking_name']} stops at rank {len(ordered)}, "
                f"below k = {arm_k}"
            )
        setattr(arm, fields[kind], float(ordered[arm_k - 1][1]))


# ---- the daily reports ------------------------------------------------------------------------


@dataclass
class DailyReports:
    """What :func:`daily_model_reports` wrote (or why it did not), by report name."""

    label: str
    window: tuple[float, float]
    written: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    prediction_drift: dict[str, DriftResult] = field(default_factory=dict)
    ranking: RankingQuality | None = None


def load_version(settings, version: str):
    """The ``recsys.release.Release`` of model ``version`` in the registry, read without pickle.

    Raises:
        RecsysError: the registry has no such version, or it holds no release folder.
    """
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from recsys.registry import configure_mlflow
    from recsys.release import Release

    configure_mlflow(settings)
    with tempfile.TemporaryDirectory(prefix=f"recsys-v{version}-") as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=tmp
                )
            )
        except MlflowException as exc:
            raise RecsysError(
                f"model version {version} of {settings.model_name!r} cannot be read: {exc}"
            ) from None
        folders = [p.parent for p in local.rglob("release.json")]
        if not folders:
            raise RecsysError(f"model version {version} has no release folder; it is not ours")
        return Release.load(folders[0])


def model_reference(
    settings, version: str, out_dir: Path, k: int
) -> tuple[pd.DataFrame, pd.Series]:
    """(reference predictions, item popularity) of model ``version`` (see
    :func:`reference_predictions` and :func:`item_popularity`): read from the files kept in
    ``out_dir`` (``prediction-reference-v<version>.parquet`` and
    ``item-popularity-v<version>.parquet``), or computed from the release in the registry on the
    lake's holdout rows and kept there.

    Raises:
        RecsysError: the version cannot be read, or none of its holdout users is known.
    """
    scores_file = out_dir / f"prediction-reference-v{version}.parquet"
    popularity_file = out_dir / f"item-popularity-v{version}.parquet"
    if scores_file.is_file() and popularity_file.is_file():
        popularity = pd.read_parquet(popularity_file)
        return pd.read_parquet(scores_file), popularity.set_index("item_id")["popularity_pct"]
    release = load_version(settings, version)
    reference = reference_predictions(release, settings.lake.read_clean_interactions(), k)
    popularity = item_popularity(release)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(scores_file, index=False)
    popularity.rename("popularity_pct").rename_axis("item_id").reset_index().to_parquet(
        popularity_file, index=False
    )
    return reference, popularity


def daily_model_reports(
    settings, since: float, until: float, out_dir: Path, label: str, *, k: int = 10
) -> DailyReports:
    """Prediction drift of every model version that ranked answers in the logged window
    ``[since, until)`` (epoch seconds) and the ranking quality of every arm, written to
    ``<out_dir>/prediction-drift-<label>-v<version>.{html,json}`` and
    ``<out_dir>/ranking-quality-<label>.{html,json}``. A report that cannot be made (no traffic,
    no scores logged, a version no longer in the registry) is named in ``skipped`` with the
    reason, and logged."""
    out_dir = Path(out_dir)
    reports = DailyReports(label, (since, until))
    requests = read_requests(settings, since, until)
    if requests.empty:
        reports.skipped["all"] = f"no logged answer between {since:.0f} and {until:.0f}"
        logger.info("model reports %s: %s", label, reports.skipped["all"])
        return reports
    feedback = read_feedback(settings, since=since)
    versions = sorted(
        {str(v) for v in requests["model_version"] if not _missing(v)}, key=lambda v: (len(v), v)
    )
    for version in versions:
        name = f"prediction-drift-{label}-v{version}"
        try:
            reference, popularity = model_reference(settings, version, out_dir, k)
            served = served_predictions(requests, version, popularity)
            if served.empty:
                raise RecsysError(f"v{version} ranked no logged answer with scores in the window")
            drift = prediction_drift(reference, served, out_dir, name, model_version=version)
        except RecsysError as exc:
            reports.skipped[name] = str(exc)
            logger.warning("prediction drift %s skipped: %s", name, exc)
            continue
        reports.prediction_drift[version] = drift
        reports.written[name] = drift.html_path
    name = f"ranking-quality-{label}"
    try:
        reports.ranking = ranking_quality(requests, feedback, out_dir, name, k)
        reports.written[name] = reports.ranking.html_path
    except RecsysError as exc:
        reports.skipped[name] = str(exc)
        logger.warning("ranking quality %s skipped: %s", name, exc)
    return reports


def report_window(day: int | None, current: tuple[float, float], now: float | None = None):
    """(since, until, label) of the daily reports a monitor cycle writes: with a simulated
    ``day``, the cycle's own traffic window labelled ``day-<day>``; on the wall clock, the
    previous UTC day, labelled by its date (written once: the first cycle of a day writes it)."""
    if day is not None:
        return current[0], current[1], f"day-{day}"
    today = datetime.fromtimestamp(now if now is not None else time.time(), UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    return start.timestamp(), start.timestamp() + 86_400, start.date().isoformat()


def cycle_reports(cycle) -> DailyReports | None:
    """The daily model reports of a monitor cycle (a ``recsys.guardian.Cycle``), in its reports
    folder (default ``<data_dir>/reports``); None when the wall-clock day's reports exist
    already. A failure is logged with its traceback and named in ``skipped``: a report must not
    stop the monitor's checks."""
    out_dir = Path(cycle.reports_dir or (cycle.settings.data_dir / "reports"))
    since, until, label = report_window(cycle.day, cycle.current)
    if cycle.day is None and (out_dir / f"ranking-quality-{label}.json").is_file():
        return None
    try:
        return daily_model_reports(cycle.settings, since, until, out_dir, label)
    except Exception as exc:
        logger.exception("the model reports of %s failed", label)
        failed = DailyReports(label, (since, until))
        failed.skipped["all"] = f"failed: {type(exc).__name__}: {exc}"
        return failed
