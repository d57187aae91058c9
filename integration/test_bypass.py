"""The bypass battery (issue #12): every request variant of `bypass_cases.py` through a real Envoy
with the configuration `keyward render envoy` writes and through a plain hand-written one, each
case-sensitive and case-insensitive, over HTTP/1.1 and HTTP/2, to an upstream that reads requests
the way common servers do (`realistic_upstream.py`).

Two things are checked for every variant:
- no bypass: every upstream hit, under every reading the upstream makes of its path and host,
  carries what the route table requires there (`bypass_cases.violations`);
- keyward's answer (or Envoy's, where its hardening refuses first) is the documented one.
"""

from __future__ import annotations

import json
import time

import pytest

import bypass_cases as C
import harness
from raw_clients import Answer, send_h1, send_h2

DOC = harness.REPO_ROOT / "docs" / "bad-inputs.md"
SETTINGS = [(True, False), (False, False), (True, True), (False, True)]


def _setting_id(rendered: bool, folded: bool) -> str:
    return ("rendered" if rendered else "plain") + ("-folded" if folded else "")


def fill(text: str, keys: dict) -> str:
    for name, key in keys.items():
        text = text.replace("{" + name + "}", key.plaintext)
    return text


def send(port: int, variant: C.Variant, version: str, request_id: str, keys: dict) -> Answer:
    headers = []
    if variant.key:
        headers.append(("authorization", f"Bearer {keys[variant.key].plaintext}"))
    headers.append(("x-request-id", request_id))
    headers += [(name, fill(value, keys)) for name, value in variant.headers]
    if variant.body is not None:
        headers.append(("content-type", "application/json"))
    target = fill(variant.target, keys)
    if version == C.H1:
        host = [("host", variant.host)] if variant.host is not None else []
        return send_h1(port, variant.method, target, host + headers, variant.body)
    return send_h2(port, variant.method, target, variant.host, headers, variant.body)


def check_answer(answer: Answer, expected: str, hits: list, context: str) -> None:
    summary = f"{context}: expected {expected}, got {answer!r}; upstream hits: {[h.summary() for h in hits]}"
    if expected == "200":
        assert answer.status == 200 and answer.header("x-keyward-error") is None, summary
        assert len(hits) == 1, summary
        return
    assert hits == [], summary
    if expected == "envoy reset":
        assert answer.status is None and answer.ended in ("reset", "closed"), summary
        return
    if expected.startswith("envoy "):
        assert answer.status == int(expected.split()[1]), summary
        assert answer.header("x-keyward-error") is None, summary
        return
    status, code = expected.split()
    assert (answer.status, answer.header("x-keyward-error")) == (int(status), code), summary
    assert (answer.header("content-type") or "").startswith("application/json"), summary
    assert json.loads(answer.body)["error"]["code"] == code, summary


def _params():
    for variant in C.VARIANTS:
        for version in variant.http:
            for rendered, folded in SETTINGS:
                yield pytest.param(variant, version, rendered, folded,
                                   id=f"{variant.id}-h{version[0]}-{_setting_id(rendered, folded)}")


@pytest.mark.parametrize("variant,version,rendered,folded", list(_params()))
def test_variant(bypass_world, variant: C.Variant, version: str, rendered: bool, folded: bool):
    gateway = bypass_world.gateway(rendered, folded)
    request_id = harness.new_request_id()
    answer = send(gateway.envoy.port, variant, version, request_id, bypass_world.keys)
    hits = gateway.upstream.by_request_id(request_id)
    presented = variant.key or variant.presents
    key = bypass_world.keys[presented] if presented else None
    context = f"{variant.id} over HTTP/{version} through {gateway.name}"
    problems = [p for hit in hits for p in C.violations(hit, key, bypass_world.keys)]
    assert not problems, f"BYPASS: {context}:\n  " + "\n  ".join(problems) + "\n" + "\n".join(h.summary() for h in hits)
    check_answer(answer, variant.answer(rendered, folded, version), hits, context)


# --------------------------------------------------------------------------------------------
# metered request bodies: what is reserved, and refused


def settled(envoy: harness.Envoy) -> dict[str, int]:
    stats = envoy.stats(r"keyward\.metering\.")
    return {name.split("keyward.metering.", 1)[1]: value for name, value in stats.items()}


def settled_quietly(envoy: harness.Envoy, timeout: float = 2.0) -> dict[str, int]:
    """The metering counters once no earlier request is still settling (two equal reads)."""
    deadline = time.monotonic() + timeout
    last = settled(envoy)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = settled(envoy)
        if now == last:
            return now
        last = now
    return last


