"""The train flow: the recent window, the search within a budget, the offline gate, and the
registration of the result (``champion`` for the first model, else ``challenger``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import artifact_key, transient
from recsys.config import Settings, get_settings


@task(name="search and train")
def search_and_train(settings: Settings, window_days: int | None, budget_s: float):
    from recsys.train import pipeline_params, train_and_evaluate

    return train_and_evaluate(
        settings.lake,
        pipeline_params(settings),
        window_days=window_days,
        budget_s=budget_s,
        model_name=settings.model_name,
    )


# No cache key: the trained result holds torch modules, which Prefect can neither hash nor
# pickle (it would log an error for every run and persist nothing anyway).
@task(
    name="gate and register",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def gate_and_register(settings: Settings, result) -> dict[str, Any]:
    from recsys.gate import register_with_gate
    from recsys.promotion import AliasMove, aliases, record_move

    before = aliases(settings)
    registered, decision = register_with_gate(settings, result)
    if decision.alias is not None:
        action = "challenger_registered" if decision.alias == "challenger" else "first_champion"
        record_move(
            settings,
            AliasMove(
                action,
                before,
                aliases(settings),
                decision.reason,
                {"gate": decision.as_dict(), "version": registered.version},
                _now(),
            ),
        )
    return {"version": registered.version, "gate": decision.as_dict()}


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


@flow(name="train", validate_parameters=False)
def train_flow(
    settings: Settings | None = None, window_days: int | None = 7, budget_s: float = 10.0
) -> dict[str, Any]:
    """Train on the newest ``window_days`` days and register the result through the gate."""
    settings = settings or get_settings()
    result = search_and_train(settings, window_days, budget_s)
    registered = gate_and_register(settings, result)
    gate = registered["gate"]
    rows = "\n".join(
        f"| {model} | {m['ndcg']:.4f} | {m.get('recall', float('nan')):.4f} |"
        for model, m in result.metrics.items()
    )
    create_markdown_artifact(
        key=artifact_key("train", registered["version"]),
        markdown=(
            f"# Model version {registered['version']}\n\n"
            f"Window {result.window}\n\n| model | nDCG@k | recall@k |\n|---|---|---|\n{rows}\n\n"
            f"Gate: **{'passed' if gate['passed'] else 'rejected'}** -> "
            f"{gate['alias'] or 'no alias'}: {gate['reason']}"
        ),
        description="Holdout metrics beside the baselines and the gate decision.",
    )
    return {**registered, "metrics": result.metrics, "notes": result.notes}
