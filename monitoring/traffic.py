"""Online metrics from the service's own logs: CTR, conversion, latency, fallbacks, coverage.

The service (``serving/logs.py``) writes a sampled request log
``<data_dir>/logs/requests/requests*.jsonl`` (``logged_at`` in epoch seconds) and a durable
feedback log ``<data_dir>/logs/feedback/feedback-YYYY-MM-DD.jsonl`` (``logged_at`` ISO UTC).

CTR is the share of logged requests with at least one click. Only feedback whose request_id is
in the request log counts, so a sampled request log gives an unbiased CTR: the sample decides
which requests are measured, and each measured request brings all its feedback.

    from monitoring.traffic import traffic_by_arm, ctr_drop
    arms = traffic_by_arm(settings, since=t0, until=t1, catalog_size=500)
    finding = ctr_drop(arms[0], baseline_ctr=0.12, baseline_requests=4000)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.stats import norm

from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

CLICK_EVENTS: tuple[str, ...] = ("click",)
"""Feedback events that count as a click on a recommendation."""
CONVERSION_EVENTS: tuple[str, ...] = ("purchase",)
"""Feedback events that count as a conversion."""

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "user_id",
    "k",
    "items",
    "variant",
    "model_version",
    "fallback",
    "cached",
    "latency_ms",
    "logged_at",
)
FEEDBACK_COLUMNS: tuple[str, ...] = (
    "request_id",
    "user_id",
    "item_id",
    "event",
    "value",
    "variant",
    "model_version",
    "attributed",
    "logged_at",
)


def requests_dir(settings) -> Path:
    return Path(settings.data_dir) / "logs" / "requests"


def feedback_dir(settings) -> Path:
    return Path(settings.data_dir) / "logs" / "feedback"


def _json_lines(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Records of JSONL files; a line that does not parse (a write in progress, a crash) is
    skipped."""
    records: list[dict[str, Any]] = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # rotated away between glob and read
            continue
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                logger.debug("skipping a torn line in %s", path)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    for record in records:
        # versions are labels: a numeric "3" must not become the float 3.0 beside a None
        version = record.get("model_version")
        if version is not None and not isinstance(version, str):
            record["model_version"] = str(version)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    for column in columns:
        if column not in frame:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    return frame


def _window(frame: pd.DataFrame, since: float | None, until: float | None) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    if since is not None:
        keep &= (frame["logged_at"] >= since).to_numpy()
    if until is not None:
        keep &= (frame["logged_at"] < until).to_numpy()
    return frame.loc[keep].reset_index(drop=True)


def read_requests(settings, since: float | None = None, until: float | None = None) -> pd.DataFrame:
    """Logged /recommend calls with ``since <= logged_at < until`` (epoch seconds), oldest
    first. Columns: :data:`REQUEST_COLUMNS` (``latency_ms`` is None where the service did not
    log it) plus any other logged field. An absent log is an empty frame."""
    paths = sorted(requests_dir(settings).glob("requests*.jsonl"))
    frame = _frame(_json_lines(paths), REQUEST_COLUMNS)
    frame["logged_at"] = pd.to_numeric(frame["logged_at"], errors="coerce").astype(float)
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce").astype(float)
    frame = _window(frame, since, until)
    return frame.sort_values("logged_at", kind="stable").reset_index(drop=True)


def _feedback_files(folder: Path, since: float | None, until: float | None) -> list[Path]:
    """Feedback files whose UTC day can hold events of the window (one file per day)."""
    first = datetime.fromtimestamp(since, UTC).date() if since is not None else date.min
    last = datetime.fromtimestamp(until, UTC).date() if until is not None else date.max
    chosen = []
    for path in sorted(folder.glob("feedback-*.jsonl")):
        try:
            day = date.fromisoformat(path.stem.removeprefix("feedback-"))
        except ValueError:
            chosen.append(path)  # an unexpected name: read it rather than lose events
            continue
        if first <= day <= last:
            chosen.append(path)
    return chosen


