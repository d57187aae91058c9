"""Spend metering, reservations and rate limits in a real Envoy (`--concurrency 2`), with the real
control plane (`keyward serve`) and a mock provider that reports usage in OpenAI and Anthropic
shapes, as JSON and as event streams split into many small chunks.

Prices: $2 per 1M input tokens and $10 per 1M output tokens, so a request costs exactly
2 x input + 10 x output micro-dollars, and the sums below are exact.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import harness
from keyward_testkit.control_plane import ControlPlane
from keyward_testkit.http_servers import BackgroundHTTPServer
from mock_provider import MockProvider

KEYWARD = harness.KEYWARD_BIN
INTERVAL_MS = 300
REPORT_INTERVAL_MS = 300
CEILING = 100_000  # $0.10 per request at most
MODEL = "gpt-4o-mini"
BYTES_PER_TOKEN = 4


def cost(inp: int, out: int, cached: int = 0) -> int:
    return 2 * inp + 2 * cached + 10 * out


def keyward(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return ControlPlane(KEYWARD, workdir).cli(*args)


class AckDropper(BackgroundHTTPServer):
    """Between Envoy and `keyward serve`: passes everything through, but for the first N usage
    reports it forwards the report (so the control plane applies it) and answers Envoy 503, as if
    the acknowledgement was lost. Envoy must retry the same batch, and it must count once."""

    def __init__(self, target: str, drop: int):
        self.target = target
        self.drop = drop
        self.dropped: list[str] = []
        self.reports: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002
                pass

            def _forward(self, method: str):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                request = urllib.request.Request(f"http://{proxy.target}{self.path}", data=body, method=method, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        status, out_headers, payload = resp.status, resp.headers.items(), resp.read()
                except urllib.error.HTTPError as e:
                    status, out_headers, payload = e.code, e.headers.items(), e.read()
                if method == "POST" and self.path.startswith("/v1/usage"):
                    proxy.reports.append(body or b"")
                    if status == 200 and len(proxy.dropped) < proxy.drop:
                        proxy.dropped.append(json.loads(body)["batch_id"])
                        status, out_headers, payload = 503, [("content-type", "text/plain")], b"ack lost"
                self.send_response(status)
                for name, value in out_headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_POST(self):  # noqa: N802
                self._forward("POST")

        super().__init__(Handler)
        self.start()


PLUGIN_CONFIG = {
    "metering": {
        "reservation_ceiling_microusd": CEILING,
        "report_interval_ms": REPORT_INTERVAL_MS,
        "bytes_per_token": BYTES_PER_TOKEN,
    },
    "routes": [
        {"name": "chat", "match": {"path_prefix": "/v1/chat/completions"}, "meter": True},
        {"name": "responses", "match": {"path_prefix": "/v1/responses"}, "meter": True},
        {"name": "messages", "match": {"path_prefix": "/v1/messages"}, "meter": True, "error_format": "anthropic"},
    ],
}


@pytest.fixture(scope="module")
def metered(tmp_path_factory, envoy_workdir, wasm, keyward_bin):
    work = tmp_path_factory.mktemp("metering")
    plane = ControlPlane(keyward_bin, work)
    plane.create_secrets()
    keyward(work, "project", "create", "proj_m", "--org", "org_m")
    keyward(work, "price", "set", "--model", "gpt-4o*", "--input", "2", "--output", "10")
    (work / "plugin.json").write_text(json.dumps(PLUGIN_CONFIG))
    address = plane.start()
    provider = MockProvider().start()
    dropper = None
    env = None
    try:
        dropper = AckDropper(address, drop=1)

        def render(listen_port, admin_port, upstream_port):
            return keyward(
                work, "render", "envoy", *harness.render_build_args(wasm), "--control-plane", f"127.0.0.1:{dropper.port}",
                *plane.trust_args(),
                "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
                "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
                "--plugin-config", str(work / "plugin.json"),
            ).stdout

        env = harness.Envoy("metering", envoy_workdir, render=render, concurrency=2, upstream=provider)
        env.start()
        yield env, work, provider, dropper
    finally:
        if env is not None:
            env.stop()
        if dropper is not None:
            dropper.stop()
        provider.stop()
        plane.stop()


def new_key(work: Path, *flags: str) -> tuple[str, str]:
    created = json.loads(keyward(work, "key", "create", "--project", "proj_m", "--json", *flags).stdout)
    return created["key"], created["id"]


def key_view(work: Path, key_id: str) -> dict:
    return json.loads(keyward(work, "key", "show", key_id, "--json").stdout)


def wait_until_live(env, key: str, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen = {env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")]).status for _ in range(8)}
        if seen == {200}:
            return
        time.sleep(0.1)
    pytest.fail(f"key not live on every worker after {limit_s}s\n{env.log_tail(40)}")


def wait_for_spent(work: Path, key_id: str, expected: int, limit_s: float = 10.0) -> dict:
    deadline = time.monotonic() + limit_s
    view = key_view(work, key_id)
    while time.monotonic() < deadline:
        view = key_view(work, key_id)
        if view["spent_microusd"] == expected:
            return view
        time.sleep(0.1)
    pytest.fail(f"control plane shows {view['spent_microusd']} micro-USD spent by {key_id}, expected {expected}")


def chat_body(content_chars: int = 40, max_tokens: int = 100, stream: bool = False, **extra) -> bytes:
    body = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "x" * content_chars}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return json.dumps(body).encode()


def post(env, key: str, path: str, body: bytes, extra_headers=(), timeout: float = 10.0) -> harness.Response:
    """POST and read the whole answer; a body cut off mid-way (an upstream reset after the
    status was sent) comes back as what arrived, not as an exception."""
    headers = [("authorization", f"Bearer {key}"), ("content-type", "application/json"),
               ("content-length", str(len(body))), ("host", "api.local"), *extra_headers]
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        try:
            data = resp.read()
        except (http.client.IncompleteRead, ConnectionError) as cut:
            data = getattr(cut, "partial", b"")
        return harness.Response(resp.status, [(k.lower(), v) for k, v in resp.getheaders()], data)
    finally:
        conn.close()


def reservation(body: bytes, max_tokens: int) -> int:
    return min(2 * math.ceil(len(body) / BYTES_PER_TOKEN) + 10 * max_tokens, CEILING)


def test_usage_in_every_shape_is_charged_exactly_and_reported_once(metered):
    env, work, provider, dropper = metered
    key, key_id = new_key(work)
    wait_until_live(env, key)
    provider.clear()
    cases = [
        ("/v1/chat/completions", False, 1000, 200, 0),
        ("/v1/chat/completions", True, 1200, 300, 0),
        ("/v1/chat/completions", False, 800, 50, 400),
        ("/v1/responses", False, 700, 70, 100),
        ("/v1/responses", True, 900, 90, 0),
        ("/v1/messages", False, 600, 60, 300),
        ("/v1/messages", True, 500, 55, 200),
    ]
    expected = 0
    for path, stream, inp, out, cached in cases:
        headers = [("x-mock-input-tokens", str(inp)), ("x-mock-output-tokens", str(out)), ("x-mock-cached-tokens", str(cached))]
        resp = post(env, key, path, chat_body(stream=stream, max_tokens=out), headers)
        assert resp.status == 200, resp
        if stream:
            assert resp.body.rstrip().endswith(b"[DONE]") or b"message_stop" in resp.body or b"response.completed" in resp.body
        # Anthropic counts cache reads apart from input; OpenAI includes them in the prompt.
        expected += cost(inp, out, cached)
    served = provider.served()
    assert len(served) == len(cases)
    chat_stream = next(s for s in served if s.path.startswith("/v1/chat") and s.stream)
    assert chat_stream.body.get("stream_options") == {"include_usage": True}, "keyward asked for stream usage"
    assert all(s.input_tokens is not None for s in served), "the provider reported usage for every request"
    view = wait_for_spent(work, key_id, expected)
    assert view["last_seen_at"] is not None
    # The first report's acknowledgement was dropped: the retry carried the same batch id and
    # the control plane counted it once (the exact sum above proves it).
    assert dropper.dropped, "the ack-dropping proxy saw no report"
    retried = [json.loads(b)["batch_id"] for b in dropper.reports].count(dropper.dropped[0])
    assert retried >= 2, f"batch {dropper.dropped[0]} was not retried"
    batches = json.loads(keyward(work, "usage", "batches", "--json", "--limit", "100").stdout)
    ids = [b["batch_id"] for b in batches["data"]]
    # Stored per data-plane token (`fleet`): one fleet cannot take another's batch ids.
    assert ids.count(f"fleet/{dropper.dropped[0]}") == 1
    assert env.metric("keyward.usage_reports.duplicate") >= 1


def test_twenty_concurrent_requests_cannot_overrun_a_one_dollar_cap(metered):
    env, work, provider, _dropper = metered
    key, key_id = new_key(work, "--spend-cap-usd", "1.00")
    wait_until_live(env, key)
    provider.clear()
    body = chat_body(content_chars=4000, max_tokens=5000, stream=True)
    held = reservation(body, 5000)
    assert held < CEILING, "the ceiling is not what bounds this test's reservations"
    # The provider reports a bit less input than the estimate and exactly max_tokens of output.
    headers = [("x-mock-input-tokens", "1000"), ("x-mock-chunk-delay-ms", "20")]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: post(env, key, "/v1/chat/completions", body, headers), range(20)))
    statuses = sorted(r.status for r in results)
    allowed = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert all(r.status == 403 and r.header("x-keyward-error") == "spend_cap_exceeded" for r in refused), [
        (r.status, r.header("x-keyward-error"), r.body[:200]) for r in refused]
    assert refused, f"20 requests of {held} micro-USD each fit under $1.00? {statuses}"
    charged = sum(cost(s.input_tokens, s.output_tokens, s.cached_tokens) for s in provider.served())
    assert len(provider.served()) == len(allowed), "no refused request reached the provider"
    assert charged <= 1_000_000 + CEILING, f"overshoot {charged - 1_000_000} beyond one reservation ceiling"
    wait_for_spent(work, key_id, charged)
    nxt = post(env, key, "/v1/chat/completions", body, headers)
    assert (nxt.status, nxt.header("x-keyward-error")) == (403, "spend_cap_exceeded")
    print(f"cap $1.00: {len(allowed)} of 20 allowed, charged {charged} micro-USD, reservation {held}")


def test_a_cut_stream_and_a_client_disconnect_release_their_reservations(metered):
    env, work, provider, _dropper = metered
    body = chat_body(content_chars=400, max_tokens=5000, stream=True)
    held = reservation(body, 5000)
    # Room for one reservation at a time: a leaked one would refuse the next request.
    key, key_id = new_key(work, "--spend-cap-usd", f"{(held * 3 // 2) / 1e6:.6f}")
    wait_until_live(env, key)
    for _ in range(3):
        # Headers, then the upstream connection drops before any body: nothing is charged.
        resp = post(env, key, "/v1/chat/completions", body, [("x-mock-cut-after", "0")])
        assert resp.status != 403, f"a reservation leaked: {resp}"
    # Cut mid-way, after content reached the client: the reservation is charged (no usage came).
    resp = post(env, key, "/v1/chat/completions", body, [("x-mock-cut-after", "4")])
    assert resp.status == 200  # the status was sent before the cut
    assert provider.served()[-1].cut
    try:
        wait_for_spent(work, key_id, held)
    except BaseException:
        print(env.stats("keyward"), resp, env.log_tail(60))
        raise
    assert env.metric("keyward.metering.incomplete") >= 4

    key2, key2_id = new_key(work, "--spend-cap-usd", f"{(held * 3 // 2) / 1e6:.6f}")
    wait_until_live(env, key2)
    # The client hangs up after the first content of a slow stream: content was delivered, so
    # the reservation is charged (a client that hangs up before any content pays nothing).
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key2}\r\n"
        f"content-type: application/json\r\nx-mock-chunk-delay-ms: 200\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while b"word0" not in received:  # the first content chunk has reached the client
            more = sock.recv(4096)
            assert more, f"connection closed early: {received!r}"
            received += more
        assert received.startswith(b"HTTP/1.1 200")
    wait_for_spent(work, key2_id, held)
    # Released and settled: the next request fits no more (spent + one reservation > cap), and
    # the refusal is the cap, not a leaked reservation plus spend.
    nxt = post(env, key2, "/v1/chat/completions", body)
    assert (nxt.status, nxt.header("x-keyward-error")) == (403, "spend_cap_exceeded")


def test_the_request_past_the_rpm_limit_gets_429_and_headers_are_right(metered):
    env, work, _provider, _dropper = metered
    key, _key_id = new_key(work, "--rpm", "5")
    # Probing the limited key would spend its requests: probe a key minted after it instead,
    # which is live only in a snapshot that also has the limited key.
    probe, _ = new_key(work)
    wait_until_live(env, probe)
    seen = []
    for expected_remaining in range(4, -1, -1):
        resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")])
        assert resp.status == 200, resp
        seen.append(resp.header("x-ratelimit-remaining-requests"))
        assert resp.header("x-ratelimit-limit-requests") == "5"
        assert resp.header("x-ratelimit-reset-requests")
    assert seen == ["4", "3", "2", "1", "0"], "both workers draw from one bucket"
    resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")])
    assert (resp.status, resp.header("x-keyward-error")) == (429, "rate_limited")
    assert 1 <= int(resp.header("retry-after")) <= 12
    assert resp.json()["error"]["type"] == "rate_limit_error"


def test_without_held_headers_a_refusal_still_never_delivers_a_request_body(envoy_workdir, wasm):
    """`metering.hold_headers: false` (what Istio gets): the headers go upstream first, the body
    is held until the checks pass; a refused request's body never reaches the provider, and an
    OpenAI stream still gets `include_usage` with a body Envoy re-frames."""
    secret = "s3cr3tS3cr3tS3cr3tXY"
    config = {
        "metering": {"hold_headers": False},
        "routes": [{"name": "chat", "match": {"path_prefix": "/v1/chat/completions"}, "meter": True}],
        "policy": {
            "version": 1, "issued_at": int(time.time()) - 5,
            "prices": [{"model": "gpt-4o*", "input_microusd_per_mtok": 2_000_000, "output_microusd_per_mtok": 10_000_000}],
            "projects": [{"id": "p", "org": "o", "status": "active"}],
            "keys": [{"id": "good1", "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
                      "project": "p", "status": "active", "models": ["gpt-4o-mini"], "spend_cap_microusd": 1_000_000}],
        },
    }
    provider = MockProvider().start()
    env = harness.Envoy("metering-unheld", envoy_workdir, plugin_config=config, wasm=wasm, upstream=provider, concurrency=2)
    env.start()
    try:
        key = f"ak_good1.{secret}"
        allowed = post(env, key, "/v1/chat/completions", chat_body(stream=True))
        assert allowed.status == 200, allowed
        assert b"usage" in allowed.body, "the provider was asked for stream usage"
        served = provider.served()
        assert len(served) == 1 and served[0].body.get("stream_options") == {"include_usage": True}

        refused = post(env, key, "/v1/chat/completions",
                       json.dumps({"model": "gpt-4o", "max_tokens": 10, "messages": []}).encode())
        assert (refused.status, refused.header("x-keyward-error")) == (403, "model_not_allowed"), refused
        time.sleep(0.3)
        assert len(provider.served()) == 1, "the refused request's body reached the provider"
        assert env.metric("keyward.requests.denied.model_not_allowed") == 1
    finally:
        env.stop()
        provider.stop()


def test_past_the_soft_cap_answers_warn_and_still_pass(metered):
    env, work, _provider, _dropper = metered
    key, _key_id = new_key(work, "--spend-cap-usd", "1.00", "--soft-cap", "0.01", "--tpm", "100000")
    wait_until_live(env, key)
    body = chat_body(max_tokens=1000)  # reserves about 0.01 USD: at the soft cap
    resp = post(env, key, "/v1/chat/completions", body, [("x-mock-output-tokens", "10")])
    assert resp.status == 200, resp
    assert resp.header("x-keyward-spend-warning") == "key-soft-cap"
    assert resp.header("x-ratelimit-limit-tokens") == "100000"
    remaining = int(resp.header("x-ratelimit-remaining-tokens"))
    assert 100000 - 1100 <= remaining < 100000, "the estimate was taken from the token bucket"
    assert env.metric("keyward.metering.soft_cap_warnings") >= 1
