"""The service's own Prometheus series, rendered as text and appended to BentoML's /metrics.

BentoML 1.4 runs prometheus_client in multiprocess mode and only sets its directory after the
service module is imported; rather than depend on import order, these series live in plain
Python (the service runs one worker) and are appended through the ``__metrics__`` hook.

What the alert rules (``infra/prometheus/alerts.yml``) and the dashboards read:

    recsys_serving_requests_total{variant,version,fallback}   answered /recommend calls
    recsys_serving_impressions_total{variant,version}         items shown in those answers
    recsys_serving_feedback_total{event,variant,version,shown}  /feedback events (shown: the
                                                              answer showed the item: true,
                                                              false, unknown if unattributed)
    recsys_serving_clicked_requests_total{variant,version}    answers with at least one click
    recsys_serving_converted_requests_total{variant,version}  answers with at least one purchase
    recsys_serving_fallbacks_total{kind}                      degraded answers (cold_start, ...)
    recsys_serving_model_errors_total{variant,version}        model failures during /recommend
    recsys_serving_log_write_errors_total{log}                failed writes of the request log
                                                              (the answer went out) or of the
                                                              feedback log (a 503: not kept)
    recsys_serving_stage_latency_seconds{stage}               per-stage latency histogram
    recsys_serving_model_trained_timestamp_seconds{variant,version}   when the release was trained
    recsys_serving_model_loaded_timestamp_seconds{variant,version}    when it was loaded here
    recsys_serving_ready                                      1 once the champion is served

CTR is ``clicked_requests / requests`` (the share of answers with a click, as
``monitoring.traffic`` and the canary rule count it); item CTR is
``feedback{event="click",shown="true"} / impressions``. A click on an item its answer did not
show counts in neither. The counters of every served (variant, version) start at 0 when it is
loaded, so a ratio exists from its first request.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict
from datetime import UTC, datetime

# Sub-millisecond bounds too: the pipeline's stages take 0.05-1 ms each.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.0025,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
FEATURE_SOURCES = ("online", "not_materialized", "unreachable")
PREFIX = "recsys_serving"
FALLBACK_KINDS = ("cold_start", "cache", "degraded")
CLICK_EVENT = "click"
CONVERSION_EVENT = "purchase"

COUNTER_HELP: dict[str, str] = {
    "requests_total": "Answered /recommend calls by variant, model version and fallback.",
    "impressions_total": "Items shown in /recommend answers by variant and model version.",
    "feedback_total": (
        "Feedback events by event type, variant, model version and whether the answer showed "
        "the item (true, false; unknown when unattributed)."
    ),
    "clicked_requests_total": (
        "Answers with at least one click (counted at the first click) by variant and version."
    ),
    "converted_requests_total": (
        "Answers with at least one purchase (counted at the first) by variant and version."
    ),
    "fallbacks_total": "Degraded answers by kind.",
    "model_errors_total": "Model failures during /recommend by variant and version.",
    "log_write_errors_total": (
        "Failed writes of the service's logs by log: requests (the answer was given, its sample "
        "lost) or feedback (the event was refused with a 503, nothing kept)."
    ),
    "cache_requests_total": "Cache lookups by result.",
    "feature_answers_total": (
        "Ranked answers by where their features came from (online, release, release_fallback)."
    ),
    "feature_fallbacks_total": (
        "Answers ranked with some of the release's features instead of the online store's, by "
        "reason (unreachable, missing_user, missing_items)."
    ),
}
# Label values known in advance: their series start at 0, so rates and ratios exist at once.
_DECLARED: dict[str, tuple[str, tuple[str, ...]]] = {
    "fallbacks_total": ("kind", FALLBACK_KINDS),
    "cache_requests_total": ("result", ("hit", "miss")),
    "log_write_errors_total": ("log", ("requests", "feedback")),
    "feature_answers_total": ("features", ("online", "release", "release_fallback")),
    "feature_fallbacks_total": ("reason", ("unreachable", "missing_user", "missing_items")),
}
_PER_MODEL = (
    "impressions_total",
    "clicked_requests_total",
    "converted_requests_total",
    "model_errors_total",
)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class ServingMetrics:
    """Counters and latency histograms of the recommend pipeline; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[str, list[float]] = {}  # stage -> per-bucket counts, count, sum
        self._gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        for name, (label, values) in _DECLARED.items():
            for value in values:
                self.inc(name, amount=0.0, **{label: value})

    def inc(
        self, name: str, help_text: str | None = None, amount: float = 1.0, **labels: str
    ) -> None:
        """Add ``amount`` to the counter ``recsys_serving_<name>{labels}``; without
        ``help_text`` the name must be one of ``COUNTER_HELP``."""
        help_text = help_text or COUNTER_HELP[name]
        with self._lock:
            self._help[name] = ("counter", help_text)
            self._counters[name][tuple(sorted(labels.items()))] += amount

    def record_answer(
        self, variant: str | None, version: str | None, fallback: str | None, items: int
    ) -> None:
        """Count one /recommend answer: the request, its impressions and its fallback."""
        variant, version = str(variant), str(version)
        self.inc("requests_total", variant=variant, version=version, fallback=str(fallback))
        self.inc("impressions_total", amount=float(items), variant=variant, version=version)
        if fallback:
            self.inc("fallbacks_total", kind=fallback)

    def record_feedback(self, event: str, served: dict | None, shown: bool | None = None) -> None:
        """Count one /feedback event. ``served`` is what served its request (``variant``,
        ``model_version``; None: unattributed), ``shown`` whether that answer showed the item
        (None: unattributed). A click or purchase on a shown item also counts its request as
        clicked or converted, once per request: the set of outcomes already counted is kept on
        ``served`` and forgotten with it. An event on an item the answer did not show (a client
        quoting the wrong request_id) is counted with ``shown="false"`` and nowhere else."""
        variant = str(served["variant"]) if served else "None"
        version = str(served["model_version"]) if served else "None"
        label = "unknown" if served is None or shown is None else str(bool(shown)).lower()
        self.inc("feedback_total", event=event, variant=variant, version=version, shown=label)
        outcome = {
            CLICK_EVENT: "clicked_requests_total",
            CONVERSION_EVENT: "converted_requests_total",
        }
        if served is None or not shown or event not in outcome:
            return
        with self._lock:
            counted = served.setdefault("_counted_outcomes", set())
            first = event not in counted
            counted.add(event)
        if first:
            self.inc(outcome[event], variant=variant, version=version)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One observation: counted in its own bucket only (rendering accumulates them), so the
        hot path pays one bisection, not a pass over every bound."""
        slot = bisect_left(LATENCY_BUCKETS, seconds)  # first bound >= seconds; len: above all
        with self._lock:
            row = self._hist.get(stage)
            if row is None:
                self._help["stage_latency_seconds"] = (
                    "histogram",
                    "Time spent per stage of /recommend.",
                )
                row = self._hist[stage] = [0.0] * (len(LATENCY_BUCKETS) + 3)
            row[slot] += 1
            row[-2] += 1  # count
            row[-1] += seconds

    def set_models(self, models: dict[str, tuple[str, float, dict]]) -> None:
        """``models``: variant -> (version, loaded_at epoch seconds, release metadata). Sets the
        loaded and trained timestamp gauges of what is served and starts the per-model counters
        of each (variant, version) at 0."""
        loaded: dict[tuple, float] = {}
        trained: dict[tuple, float] = {}
        window_end: dict[tuple, float] = {}
        for variant, (version, loaded_at, meta) in models.items():
            key = (("variant", variant), ("version", str(version)))
            loaded[key] = loaded_at
            created, end = release_timestamps(meta)
            if created is not None:
                trained[key] = created
            if end is not None:
                window_end[key] = end
            self.inc(
                "requests_total", amount=0.0, variant=variant, version=str(version), fallback="None"
            )
            for name in _PER_MODEL:
                self.inc(name, amount=0.0, variant=variant, version=str(version))
        gauges = {
            "model_loaded_timestamp_seconds": (
                "When the served model of each variant was loaded (age = now - value).",
                loaded,
            ),
            "model_trained_timestamp_seconds": (
                "When the served release was trained (its created_at): prediction staleness "
                "is now - value.",
                trained,
            ),
            "model_training_window_end_timestamp_seconds": (
                "The newest interaction in the served release's training window (the data's "
                "clock).",
                window_end,
            ),
        }
        with self._lock:
            for name, (help_text, series) in gauges.items():
                self._help[name] = ("gauge", help_text)
                self._gauges[name] = series

    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(
        self,
        extra_gauges: dict[str, tuple[str, float]] | None = None,
        features: dict | None = None,
    ) -> str:
        """Prometheus text exposition of every series. ``features``: the feature source's
        freshness (``serving.features.ServingFeatures.freshness`` plus ``source``)."""
        out: list[str] = []
        with self._lock:
            for name, series in self._counters.items():
                full = f"{PREFIX}_{name}"
                out += [f"# HELP {full} {self._help[name][1]}", f"# TYPE {full} counter"]
                out += [f"{full}{_labels(k)} {v}" for k, v in series.items()]
            if self._hist:
                full = f"{PREFIX}_stage_latency_seconds"
                out += [
                    f"# HELP {full} Time spent per stage of /recommend.",
                    f"# TYPE {full} histogram",
                ]
                for stage, row in self._hist.items():
                    key = (("stage", stage),)
                    below = 0.0
                    for i, bound in enumerate(LATENCY_BUCKETS):
                        below += row[i]
                        out.append(f"{full}_bucket{_labels((*key, ('le', str(bound))))} {below}")
                    out.append(f"{full}_bucket{_labels((*key, ('le', '+Inf')))} {row[-2]}")
                    out.append(f"{full}_count{_labels(key)} {row[-2]}")
                    out.append(f"{full}_sum{_labels(key)} {row[-1]}")
            now = time.time()
            for name, series in self._gauges.items():
                full = f"{PREFIX}_{name}"
                out += [f"# HELP {full} {self._help[name][1]}", f"# TYPE {full} gauge"]
                out += [f"{full}{_labels(k)} {v}" for k, v in series.items()]
                if name == "model_loaded_timestamp_seconds":
                    age = f"{PREFIX}_model_age_seconds"
                    out += [
                        f"# HELP {age} Seconds since the served model was loaded.",
                        f"# TYPE {age} gauge",
                    ]
                    out += [f"{age}{_labels(k)} {now - v:.3f}" for k, v in series.items()]
        for name, (help_text, value) in (extra_gauges or {}).items():
            full = f"{PREFIX}_{name}"
            out += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge", f"{full} {value}"]
        if features is not None:
            out += _feature_gauges(features)
        return "\n".join(out) + "\n"


def release_timestamps(meta: dict) -> tuple[float | None, float | None]:
    """(when the release was trained, the end of its training window) in epoch seconds, from
    its ``release.json`` metadata (``created_at``, ``training_window.end``); None for what the
    metadata lacks or cannot be read (a timestamp without a zone is taken as UTC)."""

    def epoch(value: object) -> float | None:
        if not isinstance(value, str):
            return None
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()

    window = meta.get("training_window")
    return epoch(meta.get("created_at")), epoch(
        window.get("end") if isinstance(window, dict) else None
    )


def _feature_gauges(features: dict) -> list[str]:
    """Where features come from and how old the online store is (absent: never materialized)."""
    out: list[str] = []
    full = f"{PREFIX}_feature_source"
    out += [
        f"# HELP {full} 1 for the state of the online feature source, 0 for the others.",
        f"# TYPE {full} gauge",
    ]
    out += [
        f"{full}{_labels((('source', s),))} {int(features.get('source') == s)}"
        for s in FEATURE_SOURCES
    ]
    if features.get("age_s") is not None:
        full = f"{PREFIX}_feature_age_seconds"
        out += [
            f"# HELP {full} Seconds since the online store was last materialized (wall clock).",
            f"# TYPE {full} gauge",
            f"{full} {features['age_s']}",
        ]
    until = {v: e for v, e in (features.get("materialized_until") or {}).items() if e}
    if until:
        full = f"{PREFIX}_feature_materialized_until_timestamp_seconds"
        out += [
            f"# HELP {full} End of the materialized window of each view (the data's clock).",
            f"# TYPE {full} gauge",
        ]
        out += [
            f"{full}{_labels((('view', v),))} {datetime.fromisoformat(e).timestamp():.0f}"
            for v, e in sorted(until.items())
        ]
    return out
