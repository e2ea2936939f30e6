"""The MLflow registry round trip: log, register, alias, load by alias (pyfunc and ours)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.errors import RecsysError
from recsys.registry import CHAMPION, configure_mlflow, load_release, version_for_alias


def test_champion_alias_points_at_the_registered_version(trained_world):
    settings, registered, result = trained_world
    assert version_for_alias(settings, CHAMPION) == registered.version
    client = configure_mlflow(settings)
    version = client.get_model_version(settings.model_name, registered.version)
    assert len(version.tags["data_fingerprint"]) == 64
    run = client.get_run(registered.run_id)
    for model in ("pipeline", "als", "itemknn", "popularity", "trending"):
        assert f"{model}_ndcg_at_10" in run.data.metrics
    assert run.data.params["als.factors"] == str(result.release.params.als.factors)
    assert version.tags["gate"] == "passed"


def test_release_loaded_by_alias_answers_like_the_trained_one(trained_world):
    settings, registered, result = trained_world
    version, release = load_release(settings, CHAMPION)
    assert version == registered.version
    assert release.meta["training_window"] == result.window
    for user in result.release.user_ids[:20]:
        a = release.recommend(int(user), 10)
        b = result.release.recommend(int(user), 10)
        assert np.array_equal(a.item_ids, b.item_ids)


def test_pyfunc_flavour_predicts_from_the_alias_uri(trained_world):
    import mlflow

    settings, _, result = trained_world
    configure_mlflow(settings)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{CHAMPION}")
    user = int(result.release.user_ids[0])
    out = model.predict(pd.DataFrame({"user_id": [user, 10**9], "k": [5, 3]}))
    known = out[out["user_id"] == user]
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{settings.model_name}@{CHAMPION}")
    pins = Path(requirements).read_text().split()
    assert {p.split("==")[0] for p in pins} >= {"mlflow", "numpy", "torch", "selfheal-recsys"}
    assert known["rank"].tolist() == [1, 2, 3, 4, 5]
    assert known["item_id"].tolist() == result.release.recommend(user, 5).item_ids.tolist()
    assert set(out.loc[out["user_id"] == 10**9, "fallback"]) == {"cold_start"}
    # without a k column the params' k applies (10 when none); a k below 1 names its row
    assert len(model.predict(pd.DataFrame({"user_id": [user]}))) == 10
    assert len(model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 4})) == 4
    with pytest.raises(Exception, match="k must be a whole number >= 1, got 0 in row 1"):
        model.predict(pd.DataFrame({"user_id": [user, user], "k": [3, 0]}))


def test_missing_alias_is_a_readable_error(trained_world):
    settings, _, _ = trained_world
    assert version_for_alias(settings, "no-such-alias") is None
    # the model exists: the error names the aliases that are set, not "train first"
    with pytest.raises(RecsysError, match=r"alias 'no-such-alias'.*set now are .*champion \(v1\)"):
        load_release(settings, "no-such-alias")


def test_an_unreadable_registry_is_no_unset_alias(trained_world, tmp_path):
    """A corrupt mlflow.db read as "alias not set": a serving service dropped its challenger
    (the canary ended unseen) and the doctor said the aliases had moved."""
    import shutil

    from recsys.config import Settings

    settings, _, _ = trained_world
    copy = Settings(data_dir=tmp_path / "data")
    copy.data_dir.mkdir()
    shutil.copy(settings.data_dir / "mlflow.db", copy.data_dir / "mlflow.db")
    assert version_for_alias(copy, CHAMPION) == "1"
    assert version_for_alias(copy, "challenger") is None  # not set: None, as before
    (copy.data_dir / "mlflow.db").write_bytes(os.urandom(20_000))
    with pytest.raises(RecsysError, match=r"model registry at .* cannot be read .*file is not a"):
        version_for_alias(copy, "challenger")
    # deleted, with the history of the aliases it held: MLflow created an empty registry and
    # the doctor advised a reload
    from recsys.promotion import history_path

    (copy.data_dir / "mlflow.db").unlink()
    history_path(copy).parent.mkdir()
    history_path(copy).write_text(
        '{"action": "first_champion", "aliases_before": {}, "aliases_after": {"champion": "1"}}\n'
    )
    with pytest.raises(RecsysError, match=r"mlflow.db is missing, but .*restore mlflow.db"):
        version_for_alias(copy, CHAMPION)
    assert not (copy.data_dir / "mlflow.db").exists()


def test_an_alias_of_a_registry_with_no_model_says_to_train_first(settings):
    with pytest.raises(RecsysError, match=r"no model version has alias 'champion'.*recsys train"):
        load_release(settings, "champion")


def test_only_our_dead_or_hour_old_runs_are_marked_killed(settings):
    import socket
    import subprocess
    import time

    from recsys.registry import (
        REAPED_TAG,
        RUN_HOST_TAG,
        RUN_PID_TAG,
        _ensure_experiment,
        reap_dead_runs,
    )

    client = configure_mlflow(settings)
    experiment = _ensure_experiment(settings)
    gone = subprocess.Popen(["true"])
    gone.wait()
    here, hour_ago = socket.gethostname(), int((time.time() - 3700) * 1000)

    def run(tags: dict[str, str], start_time: int | None = None) -> str:
        return client.create_run(experiment, start_time=start_time, tags=tags).info.run_id

    dead = run({RUN_HOST_TAG: here, RUN_PID_TAG: str(gone.pid)})
    alive = run({RUN_HOST_TAG: here, RUN_PID_TAG: str(os.getpid())})
    elsewhere = run({RUN_HOST_TAG: "other-host", RUN_PID_TAG: "1"})
    elsewhere_old = run({RUN_HOST_TAG: "other-host", RUN_PID_TAG: "1"}, hour_ago)
    foreign_old = run({"mlflow.user": "someone"}, hour_ago)

    assert sorted(reap_dead_runs(settings)) == sorted([dead, elsewhere_old])
    runs = (dead, alive, elsewhere, foreign_old)
    statuses = [client.get_run(r).info.status for r in runs]
    assert statuses == ["KILLED", "RUNNING", "RUNNING", "RUNNING"]
    assert "is gone" in client.get_run(dead).data.tags[REAPED_TAG]
    assert "1 h" in client.get_run(elsewhere_old).data.tags[REAPED_TAG]
    assert reap_dead_runs(settings) == []  # nothing left to reap


def test_a_broken_release_and_one_of_another_format_fail_to_load_differently(
    trained_world, tmp_path
):
    import json

    from recsys.release import Release, UnreadableRelease

    _, _, result = trained_world
    folder = result.release.save(tmp_path / "release")
    meta = json.loads((folder / "release.json").read_text())
    (folder / "release.json").write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(RecsysError, match="has format 999") as foreign:
        Release.load(folder)
    assert not isinstance(foreign.value, UnreadableRelease)  # not broken: other code wrote it
    (folder / "release.json").write_text(json.dumps(meta))
    (folder / "item_ids.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(UnreadableRelease, match="incomplete or corrupt"):
        Release.load(folder)
    (folder / "release.json").write_text("{not json")
    with pytest.raises(UnreadableRelease, match=r"corrupt release\.json"):
        Release.load(folder)


def test_load_release_leaves_no_download_behind(trained_world, tmp_path, monkeypatch):
    # every evaluate, gate and drift check used to leave a /tmp/recsys-<alias>-* copy
    import tempfile

    settings, registered, result = trained_world
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    version, release = load_release(settings, "champion")
    assert version == registered.version
    assert release.recommend(int(result.release.user_ids[0]), 5).item_ids.tolist() == (
        result.release.recommend(int(result.release.user_ids[0]), 5).item_ids.tolist()
    )
    assert list(tmp_path.iterdir()) == []
