"""The decision table, in enforce mode, against a real Envoy running the keyward filter."""

import pytest

from checks import IDENTITY, assert_allowed, assert_credential_stripped, assert_denied, bearer, xkey
from keys import ak_key, rand_base62, vpx_key
from world import ORG, WORLD

W = WORLD
CHAT = "/v1/chat/completions"
MODEL_OK = ("x-model", "gpt-4o-mini")


def _unknown_ak():
    return ak_key()  # well-formed, not in the policy


def _wrong_secret():
    # existing key id, well-formed but wrong secret
    return f"ak_{W.wrong_secret_target.id}.{rand_base62(32)}"


# (id, method, path, headers, status, code, key-for-leak-check)
DENIALS = [
    ("missing", "GET", "/v1/models", [], 401, "missing_api_key", None),
    ("unknown_key_id", "GET", "/v1/models", [bearer(_unknown_ak())], 401, "invalid_api_key", None),
    ("wrong_secret", "GET", "/v1/models", [bearer(_wrong_secret())], 401, "invalid_api_key", None),
    ("unknown_vpx", "GET", "/v1/models", [xkey(vpx_key("live"))], 401, "invalid_api_key", None),
    ("revoked", "GET", "/v1/models", [bearer(W.revoked)], 401, "key_revoked", W.revoked),
    ("expired", "GET", "/v1/models", [bearer(W.expired)], 401, "key_expired", W.expired),
    ("paused", "GET", "/v1/models", [bearer(W.paused)], 403, "key_paused", W.paused),
    ("archived_project", "GET", "/v1/models", [bearer(W.archived)], 403, "project_archived", W.archived),
    ("suspended_project", "GET", "/v1/models", [bearer(W.suspended)], 403, "project_archived", W.suspended),
    ("env_vpx_test_on_live_route", "POST", CHAT, [xkey(W.alpha_test), MODEL_OK], 403, "environment_mismatch", W.alpha_test),
    ("env_ak_test_on_live_route", "POST", CHAT, [bearer(W.alpha_ak_test), MODEL_OK], 403, "environment_mismatch", W.alpha_ak_test),
    ("env_live_on_test_route", "GET", "/sandbox/x", [bearer(W.alpha)], 403, "environment_mismatch", W.alpha),
    ("project_header_other", "POST", CHAT, [bearer(W.alpha), ("x-project-id", "proj_beta"), MODEL_OK], 403, "project_mismatch", W.alpha),
    ("project_path_other", "GET", "/v1/projects/proj_beta/files", [bearer(W.alpha)], 403, "project_mismatch", W.alpha),
    ("project_foreign_key", "POST", CHAT, [bearer(W.globex), ("x-project-id", "proj_alpha"), MODEL_OK], 403, "project_mismatch", W.globex),
    ("org_key_other_org", "POST", CHAT, [bearer(W.org), ("x-project-id", "proj_other"), MODEL_OK], 403, "project_mismatch", W.org),
    ("org_key_unknown_project", "POST", CHAT, [bearer(W.org), ("x-project-id", "proj_nope"), MODEL_OK], 403, "project_mismatch", W.org),
    ("org_key_other_org_path", "GET", "/v1/projects/proj_other/files", [bearer(W.org)], 403, "project_mismatch", W.org),
    ("org_key_no_project", "POST", CHAT, [bearer(W.org), MODEL_OK], 403, "project_required", W.org),
    ("org_key_no_project_route_name", "POST", "/legacy/chat/completions", [bearer(W.org), MODEL_OK], 403, "project_required", W.org),
    ("browser_origin", "POST", CHAT, [bearer(W.alpha), MODEL_OK, ("origin", "https://app.example")], 403, "browser_request_denied", W.alpha),
    ("browser_fetch_mode", "POST", CHAT, [bearer(W.alpha), MODEL_OK, ("sec-fetch-mode", "cors")], 403, "browser_request_denied", W.alpha),
    ("scope_missing", "POST", CHAT, [bearer(W.noscope), MODEL_OK], 403, "insufficient_scope", W.noscope),
    ("scope_method_route", "DELETE", "/v1/files/file_1", [bearer(W.alpha)], 403, "insufficient_scope", W.alpha),
    ("scope_host_route", "GET", "/v1/models", [("host", "admin.example.com"), bearer(W.alpha)], 403, "insufficient_scope", W.alpha),
    ("scope_host_route_case_port", "GET", "/v1/models", [("host", "Admin.Example.COM:8443"), bearer(W.alpha)], 403, "insufficient_scope", W.alpha),
    ("model_header", "POST", CHAT, [bearer(W.alpha), ("x-model", "gpt-4o")], 403, "model_not_allowed", W.alpha),
    ("model_fixed", "POST", "/v1/embeddings", [bearer(W.alpha)], 403, "model_not_allowed", W.alpha),
    ("key_cap_reached", "GET", "/v1/models", [bearer(W.key_capped)], 403, "spend_cap_exceeded", W.key_capped),
    ("key_cap_exceeded", "GET", "/v1/models", [bearer(W.key_over_cap)], 403, "spend_cap_exceeded", W.key_over_cap),
    ("project_cap_reached", "GET", "/v1/models", [bearer(W.proj_capped)], 403, "spend_cap_exceeded", W.proj_capped),
    # first failure wins
    ("order_revoked_before_archived", "GET", "/v1/models", [bearer(W.revoked_archived)], 401, "key_revoked", W.revoked_archived),
    ("order_paused_before_archived", "GET", "/v1/models", [bearer(W.paused_archived)], 403, "key_paused", W.paused_archived),
    ("order_archived_before_env", "POST", CHAT, [xkey(W.archived_test), MODEL_OK], 403, "project_archived", W.archived_test),
    ("order_env_before_project", "POST", CHAT, [xkey(W.alpha_test), ("x-project-id", "proj_beta"), MODEL_OK], 403, "environment_mismatch", W.alpha_test),
    ("order_project_before_browser", "POST", CHAT, [bearer(W.alpha), ("x-project-id", "proj_beta"), MODEL_OK, ("origin", "https://a.example")], 403, "project_mismatch", W.alpha),
    ("order_required_before_browser", "POST", CHAT, [bearer(W.org), MODEL_OK, ("origin", "https://a.example")], 403, "project_required", W.org),
    ("order_browser_before_scope", "POST", CHAT, [bearer(W.noscope), MODEL_OK, ("origin", "https://a.example")], 403, "browser_request_denied", W.noscope),
    ("order_scope_before_cap", "POST", CHAT, [bearer(W.capped_noscope), MODEL_OK], 403, "insufficient_scope", W.capped_noscope),
    ("order_model_before_cap", "POST", CHAT, [bearer(W.capped_models), ("x-model", "o1")], 403, "model_not_allowed", W.capped_models),
    ("cap_with_allowed_model", "POST", CHAT, [bearer(W.capped_models), MODEL_OK], 403, "spend_cap_exceeded", W.capped_models),
    ("order_revoked_before_browser", "POST", CHAT, [bearer(W.revoked), MODEL_OK, ("origin", "https://a.example")], 401, "key_revoked", W.revoked),
    ("order_missing_before_browser", "POST", CHAT, [MODEL_OK, ("origin", "https://a.example")], 401, "missing_api_key", None),
]


