"""``recsys bench serve``: the real service under a real load generator, beside the framework's
floor.

    recsys bench serve --duration 20 --concurrency 8 [--json]
    recsys bench serve --dataset movielens --data-path ../shared/data/ml-100k --concurrency 1
    recsys bench serve --dataset synthetic --items 20000 --users 5000 --interactions 200000

One run:

1. the world: the champion of ``RECSYS_DATA_DIR`` when it has one and no ``--dataset`` is
   given; otherwise a temporary data directory where the data set is landed, ingested,
   materialized into the Feast online store, trained and registered as champion;
2. the service (``bentoml serve serving.service:RecommenderService``, a real process on
   127.0.0.1) is warmed up, its cache flushed, then driven by locust (headless, ``concurrency``
   shoppers in a closed loop, see :mod:`recsys.locustfile` for the mix of known, unknown and
   repeat users) for ``duration`` seconds;
3. the service's own stage histograms (``/metrics`` before and after) give the in-process time
   per request and its split into candidates, features and ranking;
4. the trivial endpoint (``serving.floor:FloorService``, same server settings) is driven the
   same way, and the service's throughput is reported as a share of it.

Latency percentiles are client side (locust's per-request timings, in ms, not rounded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys.config import Settings, get_settings
from recsys.errors import RecsysError
from recsys.server import FLOOR_TARGET, PROJECT_ROOT, ServiceProcess

MIX = {"known": 0.7, "unknown": 0.1, "repeat": 0.2}
"""Shares of request kinds (see recsys/locustfile.py)."""
K = 10
TARGETS = {"p50_ms_at_concurrency_1": 3.0, "p99_ms_at_concurrency_8": 25.0, "share_of_floor": 0.6}
"""The issue's targets on 2 cores with the ML-100K catalog."""
STAGES = ("route", "cache", "candidates", "features", "ranking", "model", "total")
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
_BUCKET = re.compile(
    r'^recsys_serving_stage_latency_seconds_(bucket|count|sum)\{stage="([a-z_]+)"'
    r'(?:,le="([^"]+)")?\} ([0-9.eE+-]+)$'
)


@dataclass(frozen=True)
class WorldSpec:
    """What to build when the benchmark trains its own model."""

    dataset: str = "synthetic"
    data_path: Path | None = None
    users: int = 2000
    items: int = 500
    days: int = 14
    interactions: int = 60_000
    seed: int = 42


@dataclass
class LoadResult:
    """Client-side figures of one locust run against one endpoint."""

    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)


# ---- the world ------------------------------------------------------------------------------


def build_world(spec: WorldSpec, data_dir: Path, log: Callable[[str], None] = print) -> Settings:
    """Land, ingest, materialize, train and register a champion in ``data_dir`` (local profile).

    Raises:
        RecsysError: a bad data path or a world too small to train on.
    """
    from features.store import materialize
    from recsys.gate import register_with_gate
    from recsys.ingest import ingest_all, land_dataset
    from recsys.train import pipeline_params, train_and_evaluate

    settings = get_settings(
        data_dir=data_dir, profile="local", mlflow_tracking_uri=None, seed=spec.seed
    )
    lake = settings.lake.init()
    if spec.dataset == "movielens":
        from recsys.movielens import load_movielens

        if spec.data_path is None:
            raise RecsysError("--dataset movielens needs --data-path (the ml-100k folder)")
        land_dataset(lake, load_movielens(spec.data_path))
    elif spec.dataset == "synthetic":
        from recsys.synthetic import WorldConfig, write_world

        write_world(
            WorldConfig(
                n_users=spec.users,
                n_items=spec.items,
                n_days=spec.days,
                n_interactions=spec.interactions,
                seed=spec.seed,
            ),
            lake,
        )
    else:
        raise RecsysError(f"--dataset must be synthetic or movielens, got {spec.dataset!r}")
    log(f"world: {spec.dataset} landed in {data_dir}; ingesting")
    ingest_all(lake)
    log("world: materializing the online store")
    materialize(settings)
    log("world: training (no search)")
    result = train_and_evaluate(
        lake, pipeline_params(settings), k=K, budget_s=0.0, model_name=settings.model_name
    )
    registered, decision = register_with_gate(settings, result)
    if decision.alias != "champion":
        raise RecsysError(f"the benchmark model was not made champion: {decision.reason}")
    log(f"world: champion is version {registered.version}")
    return settings


