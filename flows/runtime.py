"""Prefect set-up for this project's flows, decided by the settings profile.

Call :func:`configure_prefect` before the first ``import prefect``: Prefect reads its settings
from the environment when it is imported. Local profile: an ephemeral API with its database under
``<data_dir>/prefect`` (no server to install). Prod: ``RECSYS_PREFECT_API_URL`` names the server.
"""

from __future__ import annotations

import logging
import os

from recsys.config import Settings

EPHEMERAL_STARTUP_TIMEOUT_S = 180
"""How long a command waits for the local profile's ephemeral Prefect API to answer."""


def configure_prefect(settings: Settings, *, quiet: bool = False) -> None:
    """Point Prefect at the profile's API and home; keep telemetry off. Idempotent."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    else:
        home = settings.data_dir / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(home))
        os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
        # Prefect waits 20 s by default for its ephemeral API to start; on a busy 2-core machine
        # a start took 19 s on an existing data dir and 27 s on a new one (which builds the
        # API's database first), and running out failed the whole command
        os.environ.setdefault(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S)
        )
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def check_prefect_api(url: str, timeout_s: float = 5.0) -> None:
    """Ask the Prefect server at ``url`` once, with the credentials the client will send
    (``PREFECT_API_AUTH_STRING``, or Prefect Cloud's ``PREFECT_API_KEY``): a server that does
    not answer or refuses them is one line here, not a ``RuntimeError: Failed to reach API`` or
    a 401 traceback from inside a flow.

    Raises:
        RecsysError: nothing answers at ``url``, or it refuses the credentials.
    """
    import httpx

    from recsys.config import mask_url
    from recsys.errors import RecsysError

    auth_string = os.environ.get("PREFECT_API_AUTH_STRING")
    auth = tuple(auth_string.split(":", 1)) if auth_string and ":" in auth_string else None
    key = os.environ.get("PREFECT_API_KEY")  # Prefect Cloud: a bearer key, not basic auth
    headers = {"Authorization": f"Bearer {key}"} if key and auth is None else {}
    base = url.rstrip("/")
    try:
        answer = httpx.post(
            f"{base}/flows/filter",
            json={"limit": 1},
            auth=auth,
            headers=headers,
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise RecsysError(
            f"the Prefect API at {mask_url(base)} does not answer ({type(exc).__name__}: "
            f"{exc}); start the server or fix RECSYS_PREFECT_API_URL"
        ) from None
    if answer.status_code in (401, 403):
        given = "no PREFECT_API_AUTH_STRING"
        if auth or headers:
            given = "a wrong " + ("PREFECT_API_AUTH_STRING" if auth else "PREFECT_API_KEY")
        raise RecsysError(
            f"the Prefect API at {mask_url(base)} refused the request ({answer.status_code}, "
            f"{given}): set PREFECT_API_AUTH_STRING=user:password as the server has it (Prefect "
            "Cloud: PREFECT_API_KEY)"
        )
    if answer.status_code == 404:
        raise RecsysError(
            f"no Prefect API at {mask_url(base)} (404): RECSYS_PREFECT_API_URL ends in /api, "
            "e.g. http://127.0.0.1:4200/api"
        )


def transient(task, task_run, state) -> bool:
    """Retry condition: retry I/O and network errors, never a user error (RecsysError)."""
    import httpx

    from recsys.errors import RecsysError

    try:
        state.result()
    except RecsysError:
        return False
    except (OSError, TimeoutError, httpx.HTTPError, ConnectionError):
        return True
    except Exception:
        return False
    return False


def artifact_key(*parts: object) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from ``parts``."""
    text = "-".join(str(p) for p in parts if p is not None).lower()
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:100] or "artifact"


class _UserErrorsOffTheConsole(logging.Filter):
    """Drops Prefect's terminal lines about a run that failed on a user error (RecsysError):
    the command ends with that error in one ``recsys: error:`` line, and the run's own log
    (the API handler) keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith("prefect."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        from recsys.errors import RecsysError

        return not isinstance(exc, RecsysError) and "RecsysError" not in record.getMessage()


def user_errors_off_the_console() -> None:
    """Install :class:`_UserErrorsOffTheConsole` on the terminal's log handlers (the root
    logger's stream handlers: the CLI's, or Prefect's console handler). Idempotent."""
    for handler in logging.getLogger().handlers:
        terminal = isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        )
        if terminal and not any(isinstance(f, _UserErrorsOffTheConsole) for f in handler.filters):
            handler.addFilter(_UserErrorsOffTheConsole())
