"""The HTTP edge of the recommendation service: an ASGI middleware in front of BentoML's app.

It does what BentoML's own request handling does not:

* bounds the request body before anything parses it: a ``Content-Length`` above the limit is a
  413 without reading the body, and a body streamed without one is read up to the limit and
  refused the same way (BentoML would read and parse any size first);
* refuses a ``POST`` body that is not JSON by its ``Content-Type`` with a 415 (BentoML would
  parse a form or a multipart body into the same fields, past their strict types);
* turns BentoML's validation answer (``"1 validation error for Input"``) into a 400 whose
  ``error`` names each field and what is wrong with it (``"k: Input should be less than or
  equal to 100"``), the pydantic details kept under ``detail``;
* gives every other error answer the same JSON body (the router's plain-text 404 and 405);
* answers a path no route serves with that 404 itself: the router redirected ``/recommend/``
  to a ``Location`` built from the client's ``Host`` header;
* reads every ``POST`` body itself, within ``body_timeout_s``, before BentoML sees the
  request: a client that disconnects meanwhile is let go without an answer (BentoML logged a
  ``ClientDisconnect`` traceback and counted a 500, which the 5xx alert reads), one that
  stalls gets a 408 (BentoML's request timeout answered 504, a server error), a compressed
  body (``Content-Encoding``) is a 415 (it was read as JSON and failed as such), and a key
  given twice in an object is a 400 (the parser kept the last one);
* publishes an OpenAPI document (``/docs.json``) that tells the truth about the answers: request
  bodies with required fields are required, every error status an endpoint can answer is listed
  with the one error body all of them share (``{"error": "...", "detail": ...}``), and the admin
  endpoints declare their bearer token.

BentoML's request metrics and access log run outside this middleware: they still see every
request, a made-up path included. :func:`routed_series_only` keeps the series of made-up paths
out of ``/metrics`` (see ``docs/limits.md``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "minLength": 1, "description": "What is wrong, in words."},
        "detail": {"description": "Machine-readable details (validation errors: a list)."},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
BEARER = {"type": "http", "scheme": "bearer", "description": "RECSYS_ADMIN_TOKEN"}
KNOWN_PATHS_KEPT = 256
"""Paths remembered as served by a route (the rest are matched against the routes again)."""
ERROR_STATUSES = {
    400: "Invalid request: the error names the field and the problem.",
    408: "The request body did not arrive within RECSYS_BODY_TIMEOUT_S.",
    413: "The request body is larger than RECSYS_MAX_BODY_KB.",
    415: "The body is not sent uncompressed as Content-Type: application/json.",
    500: "Unexpected error (a defect: the server log has the traceback).",
    504: "The request took longer than the service's request timeout.",
}
"""Statuses every endpoint can answer."""
API_ERRORS = {
    "recommend": {503: "No model is loaded and no fallback could answer."},
    "feedback": {
        409: "The request_id served another user.",
        503: "The feedback log cannot be written: nothing was kept, send it again later.",
    },
    "admin_": {
        401: "Missing or wrong Authorization: Bearer token.",
        404: "Admin disabled (RECSYS_ADMIN_TOKEN unset), or the drill is disabled.",
    },
}
"""Statuses particular to an endpoint, by its BentoML name (or name prefix)."""


def readable_validation_error(errors: list[dict[str, Any]]) -> str:
    """``"k: Input should be ...; user_id: Field required"`` from pydantic's error list."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc") or ()) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request body"


def publishable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document with required request bodies, the real error answers and the
    admin endpoints' bearer token."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["adminToken"] = BEARER
    for item in spec.get("paths", {}).values():
        operation = item.get("post")
        if not operation or "x-bentoml-name" not in operation:
            continue
        name = operation["x-bentoml-name"]
        body = operation.get("requestBody") or {}
        schemas = [media.get("schema") or {} for media in body.get("content", {}).values()]
        if any(schema.get("required") for schema in schemas):
            body["required"] = True
        if name.startswith("admin_"):
            operation["security"] = [{"adminToken": []}]
        statuses = dict(ERROR_STATUSES)
        for prefix, extra in API_ERRORS.items():
            if name == prefix or (prefix.endswith("_") and name.startswith(prefix)):
                statuses.update(extra)
        responses = operation.setdefault("responses", {})
        for code in [c for c in responses if str(c) != "200"]:
            del responses[code]
        for code, description in sorted(statuses.items()):
            responses[str(code)] = {
                "description": description,
                "content": {"application/json": {"schema": ERROR_REF}},
            }
    return spec


async def _answer(send: Send, status: int, payload: dict[str, Any], *, close: bool = False) -> None:
    await _answer_bytes(send, status, json.dumps(payload).encode(), b"application/json", close)