def population(settings: Settings, seed: int) -> tuple[str, dict[str, Any]]:
    """(champion version, the locustfile's population: known users, items, unknown ids, mix)."""
    from recsys.registry import download_release
    from recsys.release import Release

    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as folder:
        version, release_dir = download_release(settings, "champion", Path(folder))
        release = Release.load(release_dir)
    known = [int(u) for u in release.user_ids]
    return version, {
        "known": known,
        "items": [int(i) for i in release.item_ids],
        "unknown_from": (max(known) if known else 0) + 1_000_000,
        "mix": MIX,
        "k": K,
        "seed": seed,
    }


# ---- the load generator ---------------------------------------------------------------------


def _locust_program() -> list[str]:
    if importlib.util.find_spec("locust") is None:
        raise RecsysError(
            "the load generator locust is not installed: pip install -c requirements.lock "
            "-e '.[dev]'"
        )
    script = Path(sys.executable).with_name("locust")
    return [str(script)] if script.exists() else [sys.executable, "-m", "locust"]


def drive(
    url: str,
    population_file: Path,
    *,
    duration: float,
    concurrency: int,
    workdir: Path,
    name: str,
) -> LoadResult:
    """Run locust headless against ``url`` for ``duration`` seconds with ``concurrency``
    shoppers; returns the client-side figures.

    Raises:
        RecsysError: locust failed to run or wrote no samples.
    """
    samples = workdir / f"{name}-samples.json"
    samples.unlink(missing_ok=True)
    log_path = workdir / f"{name}-locust.log"
    command = [
        *_locust_program(),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(concurrency),
        "--spawn-rate",
        str(concurrency),
        "--run-time",
        f"{max(1, round(duration))}s",
        "--host",
        url,
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
        "--exit-code-on-error",
        "0",
    ]
    env = {
        **os.environ,
        "RECSYS_BENCH_POPULATION": str(population_file),
        "RECSYS_BENCH_SAMPLES": str(samples),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    with log_path.open("wb") as log:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=duration + 120,
            check=False,
        )
    if done.returncode != 0 or not samples.exists():
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise RecsysError(f"locust exited with {done.returncode} against {url}: {tail}")
    return summarize_samples(json.loads(samples.read_text()))


