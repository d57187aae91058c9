"""Non-default configuration knobs: checksum key format, credential sources, max_credential_bytes,
spend_cap_status, custom identity / error header names, default error format and browser denial."""

from checks import assert_credential_stripped, assert_denied, bearer, xkey
from keys import break_checksum, vpx_checksum_key
from world import ALT_IDENTITY, WORLD

W = WORLD
ALT_IDS = (ALT_IDENTITY["key_id"], ALT_IDENTITY["project"], ALT_IDENTITY["org"], ALT_IDENTITY["environment"])
ERR = "x-auth-error"


def _denied(env, resp, status, code, **kw):
    kw.setdefault("fmt", "anthropic")
    return assert_denied(env, resp, status, code, error_header=ERR, **kw)


def _allowed(env, resp, key, environment="live"):
    assert resp.status == 200, resp
    got = env.upstream.one(resp.request_id)
    assert [got.header_all(h) for h in ALT_IDS] == [[key.id], ["proj_alpha"], ["org_acme"], [environment]], got.headers
    for h in ("x-keyward-key-id", "x-keyward-project", "x-keyward-org", "x-keyward-environment"):
        assert got.header(h) is None, "default identity header names used despite identity_headers"
    assert_credential_stripped(got, key)
    return got


def test_checksum_key_allowed(alt_envoy):
    _allowed(alt_envoy, alt_envoy.request("GET", "/v1/models", [xkey(W.cks)]), W.cks)


def test_checksum_test_key_environment(alt_envoy):
    _allowed(alt_envoy, alt_envoy.request("GET", "/v1/models", [xkey(W.cks_test)]), W.cks_test, environment="test")


def test_bad_checksum_is_malformed(alt_envoy):
    bad = break_checksum(W.cks.plaintext)
    resp = alt_envoy.request("GET", "/v1/models", [xkey(bad)])
    _denied(alt_envoy, resp, 401, "malformed_api_key", presented=(bad,))


def test_unknown_key_with_valid_checksum_is_invalid(alt_envoy):
    resp = alt_envoy.request("GET", "/v1/models", [xkey(vpx_checksum_key("live"))])
    _denied(alt_envoy, resp, 401, "invalid_api_key")


def test_checksum_key_in_default_format_is_malformed(alt_envoy):
    # vpx is not among this configuration's key formats
    resp = alt_envoy.request("GET", "/v1/models", [xkey(W.alpha_vpx)])
    _denied(alt_envoy, resp, 401, "malformed_api_key", key=W.alpha_vpx)


def test_ak_still_accepted(alt_envoy):
    _allowed(alt_envoy, alt_envoy.request("GET", "/v1/models", [xkey(W.alpha)]), W.alpha)


def test_authorization_source_disabled(alt_envoy):
    resp = alt_envoy.request("GET", "/v1/models", [bearer(W.cks)])
    _denied(alt_envoy, resp, 401, "missing_api_key", key=W.cks)


def test_max_credential_bytes(alt_envoy):
    assert len(W.long_cks.plaintext) > 64
    resp = alt_envoy.request("GET", "/v1/models", [xkey(W.long_cks)])
    _denied(alt_envoy, resp, 401, "malformed_api_key", key=W.long_cks)


def test_spend_cap_status(alt_envoy):
    resp = alt_envoy.request("GET", "/v1/models", [xkey(W.key_capped)])
    body = _denied(alt_envoy, resp, 429, "spend_cap_exceeded", key=W.key_capped)
    assert body["error"]["type"] == "rate_limit_error"


def test_global_browser_denial(alt_envoy):
    resp = alt_envoy.request("GET", "/v1/models", [xkey(W.alpha), ("origin", "https://app.example")])
    _denied(alt_envoy, resp, 403, "browser_request_denied", key=W.alpha)


def test_custom_identity_headers_replace_spoofed(alt_envoy):
    spoofed = [(h, "spoofed") for h in ALT_IDS]
    _allowed(alt_envoy, alt_envoy.request("GET", "/v1/models", spoofed + [xkey(W.cks)]), W.cks)


def test_custom_identity_headers_removed_on_exempt(alt_envoy):
    spoofed = [(h, "spoofed") for h in ALT_IDS]
    resp = alt_envoy.request("GET", "/healthz", spoofed)
    assert resp.status == 200, resp
    got = alt_envoy.upstream.one(resp.request_id)
    for h in ALT_IDS:
        assert got.header(h) is None, got.headers
