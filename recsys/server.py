"""Start and stop a real ``bentoml serve`` process on loopback, and wait for it to be ready.

Used by ``recsys demo``, ``recsys serve`` and the tests: the service always runs as its own
process, exactly as users run it, never in-process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import httpx

from recsys.config import Settings
from recsys.errors import RecsysError

SERVICE_TARGET = "serving.service:RecommenderService"
FLOOR_TARGET = "serving.floor:FloorService"
"""A trivial BentoML endpoint with the same server settings: the framework's floor."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent

QUIET_ENV = {
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
    "FEAST_USAGE": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bentoml_command(host: str, port: int, target: str = SERVICE_TARGET) -> list[str]:
    """``bentoml serve <target> --host H --port P`` with this interpreter's bentoml."""
    executable = Path(sys.executable).with_name("bentoml")
    program = [str(executable)] if executable.exists() else [sys.executable, "-m", "bentoml"]
    return [*program, "serve", target, "--host", host, "--port", str(port)]


def service_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the service process: the caller's, the settings made explicit (the
    profile, data dir, model and the prod servers' URLs), quiet."""
    env = {**os.environ, **QUIET_ENV}
    env["RECSYS_PROFILE"] = settings.profile
    env["RECSYS_DATA_DIR"] = str(settings.data_dir)
    env["RECSYS_MODEL_NAME"] = settings.model_name
    # The prod servers the settings name (perhaps given as arguments, not variables).
    for name in ("mlflow_tracking_uri", "redis_url", "prefect_api_url"):
        value = getattr(settings, name)
        if value:
            env[f"RECSYS_{name.upper()}"] = value
    env.setdefault("BENTOML_HOME", str(settings.data_dir / "bentoml"))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


class ManagedProcess:
    """A server as a child process in its own session: launched, probed over HTTP until it is
    ready, and stopped with its whole process group. Use as a context manager; it always stops.

    ``name`` says what the process is in error messages; ``probe`` is the path (under ``url``)
    that answers 200 once the server is ready.
    """

    name = "the process"

    def __init__(
        self,
        command: list[str],
        *,
        url: str,
        probe: str,
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        self.command = command
        self.url = url
        self.probe = probe
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    def launch(self) -> Self:
        """Start the process and return at once (:meth:`wait_ready` waits for it).

        Raises:
            RecsysError: it is already running.
        """
        if self.running:
            raise RecsysError(f"{self.name} on {self.url} is already running; stop it first")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float | None = None, *, probe: str | None = None) -> Self:
        """Return once ``probe`` (default: the instance's) answers 200.

        Raises:
            RecsysError: the process exited, or was not ready in ``timeout`` seconds (it is
                stopped then); the message carries the last lines of its log.
        """
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None:
                raise RecsysError(f"{self.name} was never launched: call launch() first")
            if self.process.poll() is not None:
                raise RecsysError(f"{self.name} exited at start: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{probe or self.probe}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RecsysError(f"{self.name} was not ready after {timeout:.0f}s: {self.log_tail()}")

    def start(self, timeout: float | None = None, *, probe: str | None = None) -> Self:
        """:meth:`launch`, then :meth:`wait_ready`; returns self."""
        self.launch()
        return self.wait_ready(timeout, probe=probe)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=5)
        except ProcessLookupError:
            return self.process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        # `with proc.start() as p:` enters a started process: not a second one
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServiceProcess(ManagedProcess):
    """A ``bentoml serve`` child process. Use as a context manager; it always stops cleanly."""

    name = "the service"

    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        target: str = SERVICE_TARGET,
        start_timeout: float = 90.0,
    ) -> None:
        self.settings = settings
        self.target = target
        self.host = host or settings.serve_host
        self.port = port or free_port(self.host)
        super().__init__(
            bentoml_command(self.host, self.port, target),
            url=f"http://{self.host}:{self.port}",
            probe="/readyz",
            env=service_env(settings, env),
            log_path=log_path or settings.data_dir / "logs" / f"service-{self.port}.log",
            cwd=PROJECT_ROOT,
            start_timeout=start_timeout,
        )


@dataclass(frozen=True)
class ServeBenchmark:
    """Figures of one load run against a running service."""

    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    fallbacks: dict[str, int]
    cached: int

    def as_dict(self) -> dict:
        return asdict(self)


def benchmark_service(
    url: str,
    user_ids: list[int],
    *,
    requests: int = 500,
    concurrency: int = 4,
    k: int = 10,
    timeout: float = 10.0,
) -> ServeBenchmark:
    """Send ``requests`` ``POST /recommend`` calls from ``concurrency`` threads, cycling through
    ``user_ids``; returns latency percentiles (client side), throughput and what answered.

    A non-200 answer or a transport error counts as an error, never raises.
    """
    if not user_ids or requests < 1 or concurrency < 1:
        raise RecsysError("benchmark needs at least one user, one request and one thread")
    latencies: list[float] = []
    fallbacks: Counter[str] = Counter()
    counts = {"errors": 0, "cached": 0}
    lock = threading.Lock()
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]

    def worker(index: int, count: int) -> None:
        with httpx.Client(timeout=timeout) as client:
            for n in range(count):
                user = user_ids[(index + n * concurrency) % len(user_ids)]
                started = time.perf_counter()
                try:
                    reply = client.post(f"{url}/recommend", json={"user_id": user, "k": k})
                    ok = reply.status_code == 200
                    body = reply.json() if ok else {}
                except httpx.HTTPError:
                    ok, body = False, {}
                elapsed = time.perf_counter() - started
                with lock:
                    if not ok:
                        counts["errors"] += 1
                        continue
                    latencies.append(elapsed)
                    fallbacks[str(body.get("fallback"))] += 1
                    counts["cached"] += bool(body.get("cached"))

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(shares)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    ordered = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return ServeBenchmark(
        requests=requests,
        errors=counts["errors"],
        seconds=round(seconds, 3),
        requests_per_s=round(len(latencies) / seconds, 1),
        p50_ms=pct(0.50),
        p95_ms=pct(0.95),
        p99_ms=pct(0.99),
        fallbacks=dict(fallbacks),
        cached=counts["cached"],
    )
