"""`keyward render istio` and `make oci`: the rendered WasmPlugin and ServiceEntry validate with
the validators generated from Istio's CRD schemas (npm @kubernetes-models/istio, installed by
`make` into .tools/istio-models), a deliberately bad example fails, the pluginConfig is a keyward
configuration that Envoy accepts and that syncs a policy through Istio's `outbound|PORT||HOST`
cluster name, and the OCI artifact of the module is reproducible."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from keys import ak_key
from keyward_testkit.envoy_config import static_cluster
from snapshot_server import (
    DATAPLANE_TOKEN, SIGNING_KEY, SIGNING_KEY_ID, SIGNING_PUBLIC_KEY_B64, SnapshotServer, sign,
)

# Wasm only: Istio runs Wasm plugins: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host

REPO = Path(__file__).resolve().parent.parent
ISTIO_MODELS = Path(os.environ.get("ISTIO_MODELS_DIR", REPO / ".tools" / "istio-models"))
VALIDATE = REPO / "integration" / "istio" / "validate.mjs"
BAD_EXAMPLE = REPO / "integration" / "istio" / "bad-wasmplugin.json"
OCI_SCRIPT = REPO / "scripts" / "oci.py"

WASM_URL = "oci://registry.example.com/keyward:0.1.0"
CONTROL_PLANE_HOST = "keyward.keyward-system.svc.cluster.local"

# The spec fields of the CRDs (extensions.istio.io/v1alpha1 WasmPlugin, networking.istio.io/v1
# ServiceEntry). The validators accept unknown fields, so a misspelt setting would pass them and
# never take effect: the test refuses anything not listed here.
ALLOWED_SPEC_FIELDS = {
    "WasmPlugin": {
        "failStrategy", "imagePullPolicy", "imagePullSecret", "match", "phase", "pluginConfig", "pluginName",
        "priority", "selector", "sha256", "targetRef", "targetRefs", "type", "url", "verificationKey", "vmConfig",
    },
    "ServiceEntry": {
        "addresses", "endpoints", "exportTo", "hosts", "location", "ports", "resolution", "subjectAltNames",
        "workloadSelector",
    },
    "EnvoyFilter": {"configPatches", "priority", "targetRefs", "workloadSelector"},
    "DestinationRule": {"exportTo", "host", "subsets", "trafficPolicy", "workloadSelector"},
}
ALLOWED_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec"}


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def istio_models() -> Path:
    package = ISTIO_MODELS / "node_modules" / "@kubernetes-models" / "istio" / "package.json"
    if not package.is_file():
        # a hard failure, not a skip: `make test` must never pass without the schema check
        pytest.fail(f"@kubernetes-models/istio not installed under {ISTIO_MODELS}: run `make tools`", pytrace=False)
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH", pytrace=False)
    return ISTIO_MODELS


@pytest.fixture(scope="module")
def oci_layout(wasm, tmp_path_factory) -> Path:
    """`make oci`'s layout, for the oci:// URL: Istio checks its manifest digest."""
    out = tmp_path_factory.mktemp("istio-oci")
    build_oci(wasm, out)
    return out / "oci"


def manifest_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"].split(":", 1)[1]


@pytest.fixture(scope="module")
def signing_key_file(tmp_path_factory) -> Path:
    """The stand-in control plane's public key file (what render takes), next to a data-plane
    token file (`trust_args`): render never needs a private key."""
    directory = tmp_path_factory.mktemp("istio-key")
    (directory / "dataplane.token").write_text(DATAPLANE_TOKEN + "\n")
    (directory / "dataplane.token").chmod(0o600)
    path = directory / "signing.key.pub"
    path.write_text(SIGNING_PUBLIC_KEY_B64 + "\n")
    return path


def trust_args(public_key_file: Path) -> list[str]:
    return ["--public-key", f"{SIGNING_KEY_ID}={public_key_file}",
            "--dataplane-token-file", str(public_key_file.parent / "dataplane.token")]


