"""``recsys features``: the feature store from the command line.

    recsys features apply                    register entities, views, the feature service
    recsys features materialize [--start --end]
                                             offline snapshots (new/changed days) + online copy
    recsys features status [--json]          what is built, applied and materialized
    recsys features skew [--sample N --json] online vs offline point in time (exit 3 on skew)
    recsys features backfill [--start --end --view V]
                                             re-materialize the affected window, check again
    recsys features bench [--reads N --candidates N --json]
                                             hot-path online read latency

Feast is imported inside the commands, so ``recsys --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from recsys.config import get_settings
from recsys.console import console, err_console, float_option, table

features_app = typer.Typer(
    help="Feast feature store: apply, materialize, status, skew check, backfill, bench.",
    no_args_is_help=True,
)

SKEW_EXIT_CODE = 3


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}"


@features_app.command("apply")
def apply_command() -> None:
    """Register the feature repository (entities, sources, views, feature service), with
    Feast's run-time type checks of the definitions on (see features/__init__.py)."""
    from features import check_feast_types

    check_feast_types()
    from features.store import apply_repo

    with console.status("applying the feature repository"):
        result = apply_repo(get_settings())
    console.print(
        table(
            "Feature repository applied",
            ["", "value"],
            [
                ["project", result["project"]],
                ["registry", result["registry"]],
                ["online store", result["online_store"]],
                ["objects", ", ".join(result["objects"])],
                ["feature service", result["feature_service"]],
            ],
        )
    )


@features_app.command("materialize")
def materialize_command(
    start: Annotated[
        str | None, typer.Option(help="Oldest event time to copy (default: where it stopped).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Newest event time to copy (default: newest snapshot).")
    ] = None,
) -> None:
    """Compute new or changed offline days, apply, and copy them to the online store."""
    from features.store import materialize

    with console.status("building offline features and materializing"):
        result = materialize(get_settings(), start=start, end=end)
    _say_rebuilt(result["rebuilt"])
    offline = result["offline"]
    console.print(
        table(
            "Offline features",
            ["days", "computed", "written", "unchanged", "newest snapshot", "vocabulary"],
            [
                [
                    len(offline["days"]),
                    len(offline["computed"]),
                    len(offline["written"]),
                    len(offline["unchanged"]),
                    offline["newest"],
                    len(offline["vocabulary"]),
                ]
            ],
        )
    )
    console.print(
        table(
            "Materialized",
            ["view", "from", "to", "entities"],
            [[v, w["start"], w["end"], w["entities"]] for v, w in result["views"].items()],
        )
    )


def _say_rebuilt(rebuilt: dict[str, Any] | None) -> None:
    """One line when the online store could not be read and was made anew."""
    if rebuilt:
        kept = (
            f"; the unreadable file is kept at {rebuilt['moved_to']}" if rebuilt["moved_to"] else ""
        )
        err_console.print(
            f"the online store could not be read ({rebuilt['problem']}): rebuilt from the "
            f"offline store{kept}",
            markup=False,
        )


