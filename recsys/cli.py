"""The ``recsys`` command line. Every stage a person may want to run alone is a command here.

    recsys config show | schema
    recsys data generate | movielens --data-path DIR | ingest
    recsys train [--window-days N]
    recsys serve
    recsys ingest PATH [--json]
    recsys demo [--days N] [--faults a,b] [--seed S]
    recsys flows serve
    recsys doctor [--fix] [--json]
    recsys status [--json] [--url URL]
    recsys rollback [--to VERSION] [--reason TEXT]

Errors a user can cause end with one ``recsys: error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from typer._click import exceptions as cli_errors  # typer vendors click since 0.2x

from features.cli import features_app
from flows import cli as flows_cli
from recsys.config import Settings, get_settings
from recsys.console import (
    clip,
    console,
    err_console,
    float_option,
    ingest_table,
    quarantine_table,
    quiet_libraries,
    table,
    url_option,
)
from recsys.errors import RecsysError

app = typer.Typer(
    help="Self-healing recommender: data, training, registry, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show the effective settings or their schema.", no_args_is_help=True)
data_app = typer.Typer(help="Land and ingest data into the lake.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="benchmark")


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs.")] = False,
) -> None:
    quiet_libraries(verbose)


def _settings() -> Settings:
    return get_settings()


# ---- config ---------------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective settings (secrets masked)."""
    values = _settings().masked()
    if as_json:
        print(json.dumps(values, indent=2, default=str))
        return
    console.print(table("Effective settings", ["setting", "value"], values.items()))


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the settings (RECSYS_<NAME> environment variables)."""
    print(json.dumps(Settings.model_json_schema(), indent=2))


# ---- data -----------------------------------------------------------------------------------


def _print_ingest(reports) -> None:
    console.print(ingest_table(reports))
    hit = [r for r in reports if r.quarantined_rows]
    if not hit:
        return
    console.print(quarantine_table(sum((Counter(r.reasons) for r in hit), Counter())))
    for r in hit[:10]:
        console.print(f"  quarantined {r.quarantined_rows} row(s) of {r.batch}")
    if len(hit) > 10:
        console.print(f"  and {len(hit) - 10} more batch(es)")


MAX_DAYS = 3650
"""Most daily batches ``data generate`` writes: ten years, one file per day."""


@data_app.command("generate")
def data_generate(
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, typer.Option(min=1, help="Number of items.")] = 500,
    days: Annotated[int, typer.Option(min=1, max=MAX_DAYS, help="Number of daily batches.")] = 14,
    interactions: Annotated[int, typer.Option(min=0, help="Interactions over all days.")] = 60_000,
    categories: Annotated[int, typer.Option(min=1, help="Item categories.")] = 12,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same bytes.")] = 42,
    drift_day: Annotated[
        int | None, typer.Option(help="From this day (0-based) some users change tastes.")
    ] = None,
    drift_share: Annotated[float, float_option(help="Share of users that drift.")] = 0.3,
    new_item_share: Annotated[float, float_option(help="Share of items created later.")] = 0.1,
    start_date: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2026-01-01",
    ingest: Annotated[bool, typer.Option(help="Also contract-check into the clean zone.")] = True,
) -> None:
    """Generate a synthetic world: one immutable raw parquet batch per day, plus ground truth."""
    import time

    from recsys.ingest import ingest_all
    from recsys.synthetic import WorldConfig, refuse_future_days, write_world

    settings = _settings()
    cfg = WorldConfig(
        n_users=users,
        n_items=items,
        n_days=days,
        n_interactions=interactions,
        n_categories=categories,
        seed=seed,
        drift_day=drift_day,
        drift_share=drift_share,
        new_item_share=new_item_share,
        start_date=start_date,
    )
    refuse_future_days(cfg)
    started = time.perf_counter()
    manifest = write_world(cfg, settings.lake.init(), show_progress=True)
    elapsed = time.perf_counter() - started
    summary = manifest.get("summary", {})
    console.print(
        table(
            f"Synthetic world in {settings.data_dir} ({elapsed:.1f}s)",
            ["", "value"],
            [[k, v] for k, v in summary.items() if not isinstance(v, dict | list)],
        )
    )
    if ingest:
        _print_ingest(ingest_all(settings.lake, show_progress=True))


@data_app.command("movielens")
def data_movielens(
    data_path: Annotated[
        Path,
        typer.Option(
            "--data-path", help="MovieLens folder: ml-100k, ml-1m/10m or ml-latest layout."
        ),
    ],
    ingest: Annotated[bool, typer.Option(help="Also contract-check into the clean zone.")] = True,
) -> None:
    """Land a MovieLens folder (GroupLens ml-100k, ml-1m/10m or ml-latest layout) in the raw
    zone, one batch per day."""
    from recsys.ingest import ingest_all, land_dataset
    from recsys.movielens import load_movielens

    settings = _settings()
    dataset = load_movielens(data_path)
    batches = land_dataset(settings.lake, dataset)
    console.print(
        f"landed {len(dataset.interactions)} ratings, {len(dataset.items)} items, "
        f"{len(dataset.users)} users as {len(batches)} daily batches in {settings.data_dir}"
    )
    if ingest:
        _print_ingest(ingest_all(settings.lake, show_progress=True))


@data_app.command("ingest")
def data_ingest() -> None:
    """Contract-check every raw batch into the clean zone (bad rows to quarantine). Idempotent.

    Exit 0: every row accepted; 3: some rows quarantined; 2: a raw delivery cannot be read (its
    batch is left as it was, the others are ingested)."""
    from recsys.ingest import ingest_all

    reports = ingest_all(_settings().lake, show_progress=True)
    _print_ingest(reports)
    damaged = [r for r in reports if r.damaged]
    for report in damaged:
        err_console.print(f"recsys: error: batch {report.batch}: {report.damaged}", markup=False)
    if damaged:
        raise typer.Exit(2)
    if any(r.quarantined_rows for r in reports):
        raise typer.Exit(3)


@data_app.command("catalog")
def data_catalog(
    path: Annotated[
        Path,
        typer.Argument(help="The item catalog: parquet, CSV or TSV (or .csv.gz) with a header."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Deliver your item catalog: item_id and category or genres (|, comma or ;-separated;
    title and created_at optional; other columns are ignored). Its rows are contract-checked
    and merged into the lake's catalog (new items added, listed ones replaced); events that
    waited for their items are accepted.

    Exit 0: every row accepted; 3: some rows quarantined (kept with their reasons); 2: the file
    cannot be read (kept in the quarantine).
    """
    from recsys.catalog import deliver_catalog

    settings = _settings()
    report = deliver_catalog(settings.lake, path)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        console.print(
            table(
                f"Catalog delivery {report.delivery}"
                + (
                    " (the same file as last time: nothing new landed)"
                    if report.already_delivered
                    else ""
                ),
                [
                    "rows",
                    "accepted",
                    "new items",
                    "updated",
                    "unchanged",
                    "quarantined",
                    "catalog items",
                ],
                [
                    [
                        report.raw_rows,
                        report.accepted,
                        report.new_items,
                        report.updated_items,
                        report.unchanged_items,
                        report.quarantined_rows,
                        report.catalog_items,
                    ]
                ],
            )
        )
        if report.ignored_columns:
            console.print(
                "columns the catalog contract does not read, ignored (kept in the raw "
                f"delivery): {', '.join(report.ignored_columns)}"
            )
        if report.quarantined_rows:
            console.print(quarantine_table(report.reasons, report.schema_errors))
            console.print(f"kept in {report.quarantine_dir}")
        if report.rechecked:
            rows = sum(report.rechecked.values())
            console.print(
                f"{rows} event(s) quarantined as unknown_item before their item was delivered "
                f"are accepted now, in {len(report.rechecked)} batch(es): "
                + ", ".join(sorted(report.rechecked))
            )
    if report.quarantined_rows:
        raise typer.Exit(3)


