"""Shadow mode, and what happens without a usable policy (fail closed / fail open / stale)."""

import pytest

from checks import IDENTITY, assert_credential_stripped, assert_denied, bearer, xkey
from world import WORLD

W = WORLD
SHADOW = "x-keyward-shadow-denied"
SPOOFED = [
    ("x-keyward-key-id", "kAdmin"),
    ("x-keyward-project", "proj_other"),
    ("x-keyward-org", "org_globex"),
    ("x-keyward-environment", "test"),
]

# ---------------------------------------------------------------------------------------------
# shadow mode

SHADOW_CASES = [
    ("missing", "GET", "/v1/models", [], "missing_api_key"),
    ("malformed", "GET", "/v1/models", [bearer("sk-proj-abcdefghijklmnop")], "malformed_api_key"),
    ("revoked", "GET", "/v1/models", [bearer(W.revoked)], "key_revoked"),
    ("paused_x_api_key", "GET", "/v1/models", [xkey(W.paused)], "key_paused"),
    ("project_mismatch", "POST", "/v1/chat/completions",
     [bearer(W.alpha), ("x-project-id", "proj_beta"), ("x-model", "gpt-4o-mini")], "project_mismatch"),
    ("browser", "POST", "/v1/chat/completions",
     [bearer(W.alpha), ("x-model", "gpt-4o-mini"), ("origin", "https://a.example")], "browser_request_denied"),
    ("spend_cap", "GET", "/v1/models", [bearer(W.key_capped)], "spend_cap_exceeded"),
]


@pytest.mark.parametrize("method,path,headers,code", [c[1:] for c in SHADOW_CASES], ids=[c[0] for c in SHADOW_CASES])
def test_shadow_lets_would_be_denials_through(shadow_envoy, method, path, headers, code):
    resp = shadow_envoy.request(
        method, path, SPOOFED + [(SHADOW, "spoofed")] + headers, body=b"{}" if method == "POST" else None
    )
    assert resp.status == 200, resp
    assert resp.header("x-keyward-error") is None, resp
    got = shadow_envoy.upstream.one(resp.request_id)
    assert got.header_all(SHADOW) == [code], got.headers  # the filter's verdict only, never a client copy
    for h in IDENTITY:
        assert got.header(h) is None, f"shadow-denied request carries {h}: {got.headers}"
    assert_credential_stripped(got)


def test_shadow_allowed_request(shadow_envoy):
    resp = shadow_envoy.request("GET", "/v1/models", SPOOFED + [bearer(W.alpha), (SHADOW, "missing_api_key")])
    assert resp.status == 200, resp
    got = shadow_envoy.upstream.one(resp.request_id)
    assert got.header(SHADOW) is None, got.headers
    assert_credential_stripped(got, W.alpha)
    # identity headers, if the filter adds them in shadow mode, are the trusted ones
    for h, trusted in zip(IDENTITY, (W.alpha.id, "proj_alpha", "org_acme", "live")):
        assert got.header_all(h) in ([], [trusted]), got.headers


def test_shadow_exempt_route(shadow_envoy):
    resp = shadow_envoy.request("GET", "/healthz", SPOOFED)
    assert resp.status == 200, resp
    got = shadow_envoy.upstream.one(resp.request_id)
    assert got.header(SHADOW) is None
    for h in IDENTITY:
        assert got.header(h) is None


def test_shadow_metric(shadow_envoy):
    before = shadow_envoy.metric("keyward.requests.shadow_denied") or 0
    resp = shadow_envoy.request("GET", "/v1/models", [bearer(W.revoked)])
    assert resp.status == 200, resp
    after = shadow_envoy.metric("keyward.requests.shadow_denied")
    assert after == before + 1, shadow_envoy.stats()


def test_shadow_logs_would_be_denial(shadow_envoy):
    resp = shadow_envoy.request("GET", "/v1/models", [bearer(W.paused)])
    assert resp.status == 200
    text = shadow_envoy.wait_for_log(lambda t: resp.request_id in t)
    lines = [ln for ln in text.splitlines() if resp.request_id in ln]
    assert len(lines) == 1, lines
    assert "key_paused" in lines[0]
    assert W.paused.secret not in text and W.paused.plaintext not in text


# ---------------------------------------------------------------------------------------------
# no policy: fail closed (default) and fail open


def test_fail_closed_with_key(fail_closed_envoy):
    resp = fail_closed_envoy.request("GET", "/v1/models", [bearer(W.alpha)])
    assert_denied(fail_closed_envoy, resp, 503, "policy_unavailable", key=W.alpha)


def test_fail_closed_before_missing_key(fail_closed_envoy):
    resp = fail_closed_envoy.request("GET", "/v1/models")
    assert_denied(fail_closed_envoy, resp, 503, "policy_unavailable")


def test_fail_closed_anthropic_shape(fail_closed_envoy):
    resp = fail_closed_envoy.request("POST", "/anthropic/v1/messages", [xkey(W.alpha)], body=b"{}")
    assert_denied(fail_closed_envoy, resp, 503, "policy_unavailable", fmt="anthropic", key=W.alpha)


def test_fail_closed_exempt_still_passes(fail_closed_envoy):
    resp = fail_closed_envoy.request("GET", "/healthz", SPOOFED)
    assert resp.status == 200, resp
    got = fail_closed_envoy.upstream.one(resp.request_id)
    for h in IDENTITY:
        assert got.header(h) is None


def test_fail_open_passes(fail_open_envoy):
    before = fail_open_envoy.metric("keyward.requests.fail_open") or 0
    resp = fail_open_envoy.request("GET", "/v1/models", SPOOFED + [bearer(W.alpha)])
    assert resp.status == 200, resp
    assert resp.header("x-keyward-error") is None
    got = fail_open_envoy.upstream.one(resp.request_id)
    for h in IDENTITY:
        assert got.header(h) is None, f"fail-open request carries a client-sent or made-up {h}"
    assert fail_open_envoy.metric("keyward.requests.fail_open") == before + 1, fail_open_envoy.stats()


def test_fail_open_without_key(fail_open_envoy):
    resp = fail_open_envoy.request("GET", "/v1/models")
    assert resp.status == 200, resp
    fail_open_envoy.upstream.one(resp.request_id)


def test_stale_policy_is_unusable(stale_envoy):
    resp = stale_envoy.request("GET", "/v1/models", [bearer(W.alpha)])
    assert_denied(stale_envoy, resp, 503, "policy_unavailable", key=W.alpha)
