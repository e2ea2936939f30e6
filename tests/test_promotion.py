"""Alias moves and the promotion history against a real MLflow sqlite registry, and the
`recsys status` / `recsys rollback` commands as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import wait_for_log

from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.promotion import (
    AliasMove,
    aliases,
    champion_sequence,
    history_path,
    promote_challenger,
    promotion_history,
    record_move,
    reject_challenger,
    rollback_champion,
)
from recsys.registry import CHALLENGER, configure_mlflow, log_release

RECSYS = str(Path(sys.executable).with_name("recsys"))
TOKEN = "promotion-test-token"
N_VERSIONS = 4


@pytest.fixture(scope="module")
def registry_template(trained_world, tmp_path_factory) -> Path:
    """A data dir whose registry holds versions 1..N of the same trained release, v1 champion
    (registered once per module; each test works on a copy)."""
    _, _, result = trained_world
    folder = tmp_path_factory.mktemp("promotion-template")
    settings = Settings(data_dir=folder)
    for number in range(1, N_VERSIONS + 1):
        registered = log_release(
            settings,
            result.release,
            result.metrics,
            aliases=("champion",) if number == 1 else (),
        )
        assert registered.version == str(number)
    return folder


@pytest.fixture
def registry(registry_template, tmp_path, monkeypatch) -> Settings:
    """Settings on a fresh copy of the template registry (RECSYS_DATA_DIR points at it)."""
    folder = tmp_path / "data"
    shutil.copytree(registry_template, folder)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(folder))
    return Settings(data_dir=folder)


def register_challenger(settings: Settings, version: str) -> None:
    """What the train flow does after the gate passes: point challenger, record the move."""
    before = aliases(settings)
    configure_mlflow(settings).set_registered_model_alias(settings.model_name, CHALLENGER, version)
    record_move(
        settings,
        AliasMove("challenger_registered", before, aliases(settings), "gate passed", {}),
    )


def promote(settings: Settings, version: str) -> AliasMove:
    register_challenger(settings, version)
    return promote_challenger(settings, f"canary won for v{version}", {"ctr": 0.4})


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return configure_mlflow(settings).get_model_version(settings.model_name, version).tags


def test_aliases_of_an_empty_registry_are_all_unset(settings):
    assert aliases(settings) == {"champion": None, "challenger": None, "previous": None}
    assert promotion_history(settings) == []


def test_promote_moves_champion_to_previous_and_records_the_move(registry):
    register_challenger(registry, "2")
    move = promote_challenger(registry, "canary won", {"ctr_challenger": 0.41})
    after = {"champion": "2", "challenger": None, "previous": "1"}
    assert aliases(registry) == after
    assert move.action == "promote" and move.actor == "guardian"
    assert move.aliases_before == {"champion": "1", "challenger": "2", "previous": None}
    assert move.aliases_after == after
    history = promotion_history(registry)
    assert [m.action for m in history] == ["challenger_registered", "promote"]
    assert history[-1] == move
    last_line = history_path(registry).read_text().splitlines()[-1]
    assert json.loads(last_line)["evidence"] == {"ctr_challenger": 0.41}
    assert "promote by guardian: canary won" in version_tags(registry, "2")["last_move"]
    assert "promote by guardian" in version_tags(registry, "1")["last_move"]
    assert "rejected" not in version_tags(registry, "1")


def test_reject_keeps_the_version_tagged_with_the_reason_and_evidence(registry):
    register_challenger(registry, "3")
    move = reject_challenger(registry, "CTR 0.20 vs 0.30", {"ctr_challenger": 0.2})
    assert aliases(registry) == {"champion": "1", "challenger": None, "previous": None}
    assert move.action == "reject_challenger"
    tags = version_tags(registry, "3")
    assert tags["rejected"] == "true"
    assert tags["rejection_stage"] == "canary"
    assert tags["rejection_reason"] == "CTR 0.20 vs 0.30"
    assert json.loads(tags["rejection_evidence"]) == {"ctr_challenger": 0.2}
    version = configure_mlflow(registry).get_model_version(registry.model_name, "3")
    assert version.aliases == []


def test_without_a_challenger_promote_and_reject_are_readable_errors(registry):
    with pytest.raises(RecsysError, match="no challenger to promote"):
        promote_challenger(registry, "x", {})
    with pytest.raises(RecsysError, match="no challenger to reject"):
        reject_challenger(registry, "x", {})
    assert promotion_history(registry) == []


def test_two_rollbacks_in_a_row_follow_the_history(registry):
    promote(registry, "2")
    promote(registry, "3")
    assert aliases(registry) == {"champion": "3", "challenger": None, "previous": "2"}

    first = rollback_champion(registry, "v3 CTR dropped", {"ctr": 0.1})
    assert first.action == "rollback_champion"
    assert aliases(registry) == {"champion": "2", "challenger": None, "previous": "1"}
    assert version_tags(registry, "3")["rejection_stage"] == "champion"

    second = rollback_champion(registry, "v2 CTR dropped too", {"ctr": 0.1})
    assert second.aliases_before["champion"] == "2"
    assert aliases(registry) == {"champion": "1", "challenger": None, "previous": None}
    assert version_tags(registry, "2")["rejected"] == "true"

    with pytest.raises(RecsysError, match="nothing to roll back to: champion v1"):
        rollback_champion(registry, "again", {})
    assert champion_sequence(promotion_history(registry)) == ["1", "2", "3", "2", "1"]


def test_the_new_previous_skips_versions_rejected_since(registry):
    promote(registry, "2")
    promote(registry, "3")
    client = configure_mlflow(registry)
    client.set_model_version_tag(registry.model_name, "1", "rejected", "true")
    rollback_champion(registry, "v3 bad", {})
    assert aliases(registry) == {"champion": "2", "challenger": None, "previous": None}


def test_rollback_to_a_named_version(registry):
    promote(registry, "2")
    promote(registry, "3")
    move = rollback_champion(registry, "operator says so", {}, to_version="v1", actor="cli")
    assert move.action == "manual_rollback" and move.actor == "cli"
    # v2 was replaced by a promotion, not found bad: it stays the fallback
    assert aliases(registry) == {"champion": "1", "challenger": None, "previous": "2"}
    assert version_tags(registry, "3")["rejection_reason"] == "operator says so"
    assert "rejected" not in version_tags(registry, "2")


def test_a_running_canary_is_left_alone_by_a_champion_rollback(registry):
    promote(registry, "2")
    register_challenger(registry, "4")
    rollback_champion(registry, "v2 bad", {})
    assert aliases(registry) == {"champion": "1", "challenger": "4", "previous": None}


@pytest.mark.parametrize(
    ("to_version", "needle"),
    [
        ("99", "version 99 of 'recsys-recommender' does not exist"),
        ("three", "must be a number"),
        ("2", "v2 is already the champion"),
        ("3", "v3 was rejected (canary lost)"),
        ("4", "v4 is the running challenger"),
    ],
)
def test_impossible_rollbacks_are_readable_errors(registry, to_version, needle):
    promote(registry, "2")
    register_challenger(registry, "3")
    reject_challenger(registry, "canary lost", {})
    register_challenger(registry, "4")
    before, moves = aliases(registry), len(promotion_history(registry))
    with pytest.raises(RecsysError) as caught:
        rollback_champion(registry, "x", {}, to_version=to_version)
    assert needle in str(caught.value)
    assert aliases(registry) == before
    assert len(promotion_history(registry)) == moves


def test_no_rollback_onto_a_version_that_never_served(registry):
    """A challenger replaced before its canary's verdict was a rollback target: the rollback
    tagged the good champion rejected, and nothing could go back to it."""
    promote(registry, "2")
    register_challenger(registry, "3")
    register_challenger(registry, "4")  # v3 replaced, never measured
    before, moves = aliases(registry), len(promotion_history(registry))
    with pytest.raises(RecsysError) as caught:
        rollback_champion(registry, "typo", {}, to_version="3")
    assert "v3 never served as champion" in str(caught.value) and "(v1)" in str(caught.value)
    assert aliases(registry) == before and len(promotion_history(registry)) == moves
    assert "rejected" not in version_tags(registry, "2")
    assert rollback_champion(registry, "fine", {}, to_version="1").aliases_after["champion"] == "1"


def test_no_rollback_onto_a_version_whose_artifacts_are_gone(registry, tmp_path):
    # the champion moved onto it, and the service then failed to load its champion
    promote(registry, "2")
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "MLmodel").write_text("artifact_path: model\n")
    client = configure_mlflow(registry)
    broken = client.create_model_version(registry.model_name, source=gone.as_uri()).version
    shutil.rmtree(gone)  # the artifact store lost the files; the registry still lists it
    before = aliases(registry)
    with pytest.raises(RecsysError) as caught:
        rollback_champion(registry, "x", {}, to_version=broken)
    assert f"v{broken} cannot be served" in str(caught.value)
    assert "no artifacts left in the artifact store" in str(caught.value)
    assert aliases(registry) == before


@pytest.mark.parametrize("record", [True, False])
def test_a_challenger_replaced_mid_canary_is_tagged_superseded(registry, record, caplog):
    # a scheduled train and a guardian retrain that overlap: the second challenger replaced
    # the first with nothing to say so
    from recsys.promotion import point_new_version

    register_challenger(registry, "2")
    point_new_version(registry, "3", CHALLENGER, "gate passed", {}, record=record)
    assert aliases(registry)["challenger"] == "3"
    assert version_tags(registry, "2")["superseded_by"] == "3"
    assert "rejected" not in version_tags(registry, "2")  # never judged: not found bad
    assert "challenger v2 replaced by v3 before its canary reached a verdict" in caplog.text
    if record:
        last = promotion_history(registry)[-1]
        assert last.aliases_before["challenger"] == "2" and last.aliases_after["challenger"] == "3"


def test_a_torn_history_line_loses_no_later_record(registry):
    promote(registry, "2")
    with history_path(registry).open("a") as handle:
        handle.write('{"action": "promote", "aliases_be')  # a crash mid-write
    promote(registry, "3")
    assert [m.action for m in promotion_history(registry)] == [
        "challenger_registered",
        "promote",
        "challenger_registered",
        "promote",
    ]


# ---- the command line ------------------------------------------------------------------------


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`recsys ARGS` in a real subprocess: what a user sees, exit code and all."""
    return subprocess.run(
        [RECSYS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def run_here(capsys, *args: str) -> tuple[int, str, str]:
    """The same entry point in this process (the subprocess costs seconds of imports):
    (exit code, stdout, stderr)."""
    from recsys.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def write_incidents(settings: Settings, n: int) -> None:
    path = settings.data_dir / "logs" / "incidents.jsonl"
    lines = [
        json.dumps(
            {
                "day": day,
                "layer": "canary",
                "check": "champion_ctr",
                "seen": f"incident of day {day}",
                "action": "rollback_champion",
                "verified": True,
                "at": f"2026-01-{day:02d}T00:00:00+00:00",
            }
        )
        for day in range(1, n + 1)
    ]
    path.write_text("\n".join(lines) + "\n{torn")


def test_rollback_command_and_status_without_a_service(
    registry, trained_world, capsys, monkeypatch
):
    promote(registry, "2")
    write_incidents(registry, 7)
    code, out, err = run_here(capsys, "rollback", "--reason", "bad day")
    assert code == 0, err
    assert "champion v2 -> v1" in out
    assert "no RECSYS_ADMIN_TOKEN" in out

    code, out, err = run_here(capsys, "status", "--json")
    assert code == 0, err
    report = json.loads(out)
    champion = report["aliases"][0]
    assert champion["alias"] == "champion" and champion["version"] == "1"
    assert champion["holdout_ndcg"] > 0 and champion["created"].startswith("20")
    assert champion["holdout_k"] == trained_world[2].release.meta["k"]  # that nDCG's cut-off
    assert report["rejected"] == [
        {
            "version": "2",
            "stage": "champion",
            "reason": "bad day",
            "created": report["rejected"][0]["created"],
        }
    ]
    assert report["service"]["reachable"] is False
    assert (
        report["service"]["note"]
        == "no admin token to ask http://127.0.0.1:3000: set RECSYS_ADMIN_TOKEN"
    )
    assert [m["action"] for m in report["moves"]] == [
        "challenger_registered",
        "promote",
        "manual_rollback",
    ]
    assert [i["day"] for i in report["incidents"]] == [3, 4, 5, 6, 7]

    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", TOKEN)
    code, out, err = run_here(capsys, "status", "--url", "http://127.0.0.1:9")
    assert code == 0, err
    assert "Aliases of recsys-recommender" in out
    assert "Rejected versions" in out and "bad day" in out
    assert "service: served versions unknown (service at http://127.0.0.1:9 unreachable" in out
    assert "manual_rollback" in out and "incident of day 7" in out


def test_rollback_command_refuses_with_one_line(registry):
    proc = run("rollback")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsys: error: nothing to roll back to")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_rollback_makes_the_running_service_serve_the_old_champion(registry, capsys, monkeypatch):
    from recsys.server import ServiceProcess

    promote(registry, "2")
    env = {
        "RECSYS_ADMIN_TOKEN": TOKEN,
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_CANARY_SHARE": "0.2",
    }
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", TOKEN)
    with ServiceProcess(registry, env=env) as service:
        code, out, err = run_here(capsys, "status", "--json", "--url", service.url)
        assert code == 0, err
        before = json.loads(out)["service"]
        assert before["reachable"] and before["served"]["champion"] == "2"
        assert "canary_share" in before

        code, out, err = run_here(capsys, "rollback", "--url", service.url)
        assert code == 0, err
        assert f"service at {service.url} reloaded: serves champion v1" in out
        answer = httpx.post(f"{service.url}/recommend", json={"user_id": 1, "k": 3}, timeout=30)
        assert answer.json()["model_version"] == "1"

        # a canary stopped by hand (the rollback's refusal said "reject it first", and no
        # command did)
        from recsys.admin import ServiceAdmin

        register_challenger(registry, "3")
        admin = ServiceAdmin(service.url, TOKEN)
        admin.reload()
        assert admin.served_versions() == {"champion": "1", "challenger": "3"}
        code, out, err = run_here(capsys, "reject", "--reason", "by hand", "--url", service.url)
        assert code == 0, err
        assert "challenger v3 tagged rejected; champion v1 serves all traffic" in out
        assert f"service at {service.url} reloaded: serves champion v1" in out
        assert "problems" not in out
        assert admin.served_versions() == {"champion": "1"}
        assert admin.status()["canary_share"] == 0.0
        assert aliases(registry) == {"champion": "1", "challenger": None, "previous": None}
        assert version_tags(registry, "3")["rejection_reason"] == "by hand"
        code, out, err = run_here(capsys, "reject")
        assert code == 2 and "no challenger to reject" in err

        # the share 0 stopped that canary, not the next one: a new challenger (as `recsys
        # train` registers it) is served at the configured share again once loaded
        register_challenger(registry, "4")
        assert admin.reload()["served"] == {"champion": "1", "challenger": "4"}
        assert admin.status()["canary_share"] == 0.2
        wait_for_log(service, ["canary share 0 -> 0.2 for the new challenger v4"])
        # a share set by hand holds for its challenger (0 included) ...
        admin.set_canary(0.0)
        admin.reload()
        assert admin.status()["canary_share"] == 0.0
        code, out, err = run_here(capsys, "status", "--url", service.url)
        assert code == 0, err
        assert "canary share 0.0 (stopped: the challenger gets no traffic)" in out
        # ... and a non-zero one is kept as is across a new challenger
        admin.set_canary(0.35)
        name = registry.model_name
        fifth = configure_mlflow(registry).copy_model_version(f"models:/{name}/4", name).version
        register_challenger(registry, str(fifth))
        assert admin.reload()["served"] == {"champion": "1", "challenger": str(fifth)}
        assert admin.status()["canary_share"] == 0.35
        code, out, err = run_here(capsys, "status", "--url", service.url)
        assert "canary share 0.35" in out and "(stopped:" not in out


def test_concurrent_moves_do_not_interleave(registry):
    from concurrent.futures import ThreadPoolExecutor

    register_challenger(registry, "2")
    moves = (
        lambda: promote_challenger(registry, "won", {}),
        lambda: reject_challenger(registry, "lost", {}),
    )
    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(move) for move in moves]:
            try:
                outcomes.append(future.result().action)
            except RecsysError as exc:
                outcomes.append(str(exc).split(" in ")[0])
    # exactly one move saw the challenger; the other found none
    assert sorted(outcomes) in (
        ["no challenger to reject", "promote"],
        ["no challenger to promote", "reject_challenger"],
    )
    assert len(promotion_history(registry)) == 2