def render_istio(keyward_bin: Path, signing_key_file: Path, wasm: Path, oci_layout: Path, *extra: str,
                 control_plane: str = f"{CONTROL_PLANE_HOST}:7070", wasm_url: str = WASM_URL
                 ) -> subprocess.CompletedProcess:
    layout = ["--oci-layout", str(oci_layout)] if wasm_url.startswith("oci://") else []
    return subprocess.run(
        [str(keyward_bin), "render", "istio", "--wasm-url", wasm_url, "--wasm-file", str(wasm), *layout,
         "--control-plane", control_plane, *trust_args(signing_key_file), *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def documents(text: str) -> list[dict]:
    """The `---`-separated JSON documents of a rendered stream."""
    chunks = [c for c in re.split(r"^---[ \t]*$", text, flags=re.M) if c.strip()]
    return [json.loads(c) for c in chunks]


def node_validate(models: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(VALIDATE), str(path)], env={**os.environ, "ISTIO_MODELS_DIR": str(models)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )


def unknown_fields(doc: dict) -> list[str]:
    kind = doc.get("kind")
    unknown = [f for f in doc if f not in ALLOWED_TOP_LEVEL]
    unknown += [f"spec.{f}" for f in doc.get("spec", {}) if f not in ALLOWED_SPEC_FIELDS.get(kind, set())]
    return unknown


def check_schema(models: Path, tmp_path: Path, docs: list[dict]) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text("".join("---\n" + json.dumps(d, indent=2) + "\n" for d in docs))
    res = node_validate(models, path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") == len(docs), res.stdout
    for doc in docs:
        assert unknown_fields(doc) == [], f"{doc['kind']}: fields outside the CRD schema"


# -- render istio ----------------------------------------------------------------------------------


def test_rendered_resources_validate_against_the_istio_schema(keyward_bin, signing_key_file, wasm, oci_layout,
                                                               istio_models, tmp_path):
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--namespace", "llm-gateway",
                       "--selector", "app=llm-gateway")
    assert res.returncode == 0, res.stderr
    assert "data-plane token" in res.stderr, "the token note is missing"
    docs = documents(res.stdout)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "ServiceEntry"),
    ]
    check_schema(istio_models, tmp_path, docs)

    plugin, hardening, entry = docs
    # Envoy's own request hardening for the same workloads (keyward holds without it too).
    assert hardening["spec"]["workloadSelector"] == {"labels": {"app": "llm-gateway"}}
    patch = hardening["spec"]["configPatches"][0]
    assert patch["applyTo"] == "NETWORK_FILTER" and patch["patch"]["operation"] == "MERGE"
    manager = patch["patch"]["value"]["typed_config"]
    assert manager["normalize_path"] is True and manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    spec = plugin["spec"]
    assert spec["url"] == WASM_URL
    # oci://: Istio compares the image manifest's digest (istio/istio pkg/wasm/imagefetcher.go)
    assert spec["sha256"] == manifest_digest(oci_layout)
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE"
    assert spec["selector"] == {"matchLabels": {"app": "llm-gateway"}}
    assert plugin["metadata"]["namespace"] == entry["metadata"]["namespace"] == "llm-gateway"
    sync = spec["pluginConfig"]["sync"]
    assert sync["poller"] == "lease"
    assert sync["cluster"] == f"outbound|7070||{CONTROL_PLANE_HOST}"
    assert sync["public_keys"] == [{"id": SIGNING_KEY_ID, "public_key_base64": SIGNING_PUBLIC_KEY_B64}]
    assert sync["token"] == DATAPLANE_TOKEN
    assert "signing_keys" not in sync and "secret_base64" not in res.stdout
    assert entry["spec"]["hosts"] == [CONTROL_PLANE_HOST]
    assert entry["spec"]["ports"][0]["number"] == 7070


def test_tls_to_the_control_plane_is_a_verifying_destination_rule(keyward_bin, signing_key_file, wasm, oci_layout,
                                                                  istio_models, tmp_path):
    """https:// to the control plane: the sidecar originates TLS (a DestinationRule) and checks the
    certificate against the CA bundle and the host name; the resources still validate. The
    rendering, written with --out, is 0600 and holds nothing that can sign."""
    out = tmp_path / "istio.yaml"
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--control-plane-ca",
                       "/etc/keyward/ca.pem", "--out", str(out),
                       control_plane=f"https://{CONTROL_PLANE_HOST}:7070")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    docs = documents(out.read_text())
    assert [d["kind"] for d in docs] == ["WasmPlugin", "EnvoyFilter", "DestinationRule", "ServiceEntry"]
    check_schema(istio_models, tmp_path, docs)
    rule = docs[2]["spec"]
    assert rule["host"] == CONTROL_PLANE_HOST
    [setting] = rule["trafficPolicy"]["portLevelSettings"]
    assert setting["port"] == {"number": 7070}
    assert setting["tls"] == {"mode": "SIMPLE", "sni": CONTROL_PLANE_HOST, "caCertificates": "/etc/keyward/ca.pem",
                              "subjectAltNames": [CONTROL_PLANE_HOST]}
    assert docs[0]["spec"]["pluginConfig"]["sync"]["cluster"] == f"outbound|7070||{CONTROL_PLANE_HOST}"
    # Nothing that can sign: no private key, no shared secret.
    private = SIGNING_KEY.hex()
    text = out.read_text()
    assert "secret_base64" not in text and "signing_keys" not in text and private not in text
    assert "PRIVATE KEY" not in text

    # Skipping verification is explicit and warned about.
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--control-plane-insecure-skip-verify",
                       control_plane=f"https://{CONTROL_PLANE_HOST}:7070")
    assert res.returncode == 0 and "NOT verified" in res.stderr, res.stderr
    docs = documents(res.stdout)
    check_schema(istio_models, tmp_path, docs)
    assert docs[2]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["insecureSkipVerify"] is True