# ---- train ----------------------------------------------------------------------------------


@app.command("train")
def train(
    window_days: Annotated[
        int | None, typer.Option(min=1, help="Train on the last N days (default: all).")
    ] = None,
    test_days: Annotated[
        int | None, typer.Option(min=1, help="Days held out for evaluation (default 15%).")
    ] = None,
    budget_s: Annotated[
        float,
        float_option(
            min=0,
            max=86_400,
            help="Seconds for the hyperparameter search (0: none; 1 day at most).",
        ),
    ] = 30.0,
    k: Annotated[int, typer.Option(min=1, max=1000, help="Cut-off of the metrics.")] = 10,
    tolerance: Annotated[
        float, float_option(min=0, max=1, help="Gate: allowed relative nDCG loss vs champion.")
    ] = 0.02,
) -> None:
    """Search, train ALS + item-kNN + ranker, evaluate on a temporal holdout, gate, register."""
    from recsys.gate import register_with_gate
    from recsys.registry import preflight
    from recsys.train import lift_text, pipeline_params, train_and_evaluate

    settings = _settings()
    preflight(settings)  # a registry it cannot use is said before any training
    with console.status(f"searching ({budget_s:g}s budget) and training"):
        result = train_and_evaluate(
            settings.lake,
            pipeline_params(settings),
            window_days=window_days,
            test_days=test_days,
            budget_s=budget_s,
            k=k,
            model_name=settings.model_name,
        )
    _print_training(result)
    with console.status("gating and registering in MLflow"):
        registered, decision = register_with_gate(
            settings, result, tolerance, record=True, actor="cli"
        )
    verdict = f"as {decision.alias!r}" if decision.passed else "REJECTED (no alias)"
    console.print(
        f"registered {registered.name} version {registered.version} {verdict}: "
        f"{decision.reason} (run {registered.run_id}, {result.fit_seconds:.1f}s)"
    )
    if "pipeline" in result.metrics:
        console.print(lift_text(result.metrics, k))


