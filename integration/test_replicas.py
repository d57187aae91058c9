"""The control plane in production: two `keyward serve` replicas on one real PostgreSQL, behind
Envoy's own load balancing (round robin, active health checks on /readyz). A key created through
one replica is enforced through snapshots served by the other; usage reports reaching either are
folded exactly once; killing one replica mid-run loses nothing. /metrics is parsed with
Prometheus' own text parser and /openapi.json validated with openapi-spec-validator.

Needs KEYWARD_TEST_PG_URL (`make test` starts PostgreSQL and sets it): without it the tests
fail, never skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families

import harness
from mock_provider import MockProvider

REPO = Path(__file__).resolve().parent.parent
KEYWARD = Path(os.environ.get("KEYWARD_BIN", REPO / "target" / "debug" / "keyward"))
INTERVAL_MS = 300
REPORT_INTERVAL_MS = 200
MODEL = "gpt-4o-mini"
# The mock provider reports 1000 input tokens and max_tokens (100) output tokens: at $2 and $10
# per 1M tokens, 2000 + 1000 micro-USD a request.
COST = 3000
PLUGIN_CONFIG = {
    "metering": {"report_interval_ms": REPORT_INTERVAL_MS},
    "routes": [{"name": "chat", "match": {"path_prefix": "/v1/chat/completions"}, "meter": True}],
}


def pg_url() -> str:
    url = os.environ.get("KEYWARD_TEST_PG_URL")
    if not url:
        pytest.fail("KEYWARD_TEST_PG_URL is not set: `make test` starts PostgreSQL for these tests", pytrace=False)
    return url


def psql(url: str, sql: str) -> None:
    psql_bin = shutil.which("psql") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None)
    if psql_bin is None:
        pytest.fail("psql not found (Debian's postgresql-client)", pytrace=False)
    subprocess.run([str(psql_bin), url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True,
                   capture_output=True, timeout=30)


def keyward(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    env.update(env_extra or {})
    return subprocess.run([str(KEYWARD), *args], env=env, capture_output=True, text=True, timeout=30,
                          check=True, stdin=subprocess.DEVNULL)


class Replica:
    def __init__(self, name: str, work: Path, db_url: str):
        self.name = name
        self.log = work / f"{name}.log"
        self.proc = subprocess.Popen(
            [str(KEYWARD), "--db", db_url, "serve", "--listen", "127.0.0.1:0",
             "--admin-token-file", str(work / "admin.tokens"), "--signing-key-id", "ops-1",
             "--signing-key-file", str(work / "signing.key"), "--spend-publish-ms", "200", "--access-log"],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), stdin=subprocess.DEVNULL, text=True,
        )
        line = self.proc.stdout.readline()
        found = re.search(r"http://([0-9.]+:\d+)", line)
        assert found, f"{name}: unexpected first line {line!r}: {self.log.read_text()[-2000:]}"
        self.address = found.group(1)
        self.base = f"http://{self.address}"

    def get(self, path: str, token: str | None = None):
        request = urllib.request.Request(self.base + path)
        if token is not None:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def metrics(self) -> dict:
        status, _, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def load_balanced(rendered: str, replicas: list[Replica]) -> str:
    """The rendered bootstrap with its control-plane cluster spread over every replica: Envoy's
    round robin, and active health checks on /readyz so a dead replica is ejected."""
    config = json.loads(rendered)
    clusters = config["static_resources"]["clusters"]
    cluster = next(c for c in clusters if c["name"] == "keyward_control_plane")
    cluster["type"] = "STATIC"
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": r.address.split(":")[0],
                                                     "port_value": int(r.address.split(":")[1])}}}}
        for r in replicas]}]
    cluster["health_checks"] = [{
        "timeout": "1s", "interval": "0.5s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "http_health_check": {"path": "/readyz"},
    }]
    return json.dumps(config)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, envoy_workdir, wasm):
    if not KEYWARD.is_file():
        pytest.fail(f"keyward binary not found at {KEYWARD}: cargo build -p keyward", pytrace=False)
    base_url = pg_url()
    work = tmp_path_factory.mktemp("replicas")
    database = f"kw_replicas_{uuid.uuid4().hex[:12]}"
    psql(base_url, f"CREATE DATABASE {database}")
    db_url = re.sub(r"/[^/?]*(\?|$)", f"/{database}\\1", base_url.split("://", 1)[1], count=1)
    db_url = base_url.split("://", 1)[0] + "://" + db_url
    keyward("secret", "signing-key", "--out", str(work / "signing.key"))
    keyward("secret", "admin-token", "--out", str(work / "admin.tokens"))
    (work / "plugin.json").write_text(json.dumps(PLUGIN_CONFIG))
    replicas: list[Replica] = []
    provider = MockProvider().start()
    env = None
    try:
        # Started together: they migrate the new database once, under the advisory lock.
        replicas = [Replica("replica-a", work, db_url), Replica("replica-b", work, db_url)]
        keyward("--db", db_url, "dataplane", "token", "create", "--name", "fleet", "--out",
                str(work / "dataplane.token"))

        def render(listen_port, admin_port, upstream_port):
            rendered = keyward(
                "render", "envoy", *harness.render_build_args(wasm), "--control-plane", replicas[0].address,
                "--public-key", f"ops-1={work / 'signing.key.pub'}",
                "--dataplane-token-file", str(work / "dataplane.token"),
                "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
                "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
                "--plugin-config", str(work / "plugin.json"),
            ).stdout
            return load_balanced(rendered, replicas)

        env = harness.Envoy("replicas", envoy_workdir, render=render, concurrency=2, upstream=provider)
        env.start()
        yield env, work, replicas
    finally:
        if env is not None:
            env.stop()
        provider.stop()
        for replica in replicas:
            replica.stop()


def remote(work: Path, replica: Replica, *args: str) -> subprocess.CompletedProcess:
    """The remote CLI: through the admin API of one replica, never the database."""
    return keyward("--server", replica.base, "--token-file", str(work / "admin.tokens"), *args)


def chat(env, key: str) -> harness.Response:
    body = json.dumps({"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    return env.request("POST", "/v1/chat/completions",
                       [("authorization", f"Bearer {key}"), ("content-type", "application/json")], body=body.encode())


def wait(predicate, what: str, limit_s: float = 15.0, env=None):
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    tail = env.log_tail(30) if env is not None else ""
    pytest.fail(f"{what}: not after {limit_s}s (last: {last!r})\n{tail}")


def spent(work: Path, replica: Replica, key_id: str) -> int:
    return json.loads(remote(work, replica, "key", "show", key_id, "--json").stdout)["spent_microusd"]


def dataplane_token(work: Path) -> str:
    return (work / "dataplane.token").read_text().strip()


def usage_report(work: Path, batch_id: str, key_id: str, cost: int) -> tuple[bytes, str]:
    """A report body and the data-plane token that posts it."""
    report = {"format": "keyward.usage-report.v1", "reporter": "replay", "batch_id": batch_id,
              "entries": [{"key_id": key_id, "cost_microusd": cost, "requests": 1}]}
    return json.dumps(report).encode(), dataplane_token(work)


def post_report(replica: Replica, body: bytes, token: str) -> dict:
    request = urllib.request.Request(replica.base + "/v1/usage", data=body, method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_replicas_share_one_policy_fold_usage_once_and_survive_a_kill(fleet):
    env, work, (a, b) = fleet
    # Through replica A: a project, a price and a key.
    remote(work, a, "project", "create", "proj_ha", "--org", "org_ha")
    remote(work, a, "price", "set", "--model", "gpt-4o*", "--input", "2", "--output", "10")
    created = json.loads(remote(work, a, "key", "create", "--project", "proj_ha", "--json").stdout)
    key, key_id = created["key"], created["id"]
    answered: list[int] = []  # every request with this key that reached the provider is charged

    def charged_chat() -> int:
        status = chat(env, key).status
        answered.append(status)
        return status
    wait(lambda: all(charged_chat() == 200 for _ in range(6)), "the new key works", env=env)

    # Both replicas serve the same bytes and ETag for the current version, and Envoy polled both.
    def same_snapshot():
        token = dataplane_token(work)
        (sa, ha, ba), (sb, hb, bb) = a.get("/v1/snapshot", token), b.get("/v1/snapshot", token)
        return sa == sb == 200 and ha.get("etag") == hb.get("etag") and ba == bb
    wait(same_snapshot, "replicas agree on the snapshot")
    def polled(replica):
        return sum(v for (name, labels), v in replica.metrics().items()
                   if name == "keyward_http_requests_total" and ("endpoint", "/v1/snapshot") in labels)
    wait(lambda: polled(a) > 0 and polled(b) > 0, "Envoy's round robin reaches both replicas")

    # Metered traffic: reports go through Envoy's load balancing to either replica.
    for _ in range(10):
        assert charged_chat() == 200
    sent = answered.count(200)
    wait(lambda: spent(work, b, key_id) == sent * COST, f"{sent} requests charged once each", env=env)

    # The same batch sent to both replicas at once is applied once.
    body, token = usage_report(work, f"replay-{uuid.uuid4().hex}", key_id, 7)
    acks: list[dict] = []
    threads = [threading.Thread(target=lambda r=r: acks.append(post_report(r, body, token))) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ack["duplicate"] for ack in acks) == [False, True], acks
    assert acks[0]["version"] == acks[1]["version"]
    wait(lambda: spent(work, a, key_id) == sent * COST + 7, "the replayed batch is charged once")

    # Replica A dies mid-run (SIGKILL: no drain); requests and reports go on through B.
    stop = threading.Event()
    during: list[int] = []

    def traffic():
        while not stop.is_set():
            during.append(charged_chat())
            time.sleep(0.02)
    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(0.5)
    a.kill()
    time.sleep(2.0)
    stop.set()
    worker.join()
    served = during.count(200)
    assert served > 0 and set(during) == {200}, f"every request answered by the filter: {set(during)}"
    total = (sent + served) * COST + 7
    wait(lambda: spent(work, b, key_id) == total, "nothing lost when a replica died", limit_s=20, env=env)
    time.sleep(1.0)
    assert spent(work, b, key_id) == total, "and nothing charged twice"

    # A key created through B, and a pause, reach Envoy through B's snapshots alone.
    second = json.loads(remote(work, b, "key", "create", "--project", "proj_ha", "--json").stdout)
    remote(work, b, "key", "pause", key_id)
    wait(lambda: chat(env, second["key"]).status == 200 and chat(env, key).status == 403,
         "changes through the surviving replica are enforced", env=env)

    # Each report landed once: the batches recorded, against the reports the replicas accepted.
    batches = json.loads(remote(work, b, "usage", "batches", "--json", "--limit", "1000").stdout)["data"]
    assert len({batch["batch_id"] for batch in batches}) == len(batches)
    assert sum(batch["cost_microusd"] for batch in batches) == total
    metrics = b.metrics()
    assert metrics[("keyward_usage_reports_total", (("outcome", "accepted"),))] >= 1
    assert metrics[("keyward_snapshot_version", ())] >= 1
    # The access log is one JSON object a line, with no key in it.
    lines = [json.loads(line) for line in b.log.read_text().splitlines() if line.startswith("{")]
    assert any(line["endpoint"] == "/v1/usage" and line["status"] == 200 for line in lines)
    secret = key.split(".", 1)[1]
    assert secret not in a.log.read_text() + b.log.read_text()


def test_metrics_parse_and_openapi_validates(fleet):
    _env, _work, replicas = fleet
    live = next(r for r in replicas if r.proc.poll() is None)
    names = {name for name, _ in live.metrics()}
    for expected in ("keyward_http_requests_total", "keyward_http_request_duration_seconds_bucket",
                     "keyward_snapshot_version", "keyward_snapshot_bytes", "keyward_usage_reports_total",
                     "keyward_store_errors_total"):
        assert expected in names, expected
    status, headers, body = live.get("/openapi.json")
    assert status == 200
    document = json.loads(body)
    validate_openapi(document)
    for path in ("/v1/keys", "/v1/keys/{id}", "/v1/projects", "/v1/prices/{model}", "/v1/usage", "/v1/snapshot"):
        assert path in document["paths"], path
    status, _, body = live.get("/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
