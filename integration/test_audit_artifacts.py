"""`keyward audit --config` reads what operators have: the Envoy bootstrap `render envoy` writes,
the Istio stream `render istio` writes, a hand-written Envoy YAML, and the bare plugin
configuration given to render (where the missing sync block is a note, not a finding).
`render --preset` writes routes that enforce a key's restrictions, and render warns when no
route would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

SIGNING_KEY_ID = "ops-1"
HAND_WRITTEN = """\
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
static_resources:
  listeners:
  - name: api
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: api
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: up}}]}]}
          http_filters:
          - name: keyward
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: keyward
                vm_config: {vm_id: keyward, runtime: envoy.wasm.runtime.v8, code: {local: {filename: /etc/envoy/keyward.wasm}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    {"mode": "shadow", "routes": [{"name": "chat", "match": {"path_prefix": "/v1/chat/"}, "scopes": ["chat:write"]}]}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""


def run(keyward_bin: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(keyward_bin), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def store(keyward_bin, tmp_path_factory):
    work = tmp_path_factory.mktemp("audit-artifacts")
    db = str(work / "keyward.db")
    for args in (["init"], ["project", "create", "proj_a", "--org", "org_a"],
                 ["key", "create", "--project", "proj_a", "--scopes", "chat:write", "--models", "gpt-4o-mini"],
                 ["secret", "signing-key", "--out", "signing.key"]):
        result = run(keyward_bin, "--db", db, *args, cwd=work)
        assert result.returncode == 0, result.stderr
    result = run(keyward_bin, "--db", db, "snapshot", "build", "--signing-key-id", SIGNING_KEY_ID,
                 "--signing-key-file", "signing.key", "--out", "snapshot.json", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def audit(keyward_bin: Path, work: Path, config: Path) -> dict:
    result = run(keyward_bin, "audit", "--json", "--config", str(config), "--snapshot", "snapshot.json",
                 "--public-key", f"{SIGNING_KEY_ID}=signing.key.pub", "--fail-on", "high", cwd=work)
    assert result.returncode in (0, 2), result.stderr
    return json.loads(result.stdout)


def finding_codes(report: dict) -> set[str]:
    return {finding["code"] for finding in report["findings"]}


def test_audit_reads_the_rendered_envoy_bootstrap(keyward_bin, store):
    result = run(keyward_bin, "render", "envoy", "--wasm", "/etc/envoy/keyward.wasm", "--control-plane",
                 "127.0.0.1:7070", "--public-key", f"{SIGNING_KEY_ID}=signing.key.pub",
                 "--preset", "openai", cwd=store)
    assert result.returncode == 0, result.stderr
    assert "NOT enforced" not in result.stderr
    (store / "envoy.json").write_text(result.stdout)
    report = audit(keyward_bin, store, store / "envoy.json")
    assert report["config"]["read_from"] == "Envoy bootstrap"
    assert report["config"]["sync"] is True
    routes = {route["name"] for route in report["routes"]}
    assert {"chat", "responses", "embeddings", "health"} <= routes
    assert "no_sync_signing_key" not in finding_codes(report)
    assert "unmatched_paths_authenticate" not in finding_codes(report)
    decisions = {d["route"]: d["decision"] for d in report["keys"][0]["routes"]}
    assert decisions["chat"] == "allow" and decisions["embeddings"] == "deny"


def test_audit_reads_the_rendered_istio_stream(keyward_bin, store, wasm):
    result = run(keyward_bin, "render", "istio", "--wasm-url", "file:///var/lib/keyward/keyward.wasm",
                 "--wasm-file", str(wasm), "--control-plane", "keyward.keyward-system.svc.cluster.local:7070",
                 "--public-key", f"{SIGNING_KEY_ID}=signing.key.pub", "--preset", "anthropic",
                 cwd=store)
    assert result.returncode == 0, result.stderr
    (store / "istio.yaml").write_text(result.stdout)
    report = audit(keyward_bin, store, store / "istio.yaml")
    assert report["config"]["read_from"] == "WasmPlugin"
    assert {"messages", "count_tokens"} <= {route["name"] for route in report["routes"]}


def test_audit_reads_a_hand_written_envoy_yaml(keyward_bin, store):
    (store / "hand.yaml").write_text(HAND_WRITTEN)
    report = audit(keyward_bin, store, store / "hand.yaml")
    assert report["config"]["read_from"] == "Envoy bootstrap"
    assert report["config"]["mode"] == "shadow"
    assert {"shadow_mode", "no_sync_signing_key", "unmatched_paths_authenticate"} <= finding_codes(report)


def test_the_configuration_given_to_render_gets_a_note_not_a_finding(keyward_bin, store):
    (store / "plugin.json").write_text(json.dumps({"routes": [{"name": "chat", "match": {"path_prefix": "/v1/"},
                                                               "scopes": ["chat:write"]}],
                                                   "unmatched_paths": "deny"}))
    report = audit(keyward_bin, store, store / "plugin.json")
    assert report["config"]["read_from"] == "plugin configuration"
    assert "no_sync_signing_key" not in finding_codes(report)
    assert any("render" in note for note in report.get("notes", [])), report.get("notes")


def test_render_warns_when_no_route_enforces_a_keys_restrictions(keyward_bin, store):
    result = run(keyward_bin, "render", "envoy", "--wasm", "/x.wasm", "--control-plane", "127.0.0.1:7070",
                 "--public-key", f"{SIGNING_KEY_ID}=signing.key.pub", cwd=store)
    assert result.returncode == 0, result.stderr
    assert "NOT enforced" in result.stderr
    (store / "mine.json").write_text(json.dumps({"routes": []}))
    both = run(keyward_bin, "render", "envoy", "--wasm", "/x.wasm", "--control-plane", "127.0.0.1:7070",
               "--public-key", f"{SIGNING_KEY_ID}=signing.key.pub", "--preset", "openai",
               "--plugin-config", "mine.json", cwd=store)
    assert both.returncode != 0 and "--preset" in both.stderr