async def _answer_bytes(
    send: Send, status: int, body: bytes, content_type: bytes, close: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if close:  # the rest of a body that did not arrive must not be read as the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _rewriting(
    send: Send, when: Callable[[int], bool], rewrite: Callable[[int, bytes, bytes], bytes | None]
) -> Send:
    """A ``send`` that buffers an answer whose status passes ``when`` and passes its status,
    content type and body through ``rewrite``: its JSON body, or None to keep the answer as it
    was. Other answers go through untouched."""
    held: dict[str, Any] = {}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and when(message.get("status", 200)):
            held["start"], held["body"] = message, b""
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        start = held.pop("start")
        content_type = dict(start.get("headers") or ()).get(b"content-type", b"")
        body = rewrite(start["status"], content_type, held["body"])
        if body is not None:
            headers = [
                (k, v)
                for k, v in start["headers"]
                if k.lower() not in (b"content-length", b"content-type")
            ]
            extra = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            start = {**start, "headers": [*headers, *extra]}
        await send(start)
        await send({"type": "http.response.body", "body": held["body"] if body is None else body})

    return wrapped


def _is_json(content_type: bytes) -> bool:
    """``application/json`` or a ``+json`` type, with or without parameters."""
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _is_error(status: int) -> bool:
    return status >= 400


def _json_error(status: int, content_type: bytes, body: bytes) -> bytes | None:
    """The one error body, ``{"error": ..., "detail"?: ...}``, of an error answer: a plain-text
    one (the router's 404 and 405) says its text under ``error``; BentoML's 400s name the
    fields; BentoML's other 4xx (a one-element list) are unwrapped. None: already right."""
    if not _is_json(content_type):
        text = body.decode("utf-8", errors="replace").strip()
        return json.dumps({"error": text or HTTPStatus(status).phrase}).encode()
    try:
        payload = json.loads(body)
    except ValueError:
        return json.dumps({"error": HTTPStatus(status).phrase}).encode()
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]
        if "error" in payload:
            return json.dumps(payload).encode()
    if status == 400:
        return _readable_400(payload)
    return None


def _readable_400(payload: Any) -> bytes | None:
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list) or not all(isinstance(d, dict) for d in detail):
        return None
    # pydantic's documentation link of each error names the library and its version
    detail = [{k: v for k, v in d.items() if k != "url"} for d in detail]
    return json.dumps({"error": readable_validation_error(detail), "detail": detail}).encode()


_TAG_MANAGER = re.compile(
    r"\s*<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->", re.DOTALL
)


@functools.cache
def _index_page() -> bytes | None:
    """BentoML's index page (its Swagger UI over ``/docs.json``, served from local files)
    without the Google Tag Manager it embeds: a browser that opened the service's root page
    loaded Google's tracker. None if the page is not where BentoML 1.4 keeps it."""
    try:
        import _bentoml_impl.server as server

        page = (Path(server.__file__).parent / "main-openapi.html").read_text(encoding="utf-8")
    except (ImportError, OSError):
        return None
    return _TAG_MANAGER.sub("", page).encode()


def _truthful_spec(status: int, content_type: bytes, body: bytes) -> bytes | None:
    try:
        return json.dumps(publishable_spec(json.loads(body))).encode()
    except (ValueError, AttributeError, TypeError):
        return None


class RequestGuard:
    """ASGI middleware: body bound, readable 400s, a truthful ``/docs.json`` (module docstring).

    Args:
        app: the ASGI app it wraps.
        max_body_bytes: the largest request body accepted.
        body_timeout_s: how long a ``POST`` body may take to arrive whole.
    """

    def __init__(self, app: App, max_body_bytes: int, body_timeout_s: float = 5.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._known: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._routed(scope):
            await _answer(send, 404, _not_found(scope["path"]))
            return
        if scope["method"] == "GET" and scope["path"] == "/" and (page := _index_page()):
            await _answer_bytes(send, 200, page, b"text/html; charset=utf-8")
            return
        if scope["method"] == "GET" and scope["path"].endswith("/docs.json"):
            await self.app(scope, receive, _rewriting(send, lambda s: s == 200, _truthful_spec))
            return
        if scope["method"] == "HEAD":  # no body to rewrite
            await self.app(scope, receive, send)
            return
        errors = _rewriting(send, _is_error, _json_error)
        if scope["method"] != "POST":
            await self.app(scope, receive, errors)
            return
        headers = dict(scope.get("headers") or ())
        content_type = headers.get(b"content-type")
        if content_type is not None and not _is_json(content_type):
            await _answer(send, 415, self._not_json(content_type))
            return
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity"):
            await _answer(send, 415, self._compressed(encoding))
            return
        # the HTTP server refuses a malformed Content-Length itself; the read below bounds the rest
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, 413, self._too_big(int(declared)))
            return
        chunks: list[bytes] = []
        size = 0
        try:  # one timer for the whole body (asyncio.wait_for made a task per message)
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client left: nobody to answer, nothing failed
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_body_bytes:
                        await _answer(send, 413, self._too_big(size, streamed=True))
                        return
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            await _answer(send, 408, self._too_slow(size), close=True)
            return
        body = b"".join(chunks)
        twice = _keys_given_twice(body)
        if twice:
            await _answer(send, 400, {"error": f"invalid request: {twice}: given twice"})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, errors)

    def _routed(self, scope: Scope) -> bool:
        """Whether a route of the app serves ``scope``'s path (for some method: a wrong method
        is the router's 405). True when the routes cannot be seen: the router answers then."""
        path = scope["path"]
        if path in self._known:
            return True
        routes = getattr(scope.get("app"), "routes", None)
        if routes is None:
            return True
        from starlette.routing import Match, Route

        for route in routes:
            if route.matches(scope)[0] != Match.NONE:
                if isinstance(route, Route) and len(self._known) < KNOWN_PATHS_KEPT:
                    self._known.add(path)  # a mount's paths are endless: matched each time
                return True
        return False

    def _too_slow(self, size: int) -> dict[str, Any]:
        return {
            "error": f"the request body did not arrive within {self.body_timeout_s:g} s "
            f"({size} bytes came; RECSYS_BODY_TIMEOUT_S)"
        }

    @staticmethod
    def _compressed(encoding: bytes) -> dict[str, Any]:
        sent = encoding.decode("latin-1")
        return {"error": f"Content-Encoding {sent} is not supported: send the JSON uncompressed"}

    @staticmethod
    def _not_json(content_type: bytes) -> dict[str, Any]:
        sent = content_type.decode("latin-1").strip() or "an empty Content-Type"
        return {"error": f"send the body as JSON with Content-Type: application/json, not {sent}"}

    def _too_big(self, size: int, *, streamed: bool = False) -> dict[str, Any]:
        sent = f"more than {self.max_body_bytes}" if streamed else str(size)
        return {
            "error": f"request body of {sent} bytes exceeds the limit of "
            f"{self.max_body_bytes} bytes (RECSYS_MAX_BODY_KB)"
        }


