"""The monitor, heal and deploy flows: the guardian's checks in the triage order, their fixes,
and an incident for every failing check.

``monitor_flow`` only looks (every check of ``recsys.guardian.CHECKS``, in order) and returns
the findings; ``heal_flow`` runs the fix each failing finding names, verifies, and appends an
incident (what was seen, the evidence, the action, whether verification passed) to the incident
log; ``guardian_flow`` is one cycle of both. ``deploy_flow`` is the canary step alone: judge the
running canary and promote or roll back.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runtime import artifact_key
from recsys.guardian import CHECKS, Cycle, Finding, FixOutcome, apply_fix, run_check


def _check_task(name: str):
    return task(name=f"check {name}")(lambda cycle: run_check(cycle, name))


_CHECK_TASKS = {name: _check_task(name) for name, _ in CHECKS}


@task(name="apply fix")
def fix_task(cycle: Cycle, finding: Finding) -> FixOutcome:
    return apply_fix(cycle, finding)


@task(name="model reports")
def model_reports_task(cycle: Cycle) -> Any:
    from monitoring.quality import cycle_reports

    return cycle_reports(cycle)


@flow(name="monitor", validate_parameters=False)
def monitor_flow(cycle: Cycle, checks: list[str] | None = None) -> list[Finding]:
    """Run the checks (default: all) in the triage order; returns every finding. The full
    monitor (``checks`` None) also writes the day's prediction drift and ranking quality reports
    (``monitoring.quality.cycle_reports``)."""
    names = [n for n, _ in CHECKS if checks is None or n in checks]
    findings = []
    for name in names:
        finding = _CHECK_TASKS[name].with_options(name=f"check {name}")(cycle)
        findings.append(finding)
        # a stale status read must not hide what the next check sees
        cycle.cache.pop("status", None)
    if checks is None:  # the full monitor also writes the day's prediction and ranking reports
        model_reports_task(cycle)
    create_table_artifact(
        key=artifact_key("monitor", "day", cycle.day),
        table=[
            {"layer": f.layer, "check": f.check, "ok": f.ok, "seen": f.seen, "fix": f.fix}
            for f in findings
        ],
        description="Every check of one guardian cycle, in the triage order.",
    )
    return findings


@flow(name="heal", validate_parameters=False)
def heal_flow(cycle: Cycle, findings: list[Finding]) -> list[Any]:
    """Fix every failing finding in the triage order; one incident per failing finding."""
    from monitoring.alerts import deliver_alert
    from monitoring.incidents import Incident, incident_log

    log = incident_log(cycle.settings)
    incidents = []
    for finding in findings:
        if finding.ok:
            continue
        outcome = fix_task.with_options(name=f"fix {finding.check}: {finding.fix}")(cycle, finding)
        incident = log.append(
            Incident(
                layer=finding.layer,
                check=finding.check,
                seen=finding.seen,
                evidence={**finding.evidence, "fix": outcome.detail},
                action=outcome.action,
                verified=outcome.verified,
                day=cycle.day,
            )
        )
        incidents.append(incident)
        cycle.cache.clear()
        if outcome.action != "alert":  # an alert fix has paged already; tell what was healed
            deliver_alert(
                cycle.settings,
                layer=finding.layer,
                check=finding.check,
                seen=finding.seen,
                action=outcome.action,
                verified=outcome.verified,
            )
    if incidents:
        create_markdown_artifact(
            key=artifact_key("incidents", "day", cycle.day),
            markdown="# Incidents\n\n"
            + "\n".join(
                f"- **{i.layer}/{i.check}**: {i.seen} -> `{i.action}` "
                f"({'verified' if i.verified else 'NOT verified'})"
                for i in incidents
            ),
            description="What the guardian saw, what it did, and whether it worked.",
        )
    return incidents


@flow(name="guardian", validate_parameters=False)
def guardian_flow(cycle: Cycle) -> tuple[list[Finding], list[Any]]:
    """One cycle: monitor, then heal what failed."""
    findings = monitor_flow(cycle)
    return findings, heal_flow(cycle, findings)


@flow(name="deploy", validate_parameters=False)
def deploy_flow(cycle: Cycle) -> list[Any]:
    """Judge the running canary (and a recently replaced champion): promote or roll back."""
    return heal_flow(cycle, monitor_flow(cycle, ["canary", "champion_ctr"]))


def live_cycle(
    settings, *, window_s: float = 7200.0, baseline_s: float = 86400.0, url: str | None = None
) -> Cycle:
    """A cycle on the wall clock: the last ``window_s`` of traffic against the ``baseline_s``
    before it, the newest clean batch and the batch of the newest delivery (one refused whole,
    unreadable, never reaches the clean zone: its batch is checked, and fails, all the same), the
    service at ``url`` (default: the settings' host and port; checked only with an admin
    token)."""
    import time

    from recsys.admin import ServiceAdmin

    now = time.time()
    admin = ServiceAdmin.from_settings(settings, url) if settings.admin_token else None
    batches = settings.lake.clean_batches()[-1:]
    newest = settings.lake.newest_delivery()
    if newest is not None and newest[0] not in batches:
        batches.append(newest[0])
    return Cycle(
        settings=settings,
        admin=admin,
        current=(now - window_s, now),
        baseline=(now - window_s - baseline_s, now - window_s),
        batches=batches,
    )


@flow(name="guardian-scheduled", validate_parameters=False)
def scheduled_guardian_flow(window_s: float = 7200.0, baseline_s: float = 86400.0) -> int:
    """The guardian as a deployment runs it: settings from the environment, wall-clock windows.
    Returns the number of incidents written."""
    from recsys.config import get_settings

    _, incidents = guardian_flow(
        live_cycle(get_settings(), window_s=window_s, baseline_s=baseline_s)
    )
    return len(incidents)
