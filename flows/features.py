"""The features flow: build the offline snapshots of new days, materialize them online, check
online/offline skew, and backfill when the check fails."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.runtime import artifact_key, transient
from recsys.config import Settings, get_settings


@task(name="build and materialize", retries=2, retry_delay_seconds=1, retry_condition_fn=transient)
def build_and_materialize(settings: Settings) -> dict[str, Any]:
    from features.store import materialize

    return materialize(settings)


@task(name="skew check")
def skew_check(settings: Settings, sample_size: int) -> dict[str, Any]:
    from features.skew import skew_report

    report = skew_report(settings, sample_size=sample_size)
    return {"ok": report.ok, "failing_views": report.failing_views()}


@task(name="backfill", retries=1, retry_delay_seconds=1, retry_condition_fn=transient)
def backfill_views(settings: Settings, sample_size: int) -> dict[str, Any]:
    from features.skew import backfill

    result = backfill(settings, sample_size=sample_size)
    return {"ok": result.ok, "views": result.views, "start": result.start, "end": result.end}


@flow(name="features", validate_parameters=False)
def features_flow(
    settings: Settings | None = None, sample_size: int = 200, check_skew: bool = True
) -> dict[str, Any]:
    """Bring the online store up to date and verify it; returns what was done.

    ``check_skew=False`` leaves the skew check to a guardian cycle that runs right after (its
    ``feature_skew`` check compares the same sample and backfills on failure)."""
    settings = settings or get_settings()
    done = build_and_materialize(settings)
    if check_skew:
        skew = skew_check(settings, sample_size)
    else:
        skew = {"ok": True, "failing_views": [], "skipped": "left to the guardian cycle"}
    repaired = None if skew["ok"] else backfill_views(settings, sample_size)
    views = done["views"]
    lines = [
        "# Features",
        "",
        "| view | from | to | entities |",
        "|---|---|---|---|",
        *(f"| {v} | {w['start']} | {w['end']} | {w['entities']} |" for v, w in views.items()),
        "",
        "Skew check: "
        + (
            skew.get("skipped")
            or ("ok" if skew["ok"] else "failing: " + ", ".join(skew["failing_views"]))
        ),
    ]
    if repaired is not None:
        lines.append(f"Backfill of {repaired['views']}: {'ok' if repaired['ok'] else 'FAILED'}")
    create_markdown_artifact(
        key=artifact_key("features", max(views.values(), key=lambda w: w["end"])["end"][:10]),
        markdown="\n".join(lines),
        description="Materialization, skew check and backfill decision.",
    )
    return {"views": views, "skew": skew, "backfill": repaired}