def _print_training(result) -> None:
    from recsys.train import TUNED, holdout_rows

    if result.trials:
        labels = {"ease": "EASE", "als": "ALS", "itemknn": "item-kNN", "lowpass": "low-pass"}
        bests = []
        for name in TUNED:
            best = max(result.trials, key=lambda t, n=name: t[f"{n}_ndcg"])
            bests.append(f"{labels[name]} {best[f'{name}_ndcg']:.4f} (trial {best['trial']})")
        console.print(
            f"search: {len(result.trials)} trial(s); best validation nDCG: {', '.join(bests)}"
        )
    console.print(table(*holdout_rows(result)))
    for note in result.notes:
        err_console.print(f"[bold yellow]{note}[/]")


@app.command("evaluate")
def evaluate(
    alias: Annotated[
        str, typer.Option(help="Registry alias, or version number (3 or v3).")
    ] = "champion",
    test_days: Annotated[
        int | None, typer.Option(min=1, help="Days held out (default 15% of the data).")
    ] = None,
    k: Annotated[int, typer.Option(min=1, max=1000, help="Cut-off of the metrics.")] = 10,
) -> None:
    """Evaluate a registered model on the newest holdout of the lake, beside the baselines.

    Its configuration and ranker are refit on the days before the holdout, so the score is
    never measured on data the model has seen."""
    from recsys.pipeline import fit_stage, rank_users
    from recsys.registry import load_release
    from recsys.train import evaluate_stage, holdout_days, holdout_scorer, holdout_start

    settings = _settings()
    frame = settings.lake.read_clean_interactions()
    _, test_days = holdout_days(frame, test_days, for_training=False)
    version, release = load_release(settings, alias)
    cut = holdout_start(frame, test_days)
    catalog = settings.lake.read_clean_catalog("items")
    item_ids = np.unique(np.concatenate([catalog["item_id"].to_numpy(), frame["item_id"]]))
    with console.status(f"evaluating version {version} on the last {test_days} day(s)"):
        stage = fit_stage(
            frame[frame["timestamp"] < cut], catalog, item_ids, release.params, as_of=cut
        )
        future = frame[frame["timestamp"] >= cut]
        metrics = evaluate_stage(stage, release.ranker, future, k, release.params.candidates)
        if "pipeline" not in metrics:  # no ranker: the release serves its candidate order
            rows, score = holdout_scorer(stage, future, k)
            pipeline = score(rank_users(stage, None, rows, k, release.params.candidates)[0])
            metrics = {"pipeline (candidate order: no ranker)": pipeline, **metrics}
    users = max(int(m.get("users", 0)) for m in metrics.values())
    if not users:
        raise RecsysError(
            f"the holdout from {cut.date()} has no user to measure v{version} on (no user of "
            f"its {test_days} day(s) has events before it and an item new to them there): "
            "widen --test-days, or evaluate once more days are ingested"
        )
    names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage", "novelty"]
    named = "" if alias.strip().lstrip("vV") == version else f" ({alias})"
    console.print(
        table(
            f"{settings.model_name} v{version}{named} at k={k}: holdout from {cut.date()}, "
            f"{users} user(s)",
            ["model", *names],
            [[m, *(v[n] for n in names)] for m, v in metrics.items()],
        )
    )