def test_gateway_target_match_and_base_config(keyward_bin, signing_key_file, wasm, oci_layout, istio_models, tmp_path):
    base = tmp_path / "keyward.json"
    base.write_text(json.dumps({"mode": "shadow", "routes": [{"name": "health", "match": {"path_prefix": "/healthz"},
                                                              "exempt": True}]}))
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--target-ref-kind", "Gateway",
                       "--target-ref-name", "llm", "--match-mode", "SERVER", "--plugin-config", str(base),
                       "--no-service-entry", "--name", "keyward-gw")
    assert res.returncode == 0, res.stderr
    docs = documents(res.stdout)
    assert [d["kind"] for d in docs] == ["WasmPlugin", "EnvoyFilter"]
    assert docs[1]["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm"}]
    check_schema(istio_models, tmp_path, docs)
    spec = docs[0]["spec"]
    assert spec["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm"}]
    assert "selector" not in spec
    assert spec["match"] == [{"mode": "SERVER"}]
    assert spec["pluginConfig"]["mode"] == "shadow"
    assert spec["pluginConfig"]["routes"][0]["exempt"] is True


@pytest.mark.parametrize("extra,control_plane,needle", [
    ([], "10.0.0.7:7070", "Istio needs a host name"),
    (["--match-mode", "INBOUND"], None, "--match-mode"),
    (["--name", "Keyward"], None, "is not a Kubernetes name"),
    (["--selector", "app"], None, "is not LABEL=VALUE"),
], ids=["ip_control_plane", "bad_match_mode", "bad_name", "bad_selector"])
def test_render_refuses_bad_input(keyward_bin, signing_key_file, wasm, oci_layout, extra, control_plane, needle):
    kwargs = {"control_plane": control_plane} if control_plane else {}
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, *extra, **kwargs)
    assert res.returncode == 1, res.stdout
    assert needle in res.stderr
    assert res.stdout == ""


def test_file_and_http_urls_carry_the_module_sha256(keyward_bin, signing_key_file, wasm, oci_layout, istio_models,
                                                    tmp_path):
    for url in ("file:///var/lib/keyward/keyward.wasm", "https://downloads.example.com/keyward-0.1.0.wasm"):
        res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, wasm_url=url)
        assert res.returncode == 0, res.stderr
        docs = documents(res.stdout)
        check_schema(istio_models, tmp_path, docs)
        assert docs[0]["spec"]["url"] == url
        assert docs[0]["spec"]["sha256"] == hashlib.sha256(wasm.read_bytes()).hexdigest()


def test_oci_url_needs_a_layout_that_holds_this_module(keyward_bin, signing_key_file, wasm, oci_layout, tmp_path):
    base = [str(keyward_bin), "render", "istio", "--wasm-url", WASM_URL, "--control-plane",
            f"{CONTROL_PLANE_HOST}:7070", *trust_args(signing_key_file)]
    res = subprocess.run([*base, "--wasm-file", str(wasm)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "--oci-layout" in res.stderr, res.stderr
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm.read_bytes() + b"\0")
    res = subprocess.run([*base, "--wasm-file", str(other), "--oci-layout", str(oci_layout)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1 and "stale layout" in res.stderr, res.stderr


def test_render_refuses_a_plugin_config_the_filter_would_refuse(keyward_bin, signing_key_file, wasm, oci_layout,
                                                                tmp_path):
    base = tmp_path / "bad.json"
    base.write_text(json.dumps({"mode": "enforcing"}))
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--plugin-config", str(base))
    assert res.returncode == 1
    assert "plugin configuration: mode" in res.stderr, res.stderr


def test_the_bad_example_fails_schema_validation(istio_models):
    res = node_validate(istio_models, BAD_EXAMPLE)
    assert res.returncode != 0, "the deliberately bad WasmPlugin passed validation"
    assert "spec/phase" in res.stderr and "spec/sha256" in res.stderr, res.stderr


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["spec"].__setitem__("failStrategy", "FAIL_CLOSED"), "spec/failStrategy"),
    (lambda d: d["spec"].__setitem__("sha256", "A" * 64), "spec/sha256"),
    (lambda d: d["spec"].pop("url"), "url"),
], ids=["fail_strategy_enum", "uppercase_sha256", "missing_url"])
def test_schema_catches_mutations_of_the_rendered_plugin(keyward_bin, signing_key_file, wasm, oci_layout, istio_models,
                                                         tmp_path, mutate, needle):
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout)
    plugin = copy.deepcopy(documents(res.stdout)[0])
    mutate(plugin)
    path = tmp_path / "mutated.json"
    path.write_text(json.dumps(plugin))
    out = node_validate(istio_models, path)
    assert out.returncode != 0 and needle in out.stderr, out.stdout + out.stderr