@pytest.mark.parametrize("method,path,headers,status,code,key", [d[1:] for d in DENIALS], ids=[d[0] for d in DENIALS])
def test_denial(main_envoy, method, path, headers, status, code, key):
    body = b"{}" if method == "POST" else None
    resp = main_envoy.request(method, path, headers, body=body)
    presented = tuple(v for k, v in headers if k in ("authorization", "x-api-key"))
    assert_denied(main_envoy, resp, status, code, key=key, presented=presented)


def test_unknown_id_and_wrong_secret_look_the_same(main_envoy):
    a = main_envoy.request("GET", "/v1/models", [bearer(_unknown_ak())])
    b = main_envoy.request("GET", "/v1/models", [bearer(_wrong_secret())])
    ja, jb = assert_denied(main_envoy, a, 401, "invalid_api_key"), assert_denied(main_envoy, b, 401, "invalid_api_key")
    ja["error"].pop("request_id")
    jb["error"].pop("request_id")
    assert ja == jb
    ha = sorted((k, v) for k, v in a.headers if k not in ("date", "content-length", "x-request-id"))
    hb = sorted((k, v) for k, v in b.headers if k not in ("date", "content-length", "x-request-id"))
    assert ha == hb
    assert len(a.body) - len(a.request_id) == len(b.body) - len(b.request_id)


def test_model_not_allowed_does_not_reveal_allow_list(main_envoy):
    resp = main_envoy.request("POST", CHAT, [bearer(W.alpha), ("x-model", "gpt-4o")], body=b"{}")
    assert_denied(main_envoy, resp, 403, "model_not_allowed", key=W.alpha)
    assert "gpt-4o-mini" not in resp.raw_text() and "gpt-4.1" not in resp.raw_text()


# ---------------------------------------------------------------------------------------------
# allowed requests