def wait_for_settlement(envoy: harness.Envoy, before: dict, expected: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    after = settled(envoy)
    while after.get("settled_microusd", 0) - before.get("settled_microusd", 0) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        after = settled(envoy)
    return after


def send_body(port: int, case: C.BodyCase, request_id: str, keys: dict) -> Answer:
    headers = [("host", "api.local"), ("authorization", f"Bearer {keys[case.key].plaintext}"),
               ("x-request-id", request_id), ("content-type", "application/json"), *case.headers]
    if case.mode:
        headers.append(("x-upstream-mode", case.mode))
    if not case.chunked:
        return send_h1(port, "POST", "/v1/chat/completions", headers, case.body)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(case.body[i:i + 8192]), case.body[i:i + 8192])
                      for i in range(0, len(case.body), 8192))
    return send_h1(port, "POST", "/v1/chat/completions", headers + [("transfer-encoding", "chunked")], chunks + b"0\r\n\r\n")


@pytest.mark.parametrize("rendered", [True, False], ids=["rendered", "plain"])
@pytest.mark.parametrize("case", C.BODY_CASES, ids=[c.id for c in C.BODY_CASES])
def test_metered_body(bypass_world, case: C.BodyCase, rendered: bool):
    gateway = bypass_world.gateway(rendered, folded=False)
    envoy = gateway.envoy
    request_id = harness.new_request_id()
    before = settled_quietly(envoy)
    answer = send_body(envoy.port, case, request_id, bypass_world.keys)
    hits = gateway.upstream.by_request_id(request_id)
    key = bypass_world.keys[case.key]
    problems = [p for hit in hits for p in C.violations(hit, key, bypass_world.keys)]
    assert not problems, f"BYPASS: {case.id}: {problems}"
    if case.expect not in ("reserve", "usage"):
        check_answer(answer, case.expect, hits, case.id)
        return
    assert answer.status == 200 and len(hits) == 1, f"{case.id}: {answer!r}"
    hit = hits[0]
    assert not C.upstream_may_compress(hit), hit.headers
    if any(name.lower() == "accept-encoding" for name, _ in case.headers):
        assert hit.header_all("accept-encoding") == ["identity"], hit.headers
    if case.expect == "usage":
        assert not hit.compressed and hit.usage.valid, hit.summary()
        expected = C.price(hit.usage.input_tokens, hit.usage.output_tokens)
    else:
        expected = C.reservation(case.body, case.output, case.choices)
    after = wait_for_settlement(envoy, before, expected)
    charged = after.get("settled_microusd", 0) - before.get("settled_microusd", 0)
    assert charged == expected, f"{case.id}: charged {charged} micro-USD, expected {expected}"
    counter = {"gzip": "usage_unreadable", "": None}.get(case.mode, "usage_invalid")
    if counter:
        assert after.get(counter, 0) - before.get(counter, 0) == 1, f"{counter}: {before} -> {after}"


# --------------------------------------------------------------------------------------------
# shadow mode


@pytest.mark.parametrize("case", C.SHADOW_CASES, ids=[c.id for c in C.SHADOW_CASES])
def test_shadow_mode_is_a_dry_run_for_every_refusal(bypass_world, case: C.ShadowCase):
    gateway = bypass_world.gateways["shadow"]
    envoy = gateway.envoy
    key = bypass_world.keys[case.key]
    before = envoy.metric("keyward.requests.shadow_denied") or 0
    for attempt in range(case.repeat):
        request_id = harness.new_request_id()
        headers = [("host", "api.local"), ("authorization", f"Bearer {key.plaintext}"), ("x-request-id", request_id)]
        if case.body is not None:
            headers.append(("content-type", "application/json"))
        answer = send_h1(envoy.port, case.method, case.target, headers, case.body)
        assert answer.status == 200 and answer.header("x-keyward-error") is None, f"{case.id}: {answer!r}"
    hits = gateway.upstream.by_request_id(request_id)
    assert len(hits) == 1, f"{case.id}: {len(hits)} upstream hits"
    hit = hits[0]
    assert hit.header_all("x-keyward-shadow-denied") == [case.code], hit.summary()
    for name in C.IDENTITY_HEADERS:
        assert hit.header(name) is None, f"{case.id}: a shadow-refused request carried {name}: {hit.summary()}"
    problems = C.hygiene_violations(hit, bypass_world.keys, shadow=True)
    assert not problems, f"{case.id}: {problems}"
    log = envoy.wait_for_log(lambda text: f'"request_id":"{request_id}"' in text and "shadow_deny" in text)
    lines = [line for line in log.splitlines() if request_id in line and "shadow_deny" in line]
    assert lines and case.code in lines[-1], f"{case.id}: no shadow_deny log line for {request_id}"
    deadline = time.monotonic() + 2
    while (envoy.metric("keyward.requests.shadow_denied") or 0) - before < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (envoy.metric("keyward.requests.shadow_denied") or 0) - before >= 1


