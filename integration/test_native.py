"""The native build (target/keyward.so, an Envoy dynamic module) in a real Envoy: the same
decision table as the Wasm build, the same replies to the same requests, its counters, and the
ABI version handshake. Full parametrization of every integration test over both hosts comes with
the engine's sans-IO core (issue #18, later phase)."""

import pytest

from checks import assert_allowed, assert_credential_stripped, assert_denied, bearer, xkey
from test_decisions import ALLOWED, DENIALS, SPOOFED
from world import POLICY_VERSION, WORLD

W = WORLD
CHAT = "/v1/chat/completions"


def test_module_loads_with_a_matching_abi_version(native_envoy):
    """Envoy only warns on an ABI mismatch; this test makes a mismatch fail loudly, because the
    bindings were checked against exactly this Envoy (native/ABI.md)."""
    log = native_envoy.wait_for_log(lambda t: "keyward: configured (native)" in t)
    assert "Dynamic module ABI version v0.2.0 matched." in log, native_envoy.log_problems()
    assert "is deprecated" not in log


@pytest.mark.parametrize("method,path,headers,status,code,key", [d[1:] for d in DENIALS], ids=[d[0] for d in DENIALS])
def test_denial(native_envoy, method, path, headers, status, code, key):
    body = b"{}" if method == "POST" else None
    resp = native_envoy.request(method, path, headers, body=body)
    presented = tuple(v for k, v in headers if k in ("authorization", "x-api-key"))
    assert_denied(native_envoy, resp, status, code, key=key, presented=presented)


@pytest.mark.parametrize(
    "method,path,headers,key,project,environment", [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED]
)
def test_allowed(native_envoy, method, path, headers, key, project, environment):
    body = b'{"model":"x"}' if method == "POST" else None
    resp = native_envoy.request(method, path, headers, body=body)
    got = assert_allowed(native_envoy, resp, key, project=project, environment=environment)
    assert got.path == path
    if body:
        assert got.body == body


def test_spoofed_identity_replaced(native_envoy):
    resp = native_envoy.request("GET", "/v1/models", SPOOFED + [bearer(W.alpha)])
    assert_allowed(native_envoy, resp, W.alpha)


def test_query_parameter_credential_stripped(native_envoy):
    resp = native_envoy.request("GET", f"/q/search?foo=1&api_key={W.alpha.plaintext}")
    got = assert_allowed(native_envoy, resp, W.alpha)
    assert W.alpha.plaintext not in got.path and "foo=1" in got.path


def test_anthropic_shape(native_envoy):
    resp = native_envoy.request("POST", "/anthropic/v1/messages", [], body=b"{}")
    body = assert_denied(native_envoy, resp, 401, "missing_api_key", fmt="anthropic")
    assert "code" not in body


def test_counters_and_policy_gauge_in_stats(native_envoy):
    names = [
        "keyward.requests.allowed",
        "keyward.requests.exempt",
        "keyward.requests.denied.missing_api_key",
        "keyward.requests.denied.key_revoked",
    ]
    before = {n: native_envoy.metric(n) or 0 for n in names}
    assert native_envoy.request("GET", "/v1/models", [bearer(W.alpha)]).status == 200
    assert native_envoy.request("GET", "/healthz").status == 200
    assert native_envoy.request("GET", "/v1/models").status == 401
    assert native_envoy.request("GET", "/v1/models", [xkey(W.revoked)]).status == 401
    after = {n: native_envoy.metric(n) for n in names}
    assert after == {n: before[n] + 1 for n in names}, native_envoy.stats()
    assert native_envoy.metric("keyward.policy.version") == POLICY_VERSION
    # Envoy puts a dynamic module's metrics under its metrics namespace.
    assert "dynamicmodulescustom.keyward.requests.allowed" in native_envoy.stats()


# Requests whose replies both builds must give identically (status, body, keyward headers, and
# what reaches the upstream). request_id differs per request and is normalized away.
SAME_ANSWER = [
    ("GET", "/v1/models", []),
    ("GET", "/v1/models", [bearer(W.alpha)]),
    ("GET", "/v1/models", [bearer(W.revoked)]),
    ("GET", "/v1/models", [xkey("garbage")]),
    ("GET", "/v1/models", [bearer(W.paused)]),
    ("POST", CHAT, [bearer(W.noscope), ("x-model", "gpt-4o-mini")]),
    ("POST", CHAT, [bearer(W.alpha), ("x-model", "gpt-4o")]),
    ("POST", CHAT, [bearer(W.org), ("x-project-id", "proj_beta"), ("x-model", "gpt-4o-mini")]),
    ("POST", "/legacy/chat/completions", [bearer(W.org), ("x-model", "gpt-4o-mini")]),
    ("GET", "/v1/models", [bearer(W.key_capped)]),
    ("POST", "/anthropic/v1/messages", [xkey(W.paused)]),
    ("GET", "/healthz", SPOOFED),
    ("GET", f"/q/search?api_key={W.alpha.plaintext}", []),
]

VOLATILE = {"date", "x-request-id", "x-envoy-upstream-service-time", "content-length"}


def _answer(env, method, path, headers):
    resp = env.request(method, path, headers, body=b"{}" if method == "POST" else None)
    rid = resp.request_id
    body = resp.body.decode("utf-8", "replace").replace(rid, "<rid>")
    kept = sorted((k, v) for k, v in resp.headers if k not in VOLATILE)
    upstream = env.upstream.by_request_id(rid)
    seen = [sorted((k, v) for k, v in u.headers if k not in VOLATILE) for u in upstream]
    for u in upstream:
        assert_credential_stripped(u)
    if resp.status == 200:
        body = "<echo>"  # the echo body repeats the request id and Envoy-added headers
    return resp.status, kept, body, [u.path for u in upstream], seen


@pytest.mark.parametrize("method,path,headers", SAME_ANSWER, ids=[f"{m} {p[:20]} {i}" for i, (m, p, _) in enumerate(SAME_ANSWER)])
def test_both_builds_give_the_same_answer(main_envoy, native_envoy, method, path, headers):
    assert _answer(native_envoy, method, path, headers) == _answer(main_envoy, method, path, headers)


def test_config_level_callout_and_scheduler_work_in_envoy(envoy_workdir):
    """The callbacks the policy sync will be built on (configuration scheduler committed from a
    module thread, configuration callout, its reply hook), proven against the real Envoy with
    the test-only probe build (`--features abi-probe`, built by `make native`)."""
    import json

    import harness

    probe = harness.REPO_ROOT / "target" / "keyward-abi-probe.so"
    if not probe.is_file():
        pytest.fail(f"{probe} missing: run `make native`", pytrace=False)

    def render(listen_port, admin_port, upstream_port):
        cfg = harness.render_bootstrap(listen_port, admin_port, upstream_port, {}, host="native")
        module = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        module["typed_config"]["filter_name"] = "keyward-abi-probe"
        module["typed_config"]["filter_config"]["value"] = "upstream"  # the cluster to call
        return json.dumps(cfg)

    env = harness.Envoy("abi-probe", envoy_workdir, render=render, host="native", native=probe)
    env.start()
    try:
        log = env.wait_for_log(lambda t: "keyward probe: callout" in t and "answered" in t, timeout=10)
        assert "keyward probe: scheduled event 7 on the main thread" in log, env.log_problems()
        assert "keyward probe: callout 1 answered status 200 with" in log, env.log_problems()
        assert [r.path for r in env.upstream.snapshot()] == ["/abi-probe"]
        assert env.metric("keyward.abi_probe.callout_replies") == 1, env.stats()
    finally:
        env.stop()
