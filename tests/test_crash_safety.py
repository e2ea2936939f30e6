"""Crash safety: a real process killed with SIGKILL midway through training, materialization
or an alias move leaves the registry aliases, the promotion history and the online store
consistent, and the same command run again completes.

Each scenario starts the real command in a subprocess with ``RECSYS_TEST_PAUSE_AT`` naming a
pause point (``recsys/pausepoints.py``), waits for the marker file the point writes, kills the
process there with SIGKILL, checks what it left, then runs the command again (in this process:
the same entry point, without seconds of imports) and checks the end state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.pausepoints import MARKER_ENV, PAUSE_ENV
from recsys.promotion import (
    AliasMove,
    aliases,
    history_path,
    journal_path,
    pending_move,
    point_new_version,
    promote_challenger,
    promotion_history,
    recover_interrupted_move,
    release_problems,
)
from recsys.registry import configure_mlflow, log_release

pytestmark = pytest.mark.slow

RECSYS = str(Path(sys.executable).with_name("recsys"))
LAKE_ZONES = ("raw", "clean", "quarantine", "world")
SMALL_TRAINING = {  # a few seconds of fitting: the crash points, not the model, are tested
    "RECSYS_RANKER_MODELS": "1",
    "RECSYS_RANKER_MAX_EPOCHS": "2",
    "RECSYS_ALS_ITERATIONS": "3",
    "RECSYS_ALS_FACTORS": "8",
    "RECSYS_CANDIDATES": "40",
}


# ---- killing a real process at a named point ------------------------------------------------


def run_until_paused(
    args: list[str], data_dir: Path, point: str, logs: Path, **env: str
) -> subprocess.Popen:
    """Start ``args`` with ``RECSYS_TEST_PAUSE_AT=point``; return once it paused there."""
    marker = logs / f"paused-at-{point}"
    out = (logs / f"{point}.log").open("wb")
    proc = subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "RECSYS_DATA_DIR": str(data_dir),
            PAUSE_ENV: point,
            MARKER_ENV: str(marker),
            **env,
        },
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{args} never reached {point}:\n{(logs / f'{point}.log').read_text()}")
        time.sleep(0.05)
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def rerun(capsys, monkeypatch, data_dir: Path, *args: str, **env: str) -> tuple[int, str]:
    """``recsys ARGS`` through its entry point in this process: (exit code, output)."""
    from recsys.cli import main

    monkeypatch.setenv("RECSYS_DATA_DIR", str(data_dir))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out + err


def copy_lake(source: Path, dest: Path) -> Settings:
    """A fresh data dir holding only the lake of ``source`` (no registry, no features)."""
    for zone in LAKE_ZONES:
        if (source / zone).exists():
            shutil.copytree(source / zone, dest / zone)
    return Settings(data_dir=dest)


# ---- what "consistent" means ----------------------------------------------------------------


def assert_release_consistent(settings: Settings, *, interrupted: bool = False) -> None:
    """Every alias names a registered version; every history line is a complete record; the
    aliases equal the last record's, or (``interrupted``) a journal explains the difference:
    each alias holds its value from before or after the journaled move."""
    client = configure_mlflow(settings)
    now = aliases(settings)
    for version in filter(None, now.values()):
        assert str(client.get_model_version(settings.model_name, version).version) == version
    lines = history_path(settings).read_bytes().splitlines()
    assert lines, "the history is empty"
    records = [AliasMove.from_dict(json.loads(line)) for line in lines]
    assert records == promotion_history(settings)
    last = {a: records[-1].aliases_after.get(a) for a in now}
    journal = pending_move(settings)
    if not interrupted:
        assert journal is None and now == last, (journal, now, last)
        assert release_problems(settings) == []
        return
    assert journal is not None and "unreadable" not in journal
    if journal["move_id"] in {r.move_id for r in records}:
        assert now == last == journal["aliases_after"]  # recorded: only the journal is left
    else:
        assert journal["aliases_before"] == last
        for alias, version in now.items():
            assert version in (journal["aliases_before"][alias], journal["aliases_after"][alias])
    assert any("a move did not finish" in p for p in release_problems(settings))


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return configure_mlflow(settings).get_model_version(settings.model_name, version).tags


# ---- alias moves ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_template(trained_world, tmp_path_factory) -> Path:
    """A data dir whose registry holds v1 (previous), v2 (champion) and v3 (challenger) of
    the trained release, every move recorded (built once; each test works on a copy)."""
    _, _, result = trained_world
    folder = tmp_path_factory.mktemp("crash-release")
    settings = Settings(data_dir=folder)
    for number in (1, 2, 3):
        registered = log_release(settings, result.release, result.metrics)
        alias = "champion" if number == 1 else "challenger"
        point_new_version(settings, registered.version, alias, "gate passed", {}, actor="test")
        if number == 2:
            promote_challenger(settings, "canary won", {"ctr": 0.4})
    assert aliases(settings) == {"champion": "2", "challenger": "3", "previous": "1"}
    return folder


@pytest.fixture
def release(release_template, tmp_path) -> Settings:
    folder = tmp_path / "data"
    shutil.copytree(release_template, folder)
    return Settings(data_dir=folder)


def test_a_rollback_killed_midway_is_undone_and_the_rerun_rolls_back_once(
    release, tmp_path, capsys, monkeypatch
):
    before = aliases(release)
    moves = len(promotion_history(release))
    proc = run_until_paused(
        [RECSYS, "rollback", "--reason", "v2 broke checkout"],
        release.data_dir,
        "promotion.after_alias",
        tmp_path,
    )
    sigkill(proc)
    # champion already moved, previous not yet, v2 already tagged rejected: the journal says so
    assert aliases(release) == {"champion": "1", "challenger": "3", "previous": "1"}
    assert version_tags(release, "2")["rejected"] == "true"
    assert len(promotion_history(release)) == moves
    assert_release_consistent(release, interrupted=True)

    code, out = rerun(capsys, monkeypatch, release.data_dir, "rollback", "--reason", "again")
    assert code == 0, out
    assert "champion v2 -> v1" in out
    assert aliases(release) == {"champion": "1", "challenger": "3", "previous": None}
    history = promotion_history(release)
    assert [m.action for m in history[moves:]] == ["interrupted_move_undone", "manual_rollback"]
    undone = history[moves]
    assert undone.aliases_after == before and undone.actor == "recovery"
    assert undone.evidence["interrupted"]["reason"] == "v2 broke checkout"
    assert version_tags(release, "2")["rejection_reason"] == "again"
    assert not journal_path(release).exists()
    assert_release_consistent(release)


def test_a_promotion_killed_after_its_record_is_kept_and_the_rerun_finds_it_done(release, tmp_path):
    driver = (
        "from recsys.config import get_settings\n"
        "from recsys.promotion import promote_challenger\n"
        "promote_challenger(get_settings(), 'canary won', {'ctr': 0.5}, actor='driver')\n"
    )
    proc = run_until_paused(
        [sys.executable, "-c", driver], release.data_dir, "promotion.after_record", tmp_path
    )
    sigkill(proc)
    after = {"champion": "3", "challenger": None, "previous": "2"}
    assert aliases(release) == after
    assert promotion_history(release)[-1].action == "promote"
    assert_release_consistent(release, interrupted=True)

    moves = len(promotion_history(release))
    with pytest.raises(RecsysError, match="no challenger to promote"):
        promote_challenger(release, "canary won", {"ctr": 0.5}, actor="driver")
    assert aliases(release) == after and len(promotion_history(release)) == moves
    assert_release_consistent(release)


def test_release_problems_name_an_unfinished_move_and_an_unrecorded_alias(release):
    assert release_problems(release) == []
    client = configure_mlflow(release)
    # a promotion that died after its first alias change
    journal_path(release).write_text(
        json.dumps(
            {
                "move_id": "feed",
                "model_name": release.model_name,
                "action": "promote",
                "actor": "guardian",
                "at": "2026-01-01T00:00:00+00:00",
                "aliases_before": {"champion": "2", "challenger": "3", "previous": "1"},
                "aliases_after": {"champion": "3", "challenger": None, "previous": "2"},
                "tags_before": {"3": {"promoted_at": None}},
            }
        )
    )
    client.set_registered_model_alias(release.model_name, "champion", "3")
    client.set_model_version_tag(release.model_name, "3", "promoted_at", "2026-01-01")
    problems = release_problems(release)
    assert len(problems) == 2
    assert "a move did not finish: promote by guardian" in problems[0]
    assert "differ from the last recorded move (challenger_registered" in problems[1]
    with pytest.raises(AssertionError):
        assert_release_consistent(release)
    assert [r.action for r in recover_interrupted_move(release)] == ["interrupted_move_undone"]
    assert aliases(release) == {"champion": "2", "challenger": "3", "previous": "1"}
    assert "promoted_at" not in version_tags(release, "3")
    assert_release_consistent(release)

    # an alias moved by hand, no journal
    client.set_registered_model_alias(release.model_name, "champion", "1")
    assert len(release_problems(release)) == 1
    with pytest.raises(AssertionError):
        assert_release_consistent(release)
    assert [r.action for r in recover_interrupted_move(release)] == ["aliases_reconciled"]
    assert promotion_history(release)[-1].aliases_after["champion"] == "1"
    assert_release_consistent(release)

    # a journal nobody can read is moved aside, not trusted
    journal_path(release).write_text('{"move_id": "torn", "act')
    assert "is not JSON" in release_problems(release)[0]
    assert recover_interrupted_move(release) == []
    assert release_problems(release) == []
    assert list(journal_path(release).parent.glob("promotions.pending.unreadable-*"))


# ---- training -------------------------------------------------------------------------------


TRAIN_ARGS = ["train", "--budget-s", "0", "--window-days", "4", "--test-days", "1"]


def killed_training(trained_world, tmp_path, point: str) -> tuple[Settings, int]:
    """A copy of the trained world's lake and the pid of a `recsys train` SIGKILLed at
    ``point``."""
    world, _, _ = trained_world
    settings = copy_lake(world.data_dir, tmp_path / "data")
    proc = run_until_paused(
        [RECSYS, *TRAIN_ARGS], settings.data_dir, point, tmp_path, **SMALL_TRAINING
    )
    sigkill(proc)
    return settings, proc.pid


def test_training_killed_after_registering_moves_no_alias_and_the_rerun_completes(
    trained_world, tmp_path, capsys, monkeypatch
):
    settings, _ = killed_training(trained_world, tmp_path, "registry.after_version")
    # the killed run's version exists with its gate verdict, and no alias points at it
    client = configure_mlflow(settings)
    assert version_tags(settings, "1")["gate"] == "passed"
    assert client.get_model_version(settings.model_name, "1").aliases == []
    assert aliases(settings) == {"champion": None, "challenger": None, "previous": None}
    assert promotion_history(settings) == [] and release_problems(settings) == []

    code, out = rerun(capsys, monkeypatch, settings.data_dir, *TRAIN_ARGS, **SMALL_TRAINING)
    assert code == 0, out
    assert aliases(settings) == {"champion": "2", "challenger": None, "previous": None}
    assert [(m.action, m.actor) for m in promotion_history(settings)] == [("first_champion", "cli")]
    assert client.get_model_version(settings.model_name, "1").aliases == []
    assert_release_consistent(settings)


def test_training_killed_inside_its_mlflow_run_leaves_no_run_running_after_the_rerun(
    trained_world, tmp_path, capsys, monkeypatch
):
    from recsys.registry import REAPED_TAG, _ensure_experiment

    settings, pid = killed_training(trained_world, tmp_path, "registry.in_run")
    client = configure_mlflow(settings)
    experiment = _ensure_experiment(settings)
    (killed,) = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
    assert client.search_model_versions() == []  # killed before its version was created

    code, out = rerun(capsys, monkeypatch, settings.data_dir, *TRAIN_ARGS, **SMALL_TRAINING)
    assert code == 0, out
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "KILLED"
    assert f"process {pid}" in run.data.tags[REAPED_TAG]
    statuses = {r.info.status for r in client.search_runs([experiment])}
    assert "RUNNING" not in statuses and "FINISHED" in statuses
    assert aliases(settings)["champion"] == "1"


# ---- materialization ------------------------------------------------------------------------


def online_dump(settings: Settings) -> str:
    """Every online row (values and timestamps) of both views, as one string."""
    import sqlite3

    from features.spec import FeaturePaths, feast_project

    db = sqlite3.connect(FeaturePaths(settings.data_dir).online_db)
    try:
        return repr(
            [
                db.execute(
                    f"SELECT entity_key, feature_name, value, event_ts FROM {feast_project()}_"
                    f"{view} ORDER BY entity_key, feature_name"
                ).fetchall()
                for view in ("user_features", "item_features")
            ]
        )
    finally:
        db.close()


def assert_registry_readable(settings: Settings) -> None:
    """Feast opens the registry and finds every applied object in it."""
    from features.spec import VIEWS
    from features.store import feature_store

    store = feature_store(settings)
    assert sorted(fv.name for fv in store.list_feature_views()) == sorted(VIEWS)
    assert store.list_feature_services()


def test_materialization_killed_anywhere_leaves_a_whole_store_and_the_rerun_catches_up(
    trained_world, tmp_path, capsys, monkeypatch
):
    from features.offline import online_pending, snapshot_time
    from features.skew import skew_report
    from features.spec import FeaturePaths
    from features.store import feature_store

    world, _, _ = trained_world
    settings = copy_lake(world.data_dir, tmp_path / "data")
    paths = FeaturePaths(settings.data_dir)
    materialize = [RECSYS, "features", "materialize"]

    # 1. killed while writing the first registry: none, or a whole one, is left
    proc = run_until_paused(materialize, settings.data_dir, "write:registry.db", tmp_path)
    sigkill(proc)
    if paths.registry("local").exists():  # an older whole registry, never a torn one
        feature_store(settings).list_feature_views()
    code, out = rerun(capsys, monkeypatch, settings.data_dir, "features", "materialize")
    assert code == 0, out
    assert_registry_readable(settings)
    old = online_dump(settings)

    # 2. a batch is re-ingested; killed after the offline rebuild, before any online write
    days = settings.lake.clean_batches()
    changed = days[len(days) // 2]
    batch = settings.lake.read_clean_interactions([changed])
    settings.lake.write_clean_batch(changed, batch.iloc[: len(batch) // 2])
    proc = run_until_paused(materialize, settings.data_dir, "features.after_offline", tmp_path)
    sigkill(proc)
    assert online_dump(settings) == old  # the old materialization, whole
    assert online_pending(paths) == days[days.index(changed) :]
    assert_registry_readable(settings)

    code, out = rerun(capsys, monkeypatch, settings.data_dir, "features", "materialize")
    assert code == 0, out
    marker = json.loads(paths.materialized_marker.read_text())
    for window in marker["views"].values():  # rewritten from the replaced day on
        assert window["start"] == snapshot_time(changed).isoformat()
    assert online_pending(paths) == []
    assert online_dump(settings) != old
    report = skew_report(settings, sample_size=300)
    assert report.ok, report
    assert_registry_readable(settings)

    # what Feast's in-place registry write leaves when killed midway fails the same check
    whole = paths.registry("local").read_bytes()
    paths.registry("local").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception) as caught:
        assert_registry_readable(settings)
    assert not isinstance(caught.value, NameError | AttributeError | TypeError)


def test_an_offline_build_killed_before_its_manifest_still_marks_the_days_replaced(
    trained_world, tmp_path
):
    from features.offline import build_offline_features, online_pending
    from features.spec import FeaturePaths

    world, _, _ = trained_world
    settings = copy_lake(world.data_dir, tmp_path / "data")
    paths = FeaturePaths(settings.data_dir)
    build_offline_features(settings)
    recorded = paths.manifest_path.read_bytes()
    days = settings.lake.clean_batches()
    batch = settings.lake.read_clean_interactions([days[-3]])
    settings.lake.write_clean_batch(days[-3], batch.iloc[: len(batch) // 2])
    build_offline_features(settings)
    paths.manifest_path.write_bytes(recorded)  # the files were rewritten, the manifest not yet
    again = build_offline_features(settings)
    assert again["written"] == []  # the bytes on disk are already the new ones
    assert again["replaced"] == days[-3:]
    assert online_pending(paths) == days[-3:]