def read_feedback(settings, since: float | None = None, until: float | None = None) -> pd.DataFrame:
    """Feedback events with ``since <= logged_at < until``, oldest first. ``logged_at`` is
    converted to epoch seconds (float) so both logs share one clock. Columns:
    :data:`FEEDBACK_COLUMNS` plus any other logged field. An absent log is an empty frame."""
    paths = _feedback_files(feedback_dir(settings), since, until)
    frame = _frame(_json_lines(paths), FEEDBACK_COLUMNS)
    stamps = pd.to_datetime(frame["logged_at"], utc=True, errors="coerce", format="ISO8601")
    frame["logged_at"] = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    frame = _window(frame, since, until)
    return frame.sort_values("logged_at", kind="stable").reset_index(drop=True)


@dataclass
class ArmTraffic:
    """What one arm (variant x model version) served and how users reacted, in a window."""

    variant: str | None
    model_version: str | None
    requests: int
    clicked_requests: int
    clicks: int
    ctr: float
    p50_ms: float | None
    p99_ms: float | None
    fallbacks: int  # every answer not ranked by the arm's model (cold start included)
    coverage: float
    distinct_items: int
    converted_requests: int = 0
    conversion: float = 0.0
    cached: int = 0
    degraded: int = 0  # answers that should have been ranked but were not: the arm's errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def traffic_by_arm(
    settings,
    since: float | None = None,
    until: float | None = None,
    catalog_size: int | None = None,
    by: Sequence[str] = ("variant", "model_version"),
) -> list[ArmTraffic]:
    """One :class:`ArmTraffic` per distinct value of ``by`` among the logged requests with
    ``since <= logged_at < until``, largest arm first.

    Feedback counts when its request_id is one of those requests and that answer showed its
    item, whenever it arrived after ``since`` (a click a second after ``until`` still belongs to
    its request); a click on an item the answer did not show is a client quoting the wrong
    request, not a click on the recommendation. ``coverage`` is
    distinct items served / ``catalog_size``, or the distinct count itself when it is None.
    ``by`` may name any logged request fields; fields not in ``by`` are None on the arm.

    Raises:
        RecsysError: ``by`` is empty or ``catalog_size`` is not positive.
    """
    by = tuple(by)
    if not by:
        raise RecsysError("traffic_by_arm needs at least one field to group by")
    if catalog_size is not None and catalog_size <= 0:
        raise RecsysError(f"catalog_size must be positive, got {catalog_size}")
    requests = read_requests(settings, since, until)
    if requests.empty:
        return []
    for column in by:
        if column not in requests:
            requests[column] = None
    requests = requests.drop_duplicates("request_id", keep="first")
    feedback = read_feedback(settings, since=since)
    feedback = _on_shown_items(
        feedback[feedback["request_id"].isin(set(requests["request_id"]))], requests
    )
    tallies = (
        feedback.assign(
            clicks=feedback["event"].isin(CLICK_EVENTS).astype(int),
            conversions=feedback["event"].isin(CONVERSION_EVENTS).astype(int),
        )
        .groupby("request_id")[["clicks", "conversions"]]
        .sum()
    )
    for column in ("clicks", "conversions"):
        requests[column] = requests["request_id"].map(tallies[column]).fillna(0).astype(int)
    arms: list[ArmTraffic] = []
    for key, group in requests.groupby(list(by), dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        labels = {name: _key_value(value) for name, value in zip(by, key, strict=True)}
        arms.append(_arm(group, labels, catalog_size))
    arms.sort(key=lambda a: (-a.requests, str(a.variant), str(a.model_version)))
    return arms


def _on_shown_items(feedback: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """The feedback rows whose item was in their request's logged ``items`` (a request logged
    without its items keeps all its feedback: nothing to check against)."""
    if feedback.empty:
        return feedback
    listed = requests[requests["items"].map(lambda items: isinstance(items, list))]
    pairs = listed[["request_id", "items"]].explode("items").dropna()
    shown = set(zip(pairs["request_id"], pairs["items"].astype("int64"), strict=True))
    checked = set(listed["request_id"])
    item = pd.to_numeric(feedback["item_id"], errors="coerce")
    keep = [
        request not in checked or (item_id == item_id and (request, int(item_id)) in shown)
        for request, item_id in zip(feedback["request_id"], item, strict=True)
    ]
    return feedback.loc[keep]


def _arm(group: pd.DataFrame, labels: dict[str, Any], catalog_size: int | None) -> ArmTraffic:
    n = len(group)
    clicked = int((group["clicks"] > 0).sum())
    converted = int((group["conversions"] > 0).sum())
    latency = group["latency_ms"].dropna().to_numpy(dtype=float)
    served = {int(i) for items in group["items"] if isinstance(items, list) for i in items}
    fallbacks = int(group["fallback"].map(lambda f: bool(f) and f == f).sum())
    # a new user's cold-start list is the designed answer, not a failure of the model
    degraded = int(group["fallback"].map(lambda f: bool(f) and f == f and f != "cold_start").sum())
    cached = int(group["cached"].map(lambda c: isinstance(c, bool | np.bool_) and bool(c)).sum())
    version = labels.get("model_version")
    return ArmTraffic(
        variant=labels.get("variant"),
        model_version=None if version is None else str(version),
        requests=n,
        clicked_requests=clicked,
        clicks=int(group["clicks"].sum()),
        ctr=clicked / n if n else 0.0,
        p50_ms=float(np.percentile(latency, 50)) if len(latency) else None,
        p99_ms=float(np.percentile(latency, 99)) if len(latency) else None,
        fallbacks=fallbacks,
        coverage=len(served) / catalog_size if catalog_size else float(len(served)),
        distinct_items=len(served),
        converted_requests=converted,
        conversion=converted / n if n else 0.0,
        cached=cached,
        degraded=degraded,
    )


class HasClicks(Protocol):
    requests: int
    clicked_requests: int


@dataclass
class CtrDropFinding:
    """Verdict of the CTR-drop rule. ``drop`` is relative: (baseline - current) / baseline."""

    fired: bool
    current_ctr: float
    baseline_ctr: float
    drop: float
    requests: int
    rule: str
    p_value: float | None = None
    baseline_requests: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ctr_drop(
    current: HasClicks,
    baseline_ctr: float,
    baseline_requests: int,
    threshold: float = 0.10,
    min_requests: int = 200,
    alpha: float = 0.05,
) -> CtrDropFinding:
    """The CTR-drop rule: fires when the current CTR is at least ``threshold`` (relative) below
    ``baseline_ctr`` AND a one-sided two-proportion z test rejects "current >= baseline" at
    ``alpha``, with at least ``min_requests`` requests on both sides. Too little traffic never
    fires (the finding says so).

    Raises:
        RecsysError: a share or count is out of range.
    """
    if not 0.0 <= baseline_ctr <= 1.0:
        raise RecsysError(f"baseline_ctr must be a share in [0, 1], got {baseline_ctr}")
    if not 0.0 < threshold < 1.0 or not 0.0 < alpha < 1.0:
        raise RecsysError(f"threshold and alpha must be in (0, 1), got {threshold}, {alpha}")
    n1, c1 = int(current.requests), int(current.clicked_requests)
    n0 = int(baseline_requests)
    if n1 < 0 or n0 < 0 or not 0 <= c1 <= max(n1, 0):
        raise RecsysError(f"impossible counts: {c1} clicked of {n1} requests, baseline {n0}")
    rule = (
        f"CTR at least {threshold:.0%} below the baseline and significantly lower (one-sided "
        f"two-proportion z test, alpha {alpha:g}) with >= {min_requests} requests on each side"
    )
    p1 = c1 / n1 if n1 else 0.0
    drop = (baseline_ctr - p1) / baseline_ctr if baseline_ctr > 0 else 0.0
    finding = CtrDropFinding(False, p1, baseline_ctr, drop, n1, rule, None, n0)
    if n1 < min_requests or n0 < min_requests:
        finding.reason = f"too little traffic to judge ({n1} now, {n0} baseline requests)"
        return finding
    c0 = baseline_ctr * n0
    pooled = (c0 + c1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    z = (baseline_ctr - p1) / se if se > 0 else 0.0
    finding.p_value = float(norm.sf(z)) if se > 0 else 1.0
    big_enough = drop >= threshold
    significant = finding.p_value < alpha
    finding.fired = big_enough and significant
    if finding.fired:
        finding.reason = (
            f"CTR {p1:.4f} is {drop:.1%} below the baseline {baseline_ctr:.4f} "
            f"(p = {finding.p_value:.3g})"
        )
    elif not big_enough:
        finding.reason = (
            f"CTR {p1:.4f} is within {threshold:.0%} of the baseline {baseline_ctr:.4f}"
        )
    else:
        finding.reason = (
            f"CTR {p1:.4f} is {drop:.1%} below the baseline but not significantly "
            f"(p = {finding.p_value:.3g} >= {alpha:g})"
        )
    return finding
