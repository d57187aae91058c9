"""The native build (target/keyward.so, an Envoy dynamic module) in a real Envoy, next to the
Wasm build: the ABI version handshake, its metrics namespace, the configuration callout and
scheduler it syncs through, and the same answers to the same requests from both builds
(decisions, and a metered sequence: bodies sent upstream, rate limits, caps, counters). The
rest of the integration suite runs on each build in turn (`make integration`)."""

import json
import time

import pytest

import harness

import test_decisions as decisions
import test_observability as observability
from checks import assert_credential_stripped, bearer, xkey
from keys import ak_key
from mock_provider import MockProvider
from test_decisions import ALLOWED, DENIALS, SPOOFED
from world import WORLD

# starts both builds itself: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host

W = WORLD
CHAT = "/v1/chat/completions"


def test_module_loads_with_a_matching_abi_version(native_envoy):
    """Envoy only warns on an ABI mismatch; this test makes a mismatch fail loudly, because the
    bindings were checked against exactly this Envoy (native/ABI.md)."""
    log = native_envoy.wait_for_log(lambda t: "keyward: configured (native)" in t)
    assert "Dynamic module ABI version v0.2.0 matched." in log, native_envoy.log_problems()
    assert "is deprecated" not in log


# The Wasm suite's own checks, run on the native build (every integration test will run on
# both builds once the engine's core lands; until then these are the reused ones).


@pytest.mark.parametrize("method,path,headers,status,code,key", [d[1:] for d in DENIALS], ids=[d[0] for d in DENIALS])
def test_denial(native_envoy, method, path, headers, status, code, key):
    decisions.test_denial(native_envoy, method, path, headers, status, code, key)


@pytest.mark.parametrize(
    "method,path,headers,key,project,environment", [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED]
)
def test_allowed(native_envoy, method, path, headers, key, project, environment):
    decisions.test_allowed(native_envoy, method, path, headers, key, project, environment)


@pytest.mark.parametrize(
    "check",
    [
        decisions.test_spoofed_identity_replaced,
        decisions.test_exempt_route_never_forwards_a_key,
        decisions.test_query_parameter_opt_in_stripped,
        decisions.test_anthropic_shape_401,
        observability.test_counters,
        observability.test_policy_version_gauge,
        observability.test_one_log_line_per_denial,
    ],
    ids=lambda check: check.__name__,
)
def test_wasm_suite_check(native_envoy, check):
    check(native_envoy)


def test_metrics_use_the_dynamic_module_namespace(native_envoy):
    assert native_envoy.request("GET", "/v1/models").status == 401
    assert "dynamicmodulescustom.keyward.requests.denied.missing_api_key" in native_envoy.stats()


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
def test_both_builds_give_the_same_answer(wasm_envoy, native_envoy, method, path, headers):
    assert _answer(native_envoy, method, path, headers) == _answer(wasm_envoy, method, path, headers)


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
        assert [r.path for r in env.upstream.recorded()] == ["/abi-probe"]
        assert env.metric("keyward.abi_probe.callout_replies") == 1, env.stats()
    finally:
        env.stop()


# ---------------------------------------------------------------------------------------------
# Metering: the same sequence of metered requests through both builds, interleaved so that rate
# buckets refill alike, must give the same statuses, keyward headers, bodies sent upstream and
# metering counters (reservations, settled micro-dollars).

METERED_KEY = ak_key()
CAPPED_KEY = ak_key()


def _metered_config() -> dict:
    now = int(time.time()) - 5
    return {
        "metering": {"reservation_ceiling_microusd": 100_000, "bytes_per_token": 4},
        "routes": [
            {"name": "chat", "match": {"path_prefix": "/v1/chat/completions"}, "meter": True},
            {"name": "messages", "match": {"path_prefix": "/v1/messages"}, "meter": True, "error_format": "anthropic"},
        ],
        "policy": {
            "version": 1, "issued_at": now,
            "prices": [{"model": "gpt-4o*", "input_microusd_per_mtok": 2_000_000, "output_microusd_per_mtok": 10_000_000},
                       {"model": "claude*", "input_microusd_per_mtok": 3_000_000, "output_microusd_per_mtok": 15_000_000}],
            "projects": [{"id": "proj_m", "org": "org_m", "status": "active"}],
            "keys": [
                METERED_KEY.record(project="proj_m", status="active", models=["gpt-4o*", "claude*"],
                                   rate_limits={"requests_per_minute": 6}, spend_soft_cap_microusd=1_500),
                CAPPED_KEY.record(project="proj_m", status="active", spend_cap_microusd=2_000),
            ],
        },
    }