_ENDPOINT = re.compile(r'endpoint="((?:[^"\\]|\\.)*)"')
PAGES = frozenset({"/", "/docs.json", "/schema.json"})
"""BentoML's own pages whose request series ``/metrics`` keeps beside the service's routes."""


def routed_series_only(content: str, endpoints: frozenset[str]) -> str:
    """Prometheus text without the samples whose ``endpoint`` label is none of ``endpoints``.

    BentoML's request metrics label each series by the path the client sent, before any of the
    service's middleware runs, so every made-up path (answered 404) added series to ``/metrics``
    and to the Prometheus server that scrapes it: a client could grow both without bound."""
    kept = []
    for line in content.splitlines(keepends=True):
        if not line.startswith("#") and 'endpoint="' in line:
            match = _ENDPOINT.search(line)
            if match is not None and match.group(1) not in endpoints:
                continue
        kept.append(line)
    return "".join(kept)


_KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:')
"""A JSON object key (or a string followed by a colon): the cheap look before a full parse."""


def _keys_given_twice(body: bytes) -> str | None:
    """The first key an object of the JSON ``body`` holds twice (``{"user_id": 5, "user_id":
    6}``: the parser keeps the last one, and the request was answered for user 6), else None;
    None too for a body that is not JSON (BentoML's validation says so)."""
    keys = _KEY.findall(body)
    if len(set(keys)) == len(keys):  # no key string twice anywhere: no object holds one twice
        return None
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if not found and len(set(keys)) < len(keys):
            found.append(next(key for i, key in enumerate(keys) if key in keys[:i]))
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return None
    return _escaped(found[0])[:100] if found else None


def _not_found(path: str) -> dict[str, Any]:
    shown = path if len(path) <= 100 else path[:100] + "..."
    return {"error": f"Not Found: no endpoint at {shown} (the endpoints: GET /docs.json)"}


class QuietClientErrors(logging.Filter):
    """BentoML logs every refused request (``Exception on /recommend [POST]``) at ERROR with
    its traceback, the client's bad input included: any client could fill the log with them
    and trip log-based alerts. On the logger of ``bentoml._internal.server.http_app``, this
    makes a 4xx of that kind one INFO line without the traceback (the access log has its
    status too); real failures (5xx) keep their ERROR and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == "Exception on %s [%s]" and _client_error(exc):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "refused %s [%s]: %s"
            record.args = (*(record.args or ()), _what_was_refused(exc))
            record.exc_info, record.exc_text = None, None
        return True


class EscapedControls(logging.Filter):
    """Control characters (a newline, a NUL) in a record's text arguments are written escaped
    (``\\n``, ``\\x00``): a client's path or field name could otherwise start a forged line
    in the log (``/x%0a2026-... [ERROR] ...``) or make it binary to ``grep``. On BentoML's access
    log and on the logger of its request errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_escaped(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _escaped(record.msg)
        return True


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _escaped(text: str) -> str:
    """``text`` with its control characters written as escapes."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def _what_was_refused(exc: BaseException) -> str:
    """The fields and problems of a refused request, without the values the client sent."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return readable_validation_error(errors(include_context=False, include_input=False))
    return " ".join(str(exc).split())[:300]


def _client_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is BentoML's answer to a bad request (validation, or a 4xx)."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500
