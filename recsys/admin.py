"""A small client for the service's admin endpoints (bearer token from settings).

The guardian and the CLI use it to read what the service serves and to make it reload, flush its
cache or change the canary share. Every call raises :class:`RecsysError` with one readable line
when the service cannot be reached or refuses.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from recsys.config import Settings
from recsys.errors import RecsysError

UNREACHABLE = "nothing answers"


class ServiceAdmin:
    """Admin calls against the service at ``url``."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        # kept as a SecretStr: a guardian cycle is a Prefect flow parameter, and Prefect stores
        # its parameters on the server (JSON-encoded from the attributes); SecretStr encodes
        # as "**********"
        self._token = SecretStr(token) if token else None
        self.timeout = timeout

    @property
    def token(self) -> str | None:
        return self._token.get_secret_value() if self._token else None

    def __repr__(self) -> str:
        return f"ServiceAdmin({self.url!r}, token={'***' if self._token else None})"

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> ServiceAdmin:
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        return cls(url or f"http://{settings.serve_host}:{settings.serve_port}", token)

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if not self.token:
            raise RecsysError("no admin token: set RECSYS_ADMIN_TOKEN to manage the service")
        try:
            response = httpx.post(
                f"{self.url}{path}",
                json=body or {},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise RecsysError(f"service at {self.url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise RecsysError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def ready(self) -> bool:
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """None when ``/readyz`` answers 200; else why not: what it answered, or that nothing
        answered at all (``UNREACHABLE`` starts the reason)."""
        try:
            answer = httpx.get(f"{self.url}/readyz", timeout=self.timeout)
        except httpx.HTTPError as exc:
            return f"{UNREACHABLE} ({type(exc).__name__}: {exc})"
        if answer.status_code == 200:
            return None
        return f"/readyz answered {answer.status_code}: {answer.text[:200]}"

    def status(self) -> dict[str, Any]:
        return self._post("/admin/status")

    def reload(self) -> dict[str, Any]:
        return self._post("/admin/reload")

    def flush_cache(self) -> dict[str, Any]:
        return self._post("/admin/cache/flush")

    def set_canary(self, share: float) -> dict[str, Any]:
        return self._post("/admin/canary", {"share": share})

    def inject_fault(self, name: str) -> dict[str, Any]:
        """Chaos hook (only when the service runs with ``RECSYS_FAULT_INJECTION=true``)."""
        return self._post("/admin/fault", {"name": name})

    def served_versions(self) -> dict[str, str]:
        """alias -> version the service serves now."""
        return {a: m["version"] for a, m in self.status().get("models", {}).items()}