# ---- benchmarks -----------------------------------------------------------------------------


@bench_app.command("quality")
def benchmark_quality(
    train_file: Annotated[Path, typer.Option("--train", help="TRAIN interactions file.")],
    test_file: Annotated[Path, typer.Option("--test", help="TEST interactions file.")],
    k: Annotated[int, typer.Option(min=1, max=1000, help="Cut-off.")] = 10,
    recs_out: Annotated[
        Path | None, typer.Option("--recs-out", help="Write user<TAB>rank<TAB>item here.")
    ] = None,
    items_file: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Catalog: u.item, movies.dat/.csv, or parquet/CSV/TSV with item_id and "
            "category or genres (title, created_at optional).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every random choice.")] = 42,
    labels: Annotated[
        str,
        typer.Option(
            help="The ranker's labels: random (a random 20% of each user's TRAIN rows), time "
            "(TRAIN's last 20% of time), user-time (each user's latest 20% of TRAIN rows) or "
            "auto (the one that mimics how TEST was split off)."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Train the full pipeline on TRAIN only and score its top-k on TEST (seen items removed).

    Files: a GroupLens ratings file (u.data, ratings.dat, ratings.csv), parquet, or CSV/TSV
    with the contract columns."""
    from recsys.benchmark import benchmark_quality as run_quality
    from recsys.benchmark import to_json, with_seed
    from recsys.pipeline import PipelineParams

    with console.status("training on TRAIN, scoring on TEST"):
        report = run_quality(
            train_file,
            test_file,
            k=k,
            recs_out=recs_out,
            items_path=items_file,
            params=with_seed(PipelineParams(), seed),
            labels=labels,
        )
    if as_json:
        print(to_json(report))
    else:
        names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage"]
        console.print(
            table(
                f"Quality at k={k}: {report['metrics']['pipeline']['users']} test users "
                f"scored ({report['test_users_unknown_to_train']} unknown to TRAIN: not "
                f"scored), ranker labels {report['ranker_labels']}, trained in "
                f"{report['train_seconds']}s",
                ["model", *names],
                [[m, *(v[n] for n in names)] for m, v in report["metrics"].items()],
            )
        )
        best = report["best_single_source"]
        ours, theirs = report["metrics"]["pipeline"]["ndcg"], report["metrics"][best]["ndcg"]
        from recsys.train import lift_text

        console.print(
            f"{lift_text(report['metrics'], k)}; vs the best single source ({best}): "
            f"{ours - theirs:+.4f}"
        )
    for note in report["notes"]:
        err_console.print(f"[bold yellow]{note}[/]")


@bench_app.command("split")
def benchmark_split(
    data_file: Annotated[
        Path, typer.Option("--data", help="Interactions (as --train of quality).")
    ],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where train.tsv/test.tsv go.")],
    by: Annotated[
        str,
        typer.Option(
            help="item or user: each item's or each user's rows at random; time: the past "
            "(train) and the future (test) of one moment; user-time: each user's latest rows "
            "to test."
        ),
    ] = "item",
    train_share: Annotated[float, float_option(min=0.01, max=0.99)] = 0.75,
    seed: Annotated[int, typer.Option(min=0, help="Seed (random splits).")] = 42,
) -> None:
    """Split for `benchmark quality`: each item's (or user's) rows at random, or by time;
    75/25 by default."""
    from recsys import benchmark as bench

    if by not in {"item", "user", "time", "user-time"}:
        raise RecsysError(f"--by must be item, user, time or user-time, not {by!r}")
    frame = bench.read_interactions_file(data_file)
    if by == "time":
        train_part, test_part = bench.temporal_split(frame, train_share)
        how = "by time, test from {first:%Y-%m-%d %H:%M:%S}"  # once test is known not empty
    elif by == "user-time":
        train_part, test_part = bench.latest_per_user(frame, 1 - train_share)
        how = "each user's latest rows to test"
    else:
        train_part, test_part = bench.random_split(frame, f"{by}_id", train_share, seed)
        how = f"by {by}, seed {seed}"
    if frame.empty:
        raise RecsysError(f"nothing to split: {data_file} has no rows")
    if by in {"item", "user"} and frame[f"{by}_id"].value_counts().max() < 2:
        raise RecsysError(  # no share can work: a one-row group goes whole to one side
            f"every {by} of {data_file} has one row: a split by {by} needs {by}s with two "
            "rows or more (--by time splits one moment's past from its future)"
        )
    for name, part in (("train", train_part), ("test", test_part)):
        if part.empty:
            raise RecsysError(
                f"--train-share {train_share} --by {by} leaves {name} empty "
                f"({len(frame)} rows): nothing written; "
                f"{'lower' if name == 'test' else 'raise'} --train-share"
            )
    how = how.format(first=test_part["timestamp"].min())
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.write_split(train_part, out_dir / "train.tsv")
    bench.write_split(test_part, out_dir / "test.tsv")
    console.print(f"{len(train_part)} train and {len(test_part)} test rows ({how}) in {out_dir}")


@bench_app.command("train")
def benchmark_train(
    users: Annotated[int, typer.Option(min=10, help="Synthetic users.")] = 100_000,
    items: Annotated[int, typer.Option(min=10, help="Synthetic items.")] = 20_000,
    interactions: Annotated[int, typer.Option(min=100, help="Interactions.")] = 5_000_000,
    days: Annotated[int, typer.Option(min=2, help="Days.")] = 30,
    seed: Annotated[int, typer.Option(min=0, help="Seed.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Fit time and peak memory of ALS, item-kNN, features and the ranker on a synthetic world
    (generated in memory; nothing is written)."""
    from recsys.benchmark import benchmark_training, to_json, with_seed
    from recsys.contract import validate_interactions
    from recsys.pipeline import PipelineParams
    from recsys.synthetic import WorldConfig, generate_world

    with console.status(f"generating {users} x {items} x {interactions} world"):
        world = generate_world(
            WorldConfig(
                n_users=users, n_items=items, n_interactions=interactions, n_days=days, seed=seed
            )
        )
        frame = validate_interactions(world.interactions).clean
    with console.status("fitting"):
        report = benchmark_training(frame, world.items, with_seed(PipelineParams(), seed))
    if as_json:
        print(to_json(report))
        return
    rows = [
        [name, v["seconds"], v["peak_rss_mb"]] for name, v in report.items() if isinstance(v, dict)
    ]
    console.print(
        table(
            f"Training cost: {report['users']} users x {report['items']} items x "
            f"{report['interactions']} interactions ({report['ranker_rows']} ranker rows)",
            ["phase", "seconds", "peak RSS (MB)"],
            rows,
            numeric=2,
        )
    )


# ---- release management ---------------------------------------------------------------------


def _alias_change(move: dict) -> str:
    before, after = move["aliases_before"], move["aliases_after"]
    changed = [
        f"{a} {before.get(a) or 'none'} -> {after.get(a) or 'none'}"
        for a in ("champion", "challenger", "previous")
        if before.get(a) != after.get(a)
    ]
    return ", ".join(changed) or "no alias changed"


def _incident_row(incident: dict) -> list:
    keys = ("day", "layer", "check", "seen", "action", "verified")
    return [clip(incident.get(key), 60) for key in keys]


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    url: Annotated[str | None, url_option()] = None,
) -> None:
    """Aliases and their versions, rejected versions, what the service serves, the last
    promotion moves and incidents."""
    from recsys.promotion import release_status

    report = release_status(_settings(), url)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console.print(
        table(
            f"Aliases of {report['model']}",
            ["alias", "version", "holdout nDCG", "at k", "created (UTC)"],
            [
                [
                    r["alias"],
                    r["version"] or "-",
                    r["holdout_ndcg"] or "-",
                    r.get("holdout_k") or "-",
                    r["created"] or "-",
                ]
                for r in report["aliases"]
            ],
        )
    )
    if report["registry_note"]:
        console.print(report["registry_note"])
    for problem in report["problems"]:
        err_console.print(
            f"WARNING: {problem} (the next move repairs it)", markup=False, style="bold yellow"
        )
    if report["rejected"]:
        console.print(
            table(
                "Rejected versions (kept)",
                ["version", "stage", "reason"],
                [
                    [r["version"], r["stage"] or "-", clip(r["reason"], 100)]
                    for r in report["rejected"]
                ],
            )
        )
    service = report["service"]
    if service["reachable"]:
        served = ", ".join(f"{a} v{v}" for a, v in sorted(service["served"].items())) or "nothing"
        stalled = "challenger" in service["served"] and service["canary_share"] == 0
        console.print(
            f"service at {service['url']}: serves {served}; canary share "
            f"{service['canary_share']}"
            + (" (stopped: the challenger gets no traffic)" if stalled else "")
            + ("" if service.get("ready") else " (not ready)")
        )
    else:
        console.print(f"service: served versions unknown ({service['note']})")
    console.print(
        table(
            "Last promotion moves",
            ["at (UTC)", "action", "by", "aliases", "reason"],
            [
                [m["at"][:19], m["action"], m["actor"], _alias_change(m), clip(m["reason"])]
                for m in report["moves"]
            ],
        )
        if report["moves"]
        else "no promotion moves recorded yet"
    )
    console.print(
        table(
            "Last incidents",
            ["day", "layer", "check", "seen", "action", "verified"],
            [_incident_row(i) for i in report["incidents"]],
        )
        if report["incidents"]
        else "no incidents recorded"
    )