ALLOWED = [
    # (id, method, path, headers, key, expected project (or "__own__"), environment)
    ("bearer", "GET", "/v1/models", [bearer(W.alpha)], W.alpha, "__own__", "live"),
    ("x_api_key", "GET", "/v1/models", [xkey(W.alpha)], W.alpha, "__own__", "live"),
    ("both_headers_same_key", "GET", "/v1/models", [bearer(W.alpha), xkey(W.alpha)], W.alpha, "__own__", "live"),
    ("bearer_lower_case", "GET", "/v1/models", [("authorization", f"bearer {W.alpha.plaintext}")], W.alpha, "__own__", "live"),
    ("bearer_upper_case", "GET", "/v1/models", [("authorization", f"BEARER {W.alpha.plaintext}")], W.alpha, "__own__", "live"),
    ("bearer_extra_spaces", "GET", "/v1/models", [("authorization", f"Bearer    {W.alpha.plaintext}")], W.alpha, "__own__", "live"),
    ("vpx_bearer", "GET", "/v1/models", [bearer(W.alpha_vpx)], W.alpha_vpx, "__own__", "live"),
    ("chat_own_project", "POST", CHAT, [bearer(W.alpha), ("x-project-id", "proj_alpha"), MODEL_OK], W.alpha, "__own__", "live"),
    ("chat_no_project_header", "POST", CHAT, [bearer(W.alpha), MODEL_OK], W.alpha, "__own__", "live"),
    ("chat_model_prefix", "POST", CHAT, [bearer(W.alpha), ("x-model", "gpt-4.1-mini")], W.alpha, "__own__", "live"),
    ("chat_any_model_without_allow_list", "POST", CHAT, [xkey(W.alpha_vpx), ("x-model", "o3")], W.alpha_vpx, "__own__", "live"),
    ("test_key_on_test_route", "GET", "/sandbox/x", [xkey(W.alpha_test)], W.alpha_test, "__own__", "test"),
    ("ak_test_key_on_test_route", "GET", "/sandbox/x", [bearer(W.alpha_ak_test)], W.alpha_ak_test, "__own__", "test"),
    ("not_yet_expired", "GET", "/v1/models", [bearer(W.future)], W.future, "__own__", "live"),
    ("under_cap", "GET", "/v1/models", [bearer(W.key_under_cap)], W.key_under_cap, "__own__", "live"),
    ("org_key_names_project", "POST", CHAT, [bearer(W.org), ("x-project-id", "proj_beta"), MODEL_OK], W.org, "proj_beta", "live"),
    ("org_key_project_path", "GET", "/v1/projects/proj_beta/files", [bearer(W.org)], W.org, "proj_beta", "live"),
    ("org_key_no_project_needed", "GET", "/v1/models", [bearer(W.org)], W.org, None, "live"),
    ("org_vpx_names_project", "POST", CHAT, [xkey(W.org_vpx), ("x-project-id", "proj_alpha"), MODEL_OK], W.org_vpx, "proj_alpha", "live"),
    ("own_project_path", "GET", "/v1/projects/proj_alpha/files", [bearer(W.alpha)], W.alpha, "__own__", "live"),
    ("method_route_other_method", "GET", "/v1/files/file_1", [bearer(W.alpha)], W.alpha, "__own__", "live"),
    ("host_route_other_host", "GET", "/v1/models", [("host", "api.example.com"), bearer(W.alpha)], W.alpha, "__own__", "live"),
    ("origin_on_non_browser_route", "GET", "/v1/models", [bearer(W.alpha), ("origin", "https://a.example")], W.alpha, "__own__", "live"),
    ("embeddings_scope_and_model", "POST", "/v1/embeddings", [bearer(W.noscope)], W.noscope, "__own__", "live"),
]


@pytest.mark.parametrize(
    "method,path,headers,key,project,environment", [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED]
)
def test_allowed(main_envoy, method, path, headers, key, project, environment):
    body = b'{"model":"x"}' if method == "POST" else None
    resp = main_envoy.request(method, path, headers, body=body)
    got = assert_allowed(main_envoy, resp, key, project=project, environment=environment)
    assert got.path == path
    if body:
        assert got.body == body


def test_org_key_identity_headers(main_envoy):
    resp = main_envoy.request("POST", CHAT, [bearer(W.org), ("x-project-id", "proj_beta"), MODEL_OK], body=b"{}")
    got = assert_allowed(main_envoy, resp, W.org, project="proj_beta", org=ORG)
    assert got.header("x-keyward-key-id") == W.org.id


SPOOFED = [
    ("x-keyward-key-id", "kAdmin"),
    ("X-Keyward-Project", "proj_other"),
    ("x-keyward-org", "org_globex"),
    ("X-KEYWARD-ENVIRONMENT", "test"),
]


def test_spoofed_identity_replaced(main_envoy):
    resp = main_envoy.request("GET", "/v1/models", SPOOFED + [bearer(W.alpha)])
    assert_allowed(main_envoy, resp, W.alpha)  # exactly one value each, the trusted one


def test_spoofed_shadow_header_removed(main_envoy):
    resp = main_envoy.request("GET", "/v1/models", [bearer(W.alpha), ("x-keyward-shadow-denied", "none")])
    got = assert_allowed(main_envoy, resp, W.alpha)
    assert got.header("x-keyward-shadow-denied") is None, got.headers


