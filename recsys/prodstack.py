"""The prod profile's servers on one machine, without Docker: an MLflow tracking server and a
Prefect server, both on PostgreSQL and both behind basic auth, beside a running Redis.

PostgreSQL and Redis must already run (``pg_ctlcluster``, ``redis-server``); this module starts
the two Python servers as child processes on loopback, each on a fresh database that is dropped
again when the stack stops::

    from recsys.prodstack import ProdStack
    with ProdStack(state_dir, postgres_url="postgresql://postgres@127.0.0.1:5432/postgres",
                   redis_url="redis://127.0.0.1:6379/0") as stack:
        os.environ.update(stack.client_env())   # RECSYS_PROFILE=prod, the URLs, credentials
        ...                                      # recsys flows, `recsys serve`, ...

:class:`MlflowServer`: ``mlflow server --app-name basic-auth`` with a PostgreSQL backend store
(``postgresql+psycopg2://``: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is
not installed) and artifacts under ``<state_dir>/mlartifacts``, served through the server
(``mlflow-artifacts:/``), so no client needs the server's file system. The admin user is created
on the first start from ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD`` (the auth
config file, ``MLFLOW_AUTH_CONFIG_PATH``, holds no secret); clients log in with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.

:class:`PrefectServer`: ``prefect server start`` with ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
(``postgresql+asyncpg://``) and ``PREFECT_SERVER_API_AUTH_STRING``; clients send
``PREFECT_API_AUTH_STRING``. Only ``/api/health`` (and ``/ready``) answer without it.

docs/prod-profile.md gives the same set-up as shell commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from recsys.config import mask_url
from recsys.errors import RecsysError
from recsys.server import QUIET_ENV, ManagedProcess, free_port

BIN = Path(sys.executable).parent
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class BasicAuth:
    """A user name and password; the password never shows in a repr or a log line."""

    username: str
    password: SecretStr

    @classmethod
    def generate(cls, username: str = "recsys") -> BasicAuth:
        """``username`` with a fresh random password of 32 URL-safe characters."""
        return cls(username, SecretStr(secrets.token_urlsafe(24)))

    @property
    def auth_string(self) -> str:
        """``user:password``, as Prefect's auth-string settings take it."""
        return f"{self.username}:{self.password.get_secret_value()}"


# ---- PostgreSQL and Redis -------------------------------------------------------------------


def with_driver(url: str, driver: str) -> str:
    """``postgresql://...`` (or ``postgres://``, or another ``postgresql+x://``) with the
    SQLAlchemy ``driver``: ``with_driver(url, "asyncpg")`` -> ``postgresql+asyncpg://...``.

    Raises:
        RecsysError: ``url`` is not a PostgreSQL URL.
    """
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise RecsysError(
            f"{mask_url(url)} is not a PostgreSQL URL; use postgresql://user@host:port/db"
        )
    return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))


def database_url(url: str, database: str) -> str:
    """``url`` pointing at ``database`` on the same server, with the same credentials."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _libpq_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def check_postgres(url: str, timeout: float = 3.0) -> None:
    """Connect to PostgreSQL at ``url`` once.

    Raises:
        RecsysError: the server does not answer or refuses the login (the message masks the
            password).
    """
    import psycopg2

    try:
        psycopg2.connect(_libpq_url(url), connect_timeout=max(1, int(timeout))).close()
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(
            f"PostgreSQL at {mask_url(url)} is unreachable ({reason}); start it "
            "(e.g. `pg_ctlcluster 15 main start`) or point the URL at a running server"
        ) from None


def check_redis(url: str, timeout: float = 3.0) -> None:
    """Ping Redis at ``url`` once.

    Raises:
        RecsysError: Redis does not answer.
    """
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        raise RecsysError(
            f"Redis at {mask_url(url)} is unreachable ({exc}); start redis-server or point "
            "the URL at a running Redis"
        ) from None


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    """Create the database ``name`` on the server of ``admin_url`` (a role that may create
    databases) and yield its URL; drop it on exit, closing what is still connected to it.

    Raises:
        RecsysError: ``name`` is not a plain lowercase identifier, or the server refuses.
    """
    import psycopg2

    if not _DATABASE_NAME.match(name):
        raise RecsysError(
            f"database name {name!r} must be lowercase letters, digits and underscores"
        )

    def run(statement: str) -> None:
        conn = psycopg2.connect(_libpq_url(admin_url), connect_timeout=5)
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            conn.close()

    try:
        run(f'CREATE DATABASE "{name}"')
    except psycopg2.Error as exc:
        raise RecsysError(
            f"could not create database {name} at {mask_url(admin_url)}: {exc}".strip()
        ) from None
    try:
        yield database_url(admin_url, name)
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the servers ----------------------------------------------------------------------------


def mlflow_auth_problem() -> str | None:
    """Why ``mlflow server --app-name basic-auth`` cannot start here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        return (
            "MLflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra), which is not "
            "installed in this environment"
        )
    return None