# --------------------------------------------------------------------------------------------
# the generated tables in docs/bad-inputs.md


def test_doc_tables_are_generated_from_the_data():
    doc = DOC.read_text()
    assert C.BEGIN in doc and C.END in doc, f"{DOC} lost the bypass battery's generated-section markers"
    committed = doc[doc.index(C.BEGIN): doc.index(C.END) + len(C.END)]
    assert committed == C.render_generated(), (
        f"{DOC} does not match integration/bypass_cases.py: run `.tools/venv/bin/python scripts/bad_inputs_doc.py`"
    )


def test_the_oracle_catches_each_bypass_of_the_attack_report():
    """The oracle is what makes this battery able to fail: fed the hits the original attack
    report describes (as a keyward without the fixes forwarded them), it must flag each one."""
    from realistic_upstream import Hit, host_readings, path_readings

    keys = {
        "plain": C.KeyFacts("plain", "kPlain", "ak_kPlain.secretsecretsecret1", ["chat:write"], None, "proj_alpha", "org_acme"),
        "models": C.KeyFacts("models", "kModels", "ak_kModels.secretsecretsecret2", ["chat:write"], [C.MODEL_OK],
                             "proj_alpha", "org_acme"),
        "org": C.KeyFacts("org", "kOrg", "ak_kOrg.secretsecretsecret3", ["chat:write"], None, None, "org_acme"),
    }
    identity = {
        "plain": [("x-keyward-key-id", "kPlain"), ("x-keyward-project", "proj_alpha"), ("x-keyward-org", "org_acme")],
        "models": [("x-keyward-key-id", "kModels"), ("x-keyward-project", "proj_alpha"), ("x-keyward-org", "org_acme")],
        "org": [("x-keyward-key-id", "kOrg"), ("x-keyward-org", "org_acme")],
        None: [],
    }

    def hit(target, key, host="api.local", extra=(), method="GET", body=b"", fold=False):
        headers = [("host", host), *identity[key], *extra]
        cgi = {}
        for name, value in headers:
            cgi.setdefault(C.cgi(name), []).append(value)
        return Hit(method, target, headers, body, path_readings(target, None, fold), host_readings(cgi),
                   target.partition("?")[2], cgi)

    chat = C.chat_body(C.MODEL_DENIED)
    reported = [
        (hit("//admin/x", "plain"), "plain"),
        (hit("/%61dmin/x", "plain"), "plain"),
        (hit("/./admin/x", "plain"), "plain"),
        (hit("/healthz/../admin/secret", None), None),
        (hit("/healthz/%2e%2e/admin/x", None), None),
        (hit("/healthz;x=1/../admin", None), None),
        (hit("//v1/chat/completions", "models", method="POST", body=chat, extra=[("accept-encoding", "gzip")]), "models"),
        (hit("/v1/projects//proj_beta/x", "plain"), "plain"),
        (hit("/v1/projects/proj_alpha/../proj_beta/x", "plain"), "plain"),
        (hit("//v1/projects/proj_gamma/x", "org"), "org"),
        (hit("/v1/models", "plain", extra=[("x_keyward_key_id", "kAdmin")]), "plain"),
        (hit("/v1/models", "plain", extra=[("x_keyward_project", "proj_beta")]), "plain"),
        (hit("/v1/models", "plain", extra=[("x_project_id", "proj_beta")]), "plain"),
        (hit("/x", "plain", host="secure.local."), "plain"),
        (hit("/x", "plain", host="secure.local.:80"), "plain"),
        (hit("/x", "plain", host="user@secure.local"), "plain"),
        (hit("/v1/models?api_key=ak_kPlain.secretsecretsecret1", "plain"), "plain"),
        (hit("/ADMIN/x", "plain", fold=True), "plain"),
    ]
    for forwarded, key_name in reported:
        assert C.violations(forwarded, keys.get(key_name), keys), f"the oracle missed {forwarded.summary()}"
    # and a clean hit passes
    assert C.violations(hit("/v1/projects/proj_alpha/x", "plain"), keys["plain"], keys) == []
    assert C.violations(hit("/healthz", None), None, keys) == []
