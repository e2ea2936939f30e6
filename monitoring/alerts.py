"""Alert delivery: every alert is a log line (logger ``recsys.alerts``, level WARNING) and, when
``RECSYS_ALERT_WEBHOOK_URL`` is set, a JSON POST to that URL (Slack-, Teams- or
Alertmanager-style receivers take ``text``; the rest of the payload carries the evidence).

The webhook URL is a secret (it usually embeds a token): it is never logged, only its host.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from recsys.config import Settings

logger = logging.getLogger("recsys.alerts")


def deliver_alert(
    settings: Settings,
    *,
    layer: str,
    check: str,
    seen: str,
    action: str | None = None,
    verified: bool | None = None,
    evidence: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Send one alert; returns ``{"log": True, "webhook": ..., "ok": bool}`` where ``ok`` is
    False only when a configured webhook did not accept it (a 2xx answer)."""
    outcome = (
        "" if action is None else f" -> {action} ({'verified' if verified else 'NOT verified'})"
    )
    text = f"[recsys] {layer}/{check}: {seen}{outcome}"
    logger.warning("ALERT %s", text)
    result: dict[str, Any] = {"log": True, "webhook": None, "ok": True}
    secret = settings.alert_webhook_url
    if secret is None:
        return result
    url = secret.get_secret_value()
    host = urlsplit(url).hostname or "?"
    payload = {
        "text": text,
        "layer": layer,
        "check": check,
        "seen": seen,
        "action": action,
        "verified": verified,
        "evidence": evidence or {},
        "at": datetime.now(UTC).isoformat(),
    }
    import httpx

    try:
        answer = _post_unlogged(url, payload, timeout)
        result["webhook"] = {"host": host, "status": answer.status_code}
        result["ok"] = answer.is_success
    except httpx.HTTPError as exc:
        result["webhook"] = {"host": host, "error": type(exc).__name__}
        result["ok"] = False
    if not result["ok"]:
        logger.error("alert webhook at %s did not accept the alert: %s", host, result["webhook"])
    return result


def _post_unlogged(url: str, payload: dict[str, Any], timeout: float):
    """POST ``payload`` to ``url`` through httpx's transport, below its client: the client logs
    every request's full URL at INFO (``recsys -v``), and this URL is the secret. Credentials in
    the URL go as a Basic auth header, as the client would send them."""
    import base64
    from urllib.parse import unquote

    import httpx

    parts = urlsplit(url)
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    request = httpx.Request(
        "POST",
        bare,
        json=payload,
        headers=headers,
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )
    with httpx.HTTPTransport() as transport:
        answer = transport.handle_request(request)
        answer.read()
    return answer
