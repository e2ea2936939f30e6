"""API fuzzing of the real service with schemathesis 4, against the OpenAPI document it serves.

One ``bentoml serve`` process on loopback, on a copy of the session's trained world (so the
fuzzer's feedback events land in the copy), with an admin token. Every operation of
``/docs.json`` is fuzzed with schema-valid and schema-violating bodies (Hypothesis,
derandomized, bounded), the admin endpoints with the right token, a wrong one and none. The
checks: schemathesis's (no 5xx, status codes, content types and bodies conform to the
document, schema-violating bodies are refused, schema-valid ones accepted, auth is not
ignored) plus ours: every 4xx says what is wrong in a JSON ``error`` text, and no input makes
the (healthy) model fail.

Each defect the fuzzer found has a regression test below the fuzz test (see serving/http.py).
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from recsys.config import Settings
from recsys.server import ServiceProcess
from serving.http import publishable_spec, readable_validation_error

TOKEN = "fuzz-admin-token"
AUTH = {
    "token": {"authorization": f"Bearer {TOKEN}"},
    "none": {},
    "wrong": {"authorization": "Bearer not-the-token"},
}
ADMIN = ("/admin/status", "/admin/reload", "/admin/cache/flush", "/admin/canary", "/admin/fault")
# (path, method, auth, examples per generation mode): the bounded budget of the fuzz run
OPERATIONS = [
    ("/recommend", "POST", "none", 60),
    ("/feedback", "POST", "none", 60),
    *[(path, "POST", "token", 8) for path in ADMIN],
    *[(path, "POST", auth, 4) for path in ADMIN for auth in ("none", "wrong")],
    *[(path, "GET", "none", 1) for path in ("/livez", "/readyz", "/healthz", "/metrics")],
]
GENERIC_400 = "validation error for"
"""BentoML's own 400 text ("1 validation error for Input"), which names no field."""


@pytest.fixture(scope="module")
def service(trained_world, tmp_path_factory):
    settings, _, result = trained_world
    folder = tmp_path_factory.mktemp("fuzz") / "data"
    shutil.copytree(settings.data_dir, folder, ignore=shutil.ignore_patterns("logs", "bentoml"))
    env = {"RECSYS_ADMIN_TOKEN": TOKEN, "RECSYS_RELOAD_INTERVAL_S": "0"}
    with ServiceProcess(Settings(data_dir=folder, seed=settings.seed), env=env) as proc:
        yield proc, result.release


@pytest.fixture(scope="module")
def api(service):
    proc, _ = service
    return schemathesis.openapi.from_url(f"{proc.url}/docs.json")


