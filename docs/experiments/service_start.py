"""How long a service takes from its process start to /readyz, and Feast's import beside it.

Not part of the product: the measurement behind docs/benchmarks.md ("Service start"). Builds a
small synthetic world once in ``--dir`` (``recsys.loadtest.build_world``: ingested,
materialized, trained, registered as champion), then starts the real service on it ``--starts``
times without and with typeguard's checks in Feast (``RECSYS_FEAST_TYPECHECKS``;
``ServiceProcess``: ``bentoml serve`` on loopback, waiting for /readyz), and times ``import
feast`` in fresh interpreters as this project's processes import it (``import features``
first), both ways.

    python docs/experiments/service_start.py --dir /tmp/service-start

About 2 minutes the first time (the world), then about 20 s per start on two cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from recsys.config import Settings, get_settings
from recsys.loadtest import WorldSpec, build_world
from recsys.server import ServiceProcess

IMPORT = "import features, feast"
WORLD = WorldSpec(users=300, items=100, days=8, interactions=6000, seed=7)
READY = "service-start-ready"


def build(folder: Path) -> Settings:
    """The world, built once per folder."""
    if (folder / READY).exists():
        return get_settings(
            data_dir=folder, profile="local", mlflow_tracking_uri=None, seed=WORLD.seed
        )
    settings = build_world(WORLD, folder)
    (folder / READY).write_text("")
    return settings


def import_seconds(checks: bool) -> float:
    env = {**os.environ, "RECSYS_FEAST_TYPECHECKS": "1" if checks else "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORT], env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the world's data directory")
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    settings = build(args.dir)
    rows = []
    for checks in (False, True):
        flag = "1" if checks else "0"
        env = {"RECSYS_RELOAD_INTERVAL_S": "0", "RECSYS_FEAST_TYPECHECKS": flag}
        what = "service start to /readyz, checks " + ("on" if checks else "off")
        for i in range(args.starts):
            started = time.perf_counter()
            with ServiceProcess(settings, env=env):
                rows.append((what, i + 1, time.perf_counter() - started))
    for checks in (False, True):
        what = "import feast, typeguard checks " + ("on" if checks else "off")
        rows += [(what, i + 1, import_seconds(checks)) for i in range(args.starts)]
    print(f"| {'what':<38} | run | seconds |\n|{'-' * 40}|----:|--------:|")
    for what, run, seconds in rows:
        print(f"| {what:<38} | {run:>3} | {seconds:7.1f} |")


if __name__ == "__main__":
    main()
