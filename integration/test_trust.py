"""Issue #14, read as an attacker with access to what a data plane holds, against the real
`keyward serve` and the filter in a real Envoy:

- nothing able to sign a policy is in Envoy's /config_dump, the rendered Envoy config or the
  rendered WasmPlugin; a snapshot forged from everything they hold is refused;
- a usage report forged with everything the data plane holds is refused, and so is one that
  charges a key against another project; both are kept for audit;
- a snapshot captured before a revocation and replayed to a restarted Envoy after it expired is
  refused;
- old and new public keys are both accepted while signing keys rotate, and a retired one is not;
- a self-signed impostor upstream and an impostor control plane are refused; the real ones,
  with certificates from a CA given by path, are accepted;
- the store, its WAL, the key and token files and a rendered config written with --out are 0600.

(Wrong, retired, symmetric, tampered and expired snapshots from a stand-in control plane are in
test_sync.py; the control plane's side of every check is in companion/tests/.)"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import harness
from checks import answer, wait_for_answer as wait_for
from keyward_testkit.control_plane import ControlPlane
from keyward_testkit.signing import private_key, sign_envelope, symmetric_envelope
from snapshot_server import SnapshotServer

INTERVAL_MS = 300
KEY_HEADER = "x-keyward-key-id"


# -- helpers ---------------------------------------------------------------------------------------


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def get(url: str, token: str, context: ssl.SSLContext | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return resp.read()


def post_usage(address: str, token: str, report: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{address}/v1/usage", data=json.dumps(report).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def private_material(pem_path: Path) -> list[str]:
    """Every spelling of a private key worth grepping for: the PEM body and the raw seed."""
    pem = pem_path.read_bytes()
    seed = private_key(pem).private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
    body = "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))
    return [body, base64.b64encode(seed).decode(), seed.hex()]


def self_signed(common_name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `common_name` (no CA anyone trusts) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{common_name}.pem", directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsEcho(harness.EchoUpstream):
    """The echo upstream over TLS with the given certificate: records what reaches it."""

    def __init__(self, cert: Path, key: Path):
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)


# -- the control plane -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory, keyward_bin):
    """A store with two projects of two orgs and a key in each, a data-plane token, and
    `keyward serve` on loopback (plain HTTP: the TLS test runs its own)."""
    work = tmp_path_factory.mktemp("trust")
    cp = ControlPlane(keyward_bin, work)
    cp.create_secrets(admin_token_name="ops")
    cp.cli("project", "create", "proj_a", "--org", "org_a", "--spend-cap-usd", "100")
    cp.cli("project", "create", "proj_b", "--org", "org_b")
    alice = json.loads(cp.cli("key", "create", "--project", "proj_a", "--json").stdout)
    bob = json.loads(cp.cli("key", "create", "--project", "proj_b", "--json").stdout)
    cp.start(stderr=(work / "serve.log").open("w"))
    yield cp, alice, bob
    cp.stop()


def render_envoy(cp: ControlPlane, wasm: Path, listen: int, admin: int, upstream: str, *extra: str,
                 control_plane: str | None = None) -> str:
    return cp.cli(
        "render", "envoy", "--wasm", str(wasm), "--control-plane", control_plane or cp.address,
        *cp.trust_args(), "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
        "--upstream", upstream, "--interval-ms", str(INTERVAL_MS), *extra,
    ).stdout


# -- what a data plane holds -----------------------------------------------------------------------


def test_nothing_a_data_plane_holds_can_sign_or_forge_usage(plane, envoy_workdir, wasm, tmp_path):
    cp, alice, bob = plane
    env = harness.Envoy(
        "trust-holds", envoy_workdir,
        render=lambda listen, admin, up: render_envoy(cp, wasm, listen, admin, f"127.0.0.1:{up}"),
    )
    env.start()
    try:
        wait_for(env, alice["key"], (200, None))
        dump = env.admin("/config_dump")
        assert dump.status == 200
        rendered = env.config_path.read_text()
        istio = cp.cli(
            "render", "istio", "--wasm-url", "file:///var/lib/keyward/keyward.wasm", "--wasm-file", str(wasm),
            "--control-plane", "keyward.keyward-system.svc.cluster.local:7070", *cp.trust_args(),
        ).stdout
        admin_token = cp.admin_tokens_file.read_text().strip().split(":", 1)[1]
        for where, text in [("/config_dump", dump.body.decode()), ("rendered Envoy config", rendered),
                            ("rendered WasmPlugin", istio)]:
            for secret in [*private_material(cp.signing_key_file), admin_token]:
                assert secret not in text, f"something that can sign or administer is in the {where}"
            assert "secret_base64" not in text and "signing_keys" not in text, where
            assert cp.public_key_base64() in text.replace("\\/", "/"), where

        # Everything a config dump reader gets: the sync block (public key, data-plane token).
        plugin = next(json.loads(m) for m in _plugin_configs(dump.json()) if "sync" in json.loads(m))
        sync = plugin["sync"]
        token = sync["token"]
        assert token == cp.dataplane_token()

        # A snapshot "signed" with anything it holds is refused by a filter that trusts the key.
        revoked = {"version": 10_000, "issued_at": int(time.time()), "expires_at": int(time.time()) + 3600,
                   "projects": [{"id": "proj_a", "org": "org_a", "status": "active"}],
                   "keys": [{"id": alice["id"], "secret_sha256": "0" * 64, "project": "proj_a",
                             "status": "revoked"}]}
        payload = json.dumps(revoked, separators=(",", ":")).encode()
        public = base64.b64decode(sync["public_keys"][0]["public_key_base64"])
        forged = [
            (sign_envelope(payload, "ops-1", public), "bad_signature"),  # the public key as a seed
            (sign_envelope(payload, "ops-1", hashlib.sha256(token.encode()).digest()), "bad_signature"),
            (symmetric_envelope(payload, "ops-1", token.encode()), "symmetric_signature"),
        ]
        server = SnapshotServer().start()
        mitm = harness.Envoy(
            "trust-forged", envoy_workdir,
            render=lambda listen, admin, up: render_envoy(cp, wasm, listen, admin, f"127.0.0.1:{up}",
                                                          control_plane=f"127.0.0.1:{server.port}"),
        )
        try:
            server.publish(get(f"http://{cp.address}/v1/snapshot", token))  # the genuine one first
            mitm.start()
            wait_for(mitm, alice["key"], (200, None))
            for body, reason in forged:
                before = mitm.metric(f"keyward.sync.rejected.{reason}") or 0
                server.publish(body)
                mitm.wait_metric_above(f"keyward.sync.rejected.{reason}", before, limit_s=5)
                assert answer(mitm, alice["key"]) == (200, None), "a forged snapshot took effect"
        finally:
            mitm.stop()
            server.stop()

        # Usage forged with the token: issue #14's report, and a charge against another org's
        # project. Both refused whole, nothing charged, both kept for audit.
        spent_before = json.loads(cp.cli("key", "show", alice["id"], "--json").stdout)["spent_microusd"]
        forged_report = {
            "format": "keyward.usage-report.v1", "reporter": "ops", "batch_id": "forged-99",
            "entries": [{"key_id": alice["id"], "project": "proj_a", "cost_microusd": 99_000_000, "requests": 1,
                         "last_used_at": 4_102_444_800}],
        }
        status, body = post_usage(cp.address, token, forged_report)
        assert status == 400 and body["error"]["code"] == "usage_report_refused", body
        cross = {
            "format": "keyward.usage-report.v1", "reporter": "envoy", "batch_id": "cross-1",
            "entries": [{"key_id": alice["id"], "project": "proj_b", "cost_microusd": 10, "requests": 1}],
        }
        status, body = post_usage(cp.address, token, cross)
        assert status == 400 and "cannot charge project" in body["error"]["message"], body
        shown = json.loads(cp.cli("key", "show", alice["id"], "--json").stdout)
        assert shown["spent_microusd"] == spent_before
        assert shown["last_seen_at"] is None or shown["last_seen_at"] < 4_102_444_800
        refused = json.loads(cp.cli("usage", "refused", "--json").stdout)["data"]
        assert {r["batch_id"] for r in refused} >= {"forged-99", "cross-1"}
        assert all(r["token_name"] == "fleet" for r in refused)
        events = json.loads(cp.cli("audit", "--json").stdout)["data"]
        assert not any(e["action"].startswith("usage.") and e["actor"] == "ops" for e in events), \
            "a report can no longer pass for the admin"
        # The snapshot endpoint answers nothing without a data-plane token.
        with pytest.raises(urllib.error.HTTPError) as refused_get:
            urllib.request.urlopen(f"http://{cp.address}/v1/snapshot", timeout=10)
        assert refused_get.value.code == 401
    finally:
        env.stop()


def _plugin_configs(dump: dict) -> list[str]:
    """The Wasm plugin configuration strings in a config dump."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            config = node.get("configuration")
            if isinstance(config, dict) and isinstance(config.get("value"), str):
                found.append(config["value"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dump)
    assert found, "no Wasm plugin configuration in the config dump"
    return found


# -- stale captures --------------------------------------------------------------------------------


def test_a_stale_capture_is_refused_after_an_envoy_restart(plane, envoy_workdir, wasm, keyward_bin, tmp_path):
    """Issue #14: version N captured, the key revoked in N+1, N replayed to a freshly started
    Envoy. Snapshots now expire (here after 3 s): the replay after that is refused, and without
    any good snapshot the Envoy fails closed."""
    cp, _alice, _bob = plane
    fresh = ControlPlane(keyward_bin, tmp_path / "short-lived")
    fresh.work.mkdir()
    fresh.create_secrets()
    fresh.cli("project", "create", "proj_s", "--org", "org_s")
    carol = json.loads(fresh.cli("key", "create", "--project", "proj_s", "--json").stdout)
    # Served with a 3 s lifetime: re-issued every second.
    fresh.proc = subprocess.Popen(
        [*fresh.serve_command(0), "--snapshot-ttl", "3s"], env=fresh.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = fresh.proc.stdout.readline()
    fresh.address = line.strip().rsplit("//", 1)[1]
    server = SnapshotServer().start()
    try:
        captured = get(f"http://{fresh.address}/v1/snapshot", fresh.dataplane_token())
        expires_at = json.loads(captured)["snapshot"]["expires_at"]
        fresh.cli("key", "revoke", carol["id"])

        def render(target: str):
            return lambda listen, admin, up: render_envoy(fresh, wasm, listen, admin, f"127.0.0.1:{up}",
                                                          control_plane=target)

        # The real control plane: the revocation arrives.
        env = harness.Envoy("trust-stale", envoy_workdir, render=render(fresh.address))
        env.start()
        try:
            wait_for(env, carol["key"], (401, "key_revoked"))
        finally:
            env.stop()
        # The capture expired; an attacker on the path replays it to the restarted Envoy.
        time.sleep(max(0.0, expires_at - time.time()) + 1.0)
        server.publish(captured)
        env = harness.Envoy("trust-stale-replayed", envoy_workdir, render=render(f"127.0.0.1:{server.port}"))
        env.start()
        try:
            env.wait_metric_above("keyward.sync.rejected.expired")
            assert answer(env, carol["key"]) == (503, "policy_unavailable"), "fails closed, never lets carol in"
            assert env.metric("keyward.sync.published") in (None, 0)
        finally:
            env.stop()
    finally:
        server.stop()
        fresh.stop()


# -- rotation --------------------------------------------------------------------------------------


def test_signing_keys_rotate_with_both_public_keys_accepted_during_the_overlap(plane, envoy_workdir, wasm,
                                                                                keyward_bin):
    """docs/control-plane.md's rotation: filters get the new public key next to the old one;
    the control plane switches to the new private key; filters follow without a gap; the old key
    is then retired from the filters and no longer accepted."""
    cp, alice, _bob = plane
    new_key = cp.work / "signing-2.key"
    cp.cli("secret", "signing-key", "--out", str(new_key))
    both = [*cp.trust_args(), "--public-key", f"ops-2={new_key}.pub"]

    def render(trust: list[str]):
        return lambda listen, admin, up: cp.cli(
            "render", "envoy", "--wasm", str(wasm), "--control-plane", cp.address, *trust,
            "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}", "--upstream",
            f"127.0.0.1:{up}", "--interval-ms", str(INTERVAL_MS),
        ).stdout

    env = harness.Envoy("trust-rotate", envoy_workdir, render=render(both))
    env.start()
    try:
        wait_for(env, alice["key"], (200, None))  # signed with ops-1
        # The control plane now signs with ops-2, on the same port; a change shows it is followed.
        port = cp.address.rsplit(":", 1)[1]
        cp.stop()
        cp.signing_key_id, cp.signing_key_file = "ops-2", new_key
        cp.start(int(port))
        dave = json.loads(cp.cli("key", "create", "--project", "proj_a", "--json").stdout)
        wait_for(env, dave["key"], (200, None))
        assert (env.metric("keyward.sync.rejected.unknown_signing_key") or 0) == 0
    finally:
        env.stop()
    # ops-1 retired from the filters: a snapshot it signs is refused.
    retired = harness.Envoy("trust-retired", envoy_workdir,
                            render=render(["--public-key", f"ops-2={new_key}.pub",
                                           "--dataplane-token-file", str(cp.dataplane_token_file)]))
    port = cp.address.rsplit(":", 1)[1]
    cp.stop()
    cp.signing_key_id, cp.signing_key_file = "ops-1", cp.work / "signing.key"
    cp.start(int(port))
    retired.start()
    try:
        retired.wait_metric_above("keyward.sync.rejected.unknown_signing_key")
        assert answer(retired, alice["key"]) == (503, "policy_unavailable")
    finally:
        retired.stop()


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    """A CA of the test's own (never in the system bundle) and its certificate file."""
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def leaf(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*names)
    cert_path, key_path = directory / f"{names[0]}.crt", directory / f"{names[0]}.key"
    with cert_path.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_impostor_upstreams_are_refused_and_the_real_one_verified(plane, envoy_workdir, wasm, test_ca, tmp_path):
    cp, alice, _bob = plane
    ca, ca_file = test_ca

    def tls_envoy(name: str, upstream: TlsEcho, *tls: str) -> harness.Envoy:
        upstream.start()
        return harness.Envoy(
            name, envoy_workdir, upstream=upstream,
            render=lambda listen, admin, up: render_envoy(cp, wasm, listen, admin, f"localhost:{up}", "--upstream-tls",
                                                          *tls),
        )

    cases = [
        # Issue #14's impostor: self-signed, CN=evil.example.
        ("self-signed", TlsEcho(*self_signed("evil.example", tmp_path)), ["--upstream-ca", str(ca_file)], False),
        # Signed by the trusted CA, but for another name: the SAN check refuses it.
        ("wrong-name", TlsEcho(*leaf(ca, tmp_path, "evil.example")), ["--upstream-ca", str(ca_file)], False),
        # The right name from a CA the system bundle (the default) does not hold.
        ("system-bundle", TlsEcho(*leaf(ca, tmp_path, "localhost")), [], False),
        # The real upstream: the test CA, the right name.
        ("verified", TlsEcho(*leaf(ca, tmp_path, "localhost")), ["--upstream-ca", str(ca_file)], True),
        # What the refusals above owe to verification: told to skip it, Envoy talks to the
        # impostor (and `keyward audit --envoy-config` flags that configuration).
        ("insecure", TlsEcho(*self_signed("evil.example", tmp_path)), ["--upstream-insecure-skip-verify"], True),
    ]
    for name, upstream, tls, accepted in cases:
        env = tls_envoy(f"trust-tls-{name}", upstream, *tls)
        env.start()
        try:
            wait_for(env, alice["key"], (200, None) if accepted else (503, None))
            resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {alice['key']}")])
            if accepted:
                assert env.upstream.one(resp.request_id).header(KEY_HEADER) == alice["id"]
                audit = subprocess.run([str(cp.keyward), "audit", "--envoy-config", str(env.config_path)],
                                       capture_output=True, text=True, timeout=30)
                assert (audit.returncode == 2) == (name == "insecure"), audit.stdout + audit.stderr
            else:
                assert upstream.recorded() == [], f"{name}: a request reached the impostor"
                assert b"upstream connect error" in resp.body or b"TLS" in resp.body, resp
        finally:
            env.stop()
            upstream.stop()


def test_an_impostor_control_plane_is_refused_and_the_real_one_verified(plane, envoy_workdir, wasm, test_ca,
                                                                        keyward_bin, tmp_path):
    cp, alice, _bob = plane
    ca, ca_file = test_ca
    cert, key = leaf(ca, tmp_path, "localhost")
    secure = ControlPlane(keyward_bin, cp.work, actor="integration")
    secure.proc = subprocess.Popen(
        [*cp.serve_command(0), "--tls-cert", str(cert), "--tls-key", str(key)], env=cp.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = secure.proc.stdout.readline()
    assert line.startswith("keyward: listening on https://"), line
    port = int(line.strip().rsplit(":", 1)[1])
    evil_cert, evil_key = self_signed("localhost", tmp_path)
    impostor = SnapshotServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(evil_cert), str(evil_key))
    impostor.httpd.socket = context.wrap_socket(impostor.httpd.socket, server_side=True)
    impostor.start()
    # The impostor even serves a genuine, current snapshot: what it must not get is trust.
    trusting = ssl.create_default_context(cafile=str(ca_file))
    impostor.publish(get(f"https://localhost:{port}/v1/snapshot", cp.dataplane_token(), trusting))
    try:
        cases = [
            ("real", f"https://localhost:{port}", ["--control-plane-ca", str(ca_file)], True),
            ("impostor", f"https://localhost:{impostor.port}", ["--control-plane-ca", str(ca_file)], False),
            # Only an explicit flag makes the filter talk to an unverified control plane.
            ("insecure", f"https://localhost:{impostor.port}", ["--control-plane-insecure-skip-verify"], True),
        ]
        for name, target, tls, accepted in cases:
            env = harness.Envoy(
                f"trust-cp-{name}", envoy_workdir,
                render=lambda listen, admin, up, target=target, tls=tls: render_envoy(
                    cp, wasm, listen, admin, f"127.0.0.1:{up}", *tls, control_plane=target),
            )
            env.start()
            try:
                if accepted:
                    wait_for(env, alice["key"], (200, None))
                else:
                    env.wait_metric_above("keyward.sync.unreachable")
                    assert answer(env, alice["key"]) == (503, "policy_unavailable")
                    assert impostor.requests == 0 and impostor.last_authorization is None, \
                        "the impostor got a request (and the data-plane token)"
            finally:
                env.stop()
    finally:
        impostor.stop()
        secure.stop()


# -- files -----------------------------------------------------------------------------------------


def test_secret_files_are_created_0600(plane, wasm, tmp_path):
    cp, _alice, _bob = plane
    for path in [cp.db, Path(f"{cp.db}-wal"), Path(f"{cp.db}-shm"), cp.signing_key_file, cp.admin_tokens_file,
                 cp.dataplane_token_file]:
        assert path.exists() and mode(path) == "0o600", f"{path.name}: {mode(path)}"
    out = tmp_path / "envoy.json"
    out.write_text("{}")
    out.chmod(0o644)
    cp.cli("render", "envoy", "--wasm", str(wasm), "--control-plane", cp.address, *cp.trust_args(), "--out", str(out))
    assert mode(out) == "0o600" and json.loads(out.read_text())["static_resources"]
