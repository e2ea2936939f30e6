"""CLI commands that run Prefect flows: ``recsys ingest``, ``recsys demo``, ``recsys flows serve``.

Prefect is imported inside the commands (after :func:`flows.runtime.configure_prefect`), never at
module import, so the rest of the CLI starts fast and does not need a Prefect API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recsys.config import get_settings
from recsys.console import (
    clip,
    console,
    float_option,
    ingest_table,
    quarantine_table,
    table,
    url_option,
)
from recsys.errors import RecsysError

flows_app = typer.Typer(help="Prefect deployments of the flows.", no_args_is_help=True)

EXIT_QUARANTINED = 3
EXIT_ROW_COUNT = 4


def _prefect(quiet: bool = True):
    from flows.runtime import check_prefect_api, configure_prefect

    settings = get_settings()
    configure_prefect(settings, quiet=quiet)
    if settings.prefect_api_url:  # a server: said in one line when it cannot be used
        check_prefect_api(settings.prefect_api_url)
    return settings


def ingest_command(
    path: Annotated[
        Path, typer.Argument(help="A batch file: parquet, CSV/TSV (or .csv.gz), or u.data.")
    ],
    batch: Annotated[
        str | None,
        typer.Option(
            help="The batch's delivery day, YYYY-MM-DD (default: the file name without suffix)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """One delivered batch file through the ingest flow (contract check, quarantine).

    Exit 0: every row accepted; 3: some rows quarantined (kept with their reasons);
    4: every row accepted, but the batch has no rows or far fewer or more than the trailing
    batches (row-count anomaly); 2: the file cannot be read at all (kept in the quarantine).
    """
    from recsys.ingest import IngestReport, delivery_batch

    delivery_batch(path, batch)  # a bad path or name is said before any flow run
    settings = _prefect()
    from flows.ingest import ingest_flow
    from flows.runtime import user_errors_off_the_console

    user_errors_off_the_console()

    try:
        results = ingest_flow(settings, path=str(path), batch_name=batch)
    except RecsysError:
        raise
    except Exception as exc:  # a flow failure wraps the task's error: show the cause
        cause = exc.__cause__ or exc
        if isinstance(cause, RecsysError):
            raise cause from None
        raise
    result = results[-1]
    report = result["report"]
    if as_json:
        payload = {
            "batch": report["batch"],
            "delivery": report["delivery"],
            "raw_rows": report["raw_rows"],
            "accepted": report["clean_rows"],
            "quarantined": report["quarantined_rows"],
            "reasons": report["reasons"],
            "schema_errors": report["schema_errors"],
            "row_count": result["row_count"],
            "quarantine_dir": str(settings.lake.quarantine_dir(report["delivery"])),
            "already_delivered": result["already_delivered"],
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        console.print(ingest_table([IngestReport(**report)]))
        if result["already_delivered"]:
            console.print(
                f"the same rows as the newest delivery of batch {report['batch']} "
                f"({report['delivery']}): nothing new landed; its rows were checked again"
            )
        elif report["delivery"] != report["batch"]:
            console.print(
                f"[bold yellow]redelivery[/]: batch {report['batch']} was already delivered; "
                f"this file landed beside it as {report['delivery']} and its rows now replace "
                "the batch's clean rows (earlier deliveries stay in the raw zone)"
            )
        if report["quarantined_rows"]:
            console.print(quarantine_table(report["reasons"], report["schema_errors"]))
            console.print(f"kept in {settings.lake.quarantine_dir(report['delivery'])}")
        rows = result["row_count"]
        if rows["anomalous"]:
            baseline = rows["baseline_rows"]
            against = "" if baseline is None else f" vs a trailing median of {baseline:.0f}"
            console.print(
                f"[bold yellow]row-count anomaly[/]: {rows['clean_rows']} clean rows"
                f"{against} ({rows['rule']})"
            )
    if report["quarantined_rows"]:
        raise typer.Exit(EXIT_QUARANTINED)
    if result["row_count"]["anomalous"]:
        raise typer.Exit(EXIT_ROW_COUNT)


def demo_command(
    days: Annotated[
        int | None, typer.Option(min=2, help="Simulated days (default: what the faults need).")
    ] = None,
    faults: Annotated[
        str, typer.Option(help="Comma-separated faults to inject, 'all' or 'none'.")
    ] = "all",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the world and the traffic.")] = 42,
    dataset: Annotated[
        str,
        typer.Option(
            help="World: synthetic, or movielens (semi-synthetic: the real MovieLens-100K users "
            "and movies, clicks from tastes fit on their ratings)."
        ),
    ] = "synthetic",
    data_path: Annotated[
        Path | None,
        typer.Option(
            "--data-path",
            help="--dataset movielens: a MovieLens folder (ml-100k, ml-1m, ml-latest layouts); "
            "default: $RECSYS_MOVIELENS_PATH.",
        ),
    ] = None,
    users: Annotated[int, typer.Option(min=50, help="Synthetic users.")] = 1200,
    items: Annotated[int, typer.Option(min=50, help="Synthetic items.")] = 300,
    requests_per_day: Annotated[
        int, typer.Option(min=100, max=100_000, help="HTTP requests per simulated day.")
    ] = 800,
) -> None:
    """The main job: simulated days of a live recommender, faults injected, healed on its own.

    Exit 0 only when every injected fault was detected and healed.
    """
    from recsys.faults import parse_faults

    data_path = _demo_data_path(dataset, data_path)
    fault_names = parse_faults(faults)
    settings = _prefect()
    from flows.demo import DemoOptions, demo_flow, print_summary, schedule

    schedule(fault_names, days)  # a --days too short for the faults is a user error, said now

    if settings.lake.raw_batches():
        raise RecsysError(
            f"{settings.data_dir} already holds data; the demo needs a fresh RECSYS_DATA_DIR "
            "(or `make clean`)"
        )
    opts = DemoOptions(
        seed=seed,
        users=users,
        items=items,
        days=days,
        faults=fault_names,
        requests_per_day=requests_per_day,
        dataset=dataset,
        data_path=data_path,
    )
    outcome = demo_flow(settings, opts)
    print_summary(outcome)
    if not outcome.ok:
        console.print("[bold red]demo FAILED[/]: not every injected fault was detected and healed")
        raise typer.Exit(1)
    console.print("[bold green]demo passed[/]: every injected fault was detected and healed")


def _demo_data_path(dataset: str, data_path: Path | None) -> Path | None:
    """The demo's MovieLens folder (``--data-path``, else ``$RECSYS_MOVIELENS_PATH``), checked
    before any work starts; ``None`` for the synthetic world.

    Raises:
        RecsysError: an unknown data set, no folder for movielens, or one without the files.
    """
    import os

    if dataset not in ("synthetic", "movielens"):
        raise RecsysError(f"--dataset {dataset!r} is not a demo world: use synthetic or movielens")
    if dataset == "synthetic":
        if data_path is not None:
            raise RecsysError(
                "--data-path is for --dataset movielens; the synthetic world has none"
            )
        return None
    source = "--data-path"
    if data_path is None:
        source = "RECSYS_MOVIELENS_PATH"
        env = os.environ.get(source, "").strip()
        if not env:
            raise RecsysError(
                "--dataset movielens needs a MovieLens folder: pass --data-path DIR "
                "(or set RECSYS_MOVIELENS_PATH)"
            )
        data_path = Path(env)
    folder = data_path.expanduser()
    if not folder.is_dir():
        raise RecsysError(f"{source} {folder} is not a folder (a MovieLens folder)")
    from recsys.movielens import LAYOUTS, missing_files

    missing = missing_files(folder)
    if missing:
        raise RecsysError(
            f"{source} {folder} lacks {', '.join(missing)}: it must be a MovieLens folder in a "
            f"GroupLens layout: {LAYOUTS}"
        )
    return folder.resolve()


def doctor_command(
    fix: Annotated[bool, typer.Option("--fix", help="Apply each failing check's fix.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    url: Annotated[str | None, url_option()] = None,
    window_minutes: Annotated[
        float, float_option(min=1, help="Traffic judged: the last N minutes of the logs.")
    ] = 120.0,
    baseline_hours: Annotated[
        float,
        float_option(min=0.1, help="Baseline traffic: the N hours before that window."),
    ] = 24.0,
) -> None:
    """Run every guardian check once, in the triage order, against the running system.

    Prints layer, check, status, evidence and the fix each failing check asks for; with --fix,
    applies the fixes (writing incidents) and shows what each did. The service is checked when
    RECSYS_ADMIN_TOKEN is set. Exit 0: healthy (with --fix: every failing check fixed and
    verified); 1: not (a check whose only remedy is an alert to a person counts as not fixed).
    """
    settings = _prefect()
    from flows.guardian import heal_flow, live_cycle, monitor_flow

    cycle = live_cycle(
        settings, window_s=window_minutes * 60, baseline_s=baseline_hours * 3600, url=url
    )
    findings = monitor_flow(cycle)
    incidents = heal_flow(cycle, findings) if fix else []
    outcome = {i.check: i for i in incidents}
    # an "alert" outcome heals nothing: its "verified" says only that the page was delivered, so
    # a check that can only page a person keeps the doctor unhealthy even with --fix
    paged = [i for i in incidents if i.action == "alert"]
    healed = [i for i in incidents if i.action != "alert" and i.verified]
    healthy = all(f.ok for f in findings) if not fix else len(healed) == len(incidents)
    if as_json:
        payload = {
            "healthy": healthy,
            "findings": [f.as_dict() for f in findings],
            "fixes": [
                {"check": i.check, "action": i.action, "verified": i.verified} for i in incidents
            ],
            "needs_a_person": [i.check for i in paged],
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        rows = [doctor_row(f, outcome.get(f.check)) for f in findings]
        console.print(
            table("recsys doctor", ["layer", "check", "status", "evidence", "action"], rows)
        )
        failing = sum(not f.ok for f in findings)
        skipped = [f.check for f in findings if not f.checked]
        console.print(
            ("healthy" if healthy and not failing else f"{failing} check(s) failed")
            + ("; fixed and verified" if failing and healthy else "")
            + (f"; {len(healed)} fixed and verified" if healed and not healthy else "")
            + (
                f"; {len(paged)} need a person (alerted: {', '.join(i.check for i in paged)})"
                if paged
                else ""
            )
            + (
                f"; {len(skipped)} not checked ({', '.join(skipped)}): the service is checked "
                "only with RECSYS_ADMIN_TOKEN set"
                if skipped
                else ""
            )
        )
    if not healthy:
        raise typer.Exit(1)


def doctor_row(finding, done) -> list[str]:
    """One row of the doctor's table: layer, check, status, evidence (whole up to 240
    characters: it ends in the advice) and what was done about it (``done``: the incident of
    ``--fix``, or None)."""
    if finding.ok:
        action = "-"
    elif done is None:
        action = f"{finding.fix} (not applied: --fix)"
    elif done.action == "alert":
        action = "alert: " + ("delivered, needs a person" if done.verified else "NOT delivered")
    else:
        action = f"{done.action}: {'verified' if done.verified else 'NOT verified'}"
    status = "FAIL" if not finding.ok else "ok" if finding.checked else "skipped"
    return [finding.layer, finding.check, status, clip(finding.seen, 240), action]


@flows_app.command("serve")
def serve_flows(
    guardian_minutes: Annotated[
        int, typer.Option(min=1, help="Run the guardian every N minutes.")
    ] = 15,
    train_cron: Annotated[str, typer.Option(help="Cron schedule of the train flow.")] = "0 3 * * *",
    features_cron: Annotated[
        str, typer.Option(help="Cron schedule of the features flow.")
    ] = "30 * * * *",
) -> None:
    """Register the flows as Prefect deployments with schedules and serve them (blocks).

    Needs a Prefect server (RECSYS_PREFECT_API_URL, or PREFECT_API_URL); the local ephemeral API
    cannot run schedules.
    """
    import os

    settings = _prefect(quiet=False)
    if not (settings.prefect_api_url or os.environ.get("PREFECT_API_URL")):
        raise RecsysError(
            "`recsys flows serve` needs a Prefect server: start one (`prefect server start`) and "
            "set RECSYS_PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    from prefect import serve

    from flows.deployments import deployments

    serve(*deployments(guardian_minutes, train_cron, features_cron))