def _chat(key, model="gpt-4o-mini", stream=False, **extra) -> tuple[str, str, list, bytes]:
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}], **extra}
    if stream:
        body["stream"] = True
    headers = [("authorization", f"Bearer {key.plaintext}"), ("content-type", "application/json"),
               ("x-mock-input-tokens", "120"), ("x-mock-output-tokens", "40")]
    return "POST", "/v1/chat/completions", headers, json.dumps(body).encode()


def _messages(key) -> tuple[str, str, list, bytes]:
    body = {"model": "claude-3-5-haiku", "max_tokens": 30, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = [("x-api-key", key.plaintext), ("content-type", "application/json"), ("anthropic-version", "2023-06-01"),
               ("x-mock-input-tokens", "80"), ("x-mock-output-tokens", "20")]
    return "POST", "/v1/messages", headers, json.dumps(body).encode()


METERED_SEQUENCE = [
    _chat(METERED_KEY),
    _chat(METERED_KEY, stream=True),  # the body gets stream_options.include_usage
    _messages(METERED_KEY),
    _chat(METERED_KEY, model="o1-preview"),  # not on the key's allow-list
    _chat(METERED_KEY, stream=True, stream_options={"include_usage": True}),
    _chat(METERED_KEY),
    _chat(METERED_KEY),
    _chat(METERED_KEY),  # the seventh admitted request within a minute: rate limited
    *[_chat(CAPPED_KEY) for _ in range(6)],  # settles past its cap, then refused
]


def _metered_answer(env, upstream, request) -> tuple:
    method, path, headers, body = request
    before = len(upstream.recorded())
    resp = env.request(method, path, headers, body=body)
    resp.body  # read whole: a streamed response settles when it ends
    rid = resp.request_id
    kept = sorted((k, v) for k, v in resp.headers
                  if (k.startswith("x-keyward-") or k.startswith("x-ratelimit-")) and not k.startswith("x-ratelimit-reset"))
    text = resp.body.decode("utf-8", "replace").replace(rid, "<rid>") if resp.status != 200 else "<provider>"
    sent = [json.loads(s.body) if isinstance(s.body, (bytes, str)) and s.body else s.body for s in upstream.recorded()[before:]]
    return resp.status, kept, text, sent


@pytest.fixture(scope="module")
def metered_pair(envoy_workdir, wasm, native_module):
    envs = []
    try:
        for host in ("wasm", "native"):
            provider = MockProvider().start()
            env = harness.Envoy(f"metered-{host}", envoy_workdir, plugin_config=_metered_config(), wasm=wasm,
                                host=host, native=native_module, upstream=provider, concurrency=2)
            env.start()
            envs.append((env, provider))
        yield envs
    finally:
        for env, _provider in envs:
            env.stop()


def test_both_builds_meter_the_same(metered_pair):
    (wasm_env, wasm_up), (native_env, native_up) = metered_pair
    for index, request in enumerate(METERED_SEQUENCE):
        expected = _metered_answer(wasm_env, wasm_up, request)
        got = _metered_answer(native_env, native_up, request)
        assert got == expected, f"request {index} ({request[1]}): native {got} != wasm {expected}"
    metering = ("keyward.metering.reservations", "keyward.metering.settled_microusd",
                "keyward.metering.soft_cap_warnings", "keyward.requests.denied.rate_limited",
                "keyward.requests.denied.spend_cap_exceeded", "keyward.requests.denied.model_not_allowed")
    time.sleep(0.2)  # the last stream's settlement runs as it ends
    wasm_counts = {name: wasm_env.metric(name) or 0 for name in metering}
    native_counts = {name: native_env.metric(name) or 0 for name in metering}
    assert native_counts == wasm_counts
    # The sequence reached what it is meant to reach, on both builds.
    assert wasm_counts["keyward.requests.denied.rate_limited"] == 1, wasm_counts
    assert wasm_counts["keyward.requests.denied.spend_cap_exceeded"] >= 1, wasm_counts
    assert wasm_counts["keyward.requests.denied.model_not_allowed"] == 1, wasm_counts
    assert wasm_counts["keyward.metering.soft_cap_warnings"] >= 1, wasm_counts
    assert wasm_counts["keyward.metering.settled_microusd"] > 0, wasm_counts
