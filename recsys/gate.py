"""The offline quality gate: a new model becomes ``challenger`` only if it is not worse than
the champion on the same holdout, beyond a stated tolerance.

Rule: pass when ``new_ndcg >= champion_ndcg * (1 - tolerance) - z * se`` (nDCG@k on the new
run's temporal holdout; default tolerance 2% relative; ``se`` the standard error of the
difference of the two means over the holdout's users, ``z`` = 1.645, one-sided 95%): a model is
rejected only when it is worse beyond the tolerance by more than chance explains on a holdout of
that size (a few hundred users make nDCG differences of several points noise). Both sides are
measured on the same data:
the champion's configuration and its ranker weights are refit on exactly the days before the
holdout, so neither side has seen the holdout. A rejected model is still registered, tagged
``rejected=true`` with the reason, and no alias ever points at it, so it is never served.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.pipeline import feature_names, fit_stage
from recsys.registry import (
    CHALLENGER,
    CHAMPION,
    RegisteredRelease,
    configure_mlflow,
    load_release,
    log_release,
)
from recsys.train import TrainResult, evaluate_stage

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.02
Z_ONE_SIDED_95 = 1.645


@dataclass
class GateDecision:
    passed: bool
    alias: str | None
    new_ndcg: float
    champion_version: str | None
    champion_ndcg: float | None
    tolerance: float
    reason: str
    noise_margin: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def champion_on_same_holdout(
    settings: Settings, result: TrainResult
) -> tuple[str | None, float | None, str, float]:
    """(champion version, its nDCG@k on ``result``'s holdout, how it was measured, the standard
    error of that nDCG; 0 when unknown)."""
    from recsys.registry import version_for_alias

    if version_for_alias(settings, CHAMPION) is None:
        return None, None, "no champion yet", 0.0
    try:
        version, champion = load_release(settings, CHAMPION)
    except RecsysError as exc:  # e.g. a release of an older format: not comparable
        return version_for_alias(settings, CHAMPION), None, f"champion unreadable: {exc}", 0.0
    if champion.meta.get("feature_names") != feature_names() or champion.ranker is None:
        recorded = champion.meta.get("metrics", {}).get("holdout", {}).get("pipeline", {})
        ndcg = recorded.get("ndcg")
        how = "champion has another feature set: compared with its own holdout"
        return version, ndcg, how, float(recorded.get("ndcg_se", 0.0))
    k = int(result.release.meta.get("k", 10))
    catalog_ids = result.release.item_ids
    stage = fit_stage(
        result.pre_holdout,
        _catalog(settings),
        catalog_ids,
        champion.params,
        as_of=result.holdout["timestamp"].min().floor("D"),
        earlier=result.earlier,
    )
    metrics = evaluate_stage(
        stage, champion.ranker, result.holdout, k, champion.params.candidates, baselines=()
    )
    pipeline = metrics["pipeline"]
    how = "champion config + ranker refit on same days"
    return version, pipeline["ndcg"], how, float(pipeline.get("ndcg_se", 0.0))


def _catalog(settings: Settings):
    return settings.lake.read_clean_catalog("items")


def decide(
    settings: Settings, result: TrainResult, tolerance: float = DEFAULT_TOLERANCE
) -> GateDecision:
    """Apply the gate to a trained result (no registry writes)."""
    metric = "pipeline" if "pipeline" in result.metrics else "als"
    new_ndcg = result.metrics[metric]["ndcg"]
    if int(result.metrics[metric].get("users", 1)) == 0:
        # nothing was measured: an nDCG of 0 over no user would still make a first model
        # champion, unmeasured
        return GateDecision(
            False,
            None,
            new_ndcg,
            None,
            None,
            tolerance,
            "the holdout has no user to measure the model on (none of its users has both a "
            "history before it and an item new to them in it: only repeats, or only new "
            "users): not served; train on more days or widen --test-days",
        )
    version, champion_ndcg, how, champion_se = champion_on_same_holdout(settings, result)
    new_se = float(result.metrics[metric].get("ndcg_se", 0.0))
    margin = Z_ONE_SIDED_95 * (new_se**2 + champion_se**2) ** 0.5
    if version is None:
        return GateDecision(
            True, CHAMPION, new_ndcg, None, None, tolerance, "first model: becomes champion"
        )
    if champion_ndcg is None:
        return GateDecision(
            True,
            CHALLENGER,
            new_ndcg,
            version,
            None,
            tolerance,
            f"champion v{version} has no comparable metric ({how})",
        )
    floor = champion_ndcg * (1 - tolerance) - margin
    rule = f"champion v{version} {champion_ndcg:.4f} x (1 - {tolerance:g}) - noise {margin:.4f}"
    if new_ndcg >= floor:
        return GateDecision(
            True,
            CHALLENGER,
            new_ndcg,
            version,
            champion_ndcg,
            tolerance,
            f"nDCG {new_ndcg:.4f} >= {rule} ({how})",
            margin,
        )
    return GateDecision(
        False,
        None,
        new_ndcg,
        version,
        champion_ndcg,
        tolerance,
        f"nDCG {new_ndcg:.4f} < {rule} ({how})",
        margin,
    )


def register_with_gate(
    settings: Settings,
    result: TrainResult,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    record: bool = False,
    actor: str = "gate",
) -> tuple[RegisteredRelease, GateDecision]:
    """Register the trained release, then point ``champion`` (first model) or ``challenger``
    at it if the gate passes; otherwise tag it rejected with the reason.

    The version is created with its gate tags; the alias is moved afterwards under the
    promotion lock, after any move a killed process left unfinished is repaired
    (``recsys.promotion``). With ``record`` the alias move is also appended to the promotion
    history (``first_champion`` or ``challenger_registered`` by ``actor``); callers that
    record the move themselves, with their own reason, leave it False."""
    from recsys.promotion import point_new_version, recover_interrupted_move

    recover_interrupted_move(settings)
    decision = decide(settings, result, tolerance)
    tags = {"gate": "passed" if decision.passed else "rejected", "gate_reason": decision.reason}
    if not decision.passed:
        tags.update(rejected="true", rejection_reason=decision.reason)
    registered = log_release(
        settings,
        result.release,
        result.metrics,
        tags=tags,
        trials=result.trials,
        ranker_history=result.release.ranker.history if result.release.ranker else None,
    )
    if decision.alias:
        point_new_version(
            settings,
            registered.version,
            decision.alias,
            decision.reason,
            {"gate": decision.as_dict(), "version": registered.version},
            actor=actor,
            record=record,
        )
    else:
        logger.warning("model version %s rejected: %s", registered.version, decision.reason)
    configure_mlflow(settings)
    return registered, decision