def _server_env(drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | QUIET_ENV


AUTH_CONFIG = """\
# MLflow basic auth (`mlflow server --app-name basic-auth`), read through MLFLOW_AUTH_CONFIG_PATH.
# No secret here: the admin user is created on the first start from MLFLOW_AUTH_ADMIN_USERNAME
# and MLFLOW_AUTH_ADMIN_PASSWORD.
[mlflow]
default_permission = READ
database_uri = {database_uri}
admin_username = {username}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# A checked password is remembered for a minute: each check is a scrypt hash (about 0.2 s of
# CPU) and a client makes a request per registry call. One worker: a password change applies
# at once.
auth_cache_ttl_seconds = 60
"""


class LoopbackServer(ManagedProcess):
    """A server process that keeps its files under ``state_dir`` and listens on ``host:port``
    (a free port by default); subclasses name the ``probe`` and ``log_name`` and set
    ``command`` and ``env``."""

    probe = "/health"
    log_name = "server.log"

    def __init__(self, state_dir: Path, host: str, port: int | None, start_timeout: float):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        super().__init__(
            [],
            url=f"http://{host}:{self.port}",
            probe=self.probe,
            env={},
            log_path=self.state_dir / self.log_name,
            start_timeout=start_timeout,
        )


class MlflowServer(LoopbackServer):
    """``mlflow server`` on loopback with a SQL backend store and artifacts under
    ``<state_dir>/mlartifacts`` served through the server; with ``admin`` set, behind basic
    auth (its user store in ``<state_dir>/basic_auth.db``). The log is
    ``<state_dir>/mlflow.log``.

    Raises:
        RecsysError: ``admin`` is set and the basic-auth app cannot run here (Flask-WTF).
    """

    name = "the MLflow server"
    log_name = "mlflow.log"

    def __init__(
        self,
        state_dir: Path,
        *,
        backend_store_uri: str,
        admin: BasicAuth | None,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        super().__init__(state_dir, host, port, start_timeout)
        self.admin = admin
        self.command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(self.state_dir / "mlartifacts"),
            "--host",
            host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        drop = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        self.env = _server_env(drop)
        if admin is None:
            return
        problem = mlflow_auth_problem()
        if problem:
            raise RecsysError(f"{problem}: install it, or start the server without auth")
        config = self.state_dir / "basic_auth.ini"
        config.write_text(
            AUTH_CONFIG.format(
                database_uri=f"sqlite:///{self.state_dir / 'basic_auth.db'}",
                username=admin.username,
            )
        )
        self.command += ["--app-name", "basic-auth"]
        self.env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password.get_secret_value(),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        }


class PrefectServer(LoopbackServer):
    """``prefect server start`` on loopback with its own ``PREFECT_HOME`` under ``state_dir``,
    on ``database_url`` (``postgresql+asyncpg://...``; None: SQLite in that home) and, with
    ``auth`` set, behind basic auth. No UI. The log is ``<state_dir>/prefect.log``."""

    name = "the Prefect server"
    probe = "/api/health"
    log_name = "prefect.log"

    def __init__(
        self,
        state_dir: Path,
        *,
        database_url: str | None,
        auth: BasicAuth | None,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        super().__init__(state_dir, host, port, start_timeout)
        self.auth = auth
        self.command = [str(BIN / "prefect"), "server", "start", "--host", host]
        self.command += ["--port", str(self.port)]
        drop = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")
        self.env = _server_env(drop) | {
            "PREFECT_HOME": str(self.state_dir / "prefect-home"),
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        if database_url is not None:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        if auth is not None:
            self.env["PREFECT_SERVER_API_AUTH_STRING"] = auth.auth_string

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


# ---- the whole stack ------------------------------------------------------------------------


class ProdStack:
    """PostgreSQL databases for MLflow and Prefect (fresh, named ``<prefix>_<random>_mlflow``
    and ``..._prefect``), the two servers on them behind basic auth with generated credentials
    (``mlflow_auth=False``: the MLflow server without auth), and the Redis at ``redis_url``.
    A context manager: on exit, or when a start fails, the servers are stopped and the
    databases dropped.

    Raises (on enter):
        RecsysError: PostgreSQL or Redis is unreachable, or a server did not start (the message
            carries the end of its log).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        postgres_url: str,
        redis_url: str,
        prefix: str = "recsys",
        mlflow_auth: bool = True,
        start_timeout: float = 180.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self.name = f"{prefix}_{secrets.token_hex(4)}"
        self.start_timeout = start_timeout
        self.mlflow_admin = BasicAuth.generate("recsys-admin") if mlflow_auth else None
        self.prefect_auth = BasicAuth.generate("recsys")
        self.mlflow: MlflowServer | None = None
        self.prefect: PrefectServer | None = None
        self.databases: dict[str, str] = {}
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> ProdStack:
        check_postgres(self.postgres_url)
        check_redis(self.redis_url)
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def _start(self) -> None:
        for role in ("mlflow", "prefect"):
            self.databases[role] = self._exit.enter_context(
                postgres_database(self.postgres_url, f"{self.name}_{role}")
            )
        self.mlflow = MlflowServer(
            self.state_dir / "mlflow",
            backend_store_uri=with_driver(self.databases["mlflow"], "psycopg2"),
            admin=self.mlflow_admin,
            start_timeout=self.start_timeout,
        )
        self.prefect = PrefectServer(
            self.state_dir / "prefect",
            database_url=with_driver(self.databases["prefect"], "asyncpg"),
            auth=self.prefect_auth,
            start_timeout=self.start_timeout,
        )
        # Both run their schema migrations at start: launched together, waited for together.
        for server in (self.mlflow, self.prefect):
            self._exit.callback(server.stop)
            server.launch()
        for server in (self.mlflow, self.prefect):
            server.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def client_env(self) -> dict[str, str]:
        """The variables a client of this stack needs (the recsys settings of the prod profile
        and each server's native credential variables)."""
        if self.mlflow is None or self.prefect is None:
            raise RecsysError("the stack is not started: use it as a context manager")
        env = {
            "RECSYS_PROFILE": "prod",
            "RECSYS_REDIS_URL": self.redis_url,
            "RECSYS_POSTGRES_URL": self.postgres_url,
            "RECSYS_MLFLOW_TRACKING_URI": self.mlflow.url,
            "RECSYS_PREFECT_API_URL": self.prefect.api_url,
            "PREFECT_API_AUTH_STRING": self.prefect_auth.auth_string,
        }
        if self.mlflow_admin is not None:
            env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_admin.username
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_admin.password.get_secret_value()
        return env
