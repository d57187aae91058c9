"""Assertions shared by the filter tests."""

from __future__ import annotations

import time
from typing import Optional

import pytest

from harness import Envoy, Response
from keys import Key
from world import WORLD

TYPE_FOR_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "api_error",
}
IDENTITY = ("x-keyward-key-id", "x-keyward-project", "x-keyward-org", "x-keyward-environment")
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def bearer(key) -> tuple[str, str]:
    return ("authorization", f"Bearer {key.plaintext if isinstance(key, Key) else key}")


def xkey(key) -> tuple[str, str]:
    return ("x-api-key", key.plaintext if isinstance(key, Key) else key)


def assert_no_leak(text: str, key: Optional[Key] = None, extra: tuple[str, ...] = ()) -> None:
    for s in WORLD.secrets() + list(extra):
        assert s not in text, f"response leaks a secret or hash: {s[:12]}..."
    for p in WORLD.foreign_projects(key):
        assert p not in text, f"response leaks another project's id {p!r}"


def assert_denied(
    env: Envoy,
    resp: Response,
    status: int,
    code: str,
    *,
    key: Optional[Key] = None,
    fmt: str = "openai",
    error_header: str = "x-keyward-error",
    presented: tuple[str, ...] = (),
    error_type: Optional[str] = None,
) -> dict:
    """A local reply with the keyward error contract; the upstream never saw the request."""
    summary = f"expected {status} {code}, got {resp!r}"
    assert resp.status == status, summary
    assert resp.header(error_header) == code, summary
    ctype = resp.header("content-type") or ""
    assert ctype.split(";")[0].strip() == "application/json", summary
    if status == 401:
        assert resp.header("www-authenticate") == 'Bearer realm="keyward"', summary
    body = resp.json()
    expected_type = error_type or TYPE_FOR_STATUS.get(status)
    if fmt == "openai":
        assert set(body) == {"error"}, body
        err = body["error"]
        assert err.get("code") == code, body
        got_rid = err.get("request_id")
    else:
        assert body.get("type") == "error", body
        assert set(body) == {"type", "error", "request_id"}, body
        err = body["error"]
        got_rid = body.get("request_id")
    if expected_type is not None:
        assert err.get("type") == expected_type, body
    else:
        assert isinstance(err.get("type"), str) and err["type"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    assert isinstance(got_rid, str) and got_rid, body
    if resp.request_id:
        assert got_rid == resp.request_id, f"request_id {got_rid!r} != x-request-id {resp.request_id!r}"
    assert env.upstream.by_request_id(resp.request_id) == [], "denied request reached the upstream"
    assert_no_leak(resp.raw_text(), key, presented)
    return body


def assert_allowed(
    env: Envoy,
    resp: Response,
    key: Key,
    *,
    project: Optional[str] = "__own__",
    org: Optional[str] = "__own__",
    environment: str = "live",
    identity=IDENTITY,
):
    """Proxied with trusted identity headers, credential stripped everywhere."""
    assert resp.status == 200, f"expected the request to be allowed, got {resp!r}"
    assert resp.header("x-keyward-error") is None, resp
    got = env.upstream.one(resp.request_id)
    owner = WORLD.owner[WORLD.name_of(key)]
    if project == "__own__":
        project = owner.get("project")
    if org == "__own__":
        org = owner.get("org") or _org_of(owner.get("project"))
    id_h, proj_h, org_h, env_h = identity
    assert got.header_all(id_h) == [key.id], got.headers
    if project is None:
        assert got.header(proj_h) in (None, ""), got.headers
    else:
        assert got.header_all(proj_h) == [project], got.headers
    assert got.header_all(org_h) == [org], got.headers
    assert got.header_all(env_h) == [environment], got.headers
    assert_credential_stripped(got, key)
    return got


def assert_credential_stripped(got, key: Optional[Key] = None) -> None:
    for h in CREDENTIAL_HEADERS:
        assert got.header(h) is None, f"upstream received {h}: {got.headers}"
    text = got.text()
    if key is not None:
        assert key.plaintext not in text, "upstream saw the key"
        if key.secret:
            assert key.secret not in text, "upstream saw the secret"
    for s in WORLD.secrets():
        assert s not in text, "upstream saw a key, secret or hash"


def _org_of(project: Optional[str]) -> Optional[str]:
    from world import PROJECT_ORG

    return PROJECT_ORG.get(project) if project else None


def answer(env: Envoy, key: str, path: str = "/v1/models") -> tuple[int, Optional[str]]:
    """Status and `x-keyward-error` of a GET with `key` as the bearer credential."""
    resp = env.request("GET", path, [("authorization", f"Bearer {key}")])
    return resp.status, resp.header("x-keyward-error")


def wait_for_answer(env: Envoy, key: str, expected: tuple[int, Optional[str]], limit_s: float = 10.0) -> None:
    """Until four answers in a row are `expected` (every worker has the policy); fails the test
    with the log after limit_s."""
    deadline = time.monotonic() + limit_s
    seen = None
    while time.monotonic() < deadline:
        seen = {answer(env, key) for _ in range(4)}
        if seen == {expected}:
            return
        time.sleep(0.1)
    pytest.fail(f"after {limit_s}s still {seen}, wanted {expected}\n{env.log_tail(40)}")
