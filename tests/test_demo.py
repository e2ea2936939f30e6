"""`recsys demo`, the main job, end to end as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_thin_path_and_stops_the_server(data_dir):
    recsys = str(Path(sys.executable).with_name("recsys"))
    proc = subprocess.run(
        [recsys, "demo", "--users", "400", "--items", "120", "--days", "6", "--requests", "30"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "demo passed" in out
    assert "errors" in out and "cold-start answers" in out
    assert "true CTR: served (champion)" in out
    assert (data_dir / "mlflow.db").is_file()
    assert len(list((data_dir / "clean" / "interactions").glob("*.parquet"))) == 6
    # the server was stopped: nothing listens any more on the port it logged to
    logs = list((data_dir / "logs").glob("service-*.log"))
    assert logs
    port = int(logs[0].stem.split("-")[1])
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_on_movielens(data_dir, ml100k):
    recsys = str(Path(sys.executable).with_name("recsys"))
    proc = subprocess.run(
        [recsys, "demo", "--dataset", "movielens", "--data-path", str(ml100k), "--requests", "20"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "demo passed" in proc.stdout
    assert "true CTR" not in proc.stdout  # real data has no ground truth


def test_demo_with_an_unknown_dataset_is_a_one_line_error(data_dir):
    recsys = str(Path(sys.executable).with_name("recsys"))
    proc = subprocess.run(
        [recsys, "demo", "--dataset", "imagenet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("recsys: error: unknown --dataset")
