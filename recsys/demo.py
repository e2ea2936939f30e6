"""``recsys demo``: the thin path end to end, on the embedded local profile.

generate a synthetic world (or load MovieLens) -> ingest with the contract (bad rows to
quarantine) -> train ALS with a temporal holdout beside the popularity baseline -> register the
release in MLflow with alias ``champion`` -> start a real ``bentoml serve`` on 127.0.0.1 ->
send real HTTP requests (known, unknown and repeat users) -> print the results -> stop the
server. With the synthetic world, the ground-truth click model scores what was served.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from recsys.config import Settings
from recsys.console import console, ingest_table, table
from recsys.errors import RecsysError
from recsys.gate import register_with_gate
from recsys.ingest import IngestReport, ingest_all, land_dataset
from recsys.registry import CHAMPION, version_for_alias
from recsys.server import ServiceProcess
from recsys.train import holdout_rows, lift_over, pipeline_params, train_and_evaluate


@dataclass
class DemoOptions:
    dataset: str = "synthetic"
    data_path: Path | None = None
    seed: int = 42
    users: int = 2000
    items: int = 500
    days: int = 14
    interactions: int = 60_000
    requests: int = 60
    k: int = 10
    budget_s: float = 5.0


@dataclass
class DemoResult:
    model_version: str
    requests: int
    errors: int
    latencies_ms: list[float] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    expected_ctr: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.requests > 0


def _land(settings: Settings, opts: DemoOptions) -> Path | None:
    """Put the data set in the raw zone; returns the world folder for a synthetic world."""
    lake = settings.lake.init()
    if opts.dataset == "synthetic":
        from recsys.synthetic import WorldConfig, write_world

        cfg = WorldConfig(
            n_users=opts.users,
            n_items=opts.items,
            n_days=opts.days,
            n_interactions=opts.interactions,
            seed=opts.seed,
        )
        write_world(cfg, lake)
        return lake.world_dir()
    if opts.dataset == "movielens":
        from recsys.movielens import load_movielens

        if opts.data_path is None:
            raise RecsysError("--dataset movielens needs --data-path DIR (the ml-100k folder)")
        land_dataset(lake, load_movielens(opts.data_path))
        return None
    raise RecsysError(f"unknown --dataset {opts.dataset!r}; use synthetic or movielens")


def _traffic_plan(known: np.ndarray, n: int, seed: int) -> list[int]:
    """A realistic mix: mostly known users, some unknown (cold start), some repeats."""
    rng = random.Random(seed)
    plan: list[int] = []
    unknown_base = int(known.max()) + 1_000_000
    for i in range(n):
        roll = rng.random()
        if roll < 0.15:
            plan.append(unknown_base + i)
        elif roll < 0.30 and plan:
            plan.append(rng.choice(plan))
        else:
            plan.append(int(rng.choice(known)))
    return plan


def run_demo(settings: Settings, opts: DemoOptions) -> DemoResult:
    """Run the thin path once; prints progress and tables. Returns what the traffic saw."""
    lake = settings.lake
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    steps = ["land data", "ingest", "train", "register", "serve", "traffic", "stop"]
    with progress:
        task = progress.add_task("demo", total=len(steps))

        def step(name: str) -> None:
            progress.update(task, description=f"[bold]{name}[/]")

        step(f"land {opts.dataset} data")
        world_dir = _land(settings, opts)
        progress.advance(task)

        step("ingest (contract check)")
        reports = ingest_all(lake)
        progress.advance(task)

        step("train ALS + item-kNN + ranker, with baselines")
        params = pipeline_params(settings, seed=opts.seed)
        trained = train_and_evaluate(
            lake, params, k=opts.k, budget_s=opts.budget_s, model_name=settings.model_name
        )
        progress.advance(task)

        step("gate and register in MLflow")
        registered, decision = register_with_gate(settings, trained)
        served_version = version_for_alias(settings, CHAMPION)
        progress.advance(task)

        step("start bentoml serve")
        service = ServiceProcess(settings)
        service.start()
        try:
            progress.advance(task)
            step(f"traffic on {service.url}")
            plan = _traffic_plan(trained.release.user_ids, opts.requests, opts.seed)
            responses, latencies, errors = [], [], 0
            with httpx.Client(base_url=service.url, timeout=10) as client:
                for user_id in plan:
                    started = time.perf_counter()
                    reply = client.post("/recommend", json={"user_id": user_id, "k": opts.k})
                    latencies.append((time.perf_counter() - started) * 1000)
                    if reply.status_code != 200:
                        errors += 1
                        continue
                    responses.append(reply.json())
            progress.advance(task)
        finally:
            step("stop the server")
            service.stop()
            progress.advance(task)

    result = DemoResult(
        model_version=str(served_version),
        requests=len(plan),
        errors=errors,
        latencies_ms=latencies,
        metrics=trained.metrics,
    )
    if world_dir is not None:
        result.expected_ctr = _expected_ctr(world_dir, responses, trained.release, opts)
    console.print(
        f"registered version {registered.version}: "
        f"{'as ' + repr(decision.alias) if decision.passed else 'REJECTED'} ({decision.reason})"
    )
    _print_report(reports, trained, str(served_version), responses, result, opts)
    return result


def _expected_ctr(world_dir: Path, responses: list[dict], release, opts: DemoOptions) -> dict:
    """Mean true click probability (ground truth) of the served lists vs the popular list."""
    from recsys.synthetic import ClickModel

    clicks = ClickModel.load(world_dir)
    day = opts.days - 1
    served_u, served_i, popular_u, popular_i = [], [], [], []
    popular = release.recommend(-1, opts.k).item_ids
    for reply in responses:
        if reply["fallback"]:
            continue
        items = [it["item_id"] for it in reply["items"]]
        served_u += [reply["user_id"]] * len(items)
        served_i += items
        popular_u += [reply["user_id"]] * len(popular)
        popular_i += popular.tolist()
    if not served_u:
        return {}
    return {
        "served (champion)": float(
            np.mean(clicks.click_probability(np.array(served_u), np.array(served_i), day))
        ),
        "cold-start list": float(
            np.mean(clicks.click_probability(np.array(popular_u), np.array(popular_i), day))
        ),
    }


def _print_report(
    reports: list[IngestReport], trained, version: str, responses, result, opts
) -> None:
    console.print(ingest_table(reports))
    console.print(table(*holdout_rows(trained)))
    if "pipeline" in trained.metrics:
        console.print(f"pipeline vs ALS alone: {lift_over(trained.metrics):+.1%} nDCG@{opts.k}")
    for note in trained.notes:
        console.print(f"[bold yellow]{note}[/]")
    sample = responses[:8]
    console.print(
        table(
            f"Served by model version {version} (first {len(sample)} answers)",
            ["user_id", f"top items (of {opts.k})", "variant", "fallback"],
            [
                [
                    r["user_id"],
                    " ".join(str(i["item_id"]) for i in r["items"][:5]) + " ...",
                    r["variant"],
                    r["fallback"] or "-",
                ]
                for r in sample
            ],
        )
    )
    lat = sorted(result.latencies_ms)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
    summary = [
        ["requests", result.requests],
        ["errors", result.errors],
        ["cold-start answers", sum(1 for r in responses if r["fallback"] == "cold_start")],
        ["latency p50 (ms, client side)", statistics.median(lat) if lat else 0.0],
        ["latency p95 (ms, client side)", p95],
    ]
    summary += [[f"true CTR: {k}", v] for k, v in result.expected_ctr.items()]
    console.print(table("Traffic", ["", "value"], summary))
    verdict = "[bold green]demo passed[/]" if result.ok else "[bold red]demo FAILED[/]"
    console.print(f"{verdict}: model version {version} answered over real HTTP.")
