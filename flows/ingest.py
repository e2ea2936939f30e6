"""The ingest flow: land a batch, contract-check it into the clean zone and the quarantine, and
flag a row-count anomaly against the trailing days.

    recsys ingest PATH [--json]          one delivered file through this flow
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.runtime import artifact_key, transient
from recsys.config import Settings, get_settings
from recsys.ingest import (
    IngestReport,
    RowCountCheck,
    ingest_batch,
    ingest_catalog,
    known_items,
    land_file,
    row_count_check,
)


@task(name="land delivered file", retries=2, retry_delay_seconds=1, retry_condition_fn=transient)
def land_delivered_file(settings: Settings, path: str, batch: str | None) -> tuple[str, bool]:
    return land_file(settings.lake, Path(path), batch)


@task(name="contract check", retries=2, retry_delay_seconds=1, retry_condition_fn=transient)
def contract_check(settings: Settings, batch: str) -> IngestReport:
    lake = settings.lake
    if not lake.clean_catalog_path("items").exists():
        ingest_catalog(lake)
    return ingest_batch(lake, batch, known_items=known_items(lake))


@task(name="row-count check")
def row_count(settings: Settings, batch: str) -> RowCountCheck:
    return row_count_check(settings.lake, batch)


@flow(name="ingest", validate_parameters=False)
def ingest_flow(
    settings: Settings | None = None,
    batches: list[str] | None = None,
    path: str | None = None,
    batch_name: str | None = None,
) -> list[dict[str, Any]]:
    """Ingest ``batches`` already in the raw zone, or the file at ``path`` (landed first).

    Returns one record per batch: the ingest report, the row-count check and, for the file at
    ``path``, whether it was the same as the batch's newest delivery (``already_delivered``:
    nothing landed, its rows were checked again). Idempotent: a re-ingest of a window gives the
    same clean rows and quarantine.
    """
    settings = settings or get_settings()
    names = list(batches or [])
    again = set()
    if path is not None:
        name, landed = land_delivered_file(settings, path, batch_name)
        names.append(name)
        if not landed:
            again.add(name)
    results = []
    for batch in names:
        report = contract_check(settings, batch)
        rows = row_count(settings, batch)
        results.append(
            {
                "report": report.as_dict(),
                "row_count": rows.as_dict(),
                "already_delivered": batch in again,
            }
        )
    create_table_artifact(
        key=artifact_key("ingest", names[-1] if names else "none"),
        table=[
            {
                "batch": r["report"]["batch"],
                "delivery": r["report"]["delivery"],
                "raw": r["report"]["raw_rows"],
                "clean": r["report"]["clean_rows"],
                "quarantined": r["report"]["quarantined_rows"],
                "reasons": ", ".join(f"{k}={v}" for k, v in r["report"]["reasons"].items()),
                "rechecked": ", ".join(r["report"]["rechecked"]),
                "row_count_anomaly": r["row_count"]["anomalous"],
                "ratio_to_trailing": r["row_count"]["ratio"],
            }
            for r in results
        ],
        description="Contract check per batch: clean and quarantined rows, reasons, row count; "
        "rechecked: batches whose duplicates of it were checked again (the batch lost rows).",
    )
    return results