def test_spoofed_project_removed_for_org_key_without_project(main_envoy):
    resp = main_envoy.request("GET", "/v1/models", SPOOFED + [bearer(W.org)])
    assert_allowed(main_envoy, resp, W.org, project=None)


def test_exempt_route_no_key(main_envoy):
    resp = main_envoy.request("GET", "/healthz", SPOOFED)
    assert resp.status == 200, resp
    got = main_envoy.upstream.one(resp.request_id)
    for h in IDENTITY:
        assert got.header(h) is None, f"client-sent {h} reached the upstream on an exempt route"


def test_exempt_route_ignores_bad_key(main_envoy):
    resp = main_envoy.request("GET", "/healthz", [bearer("not-a-key")])
    assert resp.status == 200, resp
    main_envoy.upstream.one(resp.request_id)


def test_exempt_route_never_forwards_a_key(main_envoy):
    """No authentication on exempt routes, but a key sent anyway is still removed."""
    key = W.alpha.plaintext
    resp = main_envoy.request("GET", "/healthz", [bearer(key), ("x-api-key", key)])
    assert resp.status == 200, resp
    got = main_envoy.upstream.one(resp.request_id)
    assert got.header("authorization") is None and got.header("x-api-key") is None, got.headers


def test_exempt_cors_preflight(main_envoy):
    resp = main_envoy.request(
        "OPTIONS", CHAT, [("origin", "https://app.example"), ("access-control-request-method", "POST")] + SPOOFED
    )
    assert resp.status == 200, resp
    got = main_envoy.upstream.one(resp.request_id)
    for h in IDENTITY:
        assert got.header(h) is None


def test_denied_request_with_spoofed_identity_not_forwarded(main_envoy):
    resp = main_envoy.request("GET", "/v1/models", SPOOFED)
    assert_denied(main_envoy, resp, 401, "missing_api_key")


# ---------------------------------------------------------------------------------------------
# Anthropic error shape


def test_anthropic_shape_401(main_envoy):
    resp = main_envoy.request("POST", "/anthropic/v1/messages", [], body=b"{}")
    body = assert_denied(main_envoy, resp, 401, "missing_api_key", fmt="anthropic")
    assert body["error"]["type"] == "authentication_error"
    assert "code" not in body


def test_anthropic_shape_403(main_envoy):
    resp = main_envoy.request("POST", "/anthropic/v1/messages", [xkey(W.paused)], body=b"{}")
    body = assert_denied(main_envoy, resp, 403, "key_paused", fmt="anthropic", key=W.paused)
    assert body["error"]["type"] == "permission_error"


def test_anthropic_route_allows(main_envoy):
    resp = main_envoy.request("POST", "/anthropic/v1/messages", [xkey(W.alpha)], body=b"{}")
    assert_allowed(main_envoy, resp, W.alpha)


# ---------------------------------------------------------------------------------------------
# query parameter credential


def test_query_parameter_opt_in_stripped(main_envoy):
    path = f"/q/search?foo=1&api_key={W.alpha.plaintext}&bar=2"
    resp = main_envoy.request("GET", path)
    got = assert_allowed(main_envoy, resp, W.alpha)
    assert got.path.startswith("/q/search?"), got.path
    assert "api_key" not in got.path and W.alpha.plaintext not in got.path
    assert "foo=1" in got.path and "bar=2" in got.path


def test_query_parameter_only_param(main_envoy):
    resp = main_envoy.request("GET", f"/q/search?api_key={W.alpha.plaintext}")
    got = assert_allowed(main_envoy, resp, W.alpha)
    assert got.path in ("/q/search", "/q/search?"), got.path


def test_query_parameter_denied_key(main_envoy):
    resp = main_envoy.request("GET", f"/q/search?api_key={W.revoked.plaintext}")
    assert_denied(main_envoy, resp, 401, "key_revoked", key=W.revoked)


def test_query_parameter_not_opted_in(main_envoy):
    resp = main_envoy.request("GET", f"/v1/models?api_key={W.alpha.plaintext}")
    assert_denied(main_envoy, resp, 401, "missing_api_key", key=W.alpha)


def test_query_parameter_and_header_same_key(main_envoy):
    resp = main_envoy.request("GET", f"/q/search?api_key={W.alpha.plaintext}", [bearer(W.alpha)])
    got = assert_allowed(main_envoy, resp, W.alpha)
    assert W.alpha.plaintext not in got.path


def test_credential_never_upstream_for_header_key(main_envoy):
    resp = main_envoy.request("GET", "/v1/models?x=1", [bearer(W.alpha_vpx), xkey(W.alpha_vpx)])
    got = assert_allowed(main_envoy, resp, W.alpha_vpx)
    assert_credential_stripped(got, W.alpha_vpx)
    assert got.path == "/v1/models?x=1"