@app.command("rollback")
def rollback(
    to: Annotated[
        str | None, typer.Option("--to", help="Version to serve (default: the previous alias).")
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why (kept in the history and on the rejected version).")
    ] = "manual rollback from the command line",
    url: Annotated[str | None, url_option()] = None,
) -> None:
    """Point champion back at the previous good version (or --to VERSION), tag the replaced
    one rejected, and make the running service reload."""
    from recsys.promotion import rollback_champion

    settings = _settings()
    move = rollback_champion(
        settings, reason, {"requested_from": "cli", "to_version": to}, to_version=to, actor="cli"
    )
    before, after = move.aliases_before, move.aliases_after
    console.print(
        f"champion v{before['champion']} -> v{after['champion']} (v{before['champion']} tagged "
        f"rejected); previous {before['previous'] or '-'} -> {after['previous'] or '-'}"
    )
    _tell_service(settings, url, after)


@app.command("reject")
def reject(
    reason: Annotated[
        str, typer.Option(help="Why (kept in the history and on the rejected version).")
    ] = "canary stopped from the command line",
    url: Annotated[str | None, url_option()] = None,
) -> None:
    """Stop the running canary: tag the challenger rejected (it is never served again), remove
    its alias, and make the running service reload (all traffic to the champion)."""
    from recsys.promotion import reject_challenger

    settings = _settings()
    move = reject_challenger(settings, reason, {"requested_from": "cli"}, actor="cli")
    console.print(
        f"challenger v{move.aliases_before['challenger']} tagged rejected; champion "
        f"v{move.aliases_after['champion'] or '-'} serves all traffic"
    )
    _tell_service(settings, url, move.aliases_after)


