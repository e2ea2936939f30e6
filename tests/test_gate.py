"""The offline quality gate against a real MLflow registry."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recsys.config import Settings
from recsys.gate import register_with_gate
from recsys.ingest import ingest_all
from recsys.models.als import ALSParams
from recsys.models.itemknn import ItemKNNParams
from recsys.pipeline import PipelineParams
from recsys.registry import CHALLENGER, CHAMPION, configure_mlflow, version_for_alias
from recsys.synthetic import WorldConfig, write_world
from recsys.train import train_and_evaluate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("gate"), seed=3)
    write_world(
        WorldConfig(n_users=500, n_items=150, n_days=10, n_interactions=18_000, seed=3),
        settings.lake.init(),
    )
    ingest_all(settings.lake)
    first = train_and_evaluate(settings.lake, PipelineParams())
    registered, decision = register_with_gate(settings, first)
    assert decision.alias == CHAMPION and decision.reason.startswith("first model")
    return settings, registered


def test_a_model_as_good_as_the_champion_becomes_challenger(world):
    settings, champion = world
    result = train_and_evaluate(settings.lake, PipelineParams())
    registered, decision = register_with_gate(settings, result)
    assert decision.passed and decision.alias == CHALLENGER
    assert decision.champion_version == champion.version
    assert 0 < decision.noise_margin < 0.05  # the standard error of ~500 users' nDCG
    floor = decision.champion_ndcg * (1 - decision.tolerance) - decision.noise_margin
    assert decision.new_ndcg >= floor
    assert version_for_alias(settings, CHALLENGER) == registered.version
    assert version_for_alias(settings, CHAMPION) == champion.version


def test_a_worse_model_is_registered_rejected_and_never_aliased(world):
    settings, _ = world
    crippled = replace(
        PipelineParams(),
        als=ALSParams(factors=2, iterations=1, regularization=500.0),
        itemknn=ItemKNNParams(neighbors=1),
        candidates=12,
        ranker=replace(PipelineParams().ranker, max_epochs=1, hidden=(2,)),
    )
    result = train_and_evaluate(settings.lake, crippled)
    before = {a: version_for_alias(settings, a) for a in (CHAMPION, CHALLENGER)}
    registered, decision = register_with_gate(settings, result)
    assert not decision.passed and decision.alias is None
    assert "<" in decision.reason and "noise" in decision.reason
    floor = decision.champion_ndcg * (1 - decision.tolerance) - decision.noise_margin
    assert decision.new_ndcg < floor
    version = configure_mlflow(settings).get_model_version(settings.model_name, registered.version)
    assert version.tags["rejected"] == "true"
    assert version.tags["rejection_reason"] == decision.reason
    assert not version.aliases
    assert {a: version_for_alias(settings, a) for a in (CHAMPION, CHALLENGER)} == before


def test_a_model_measured_on_no_user_is_rejected_even_as_the_first(tmp_path):
    # a holdout without a single measurable user gave nDCG 0.0 over nobody, and the first
    # such model became champion, never measured
    settings = Settings(data_dir=tmp_path / "data", seed=3)
    write_world(
        WorldConfig(n_users=200, n_items=60, n_days=6, n_interactions=4_000, seed=3),
        settings.lake.init(),
    )
    ingest_all(settings.lake)
    result = train_and_evaluate(settings.lake, PipelineParams())
    unmeasured = {name: {**m, "users": 0} for name, m in result.metrics.items()}
    registered, decision = register_with_gate(settings, replace(result, metrics=unmeasured))
    assert not decision.passed and decision.alias is None
    assert decision.reason.startswith("the holdout has no user to measure the model on")
    version = configure_mlflow(settings).get_model_version(settings.model_name, registered.version)
    assert version.tags["rejected"] == "true" and not version.aliases
    assert version_for_alias(settings, CHAMPION) is None
