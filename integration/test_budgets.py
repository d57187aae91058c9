"""Budgets that reset, quotas and plans in a real Envoy (`--concurrency 2`).

Without a control plane (the policy inline, so nothing is ever pushed): a day window rolls
over at its boundary. The test does not wait for midnight: it gives the keys a UTC offset that
puts their local midnight a few seconds ahead, a real offset exactly as an operator sets one,
so production code runs unchanged (no test clock, no test build). Each header style is checked
on allowed and refused answers.

With the real control plane (`keyward serve`): one change to a plan reaches every key on it with
one push; a budget crossing its soft cap and its cap posts one signed Slack-compatible webhook
each, once per window; a LiteLLM price file is imported as one dated price table; spend is
adjusted and reset through the admin API, audited.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import math
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import harness
from keyward_testkit.control_plane import ControlPlane
from keyward_testkit.http_servers import RecordingHTTPServer, read_body
from mock_provider import MockProvider

SECRET = "BudgetSecret0123456789"


def key_record(key_id: str, limits: dict, **extra) -> dict:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    record = {"id": key_id, "secret_sha256": digest, "project": "proj_b", "status": "active"}
    if limits:
        record["limits"] = limits
    record.update(extra)
    return record


def bearer(key_id: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer ak_{key_id}.{SECRET}")]


def day_id(instant: float, offset_minutes: int) -> str:
    local = datetime.datetime.fromtimestamp(instant + offset_minutes * 60, tz=datetime.timezone.utc)
    return local.strftime("%Y-%m-%d")


def offset_for_midnight_at(boundary: int) -> int:
    """The UTC offset (minutes, within ±14 h) whose local midnight falls at `boundary`."""
    minutes = (-(boundary % 86400) // 60) % 1440
    return minutes - 1440 if minutes > 720 else minutes


ROUTES = [
    {"name": "openai", "match": {"path_prefix": "/v1/models"}},
    {"name": "seed", "match": {"path_prefix": "/seed/"}, "limit_headers": "x_ratelimit"},
    {"name": "ietf", "match": {"path_prefix": "/ietf/"}, "limit_headers": "ietf", "budget_headers": True},
]


@pytest.fixture(scope="module")
def inline(envoy_workdir, wasm):
    # Local midnight of the rolling keys 25 to 85 seconds from now, on a whole minute.
    boundary = math.ceil((time.time() + 25) / 60) * 60
    offset = offset_for_midnight_at(boundary)
    today = day_id(boundary - 1, offset)
    keys = [
        # Two requests a day.
        key_record("rollQuota01", {"utc_offset_minutes": offset, "quotas": [{"period": "day", "requests": 2}]}),
        # A $1 day whose figure, from the control plane, says today is spent.
        key_record("rollBudget1", {"utc_offset_minutes": offset,
                                   "budgets": [{"period": "day", "cap_microusd": 1_000_000}],
                                   "usage": {today: {"microusd": 1_000_000}}}),
        # For the header styles: 2 a day (UTC), 100,000 a month, $1 a day.
        key_record("headers001", {"quotas": [{"period": "day", "requests": 2},
                                             {"period": "month", "requests": 100_000}],
                                  "budgets": [{"period": "day", "cap_microusd": 1_000_000}]}),
    ]
    config = {
        "routes": ROUTES,
        "policy": {"version": 1, "issued_at": int(time.time()) - 10,
                   "projects": [{"id": "proj_b", "org": "org_b", "status": "active"}], "keys": keys},
    }
    env = harness.Envoy("budgets-inline", envoy_workdir, plugin_config=config, wasm=wasm, concurrency=2)
    env.start()
    yield env, boundary, offset
    env.stop()


def test_a_day_window_rolls_over_at_its_boundary_without_a_push(inline):
    env, boundary, offset = inline
    assert time.time() < boundary - 3, "the Envoy took too long to start for this test"
    allowed = [env.request("GET", "/v1/models", bearer("rollQuota01")) for _ in range(2)]
    assert [r.status for r in allowed] == [200, 200]
    refused = env.request("GET", "/v1/models", bearer("rollQuota01"))
    assert (refused.status, refused.header("x-keyward-error")) == (429, "quota_exceeded"), refused
    wait = int(refused.header("retry-after"))
    assert 0 < wait <= math.ceil(boundary - time.time()) + 1, f"retry-after {wait} names the window's end"
    spent = env.request("GET", "/v1/models", bearer("rollBudget1"))
    assert (spent.status, spent.header("x-keyward-error")) == (403, "spend_cap_exceeded"), spent
    # The policy never changes (inline, no sync): only the clock moves.
    time.sleep(max(0.0, boundary - time.time()) + 1.0)
    after = [env.request("GET", "/v1/models", bearer("rollQuota01")) for _ in range(2)]
    assert [r.status for r in after] == [200, 200], f"a new day (offset {offset} min)\n{env.log_tail(20)}"
    assert after[0].header("x-ratelimit-remaining-requests") == "1"
    assert env.request("GET", "/v1/models", bearer("rollQuota01")).status == 429
    fresh = env.request("GET", "/v1/models", bearer("rollBudget1"))
    assert fresh.status == 200, "yesterday's figure does not apply to today"


def test_every_header_style_on_allowed_and_refused_answers(inline):
    env, _boundary, _offset = inline
    midnight = (int(time.time()) // 86400 + 1) * 86400
    if midnight - time.time() < 5:
        time.sleep(midnight - time.time() + 1)
        midnight += 86400
    key = bearer("headers001")
    seed = env.request("GET", "/seed/x", key)
    assert seed.status == 200
    assert (seed.header("x-ratelimit-limit"), seed.header("x-ratelimit-remaining")) == ("2", "1")
    assert abs(int(seed.header("x-ratelimit-reset")) - midnight) <= 1, "epoch seconds of the day's end"
    ietf = env.request("GET", "/ietf/x", key)
    assert ietf.status == 200
    days_in_month = (datetime.date.today().replace(day=28) + datetime.timedelta(days=4)).replace(day=1) \
        - datetime.date.today().replace(day=1)
    assert ietf.header("ratelimit-policy") == (
        f'"requests-day";q=2;w=86400, "requests-month";q=100000;w={days_in_month.days * 86400}'
    )
    current = ietf.header("ratelimit")
    assert current.startswith('"requests-day";r=0;t='), current
    assert ietf.header("x-keyward-budget-remaining-microusd") == "1000000"
    assert ietf.header("x-keyward-budget-reset") == str(midnight)
    openai = env.request("GET", "/v1/models", key)
    assert (openai.status, openai.header("x-keyward-error")) == (429, "quota_exceeded")
    assert openai.header("x-ratelimit-limit-requests") == "2"
    assert openai.header("x-ratelimit-remaining-requests") == "0"
    assert openai.header("x-ratelimit-reset-requests").endswith("s")
    assert openai.header("retry-after") is not None
    refused = env.request("GET", "/seed/x", key)
    assert refused.status == 429
    assert refused.header("x-ratelimit-remaining") == "0"
    assert abs(int(refused.header("x-ratelimit-reset")) - midnight) <= 1
    refused = env.request("GET", "/ietf/x", key)
    assert refused.status == 429
    assert refused.header("ratelimit").startswith('"requests-day";r=0;t=')
    assert refused.header("ratelimit-policy").startswith('"requests-day";q=2;w=86400')
    body = json.loads(refused.body)
    assert body["error"]["code"] == "quota_exceeded"


# -- with the control plane --------------------------------------------------------------------

INTERVAL_MS = 300
PLUGIN_CONFIG = {
    "metering": {"report_interval_ms": 300, "reservation_ceiling_microusd": 100_000},
    "routes": [
        {"name": "chat", "match": {"path_prefix": "/v1/chat/completions"}, "meter": True},
        {"name": "models", "match": {"path_prefix": "/v1/models"}, "limit_headers": "x_ratelimit"},
    ],
}


class WebhookReceiver(RecordingHTTPServer):
    """Records each POST: its headers and body."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_POST(self):  # noqa: N802
                body = read_body(self)
                self.server.owner.record(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        super().__init__(Handler)


class WebhookPlane(ControlPlane):
    def __init__(self, *args, webhook_url: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.webhook_url = webhook_url
        self.webhook_key_file = self.work / "webhook.key"

    def serve_command(self, port: int) -> list[str]:
        return [*super().serve_command(port), "--webhook-url", self.webhook_url,
                "--webhook-secret-file", str(self.webhook_key_file)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, envoy_workdir, wasm, keyward_bin):
    work = tmp_path_factory.mktemp("budgets")
    receiver = WebhookReceiver().start()
    plane = WebhookPlane(keyward_bin, work, webhook_url=f"http://127.0.0.1:{receiver.port}/hook")
    plane.create_secrets()
    plane.cli("secret", "webhook-secret", "--out", str(plane.webhook_key_file))
    plane.cli("project", "create", "proj_s", "--org", "org_s")
    plane.cli("price", "set", "--model", "gpt-4o*", "--input", "2", "--output", "10")
    plane.cli("plan", "set", "free", "--quota", "day:requests=2")
    (work / "plugin.json").write_text(json.dumps(PLUGIN_CONFIG))
    address = plane.start()
    provider = MockProvider().start()
    env = None
    try:
        def render(listen_port, admin_port, upstream_port):
            return plane.cli(
                "render", "envoy", "--wasm", str(wasm), "--control-plane", address,
                *plane.trust_args(),
                "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
                "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
                "--plugin-config", str(work / "plugin.json"),
            ).stdout

        env = harness.Envoy("budgets-served", envoy_workdir, render=render, concurrency=2, upstream=provider)
        env.start()
        yield env, plane, receiver, address
    finally:
        if env is not None:
            env.stop()
        provider.stop()
        plane.stop()
        receiver.stop()


def new_key(plane: ControlPlane, *flags: str) -> tuple[str, str]:
    created = json.loads(plane.cli("key", "create", "--project", "proj_s", "--json", *flags).stdout)
    return created["key"], created["id"]


def models(env, key: str) -> harness.Response:
    return env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")])


def until(check, limit_s: float, what: str):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"after {limit_s}s: {what}")


def listed(text: str) -> list:
    """A `--json` list: bare, or in the API's {"data": [...]} shape."""
    value = json.loads(text)
    return value["data"] if isinstance(value, dict) else value


def chat(env, key: str, inp: int, out: int, max_tokens: int | None = None) -> harness.Response:
    """A metered request whose answer reports `inp` and `out` tokens; it asks for `max_tokens`
    (default `out`), which sets its reservation."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": max_tokens or out, "messages": [{"role": "user", "content": "hi"}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body, {
            "authorization": f"Bearer {key}", "content-type": "application/json",
            "x-mock-input-tokens": str(inp), "x-mock-output-tokens": str(out)})
        resp = conn.getresponse()
        return harness.Response(resp.status, [(k.lower(), v) for k, v in resp.getheaders()], resp.read())
    finally:
        conn.close()


def test_a_plan_change_reaches_every_key_on_it_with_one_push(served):
    env, plane, _receiver, _address = served
    keys = [new_key(plane) for _ in range(2)]
    for _key, key_id in keys:
        plane.cli("limits", "set", "--key", key_id, "--plan", "free")
    for key, _ in keys:
        until(lambda: models(env, key).status == 200, 10, "the key on plan free is live")
        until(lambda: models(env, key).status == 429, 5, "free: 2 requests a day")
        refused = models(env, key)
        assert refused.header("x-keyward-error") == "quota_exceeded"
        assert refused.header("x-ratelimit-limit") == "2"
    version = listed(plane.cli("audit", "--json", "--limit", "1").stdout)[-1]["policy_version"]
    plane.cli("plan", "set", "free", "--quota", "day:requests=5")
    events = listed(plane.cli("audit", "--json", "--limit", "1").stdout)
    assert (events[-1]["action"], events[-1]["policy_version"]) == ("plan.set", version + 1), "one version"
    for key, _ in keys:
        raised = until(lambda: (r := models(env, key)).status == 200 and r, 10, "the plan's new quota arrives")
        assert raised.header("x-ratelimit-limit") == "5"


def signature_ok(secret_b64: str, header: str, body: bytes) -> bool:
    import base64

    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(base64.b64decode(secret_b64), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def test_a_budget_posts_one_signed_webhook_per_level_and_window(served):
    env, plane, receiver, _address = served
    receiver.clear()
    key, key_id = new_key(plane)
    # $0.01 a day, soft cap at $0.004; one request below costs 2*100 + 10*300 = $0.0032.
    plane.cli("limits", "set", "--key", key_id, "--budget", "day=0.01/0.004")
    until(lambda: models(env, key).status == 200, 10, "the key is live")
    assert chat(env, key, 100, 300).status == 200
    time.sleep(2)
    assert receiver.recorded() == [], "below the soft cap: nothing"
    assert chat(env, key, 100, 300).status == 200  # $0.0064: past the soft cap
    posts = until(lambda: receiver.recorded(), 15, "the soft-cap webhook")
    assert chat(env, key, 100, 50).status == 200  # more, still below the cap
    time.sleep(3)
    posts = receiver.recorded()
    assert len(posts) == 1, f"once per window: {posts}"
    headers, body = posts[0]
    payload = json.loads(body)
    assert payload["keyward"]["event"] == "budget.soft_cap"
    assert payload["keyward"]["owner"] == {"key": key_id}
    assert "soft cap" in payload["text"], payload
    secret = plane.webhook_key_file.read_text().strip()
    assert signature_ok(secret, headers["x-keyward-signature"], body)
    assert not signature_ok(secret, headers["x-keyward-signature"], body + b" ")
    # Past the cap: a request that reserves little (10 output tokens asked) but is reported to
    # have used 300 goes over it ($0.0071 + $0.0032), as an upstream that ignores max_tokens would.
    assert chat(env, key, 100, 300, max_tokens=10).status == 200
    until(lambda: len(receiver.recorded()) == 2, 15, "the cap webhook")
    time.sleep(2)
    events = [json.loads(b)["keyward"]["event"] for _, b in receiver.recorded()]
    assert events == ["budget.soft_cap", "budget.cap"]
    alerts = listed(plane.cli("spend", "alerts", "--json").stdout)
    mine = [a for a in alerts if a["owner"] == {"key": key_id}]
    assert len(mine) == 2 and all(a["delivered_at"] for a in mine)


def test_a_litellm_price_file_imports_as_one_dated_table(served, tmp_path):
    env, plane, _receiver, address = served
    sample = tmp_path / "model_prices_and_context_window.json"
    sample.write_text(json.dumps({
        "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat, embedding"},
        "o3": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06, "cache_read_input_token_cost": 5e-07,
               "litellm_provider": "openai", "mode": "chat"},
        "claude-sonnet-4-20250514": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                                     "litellm_provider": "anthropic", "mode": "chat"},
        "gemini/gemini-2.5-flash": {"input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06,
                                    "litellm_provider": "gemini", "mode": "chat"},
        "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
                                   "litellm_provider": "openai", "mode": "embedding"},
    }))
    done = plane.cli("price", "import", str(sample), "--provider", "openai,gemini", "--as-of", "2026-11-01", "--json")
    imported = json.loads(done.stdout)
    assert (imported["added"], imported["as_of"], imported["source"]) == (2, "2026-11-01", "litellm")
    prices = {p["model"]: p for p in listed(plane.cli("price", "list", "--json").stdout)}
    assert prices["o3"]["input_microusd_per_mtok"] == 2_000_000
    assert prices["o3"]["cached_input_microusd_per_mtok"] == 500_000
    assert prices["gemini-2.5-flash"]["output_microusd_per_mtok"] == 2_500_000
    assert "claude-sonnet-4-20250514" not in prices and "text-embedding-3-small" not in prices
    envelope = json.loads(http_get(address, "/v1/snapshot", plane.dataplane_token()))
    assert envelope["snapshot"]["price_catalog"]["as_of"] == "2026-11-01"


def test_spend_is_adjusted_and_reset_through_the_admin_api_audited(served):
    _env, plane, _receiver, address = served
    _key, key_id = new_key(plane)
    remote = ["--server", f"http://{address}", "--token-file", str(plane.admin_tokens_file)]
    changed = json.loads(plane.cli(*remote, "spend", "adjust", "--key", key_id, "--window", "total",
                                   "--by", "1.25", "--reason", "manual charge", "--json").stdout)
    assert changed["after"]["spent_microusd"] == 1_250_000
    reset = json.loads(plane.cli(*remote, "spend", "reset", "--project", "proj_s", "--window", "month",
                                 "--reason", "new contract", "--json").stdout)
    assert reset["after"]["spent_microusd"] == 0
    events = listed(plane.cli(*remote, "audit", "--json", "--limit", "2").stdout)
    assert [e["action"] for e in events] == ["spend.adjust", "spend.reset"]
    assert events[0]["details"]["reason"] == "manual charge"
    assert json.loads(plane.cli("key", "show", key_id, "--json").stdout)["spent_microusd"] == 1_250_000


def http_get(address: str, path: str, token: str | None = None) -> bytes:
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().read()
    finally:
        conn.close()