def summarize_samples(payload: dict[str, Any]) -> LoadResult:
    """Percentiles, throughput and counts from the locustfile's samples."""
    by_kind = {
        kind: np.asarray(values, dtype=float) for kind, values in payload["latency_ms"].items()
    }
    every = np.concatenate(list(by_kind.values())) if by_kind else np.zeros(0)
    window = payload["window"]
    seconds = max(window["last_end"] - window["first_start"], 1e-9) if len(every) else 0.0
    errors = int(sum(payload["errors"].values()))

    def pct(values: np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)), 3) if len(values) else float("nan")

    return LoadResult(
        requests=len(every) + errors,
        errors=errors,
        seconds=round(seconds, 3),
        requests_per_s=round(len(every) / seconds, 1) if seconds else 0.0,
        p50_ms=pct(every, 50),
        p95_ms=pct(every, 95),
        p99_ms=pct(every, 99),
        mean_ms=round(float(every.mean()), 3) if len(every) else float("nan"),
        max_ms=round(float(every.max()), 3) if len(every) else float("nan"),
        by_kind={
            kind: {"requests": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
            for kind, v in sorted(by_kind.items())
        },
        answers=payload.get("answers", {}),
        error_kinds=payload["errors"],
    )


# ---- the service's own stage timings --------------------------------------------------------


def scrape_stages(url: str) -> dict[str, dict[str, Any]]:
    """The ``recsys_serving_stage_latency_seconds`` histogram of the service at ``url``:
    ``{stage: {"buckets": {le: cumulative count}, "count": n, "sum": seconds}}``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    stages: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if not match:
            continue
        kind, stage, le, value = match.groups()
        entry = stages.setdefault(stage, {"buckets": {}, "count": 0.0, "sum": 0.0})
        if kind == "bucket":
            entry["buckets"][float(le) if le != "+Inf" else float("inf")] = float(value)
        else:
            entry[kind] = float(value)
    return stages


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear inside the bucket holding rank ``q * n``."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 1.0)
        lower, below = bound, count
    return lower


def stage_split(before: dict, after: dict) -> dict[str, Any]:
    """Per-stage in-process time over the run (the difference of two scrapes), in ms: requests,
    mean, p50/p95/p99 (histogram quantiles), and each of candidates/features/ranking as a share
    of their sum."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        end = after.get(stage)
        if end is None:
            continue
        start = before.get(stage, {"buckets": {}, "count": 0.0, "sum": 0.0})
        count = end["count"] - start["count"]
        if count <= 0:
            continue
        buckets = {b: c - start["buckets"].get(b, 0.0) for b, c in end["buckets"].items()}
        out[stage] = {
            "requests": int(count),
            "mean_ms": round(1000 * (end["sum"] - start["sum"]) / count, 3),
            **{
                f"p{q}_ms": round(1000 * histogram_quantile(q / 100, buckets), 3)
                for q in (50, 95, 99)
            },
        }
    pipeline = [s for s in ("candidates", "features", "ranking") if s in out]
    spent = sum(out[s]["mean_ms"] for s in pipeline)
    for stage in pipeline:
        out[stage]["share"] = round(out[stage]["mean_ms"] / spent, 3) if spent else 0.0
    return out


# ---- one benchmark run ----------------------------------------------------------------------


def _warm_up(url: str, pop: dict[str, Any], requests: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            user = int(rng.choice(pop["known"])) if pop["known"] else 0
            client.post(f"{url}/recommend", json={"user_id": user, "k": K})


def _measure(
    proc: ServiceProcess,
    pop_file: Path,
    pop: dict[str, Any],
    *,
    duration: float,
    concurrency: int,
    warmup: int,
    seed: int,
    workdir: Path,
    name: str,
    token: str | None = None,
) -> tuple[LoadResult, dict[str, Any], dict[str, Any]]:
    """Warm up, flush the cache, scrape, drive, scrape: (load result, stage split, status)."""
    _warm_up(proc.url, pop, warmup, seed)
    auth = {"authorization": f"Bearer {token}"} if token else {}
    if token:
        httpx.post(f"{proc.url}/admin/cache/flush", json={}, headers=auth, timeout=30)
    before = scrape_stages(proc.url)
    result = drive(
        proc.url, pop_file, duration=duration, concurrency=concurrency, workdir=workdir, name=name
    )
    split = stage_split(before, scrape_stages(proc.url))
    status = {}
    if token:
        status = httpx.post(f"{proc.url}/admin/status", json={}, headers=auth, timeout=30).json()
    return result, split, status


def _targets(concurrency: int, service: LoadResult, share: float) -> list[dict[str, Any]]:
    rows = [
        {
            "target": "throughput >= 60% of the trivial endpoint",
            "value": share,
            "met": share >= TARGETS["share_of_floor"],
        }
    ]
    if concurrency == 1:
        limit = TARGETS["p50_ms_at_concurrency_1"]
        rows.insert(
            0,
            {
                "target": "p50 <= 3 ms at concurrency 1",
                "value": service.p50_ms,
                "met": service.p50_ms <= limit,
            },
        )
    if concurrency == 8:
        limit = TARGETS["p99_ms_at_concurrency_8"]
        rows.insert(
            0,
            {
                "target": "p99 <= 25 ms at concurrency 8",
                "value": service.p99_ms,
                "met": service.p99_ms <= limit,
            },
        )
    return rows


def bench_serve(
    settings: Settings | None = None,
    *,
    duration: float = 20.0,
    concurrency: int = 1,
    world: WorldSpec | None = None,
    warmup: int = 200,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark the service and the trivial endpoint (see the module docstring).

    Args:
        settings: whose champion to serve (ignored when ``world`` is given); None or a data dir
            without a champion builds the default synthetic world in a temporary directory.
        world: build this world in a temporary directory and serve its champion.

    Returns:
        ``{"world", "run", "machine", "service", "floor", "share_of_floor", "in_process",
        "features", "targets"}`` (see docs/benchmarks.md).

    Raises:
        RecsysError: bad arguments, locust missing, or a server that did not start.
    """
    if duration <= 0 or concurrency < 1 or warmup < 0:
        raise RecsysError("--duration must be > 0, --concurrency >= 1 and --warmup >= 0")
    _locust_program()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-serve-") as scratch:
        workdir = Path(scratch)
        source = "RECSYS_DATA_DIR"
        if world is None and (settings is None or not has_champion(settings)):
            world = WorldSpec()
        if world is not None:
            settings = build_world(world, workdir / "data", log)
            source = f"temporary {world.dataset} world"
        assert settings is not None
        version, pop = population(settings, seed)
        pop_file = workdir / "population.json"
        pop_file.write_text(json.dumps(pop))
        load_before = os.getloadavg()
        token = secrets.token_urlsafe(16)
        env = {"RECSYS_ADMIN_TOKEN": token, "RECSYS_RELOAD_INTERVAL_S": "0"}
        if world is not None:  # the temporary world's registry, whatever the caller's env says
            env["RECSYS_MLFLOW_TRACKING_URI"] = ""
        log(f"service: champion v{version}, {len(pop['known'])} users, {len(pop['items'])} items")
        with ServiceProcess(settings, env=env, start_timeout=300) as proc:
            service, split, status = _measure(
                proc,
                pop_file,
                pop,
                duration=duration,
                concurrency=concurrency,
                warmup=warmup,
                seed=seed,
                workdir=workdir,
                name="service",
                token=token,
            )
        log(f"service: {service.requests_per_s} req/s; now the trivial endpoint")
        with ServiceProcess(settings, target=FLOOR_TARGET, start_timeout=300) as proc:
            floor, _, _ = _measure(
                proc,
                pop_file,
                pop,
                duration=duration,
                concurrency=concurrency,
                warmup=warmup,
                seed=seed,
                workdir=workdir,
                name="floor",
            )
        load_after = os.getloadavg()
    share = round(service.requests_per_s / floor.requests_per_s, 3) if floor.requests_per_s else 0.0
    features = status.get("features", {})
    return {
        "world": {
            "source": source,
            "dataset": world.dataset if world else None,
            "users": len(pop["known"]),
            "items": len(pop["items"]),
            "model_version": version,
        },
        "run": {
            "duration_s": duration,
            "concurrency": concurrency,
            "warmup_requests": warmup,
            "generator": f"locust {metadata.version('locust')} (headless, FastHttpUser)",
            "mix": MIX,
            "k": K,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": [round(v, 2) for v in load_before],
            "load_avg_after": [round(v, 2) for v in load_after],
        },
        "service": asdict(service),
        "floor": asdict(floor),
        "share_of_floor": share,
        "in_process": split,
        "features": {
            "source": features.get("source"),
            "online_store": features.get("online_store"),
            "age_s": features.get("age_s"),
            "answers": features.get("answers", {}),
        },
        "targets": _targets(concurrency, service, share),
    }


def has_champion(settings: Settings) -> bool:
    """Whether the registry of ``settings`` has a model version aliased ``champion``."""
    from recsys.registry import version_for_alias

    if settings.profile == "local" and not (settings.data_dir / "mlflow.db").exists():
        return False
    try:
        return version_for_alias(settings, "champion") is not None
    except Exception:  # no registry yet: the benchmark trains its own model
        return False


def report_tables(report: dict[str, Any]) -> list:
    """Rich tables of a :func:`bench_serve` report: HTTP, in-process stages, targets."""
    from recsys.console import table

    world, run = report["world"], report["run"]
    title = (
        f"recsys bench serve: {world['items']} items, {world['users']} users "
        f"({world['source']}), concurrency {run['concurrency']}, {run['duration_s']:g} s, "
        f"{report['machine']['cpus']} CPUs, load {report['machine']['load_avg_before'][0]}"
    )
    http = [
        [
            name,
            r["requests"],
            r["errors"],
            f"{r['requests_per_s']:.1f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
        ]
        for name, r in (
            ("recsys service", report["service"]),
            ("trivial endpoint", report["floor"]),
        )
    ]
    http.append(["service / trivial", "", "", f"{report['share_of_floor']:.0%}", "", "", ""])
    stages = [
        [
            stage,
            s["requests"],
            f"{s['mean_ms']:.3f}",
            f"{s['p50_ms']:.3f}",
            f"{s['p99_ms']:.3f}",
            f"{s['share']:.0%}" if "share" in s else "",
        ]
        for stage, s in report["in_process"].items()
    ]
    targets = [
        [t["target"], f"{t['value']:g}", "met" if t["met"] else "MISSED"] for t in report["targets"]
    ]
    answers = report["service"]["answers"]
    return [
        table(
            f"{title}\nclient side (locust), ms",
            ["endpoint", "requests", "errors", "req/s", "p50", "p95", "p99"],
            http,
        ),
        table(
            "in-process (service histograms), ms; features "
            f"{report['features']['source']}, answers {answers.get('features', {})}",
            ["stage", "requests", "mean", "p50", "p99", "share of pipeline"],
            stages,
        ),
        table("targets", ["target", "value", "verdict"], targets),
    ]