def _tell_service(settings, url: str | None, after: dict[str, str | None]) -> None:
    """Make the running service follow the registry's aliases ``after`` a manual move; a
    service that cannot be told follows at its next registry poll (said, not raised)."""
    from recsys.admin import ServiceAdmin

    admin = ServiceAdmin.from_settings(settings, url)
    admin.timeout = 60.0  # a reload loads a whole release
    if not admin.token:
        console.print(
            "service not told (no RECSYS_ADMIN_TOKEN): it follows at its next registry poll"
        )
        return
    try:
        if after.get("challenger") is None:
            admin.set_canary(0.0)
        answer = admin.reload()
    except RecsysError as exc:
        console.print(f"service not reloaded ({exc}): it follows at its next registry poll")
        return
    served = answer.get("served") or {}
    problems = answer.get("errors") or {}
    wrong = served.get("champion") != after["champion"] or served.get("challenger") != after.get(
        "challenger"
    )
    console.print(
        f"service at {admin.url} reloaded: serves champion v{served.get('champion') or '-'}"
        + (f" (reload problems: {problems or served})" if problems or wrong else "")
    )


# ---- serve and demo -------------------------------------------------------------------------


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port.")] = None,
) -> None:
    """Run the BentoML service in the foreground (Ctrl-C stops it)."""
    from recsys.server import PROJECT_ROOT, bentoml_command, service_env

    settings = _settings()
    host, port = host or settings.serve_host, port or settings.serve_port
    _check_bindable(host, port)
    command = bentoml_command(host, port)
    os.chdir(PROJECT_ROOT)
    os.execve(command[0], command, service_env(settings))