def test_allow_list_catches_unknown_spec_fields():
    doc = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "x"},
           "spec": {"url": WASM_URL, "failurePolicy": "FAIL_CLOSE"}, "status2": {}}
    assert unknown_fields(doc) == ["status2", "spec.failurePolicy"]


# -- the pluginConfig inside Envoy -----------------------------------------------------------------


def outbound_cluster(name: str, port: int) -> dict:
    """A cluster named as Istio names it (`outbound|PORT||HOST`), here to a loopback port."""
    return static_cluster(name, port, connect_timeout="0.5s")


def test_plugin_config_passes_envoy_validate(keyward_bin, signing_key_file, wasm, oci_layout, tmp_path):
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout)
    plugin_config = documents(res.stdout)[0]["spec"]["pluginConfig"]
    cfg = harness.render_bootstrap(10000, 9901, 10001, plugin_config, wasm)
    cfg["static_resources"]["clusters"].append(outbound_cluster(plugin_config["sync"]["cluster"], 7070))
    path = tmp_path / "istio-validate.json"
    path.write_text(json.dumps(cfg))
    out = harness.envoy_validate(path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def test_plugin_config_syncs_a_policy_through_the_outbound_cluster(keyward_bin, signing_key_file, wasm, oci_layout,
                                                                  envoy_workdir):
    """The rendered pluginConfig, as Istio would hand it to Envoy (HTTP filter only, no
    singleton): the lease elects a poller, which fetches the signed snapshot through the
    `outbound|PORT||HOST` cluster; then a key of that snapshot is let through."""
    alice = ak_key()
    server = SnapshotServer().start()
    server.publish(sign({
        "version": 1, "issued_at": int(time.time()) - 5,
        "projects": [{"id": "proj_istio", "org": "org_istio", "status": "active"}],
        "keys": [alice.record(project="proj_istio", status="active")],
    }))
    res = render_istio(keyward_bin, signing_key_file, wasm, oci_layout, "--interval-ms", "500",
                       control_plane=f"localhost:{server.port}")
    assert res.returncode == 0, res.stderr
    plugin_config = documents(res.stdout)[0]["spec"]["pluginConfig"]

    def render(listen_port, admin_port, upstream_port):
        cfg = harness.render_bootstrap(listen_port, admin_port, upstream_port, plugin_config, wasm)
        cfg["static_resources"]["clusters"].append(outbound_cluster(plugin_config["sync"]["cluster"], server.port))
        return json.dumps(cfg)

    env = harness.Envoy("istio-lease", envoy_workdir, render=render, concurrency=2)
    env.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {alice.plaintext}")])
            if resp.status == 200:
                break
            assert time.monotonic() < deadline, f"still {resp.status} after 10s\n{env.log_tail(40)}"
            time.sleep(0.1)
        # Every worker follows the published policy within a tick: until then another worker
        # may still answer policy_unavailable.
        deadline = time.monotonic() + 5
        while True:
            answers = {(r.status, r.header("x-keyward-error")) for r in (env.request("GET", "/v1/models", []) for _ in range(8))}
            if answers == {(401, "missing_api_key")}:
                break
            assert time.monotonic() < deadline, f"still {answers}\n{env.log_tail(40)}"
            time.sleep(0.1)
        assert server.requests >= 1
    finally:
        env.stop()
        server.stop()


# -- make oci --------------------------------------------------------------------------------------


def build_oci(wasm: Path, out: Path) -> dict:
    res = subprocess.run(
        [sys.executable, str(OCI_SCRIPT), "--wasm", str(wasm), "--out-dir", str(out / "oci"),
         "--tar", str(out / "keyward-oci.tar"), "--tag", "0.1.0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_oci_artifact_is_reproducible_and_holds_the_module(wasm, tmp_path):
    first = build_oci(wasm, tmp_path / "a")
    time.sleep(1.1)  # a timestamp anywhere would now differ
    second = build_oci(wasm, tmp_path / "b")
    assert first["manifest_digest"] == second["manifest_digest"]
    assert (tmp_path / "a" / "keyward-oci.tar").read_bytes() == (tmp_path / "b" / "keyward-oci.tar").read_bytes()
    wasm_digest = "sha256:" + hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert first["layer_digest"] == wasm_digest

    layout = tmp_path / "a" / "oci"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, "a blob is not named by its digest"

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    index = json.loads((layout / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == first["manifest_digest"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    manifest = json.loads(blob(entry["digest"]))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.unknown.config.v1+json"
    assert blob(manifest["config"]["digest"]) == b"{}"
    # Istio's *oci* variant: exactly two layers, the runtime config and the module
    runtime, layer = manifest["layers"]
    assert runtime["mediaType"] == "application/vnd.module.wasm.config.v1+json"
    assert json.loads(blob(runtime["digest"]))["type"] == "envoy_proxy"
    assert layer["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm"
    assert layer["digest"] == wasm_digest and layer["size"] == wasm.stat().st_size
    assert blob(layer["digest"]) == wasm.read_bytes()


# -- docs/deploy-envoy.md: the rendered bootstrap, edited as the guide says -------------------------


def test_envoy_guide_per_route_switch_route_policy_and_exempt_route(keyward_bin, signing_key_file, wasm,
                                                                    envoy_workdir):
    """`keyward render envoy`, then the guide's edits: a route with the filter disabled
    (`FilterConfig{disabled: true}` under the filter's name `keyward`), a keyward route that needs a
    scope, selected by the Envoy route name, and an exempt keyward route."""
    reader, writer = ak_key(), ak_key()
    server = SnapshotServer().start()
    server.publish(sign({
        "version": 1, "issued_at": int(time.time()) - 5,
        "projects": [{"id": "proj_guide", "org": "org_guide", "status": "active"}],
        "keys": [reader.record(project="proj_guide", status="active", scopes=["models:read"]),
                 writer.record(project="proj_guide", status="active", scopes=["chat:write"])],
    }))

    def render(listen_port, admin_port, upstream_port):
        res = subprocess.run(
            [str(keyward_bin), "render", "envoy", "--wasm", str(wasm), "--control-plane", f"127.0.0.1:{server.port}",
             *trust_args(signing_key_file),
             "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
             "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", "500"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=True,
        )
        cfg = json.loads(res.stdout)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        [vhost] = hcm["route_config"]["virtual_hosts"]
        default = vhost["routes"][0]
        vhost["routes"] = [
            {"name": "metrics", "match": {"prefix": "/metrics"}, "route": default["route"],
             "typed_per_filter_config": {"keyward": {
                 "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}},
            {"name": "health", "match": {"prefix": "/healthz"}, "route": default["route"]},
            {"name": "openai_chat", "match": {"prefix": "/v1/chat/"}, "route": default["route"]},
            default,
        ]
        wasm_config = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]
        plugin_config = json.loads(wasm_config["value"])
        plugin_config["routes"] = [
            {"name": "health", "match": {"route_name": "health"}, "exempt": True},
            {"name": "chat", "match": {"route_name": "openai_chat"}, "scopes": ["chat:write"]},
        ]
        wasm_config["value"] = json.dumps(plugin_config)
        return json.dumps(cfg)

    env = harness.Envoy("envoy-guide", envoy_workdir, render=render)
    env.start()
    try:
        out = harness.envoy_validate(env.config_path)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        deadline = time.monotonic() + 10
        while env.request("GET", "/v1/models", [("authorization", f"Bearer {reader.plaintext}")]).status != 200:
            assert time.monotonic() < deadline, f"no policy after 10s\n{env.log_tail(40)}"
            time.sleep(0.1)

        def answer(path, key=None):
            resp = env.request("GET", path, [("authorization", f"Bearer {key.plaintext}")] if key else [])
            return resp.status, resp.header("x-keyward-error")

        assert answer("/metrics") == (200, None), "filter disabled on this route"
        assert answer("/healthz") == (200, None), "exempt keyward route"
        assert answer("/v1/models") == (401, "missing_api_key")
        assert answer("/v1/chat/completions", reader) == (403, "insufficient_scope")
        assert answer("/v1/chat/completions", writer) == (200, None)
    finally:
        env.stop()
        server.stop()