@features_app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show what is built, applied and materialized (reads no online values)."""
    from features.store import feature_status

    status = feature_status(get_settings())
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        return
    offline = status["offline"]
    console.print(
        table(
            "Feature store",
            ["", "value"],
            [
                ["profile / project", f"{status['profile']} / {status['project']}"],
                ["online store", status["online_store"]],
                ["registry", f"{status['registry']} (applied: {status['applied']})"],
                [
                    "feature service",
                    f"{status['feature_service']['name']} "
                    f"(version {status['feature_service']['version']})",
                ],
                ["offline days", f"{offline['days']} ({offline['first']} .. {offline['newest']})"],
                ["days to (re)compute", offline["pending_days"]],
                ["newest snapshot rows", offline["rows"]],
            ],
        )
    )
    if status["views"]:
        console.print(
            table(
                "Views",
                ["view", "TTL (h)", "materialized until", "behind offline (h)"],
                [
                    [v, _hours(s["ttl_seconds"]), s["materialized_until"], _hours(s["lag_seconds"])]
                    for v, s in status["views"].items()
                ],
            )
        )


def print_skew(report: Any, title: str = "Skew check") -> None:
    """Print a SkewReport: per view, the features that are off, and the worst examples."""
    console.print(
        table(
            f"{title} at {report.as_of} ({report.online_store}, tolerance {report.tolerance:g})",
            [
                "view",
                "ok",
                "sampled",
                "missing",
                "older",
                "values off",
                "type",
                "ahead",
                "newest online",
                "age/TTL (h)",
                "behind (h)",
            ],
            [
                [
                    name,
                    "yes" if v.ok else "NO",
                    v.sampled,
                    v.missing_online,
                    v.stale_entities,
                    v.mismatched_entities,
                    v.type_errors,
                    v.ahead_entities,
                    _when(v.freshness.newest_online),
                    f"{_hours(v.freshness.age_seconds)}/{_hours(v.freshness.ttl_seconds)}",
                    _hours(v.freshness.lag_seconds),
                ]
                for name, v in report.views.items()
            ],
        )
    )
    bad = [
        [name, f.feature, f.compared, f.missing, f.type_errors, f.mismatched, f.max_abs_diff]
        for name, v in report.views.items()
        for f in v.features
        if f.missing or f.type_errors or f.mismatched
    ]
    if bad:
        console.print(
            table(
                "Features off",
                ["view", "feature", "compared", "missing", "type", "values off", "max |diff|"],
                bad,
            )
        )
    worst = [
        [
            name,
            w["entity"],
            w["feature"],
            w["kind"],
            _short(w["online"]),
            _short(w["offline"]),
            _when(w["online_time"]),
            _when(w["offline_time"]),
        ]
        for name, v in report.views.items()
        for w in v.worst
    ]
    if worst:
        console.print(
            table(
                "Worst examples",
                ["view", "entity", "feature", "kind", "online", "offline", "online t", "offline t"],
                worst,
            )
        )


def _when(stamp: str | None) -> str:
    return "-" if not stamp else stamp[:16].replace("T", " ")


def _short(value: Any) -> str:
    if isinstance(value, list):
        head = ", ".join(f"{v:.3g}" for v in value[:4])
        return f"[{head}{', ...' if len(value) > 4 else ''}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@features_app.command("skew")
def skew_command(
    sample: Annotated[int, typer.Option("--sample", min=1, help="Entities per view.")] = 500,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Point in time (default: newest snapshot).")
    ] = None,
    tolerance: Annotated[float, float_option(min=0.0, help="Relative tolerance.")] = 1e-5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Compare online values with offline point-in-time values; exit 3 if they differ."""
    from features.skew import skew_report

    with console.status("checking online against offline"):
        report = skew_report(get_settings(), sample_size=sample, as_of=as_of, tolerance=tolerance)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print_skew(report)
        for name, view in report.views.items():
            if view.problems:
                err_console.print(f"[bold yellow]{name}: {'; '.join(view.problems)}[/]")
    if not report.ok:
        raise typer.Exit(SKEW_EXIT_CODE)


@features_app.command("backfill")
def backfill_command(
    start: Annotated[
        str | None, typer.Option(help="Oldest event time to re-read (default: from the check).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Newest event time (default: newest snapshot).")
    ] = None,
    view: Annotated[
        list[str] | None, typer.Option("--view", help="View to repair (default: failing ones).")
    ] = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="Entities per view.")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Re-materialize the affected window of the affected views, then check again."""
    from features.skew import backfill

    with console.status("backfilling the online store"):
        result = backfill(get_settings(), start=start, end=end, views=view, sample_size=sample)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        _say_rebuilt(result.rebuilt)
        print_skew(result.before, "Before")
        if result.rematerialized:
            console.print(
                f"re-materialized {', '.join(result.views)} from {result.start} to {result.end}"
            )
            print_skew(result.after, "After")
        else:
            console.print("nothing to backfill: online matches offline")
    if not result.ok:
        raise typer.Exit(SKEW_EXIT_CODE)


@features_app.command("bench")
def bench_command(
    reads: Annotated[int, typer.Option(min=1, help="Timed requests per mode.")] = 500,
    candidates: Annotated[int, typer.Option(min=1, help="Items per request.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure online read latency: one user + a candidate set, per item mode."""
    from features.bench import bench_online_reads

    with console.status("measuring online reads"):
        result = bench_online_reads(get_settings(), reads=reads, candidates=candidates)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"{result['reads']} requests of 1 user + {result['candidates']} candidate items "
        f"(catalog {result['items']} items, {result['users']} users), {result['online_store']}"
    )
    rows = [
        [mode, part, s["p50_ms"], s["p95_ms"], s["p99_ms"]]
        for mode, stats in result["modes"].items()
        for part, s in stats.items()
        if part != "setup_s"
    ]
    console.print(
        table(
            "Online read latency",
            ["item mode", "part", "p50 ms", "p95 ms", "p99 ms"],
            rows,
            numeric=3,
        )
    )
    for mode, stats in result["modes"].items():
        console.print(f"{mode}: reader setup {stats['setup_s']:.2f}s")