def _check_bindable(host: str, port: int) -> None:
    """One line, not BentoML's 50-line traceback, when ``host:port`` cannot be bound (in use,
    not an address of this machine, a privileged port)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind((host, port))
    except OSError as exc:
        raise RecsysError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "(RECSYS_SERVE_PORT) or --host, or stop what holds it"
        ) from None


serve_bench_app = typer.Typer(help="Load benchmarks of the running system.", no_args_is_help=True)
app.add_typer(serve_bench_app, name="bench")


@serve_bench_app.command("serve")
def bench_serve(
    duration: Annotated[float, float_option(min=1, help="Seconds of load per endpoint.")] = 20.0,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Concurrent clients.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    dataset: Annotated[
        str | None,
        typer.Option(help="Train a model on synthetic|movielens in a temporary data dir."),
    ] = None,
    data_path: Annotated[
        Path | None,
        typer.Option("--data-path", help="MovieLens folder (ml-100k, ml-1m or ml-latest layout)."),
    ] = None,
    items: Annotated[int, typer.Option(min=2, help="Synthetic world: items.")] = 500,
    users: Annotated[int, typer.Option(min=2, help="Synthetic world: users.")] = 2000,
    days: Annotated[int, typer.Option(min=3, help="Synthetic world: days.")] = 14,
    interactions: Annotated[int, typer.Option(min=1, help="Synthetic world: events.")] = 60_000,
    warmup: Annotated[int, typer.Option(min=0, help="Requests before measuring.")] = 200,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the world and the request mix.")] = 42,
) -> None:
    """Drive the real service with locust (known, unknown and repeat users) beside a trivial
    BentoML endpoint; print latency, throughput, errors and the in-process stage split.

    Serves the champion of RECSYS_DATA_DIR, or (with --dataset, or when there is none) trains
    one in a temporary data dir first."""
    from recsys.loadtest import WorldSpec, has_champion, report_tables
    from recsys.loadtest import bench_serve as run_bench

    settings = _settings()
    world = None
    if dataset is not None or data_path is not None or not has_champion(settings):
        world = WorldSpec(
            dataset=dataset or ("movielens" if data_path else "synthetic"),
            data_path=data_path,
            users=users,
            items=items,
            days=days,
            interactions=interactions,
            seed=seed,
        )
    report = run_bench(
        settings,
        duration=duration,
        concurrency=concurrency,
        world=world,
        warmup=warmup,
        seed=seed,
        log=lambda line: err_console.print(line, markup=False),
    )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for part in report_tables(report):
        console.print(part)


app.command("demo")(flows_cli.demo_command)
app.command("ingest")(flows_cli.ingest_command)
app.command("doctor")(flows_cli.doctor_command)
app.add_typer(flows_cli.flows_app, name="flows")


# ---- entry point ----------------------------------------------------------------------------


def _registry_refusal(exc: BaseException) -> RecsysError | None:
    if "mlflow" not in sys.modules:
        return None
    import mlflow

    from recsys.registry import registry_refusal

    return registry_refusal(exc, mlflow.get_tracking_uri())


_FILESYSTEM_REFUSALS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EDQUOT,
}


def _filesystem_refusal(exc: BaseException) -> RecsysError | None:
    """The one-line error for a path the machine refuses (a data dir that is a file, read-only
    or full), which is the setup's problem, not a bug of ours."""
    if not isinstance(exc, OSError):
        return None
    where = os.environ.get("RECSYS_DATA_DIR") or "./.recsys"
    if exc.errno == errno.ENOENT and exc.filename is not None:
        # a folder that cannot be created where it was asked (/proc/recsys): ours to say
        data_dir = Path(where).expanduser().absolute()
        if Path(os.fsdecode(exc.filename)).absolute() in (data_dir, *data_dir.parents):
            return RecsysError(
                f"cannot create {exc.filename}: {exc.strerror}; check RECSYS_DATA_DIR ({where}): "
                "it must be a folder this user can write, on a disk with space left"
            )
    if exc.errno not in _FILESYSTEM_REFUSALS:
        return None
    problem = exc.strerror
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and exc.filename:
        problem = "a file stands where a folder must be"
    return RecsysError(
        f"cannot use {exc.filename}: {problem}; check RECSYS_DATA_DIR ({where}): it must be "
        "a folder this user can write, on a disk with space left"
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turn user errors into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="recsys", standalone_mode=False)
    except cli_errors.NoArgsIsHelpError as exc:
        err_console.print(exc.format_message(), markup=False)
        sys.exit(2)
    except cli_errors.UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx else ""
        err_console.print(f"recsys: error: {exc.format_message()}{hint}", markup=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("recsys: interrupted", markup=False)
        sys.exit(130)
    except RecsysError as exc:
        err_console.print(f"recsys: error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except cli_errors.ClickException as exc:
        err_console.print(f"recsys: error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("RECSYS_DEBUG"):
            raise
        refused = _registry_refusal(exc) or _filesystem_refusal(exc)
        if refused is not None:  # a registry call no lookup of ours wraps: still one line
            err_console.print(f"recsys: error: {refused}", markup=False, soft_wrap=True)
            sys.exit(refused.exit_code)
        err_console.print(
            f"recsys: internal error: {type(exc).__name__}: {exc} "
            "(set RECSYS_DEBUG=1 for the traceback)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
