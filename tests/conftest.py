"""Shared fixtures: an isolated data directory per test, a small trained world per session."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import pytest

# No telemetry, one BLAS thread: set before any library is imported by a test module.
for _key, _value in {
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "OPENBLAS_NUM_THREADS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ[_key] = _value
for _key in [k for k in os.environ if k.startswith("RECSYS_") or k == "PREFECT_API_URL"]:
    del os.environ[_key]
# Prefect runs on its ephemeral API with a database of its own per test session.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="recsys-prefect-")
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# On a busy 2-core machine the ephemeral server can need more than Prefect's default to start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO_ROOT = Path(__file__).resolve().parent.parent
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh RECSYS_DATA_DIR for one test."""
    folder = tmp_path / "recsys-data"
    monkeypatch.setenv("RECSYS_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def settings(data_dir: Path):
    from recsys.config import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens-100K files shipped beside the repository (../shared/data/ml-100k)."""
    if not (ML100K / "u.data").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"MovieLens-100K is missing at {ML100K}; CI must have shared/ beside it")
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="session")
def make_trained_world(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a synthetic world in a fresh data dir, ingested, trained and registered as
    champion. ``make_trained_world(name, seed, budget_s, **world)`` returns (settings,
    registered release, train result)."""

    def build(name: str, seed: int, budget_s: float, **world):
        from recsys.config import Settings
        from recsys.gate import register_with_gate
        from recsys.ingest import ingest_all
        from recsys.synthetic import WorldConfig, write_world
        from recsys.train import pipeline_params, train_and_evaluate

        settings = Settings(data_dir=tmp_path_factory.mktemp(name), seed=seed)
        write_world(WorldConfig(seed=seed, **world), settings.lake.init())
        ingest_all(settings.lake)
        result = train_and_evaluate(
            settings.lake, pipeline_params(settings), k=10, budget_s=budget_s
        )
        registered, decision = register_with_gate(settings, result)
        assert decision.alias == "champion"
        return settings, registered, result

    return build


@pytest.fixture(scope="session")
def trained_world(make_trained_world):
    """A small synthetic world, ingested, trained and registered as champion (built once).

    Returns (settings, registered release, train result). Tests must not modify it.
    """
    return make_trained_world(
        "trained-world", 7, 1.0, n_users=800, n_items=200, n_days=12, n_interactions=30_000
    )


ONLINE_TOKEN = "online-features-token"
ONLINE_STALE_DAYS = 3
ONLINE_READ_AHEAD = 100
"""Users whose online rows the ``online`` service reads ahead (of 800: the others are read on
their first request)."""


@pytest.fixture(scope="session")
def online(trained_world, tmp_path_factory):
    """A copy of the trained world with its online store materialized ``ONLINE_STALE_DAYS`` days
    short of the lake (a skipped materialization), and a service on it (admin token
    ``ONLINE_TOKEN``). Shared by the serving tests and the metrics scrape of the alert rules:
    tests must not depend on its counters' absolute values (compare before and after)."""
    import shutil

    from features.offline import build_offline_features, offline_days, snapshot_time
    from features.spec import FeaturePaths
    from features.store import materialize
    from recsys.config import Settings
    from recsys.server import ServiceProcess

    settings, _, result = trained_world
    folder = tmp_path_factory.mktemp("online-features") / "data"
    shutil.copytree(
        settings.data_dir, folder, ignore=shutil.ignore_patterns("logs", "bentoml", "features")
    )
    copy = Settings(data_dir=folder, seed=settings.seed)
    build_offline_features(copy)
    days = offline_days(FeaturePaths(folder))
    stale_end = snapshot_time(days[-1 - ONLINE_STALE_DAYS])
    materialize(copy, end=stale_end, build=False)
    env = {
        "RECSYS_ADMIN_TOKEN": ONLINE_TOKEN,
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_USER_ROWS_AHEAD": str(ONLINE_READ_AHEAD),
    }
    with ServiceProcess(copy, env=env) as proc:
        yield proc, copy, result.release, stale_end, snapshot_time(days[-1])


def wait_for_log(proc, lines: list[str], timeout_s: float = 10.0) -> str:
    """Wait until every one of ``lines`` is in the log of the ServiceProcess ``proc`` (the
    service writes it asynchronously); returns the log's text, fails naming the missing ones."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = proc.log_path.read_text(errors="replace")
        missing = [line for line in lines if line not in text]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    assert not missing, f"not in {proc.log_path}: {missing}\n{proc.log_tail(20)}"
    return text


@contextlib.contextmanager
def drilled_service(settings):
    """A real service on ``settings`` (which carry an admin token) with every request logged,
    no registry poll and the fault drills enabled; yields its :class:`recsys.admin.ServiceAdmin`."""
    from recsys.admin import ServiceAdmin
    from recsys.server import ServiceProcess

    token = settings.admin_token.get_secret_value()
    env = {
        "RECSYS_ADMIN_TOKEN": token,
        "RECSYS_REQUEST_LOG_SAMPLE": "1.0",
        "RECSYS_RELOAD_INTERVAL_S": "0",
        "RECSYS_FAULT_INJECTION": "true",
    }
    with ServiceProcess(settings, env=env).start() as service:
        yield ServiceAdmin(service.url, token)


# ---- end-to-end runs started in the background when the session starts -----------------------


class BackgroundRuns:
    """The ``recsys`` subprocesses of the tests marked ``background`` (the demos, minutes each,
    and ``recsys bench serve``; mostly on one core), run one after another on a thread from the
    end of collection while the rest of the suite runs: it leaves about one of the two cores
    idle. Each run gets a data directory of its own and no ``PREFECT_HOME``, so its ephemeral
    Prefect API lives under that directory as when a user runs the command. A marked test takes
    its finished run from the ``background_run`` fixture; a test that was not started (no
    thread) runs it then."""

    def __init__(self, items: list[pytest.Item]) -> None:
        import threading

        self.items = items
        self.root = Path(tempfile.mkdtemp(prefix="recsys-background-"))
        self.done: dict[str, threading.Event] = {i.nodeid: threading.Event() for i in items}
        self.results: dict[str, tuple] = {}
        self.seconds: dict[str, float] = {}
        self.current = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run_all, name="background-runs", daemon=True)

    @staticmethod
    def command(item: pytest.Item) -> tuple[list[str], float]:
        import sys

        marker = item.get_closest_marker("background")
        args = [str(a).format(ml100k=ML100K) for a in marker.args]
        recsys = str(Path(sys.executable).with_name("recsys"))
        return [recsys, *args], float(marker.kwargs.get("timeout", 900))

    def run(self, item: pytest.Item) -> tuple:
        """(return code, stdout, stderr, data dir) of ``item``'s command."""
        import subprocess

        command, timeout = self.command(item)
        folder = self.root / f"run-{self.items.index(item)}" / "recsys-data"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_HOME"}
        env |= {"RECSYS_DATA_DIR": str(folder), "COLUMNS": "200"}
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.current = proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(background run killed after its {timeout:g} s timeout)"
        return proc.returncode, out, err, folder

    def _run_all(self) -> None:
        import time

        for item in self.items:
            if not self.stopped:
                started = time.perf_counter()
                try:
                    self.results[item.nodeid] = self.run(item)
                except Exception as exc:  # reported by the test that waits for it
                    self.results[item.nodeid] = (-1, "", repr(exc), None)
                self.seconds[item.nodeid] = time.perf_counter() - started
            self.done[item.nodeid].set()

    def result(self, item: pytest.Item) -> tuple:
        if not self.thread.is_alive() and item.nodeid not in self.results:
            self.results[item.nodeid] = self.run(item)  # the thread never ran it
            self.done[item.nodeid].set()
        self.done[item.nodeid].wait()
        return self.results[item.nodeid]

    def stop(self) -> None:
        """Kill a run still going; remove the data directories when every run passed (a
        failed run's stay, for its logs and reports)."""
        import shutil

        self.stopped = True
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
        if all(self.done[n].is_set() and self.results.get(n, (1,))[0] == 0 for n in self.done):
            shutil.rmtree(self.root, ignore_errors=True)


_BACKGROUND: BackgroundRuns | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "background(*args, timeout=900): `recsys *args` runs in the background from the start "
        "of the session ({ml100k} is the MovieLens folder); the test reads the finished run "
        "from the background_run fixture",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that read a background run go last: by then their runs are done."""
    items[:] = sorted(items, key=lambda i: i.get_closest_marker("background") is not None)


def _lacks_data(item: pytest.Item) -> bool:
    """The run needs MovieLens-100K and it is missing (the test skips, or fails under CI)."""
    args = item.get_closest_marker("background").args
    return any("{ml100k}" in str(a) for a in args) and not (ML100K / "u.data").is_file()


def pytest_collection_finish(session: pytest.Session) -> None:
    global _BACKGROUND
    items = [i for i in session.items if i.get_closest_marker("background") and not _lacks_data(i)]
    if not items or session.config.option.collectonly:
        return
    _BACKGROUND = BackgroundRuns(items)
    _BACKGROUND.thread.start()


def pytest_terminal_summary(terminalreporter) -> None:
    """How long each background run took (the durations table shows only the wait for it)."""
    if _BACKGROUND is None or not _BACKGROUND.seconds:
        return
    terminalreporter.section("background runs")
    for item in _BACKGROUND.items:
        if item.nodeid in _BACKGROUND.seconds:
            code = _BACKGROUND.results[item.nodeid][0]
            terminalreporter.write_line(
                f"{_BACKGROUND.seconds[item.nodeid]:7.1f}s exit {code}  {item.nodeid}"
            )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _BACKGROUND is not None:
        _BACKGROUND.stop()


@pytest.fixture
def background_run(request: pytest.FixtureRequest):
    """The finished background run of this test: (return code, stdout, stderr, data dir).
    Waits for it when it is still running."""
    if request.node.get_closest_marker("background") is None:
        pytest.fail("the background_run fixture needs @pytest.mark.background(<recsys args>)")
    if _BACKGROUND is not None and request.node.nodeid in _BACKGROUND.done:
        yield _BACKGROUND.result(request.node)
        return
    runs = BackgroundRuns([request.node])  # not scheduled: run it now
    try:
        yield runs.result(request.node)
    finally:
        runs.stop()
