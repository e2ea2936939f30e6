"""The flows as Prefect deployments with schedules (``recsys flows serve``)."""

from __future__ import annotations

from datetime import timedelta

from prefect.deployments.runner import EntrypointType

from flows.features import features_flow
from flows.guardian import scheduled_guardian_flow
from flows.ingest import ingest_flow
from flows.train import train_flow


def deployments(
    guardian_minutes: int = 15, train_cron: str = "0 3 * * *", features_cron: str = "30 * * * *"
) -> list:
    """Deployments of the ingest (on demand), features, train and guardian flows.

    Their entrypoints are module paths (``flows.guardian.scheduled_guardian_flow``), not files:
    Prefect runs a file entrypoint with the file's folder first on ``sys.path``, where
    ``flows/features.py`` shadows the ``features`` package for every import in the run."""
    module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        ingest_flow.to_deployment(
            name="ingest", description="Contract-check raw batches.", **module
        ),
        features_flow.to_deployment(name="features", cron=features_cron, **module),
        train_flow.to_deployment(name="train", cron=train_cron, **module),
        scheduled_guardian_flow.to_deployment(
            name="guardian", interval=timedelta(minutes=guardian_minutes), **module
        ),
    ]
