"""Metrics in Envoy's admin /stats and the per-denial log line."""

import json

from checks import bearer, xkey
from keys import ak_key
from world import POLICY_VERSION, WORLD

W = WORLD


def _log_events(env, request_id):
    """Parsed JSON log records that mention request_id."""
    text = env.wait_for_log(lambda t: request_id in t)
    out = []
    for line in text.splitlines():
        if request_id not in line:
            continue
        start = line.find("{")
        assert start >= 0, f"log line is not JSON: {line}"
        out.append(json.loads(line[start:]))
    return out


def test_counters(main_envoy):
    names = [
        "keyward.requests.allowed",
        "keyward.requests.exempt",
        "keyward.requests.denied.missing_api_key",
        "keyward.requests.denied.key_revoked",
        "keyward.requests.denied.malformed_api_key",
    ]
    before = {n: main_envoy.metric(n) or 0 for n in names}
    assert main_envoy.request("GET", "/v1/models", [bearer(W.alpha)]).status == 200
    assert main_envoy.request("GET", "/healthz").status == 200
    assert main_envoy.request("GET", "/v1/models").status == 401
    assert main_envoy.request("GET", "/v1/models", [xkey(W.revoked)]).status == 401
    assert main_envoy.request("GET", "/v1/models", [xkey("garbage")]).status == 401
    after = {n: main_envoy.metric(n) for n in names}
    assert after == {n: before[n] + 1 for n in names}, main_envoy.stats()


def test_policy_version_gauge(main_envoy):
    assert main_envoy.metric("keyward.policy.version") == POLICY_VERSION, main_envoy.stats()


def test_metrics_in_prometheus_format(main_envoy):
    resp = main_envoy.admin("/stats/prometheus")
    assert resp.status == 200
    assert b"keyward" in resp.body


def test_one_log_line_per_denial(main_envoy):
    resp = main_envoy.request(
        "POST", "/v1/chat/completions", [bearer(W.revoked), ("x-model", "gpt-4o-mini")], body=b"{}"
    )
    assert resp.status == 401, resp
    events = _log_events(main_envoy, resp.request_id)
    assert len(events) == 1, events
    ev = events[0]
    assert {"event", "code", "key_id", "project", "route", "request_id"} <= set(ev), ev
    assert ev["code"] == "key_revoked"
    assert ev["key_id"] == W.revoked.id
    assert ev["project"] == "proj_alpha"
    assert ev["route"] == "chat"
    assert ev["request_id"] == resp.request_id


def test_log_line_for_missing_key(main_envoy):
    resp = main_envoy.request("GET", "/v1/models")
    assert resp.status == 401
    events = _log_events(main_envoy, resp.request_id)
    assert len(events) == 1 and events[0]["code"] == "missing_api_key", events


def test_secrets_never_logged(main_envoy):
    wrong = ak_key(key_id=W.alpha.id)  # right id, wrong secret
    requests = [
        [bearer(W.alpha)],
        [bearer(W.revoked)],
        [xkey(W.paused)],
        [bearer(wrong)],
        [bearer(ak_key())],
        [bearer(f"ak_{W.alpha.id}.{W.alpha.secret}x-")],
        [bearer(W.alpha), xkey(W.alpha_vpx)],
    ]
    last = None
    for hdrs in requests:
        last = main_envoy.request("GET", "/v1/models", hdrs)
    main_envoy.wait_for_log(lambda t: last.request_id in t)
    text = main_envoy.log()
    for s in W.secrets() + [wrong.plaintext, wrong.secret]:
        assert s not in text, f"Envoy log contains a key, secret or hash ({s[:10]}...)"