def says_what_is_wrong(ctx, response, case) -> bool | None:
    """Our check: a 4xx answer is a JSON object whose ``error`` says, in words, what is wrong
    (not empty, not BentoML's generic validation text)."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        raise AssertionError(
            f"{response.status_code} without a JSON body: {response.content!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, str) and len(error.strip()) >= 10, (
        f"{response.status_code} without an error text: {response.content!r}"
    )
    assert GENERIC_400 not in error, f"{response.status_code} names no field: {error}"
    return True


def model_never_fails(ctx, response, case) -> bool | None:
    """Our check: the model is healthy, so no input may make it fail. A /recommend answer from
    the failure paths (``cache``, ``degraded``) means the input broke the model: it is counted
    as a model error and pages the operator."""
    if urlsplit(response.request.url).path != "/recommend" or response.status_code != 200:
        return None
    fallback = json.loads(response.content).get("fallback")
    assert fallback not in ("cache", "degraded"), f"the input made the model fail: {fallback}"
    return True


CHECKS = [says_what_is_wrong, model_never_fails]


def _rating_without_stars(case) -> bool:
    """A /feedback rating whose value is not 0.5-5 stars: schema-valid (an OpenAPI 3.0 schema
    cannot tie ``value`` to ``event``) but refused by the service, on purpose."""
    body = case.body if isinstance(case.body, dict) else {}
    value = body.get("value")
    stars = isinstance(value, int | float) and not isinstance(value, bool) and 0.5 <= value <= 5
    return case.path == "/feedback" and body.get("event") == "rating" and not stars


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method", "auth", "examples"), OPERATIONS)
def test_fuzzed_requests_never_get_a_5xx_and_every_answer_matches_the_document(
    service, api, path, method, auth, examples, mode
):
    proc, _ = service
    operation = api[path][method]
    if mode is GenerationMode.NEGATIVE and method == "GET":
        pytest.skip("a GET without parameters has no schema-violating input")
    answered: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        # on the case, not the call: the ignored_auth check then replays it without the token
        case.headers = {**(case.headers or {}), **AUTH[auth]}
        if mode is GenerationMode.POSITIVE and _rating_without_stars(case):
            response = case.call_and_validate(
                base_url=proc.url,
                additional_checks=CHECKS,
                excluded_checks=[positive_data_acceptance],
            )
            assert response.status_code == 400 and "rating" in response.text
        else:
            response = case.call_and_validate(base_url=proc.url, additional_checks=CHECKS)
        answered.append(response.status_code)

    fuzz()
    assert answered, "the fuzzer sent no request"
    if path in ADMIN and auth != "token":
        # the body is validated before the token is looked at: a malformed one is a 400
        allowed = {401} if mode is GenerationMode.POSITIVE else {400, 401}
        assert set(answered) <= allowed and 401 in answered, answered


# ---- our check fails on the answers it exists to catch ---------------------------------------


def _response(status: int, content: bytes) -> schemathesis.Response:
    import requests

    return schemathesis.Response(
        status_code=status,
        headers={"content-type": ["application/json"]},
        content=content,
        request=requests.Request("POST", "http://127.0.0.1/recommend").prepare(),
        elapsed=0.001,
        verify=True,
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[]",
        b'{"detail": "k"}',
        b'{"error": ""}',
        b'{"error": "1 validation error for Input", "detail": []}',
    ],
)
def test_the_4xx_check_refuses_an_answer_that_does_not_say_what_is_wrong(content):
    with pytest.raises(AssertionError):
        says_what_is_wrong(None, _response(400, content), None)


@pytest.mark.parametrize("fallback", ["degraded", "cache"])
def test_the_model_check_refuses_an_answer_from_the_failure_paths(fallback):
    failed = json.dumps({"fallback": fallback, "items": []}).encode()
    with pytest.raises(AssertionError, match="made the model fail"):
        model_never_fails(None, _response(200, failed), None)
    cold = json.dumps({"fallback": "cold_start", "items": []}).encode()
    assert model_never_fails(None, _response(200, cold), None) is True


def test_the_4xx_check_accepts_a_named_field_and_ignores_other_statuses():
    named = b'{"error": "invalid request: k: Input should be greater than or equal to 1"}'
    assert says_what_is_wrong(None, _response(400, named), None) is True
    assert says_what_is_wrong(None, _response(200, b""), None) is None


# ---- regression tests: one per defect the fuzzer found ---------------------------------------


@pytest.mark.slow
def test_nullable_fields_are_published_as_nullable(service):
    """Finding 1: BentoML publishes ``str | None`` as ``string``; every answer with
    ``fallback: null`` broke the document it serves."""
    proc, _ = service
    spec = httpx.get(f"{proc.url}/docs.json").json()

    def properties(path: str) -> dict:
        ok = spec["paths"][path]["post"]["responses"]["200"]
        return ok["content"]["application/json"]["schema"]["properties"]

    for field in ("model_version", "variant", "fallback", "features"):
        assert properties("/recommend")[field].get("nullable") is True, field
    for field in ("variant", "model_version"):
        assert properties("/feedback")[field].get("nullable") is True, field
    body = httpx.post(f"{proc.url}/recommend", json={"user_id": 10**12, "k": 2}).json()
    assert body["fallback"] == "cold_start" and body["features"] is None


@pytest.mark.slow
def test_a_body_with_required_fields_is_published_as_required(service):
    """Finding 2: a POST without a body was schema-valid for /admin/canary and /admin/fault
    (BentoML never marks a request body required), and the service refused it."""
    proc, _ = service
    paths = httpx.get(f"{proc.url}/docs.json").json()["paths"]
    for path in ("/recommend", "/feedback", "/admin/canary", "/admin/fault"):
        assert paths[path]["post"]["requestBody"].get("required") is True, path
    assert not paths["/admin/status"]["post"]["requestBody"].get("required")
    reply = httpx.post(f"{proc.url}/admin/canary", headers=AUTH["token"])
    assert reply.status_code == 400 and "share: Field required" in reply.json()["error"]


@pytest.mark.slow
def test_every_error_status_is_published_with_the_error_body(service):
    """Finding 3: 401 (admin), 409 (feedback), 413, 503 and 504 were answered but not in the
    document, and its error schema said ``detail`` is a string while 400s carry a list."""
    proc, _ = service
    spec = httpx.get(f"{proc.url}/docs.json").json()
    paths = spec["paths"]

    def statuses(path: str) -> set[str]:
        return set(paths[path]["post"]["responses"])

    assert {"200", "400", "413", "500", "503", "504"} <= statuses("/recommend")
    assert "409" in statuses("/feedback") and "401" not in statuses("/feedback")
    for path in ADMIN:
        assert {"401", "404"} <= statuses(path), path
        assert paths[path]["post"]["security"] == [{"adminToken": []}]
    assert spec["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and "type" not in error["properties"]["detail"]
    wrong = httpx.post(f"{proc.url}/admin/status", json={}, headers=AUTH["wrong"])
    assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]


@pytest.mark.slow
def test_a_400_names_each_field_and_what_is_wrong(service):
    """Finding 4: BentoML's 400 said "1 validation error for Input"; the field was only in a
    list under ``detail``."""
    proc, _ = service
    reply = httpx.post(f"{proc.url}/recommend", json={"k": 0})
    assert reply.status_code == 400
    body = reply.json()
    assert "user_id: Field required" in body["error"]
    assert "k: Input should be greater than or equal to 1" in body["error"]
    assert [d["loc"] for d in body["detail"]] == [["user_id"], ["k"]]
    garbage = httpx.post(
        f"{proc.url}/feedback", content=b"\x00", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400 and garbage.json()["error"].startswith(
        "invalid request: body: Invalid JSON"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/recommend", {"user_id": True}, "user_id"),
        ("/recommend", {"user_id": "12"}, "user_id"),
        ("/recommend", {"user_id": 1, "k": 2.0}, "k"),
        ("/recommend", {"user_id": 1, "exclude": [False]}, "exclude.0"),
        (
            "/feedback",
            {"request_id": "r", "user_id": 1, "item_id": False, "event": "view"},
            "item_id",
        ),
        ("/admin/canary", {"share": True}, "share"),
    ],
)
def test_booleans_strings_and_floats_are_not_taken_for_ids_or_shares(service, path, payload, field):
    """Finding 5: pydantic's lax mode read ``"item_id": false`` as item 0 (a feedback event
    for the wrong item) and ``"share": true`` as a canary share of 1.0."""
    proc, _ = service
    reply = httpx.post(f"{proc.url}{path}", json=payload, headers=AUTH["token"])
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"invalid request: {field}: ")


@pytest.mark.slow
def test_an_id_beyond_int64_is_a_400_not_a_model_failure(service):
    """Finding 6 (by hand, following the fuzzer's large ids; ``model_never_fails`` now looks
    for it): ``exclude: [2**100]`` for a known user overflowed inside the ranker, so the answer
    came from the degraded path and counted as a model error (which pages); an item id that
    large went into the feedback log as is."""
    proc, release = service
    user = int(release.user_ids[4])
    too_big = 2**63
    for path, payload, field in [
        ("/recommend", {"user_id": user, "exclude": [too_big]}, "exclude.0"),
        ("/recommend", {"user_id": too_big}, "user_id"),
        (
            "/feedback",
            {"request_id": "r", "user_id": 1, "item_id": too_big, "event": "view"},
            "item_id",
        ),
    ]:
        reply = httpx.post(f"{proc.url}{path}", json=payload)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"].startswith(f"invalid request: {field}: ")
    largest = httpx.post(f"{proc.url}/recommend", json={"user_id": user, "exclude": [too_big - 1]})
    assert largest.status_code == 200 and largest.json()["fallback"] is None
    errors = [
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{proc.url}/metrics").text.splitlines()
        if line.startswith("recsys_serving_model_errors_total{")
    ]
    assert sum(errors) == 0, errors


@pytest.mark.slow
def test_the_body_bound_holds_for_every_endpoint_and_for_streamed_bodies(service):
    """Finding 7 (read, not fuzzed): the body limit was checked on /recommend only, from the
    Content-Length header only, after BentoML had parsed the whole body."""
    proc, _ = service
    limit = Settings().max_body_kb * 1024
    note = {"user_id": 1, "context": {"note": "x" * (limit + 10)}}
    data = json.dumps(note).encode()

    def chunks():
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    streamed = httpx.post(
        f"{proc.url}/recommend", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert f"more than {limit} bytes" in streamed.json()["error"]
    feedback = {"request_id": "x" * (limit + 10), "user_id": 1, "item_id": 1, "event": "view"}
    declared = httpx.post(f"{proc.url}/feedback", json=feedback)
    assert declared.status_code == 413 and "RECSYS_MAX_BODY_KB" in declared.json()["error"]
    fits = httpx.post(f"{proc.url}/recommend", json={"user_id": 1, "context": {"n": "x" * 100}})
    assert fits.status_code == 200


# ---- the published-document fixes, without a server ----------------------------------------


def test_readable_validation_error_names_every_location():
    errors = [
        {"loc": ["k"], "msg": "Input should be greater than or equal to 1"},
        {"loc": [], "msg": "Invalid JSON"},
        {"loc": ["context", "a"], "msg": "Input should be a valid string"},
    ]
    assert readable_validation_error(errors) == (
        "invalid request: k: Input should be greater than or equal to 1; body: Invalid JSON; "
        "context.a: Input should be a valid string"
    )
    assert readable_validation_error([]) == "invalid request body"


def test_publishable_spec_leaves_operations_it_does_not_own_alone():
    spec = {
        "paths": {
            "/livez": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/x": {"post": {"x-bentoml-name": "x", "responses": {"200": {}, "400": {}}}},
        }
    }
    out = publishable_spec(spec)
    assert out["paths"]["/livez"] == {"get": {"responses": {"200": {"description": "ok"}}}}
    assert set(out["paths"]["/x"]["post"]["responses"]) == {
        "200",
        "400",
        "408",
        "413",
        "415",
        "500",
        "504",
    }
    assert "security" not in out["paths"]["/x"]["post"]
