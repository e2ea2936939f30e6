"""The service's own Prometheus series, rendered as text and appended to BentoML's /metrics.

BentoML 1.4 runs prometheus_client in multiprocess mode and only sets its directory after the
service module is imported; rather than depend on import order, these series live in plain
Python (the service runs one worker) and are appended through the ``__metrics__`` hook.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import datetime

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


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class ServingMetrics:
    """Counters and latency histograms of the recommend pipeline; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[tuple, list[float]] = {}
        self._gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._help[name] = ("counter", help_text)
            self._counters[name][tuple(sorted(labels.items()))] += amount

    def observe_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._help["stage_latency_seconds"] = (
                "histogram",
                "Time spent per stage of /recommend.",
            )
            row = self._hist.setdefault((("stage", stage),), [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += 1  # count
            row[-1] += seconds

    def set_model_loaded(self, models: dict[str, tuple[str, float]]) -> None:
        """``models``: variant -> (version, loaded_at epoch seconds)."""
        with self._lock:
            self._help["model_loaded_timestamp_seconds"] = (
                "gauge",
                "When the served model of each variant was loaded (age = now - value).",
            )
            self._gauges["model_loaded_timestamp_seconds"] = {
                (("variant", variant), ("version", version)): loaded
                for variant, (version, loaded) in models.items()
            }

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
                for key, row in self._hist.items():
                    for i, bound in enumerate(LATENCY_BUCKETS):
                        out.append(f"{full}_bucket{_labels((*key, ('le', str(bound))))} {row[i]}")
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
