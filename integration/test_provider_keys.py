"""Provider keys end to end: customers' own model-provider keys stored encrypted by the real
control plane (`keyward provider-key`), sealed into every snapshot for the fleet's X25519 key,
opened by the filter in a real Envoy with the fleet's private key from Envoy's environment
(`KEYWARD_FLEET_PRIVATE_KEY`: `host_env_keys` on Wasm, the process environment natively), and
injected in each provider's own header on `provider` routes.

The mock provider records the credential headers it receives, so each test checks, per project
and per header style, the exact key that reached it, and that no client credential rode along.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness
from keyward_testkit.control_plane import ControlPlane
from mock_provider import MockProvider

INTERVAL_MS = 300
FLEET_ENV = "KEYWARD_FLEET_PRIVATE_KEY"

PLUGIN_CONFIG = {
    "routes": [
        {"name": "openai", "match": {"path_prefix": "/v1/chat"}, "provider": "openai"},
        {"name": "anthropic", "match": {"path_prefix": "/v1/messages"}, "provider": "anthropic"},
        {"name": "azure", "match": {"path_prefix": "/azure"}, "provider": "azure"},
        {"name": "google", "match": {"path_prefix": "/google"}, "provider": "google"},
        {"name": "plain", "match": {"path_prefix": "/plain"}},
    ]
}


def provider_secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


class ProviderPlane(ControlPlane):
    """The control plane with provider-key sealing configured."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kek_file = self.work / "provider.kek"
        self.fleet_key_file = self.work / "fleet.key"
        self.fleet_public_file = self.work / "fleet.key.pub"

    def sealing_args(self) -> list[str]:
        return ["--provider-kek-file", str(self.kek_file), "--fleet-public-key-file", str(self.fleet_public_file)]

    def serve_command(self, port: int) -> list[str]:
        # The access log too: the leak scan reads what serve prints.
        return [*super().serve_command(port), *self.sealing_args(), "--access-log"]

    def start(self, port: int = 0, timeout: float = 20, **popen) -> str:
        """`keyward serve`, its stderr and (after the first line) its stdout kept in files for the
        leak scan."""
        self.serve_err = open(self.work / "serve.stderr", "w")
        address = super().start(port, timeout, stderr=self.serve_err, **popen)
        self.serve_out = self.work / "serve.stdout"

        def drain(stream, path):
            with open(path, "a") as out:
                for line in stream:
                    out.write(line)
                    out.flush()

        threading.Thread(target=drain, args=(self.proc.stdout, self.serve_out), daemon=True).start()
        return address

    def serve_output(self) -> str:
        self.serve_err.flush()
        return (self.work / "serve.stderr").read_text() + self.serve_out.read_text()

    def remote(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        """`keyward --server … --token-file … ARGS`: the admin API, with no store at hand."""
        env = {k: v for k, v in self.env.items() if k not in ("KEYWARD_DB", "KEYWARD_PROVIDER_KEK_FILE")}
        done = subprocess.run(
            [str(self.keyward), "--server", f"http://{self.address}", "--token-file", str(self.admin_tokens_file),
             *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, cwd=self.work,
        )
        assert done.returncode == 0, f"keyward {' '.join(args)}: {done.stderr}"
        return done

    def api(self, method: str, path: str, body=None) -> tuple[int, str]:
        """One admin API call with the admin token: (status, body text)."""
        token = self.admin_tokens_file.read_text().strip().split(":", 1)[1]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.address}{path}", data=data, method=method,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def put_key(self, verb: str, provider: str, owner: str, owner_id: str, key: str) -> str:
        key_file = self.work / f"key-{secrets.token_hex(4)}"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        try:
            return self.cli("provider-key", verb, "--provider", provider, f"--{owner}", owner_id,
                            "--provider-kek-file", str(self.kek_file), "--key-file", str(key_file)).stdout
        finally:
            key_file.unlink()


@pytest.fixture(scope="module")
def world(tmp_path_factory, envoy_workdir, keyward_bin):
    work = tmp_path_factory.mktemp("provider-keys")
    plane = ProviderPlane(keyward_bin, work, cli_log=work / "cli.log")
    plane.create_secrets(admin_token_name="pk-admin")
    plane.cli("secret", "provider-kek", "--out", str(plane.kek_file))
    plane.cli("secret", "fleet-key", "--out", str(plane.fleet_key_file))
    for project in ("proj_a", "proj_b"):
        plane.cli("project", "create", project, "--org", "org_1")
    keys = {
        ("openai", "project", "proj_a"): provider_secret("sk-proj-a"),
        ("openai", "org", "org_1"): provider_secret("sk-org-1"),
        ("anthropic", "org", "org_1"): provider_secret("sk-ant-org-1"),
        ("azure", "project", "proj_b"): provider_secret("azure-proj-b"),
        ("google", "project", "proj_a"): provider_secret("AIza-proj-a"),
    }
    for (provider, owner, owner_id), key in keys.items():
        plane.put_key("add", provider, owner, owner_id, key)
    clients = {}
    for project in ("proj_a", "proj_b"):
        created = json.loads(plane.cli("key", "create", "--project", project, "--json").stdout)
        clients[project] = created["key"]
    (work / "plugin.json").write_text(json.dumps(PLUGIN_CONFIG))
    address = plane.start()
    provider = MockProvider().start()
    fleet_private = plane.fleet_key_file.read_text().strip()

    def render(listen_port, admin_port, upstream_port):
        return plane.cli(
            "render", "envoy", *harness.render_build_args(), "--control-plane", address, *plane.trust_args(),
            "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
            "--plugin-config", str(work / "plugin.json"),
        ).stdout

    envs = []
    try:
        # Envoy's own environment carries the fleet's private key, never its configuration.
        os.environ[FLEET_ENV] = fleet_private
        try:
            env = harness.Envoy("provider-keys", envoy_workdir, render=render, upstream=provider)
            env.start()
        finally:
            del os.environ[FLEET_ENV]
        envs.append(env)
        yield {"plane": plane, "env": env, "provider": provider, "keys": keys, "clients": clients,
               "all_keys": list(keys.values()), "api_answers": [],
               "render": render, "fleet_private": fleet_private, "work": work}
    finally:
        for env in envs:
            env.stop()
        provider.stop()
        plane.stop()


def call(world, project: str, path: str, extra=()) -> tuple[harness.Response, dict]:
    """One request as `project`'s client; the response and the credentials the provider got."""
    request_id = harness.new_request_id()
    headers = [("authorization", f"Bearer {world['clients'][project]}"), ("x-request-id", request_id),
               ("content-type", "application/json"), *extra]
    response = world["env"].request("POST", path, headers, body=b'{"model": "gpt-4o-mini"}')
    served = [s for s in world["provider"].served() if s.request_id == request_id]
    return response, (served[0].credentials if served else {})


def wait_for_policy(world, project: str, path: str, limit_s: float = 10.0):
    deadline = time.monotonic() + limit_s
    response, got = call(world, project, path)
    while response.status == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        response, got = call(world, project, path)
    return response, got


def test_each_project_gets_its_key_or_its_orgs_in_the_providers_header(world):
    keys = world["keys"]
    response, got = wait_for_policy(world, "proj_a", "/v1/chat/completions")
    assert response.status == 200, f"{response}\n{world['env'].log_tail(30)}"
    assert got == {"authorization": [f"Bearer {keys[('openai', 'project', 'proj_a')]}"]}
    # proj_b has no OpenAI key of its own: its org's.
    response, got = call(world, "proj_b", "/v1/chat/completions")
    assert response.status == 200, response
    assert got == {"authorization": [f"Bearer {keys[('openai', 'org', 'org_1')]}"]}
    # Anthropic: x-api-key, the org's; the client's keyward key in authorization is gone.
    response, got = call(world, "proj_a", "/v1/messages")
    assert response.status == 200, response
    assert got == {"x-api-key": [keys[("anthropic", "org", "org_1")]]}
    # Azure: api-key; a client's own api-key and x-goog-api-key never ride along.
    response, got = call(world, "proj_b", "/azure/openai/deployments/x/chat/completions",
                         [("api-key", "client-own-azure"), ("x-goog-api-key", "client-own-google")])
    assert response.status == 200, response
    assert got == {"api-key": [keys[("azure", "project", "proj_b")]]}
    # Google: x-goog-api-key; a `?key=` in the query is removed too.
    response, got = call(world, "proj_a", "/google/v1beta/models/gemini:generateContent?key=client-own")
    assert response.status == 200, response
    assert got == {"x-goog-api-key": [keys[("google", "project", "proj_a")]]}
    served = [s for s in world["provider"].served() if s.path.startswith("/google/")]
    assert served and "client-own" not in served[-1].path


def test_no_key_for_the_provider_is_refused(world):
    wait_for_policy(world, "proj_a", "/v1/chat/completions")
    response, got = call(world, "proj_b", "/google/v1beta/models/gemini:generateContent")
    assert (response.status, response.header("x-keyward-error")) == (403, "provider_key_missing"), response
    assert got == {}
    # A route without a provider forwards the client's headers as before (minus keyward's key).
    response, got = call(world, "proj_a", "/plain/x", [("x-goog-api-key", "kept")])
    assert response.status == 200 and got == {"x-goog-api-key": ["kept"]}, (response, got)


def test_list_shows_the_last_four_only_and_every_change_is_audited(world):
    plane, keys = world["plane"], world["keys"]
    listed = json.loads(plane.cli("provider-key", "list", "--json").stdout)["data"]
    assert len(listed) == len(keys)
    for row in listed:
        key = keys[(row["provider"], row["owner"], row["owner_id"])]
        assert row["last4"] == key[-4:]
        assert key not in json.dumps(row)
    audit = plane.cli("audit", "--json").stdout
    assert audit.count('"provider_key.add"') == len(keys)
    for key in keys.values():
        assert key not in audit


def test_a_rotated_key_is_used_within_the_sync_interval(world):
    plane, keys = world["plane"], world["keys"]
    wait_for_policy(world, "proj_a", "/v1/chat/completions")
    new_key = provider_secret("sk-proj-a-rotated")
    plane.put_key("rotate", "openai", "project", "proj_a", new_key)
    rotated_at = time.monotonic()
    deadline = rotated_at + 10
    got = {}
    while time.monotonic() < deadline:
        response, got = call(world, "proj_a", "/v1/chat/completions")
        assert response.status == 200, response
        if got == {"authorization": [f"Bearer {new_key}"]}:
            break
        time.sleep(0.05)
    assert got == {"authorization": [f"Bearer {new_key}"]}, "the rotated key never arrived"
    took = time.monotonic() - rotated_at
    assert took < 10, took
    keys[("openai", "project", "proj_a")] = new_key
    world["all_keys"].append(new_key)
    print(f"rotation reached the data plane in {took:.2f}s (sync interval {INTERVAL_MS} ms)")


def test_the_admin_api_manages_keys_and_list_shows_the_last_use(world):
    plane, keys, answers = world["plane"], world["keys"], world["api_answers"]
    wait_for_policy(world, "proj_a", "/v1/chat/completions")
    plane.cli("project", "create", "proj_c", "--org", "org_1")
    created = json.loads(plane.cli("key", "create", "--project", "proj_c", "--json").stdout)
    world["clients"]["proj_c"] = created["key"]
    # OpenAI for proj_c through the remote CLI (the key on stdin), Mistral over HTTP.
    openai_c = provider_secret("sk-proj-c-remote")
    added = plane.remote("provider-key", "add", "--provider", "openai", "--project", "proj_c",
                         "--name", "proj-c-openai", "--json", stdin=openai_c + "\n")
    answers.append(added.stdout + added.stderr)
    assert json.loads(added.stdout)["last4"] == openai_c[-4:]
    mistral_c = provider_secret("mistral-proj-c")
    status, body = plane.api("POST", "/v1/provider-keys", {"provider": "mistral", "project": "proj_c", "key": mistral_c})
    answers.append(body)
    assert status == 201, body
    assert json.loads(body)["last4"] == mistral_c[-4:]
    world["all_keys"].extend([openai_c, mistral_c])
    keys[("openai", "project", "proj_c")] = openai_c
    keys[("mistral", "project", "proj_c")] = mistral_c
    # The next snapshot carries it: the mock provider receives proj_c's own key.
    deadline = time.monotonic() + 10
    got = {}
    while time.monotonic() < deadline:
        response, got = call(world, "proj_c", "/v1/chat/completions")
        if response.status == 200 and got == {"authorization": [f"Bearer {openai_c}"]}:
            break
        time.sleep(0.1)
    assert got == {"authorization": [f"Bearer {openai_c}"]}, f"{response}\n{world['env'].log_tail(30)}"
    # The usage report names the key used: list shows its last use, remotely and locally.
    deadline = time.monotonic() + 15
    row = {}
    while time.monotonic() < deadline:
        listed = plane.remote("provider-key", "list", "--json").stdout
        row = next(r for r in json.loads(listed)["data"] if (r["owner"], r["owner_id"], r["provider"]) ==
                   ("project", "proj_c", "openai"))
        if row["last_used_at"]:
            break
        time.sleep(0.3)
    answers.append(listed)
    assert row["last_used_at"] and abs(row["last_used_at"] - time.time()) < 60, row
    assert row["name"] == "proj-c-openai"
    unused = json.loads(plane.cli("provider-key", "list", "--json").stdout)["data"]
    assert [r["last_used_at"] for r in unused if r["provider"] == "mistral"] == [None]
    table = plane.remote("provider-key", "list").stdout
    answers.append(table)
    line = next(line for line in table.splitlines() if "proj_c" in line and "openai" in line)
    assert "LAST USED" in table and line.rstrip().split()[-1] != "-", table
    status, body = plane.api("GET", "/v1/audit")
    answers.append(body)
    events = [e for e in json.loads(body)["data"] if e["action"] == "provider_key.add" and "proj_c" in e["target"]]
    assert {e["actor"] for e in events} == {"pk-admin"} and len(events) == 2, events


def test_no_plaintext_provider_key_anywhere(world):
    plane, env = world["plane"], world["env"]
    wait_for_policy(world, "proj_a", "/v1/chat/completions")
    # An error body and a refusal, so that their text is in the scan.
    refused, _ = call(world, "proj_b", "/google/v1")
    places = {
        "envoy log": env.log(),
        "config_dump": env.admin("/config_dump").raw_text(),
        "stats": env.admin("/stats").raw_text() + env.admin("/stats/prometheus").raw_text(),
        "error body": refused.raw_text(),
        "snapshot": plane.cli("snapshot", "build", "--signing-key-id", plane.signing_key_id,
                              "--signing-key-file", str(plane.signing_key_file), *plane.sealing_args()).stdout,
        # The SQLite file and its write-ahead log.
        "store": "".join(Path(f"{plane.db}{suffix}").read_bytes().decode("latin-1")
                         for suffix in ("", "-wal", "-shm") if Path(f"{plane.db}{suffix}").exists()),
        "cli output": (world["work"] / "cli.log").read_text(),
        "serve output": plane.serve_output(),
        "admin API answers": "\n".join(world["api_answers"]),
    }
    assert '"provider_keys"' in places["snapshot"], "the snapshot carries the sealed keys"
    assert '"endpoint":"/v1/provider-keys"' in places["serve output"], "the scan reads serve's log"
    # The scan reads the right store: its rows (and their last 4 characters) are in it.
    assert all(key[-4:] in places["store"] for key in world["keys"].values())
    for name, text in places.items():
        for key in world["all_keys"]:
            assert key not in text, f"a plaintext provider key in the {name}"
    # The fleet's private key is not in Envoy's configuration either: only its variable's name.
    assert world["fleet_private"] not in places["config_dump"]
    if harness.default_host() == "wasm":
        assert FLEET_ENV in places["config_dump"]


def test_without_the_private_key_provider_routes_fail_closed(world, envoy_workdir):
    assert FLEET_ENV not in os.environ
    upstream = MockProvider().start()
    env = harness.Envoy("provider-keys-nokey", envoy_workdir, render=world["render"], upstream=upstream)
    try:
        env.start()
        headers = [("authorization", f"Bearer {world['clients']['proj_a']}")]
        deadline = time.monotonic() + 10
        response = env.request("POST", "/v1/chat/completions", headers, body=b"{}")
        while response.header("x-keyward-error") == "policy_unavailable" and time.monotonic() < deadline:
            time.sleep(0.2)
            response = env.request("POST", "/v1/chat/completions", headers, body=b"{}")
        assert (response.status, response.header("x-keyward-error")) == (503, "provider_key_unavailable"), response
        assert env.upstream.served() == []
        # Routes without a provider still serve.
        plain = env.request("POST", "/plain/x", headers, body=b"{}")
        assert plain.status == 200, plain
        log = env.wait_for_log(lambda text: FLEET_ENV in text and "provider" in text)
        assert FLEET_ENV in log
    finally:
        env.stop()
        upstream.stop()
