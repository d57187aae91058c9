"""Live policy push into a real Envoy (`--concurrency 2`): both sync modes, revocation and pause
propagation to every worker, bad pushes rejected and counted, outages ride on the last good
snapshot, and a fresh Envoy without any snapshot fails closed."""

from __future__ import annotations

import copy
import json
import time

import pytest

import harness
from keys import ak_key
from keyward_testkit.signing import symmetric_envelope
from snapshot_server import DATAPLANE_TOKEN, SIGNING_KEY_ID, SnapshotServer, compact, expiring, sign, sync_block

INTERVAL_MS = 500
# Acceptance: within poll interval + 1 s on every worker.
PROPAGATION_S = INTERVAL_MS / 1000 + 1.0

ALICE = ak_key()
BOB = ak_key()


def snapshot(version: int, alice_status: str = "active", issued_at: int | None = None) -> dict:
    return {
        "version": version,
        "issued_at": issued_at or int(time.time()) - 5,
        "projects": [{"id": "proj_sync", "org": "org_sync", "status": "active"}],
        "keys": [
            ALICE.record(project="proj_sync", status=alice_status),
            BOB.record(project="proj_sync", status="active"),
        ],
    }


def control_plane_cluster(port: int) -> dict:
    return {
        "name": "keyward_control_plane",
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": "keyward_control_plane",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def sync_envoy(workdir, wasm, name: str, cp_port: int, poller: str, layout: str = "envelope") -> harness.Envoy:
    sync = sync_block(poller=poller, interval_ms=INTERVAL_MS, layout=layout)

    def render(listen_port, admin_port, upstream_port):
        cfg = harness.render_bootstrap(listen_port, admin_port, upstream_port, {"sync": sync}, wasm)
        cfg["static_resources"]["clusters"].append(control_plane_cluster(cp_port))
        # The native build has no separate sync service: its filter configuration polls itself
        # (once per process), so only the Wasm build gets the bootstrap singleton.
        if poller == "sync_service" and harness.default_host() == "wasm":
            cfg["bootstrap_extensions"] = [
                {
                    "name": "envoy.bootstrap.wasm",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                        "singleton": True,
                        "config": {
                            "name": "keyward_sync",
                            "root_id": "keyward_sync",
                            "configuration": {
                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": json.dumps({"role": "sync_service", "sync": sync}),
                            },
                            "vm_config": {
                                "vm_id": "keyward",
                                "runtime": "envoy.wasm.runtime.v8",
                                "code": {"local": {"filename": str(wasm)}},
                            },
                        },
                    },
                }
            ]
        return json.dumps(cfg)

    return harness.Envoy(name, workdir, render=render, concurrency=2)


def statuses(env: harness.Envoy, key, n: int = 16) -> list[tuple[int, str | None]]:
    """n requests on fresh connections, so both workers answer some of them."""
    out = []
    for _ in range(n):
        resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {key.plaintext}")])
        out.append((resp.status, resp.header("x-keyward-error")))
    return out


def wait_until_all(env, key, expected: tuple[int, str | None], limit_s: float) -> float:
    """Seconds until n consecutive requests all give `expected`; fails after limit_s."""
    start = time.monotonic()
    while True:
        seen = statuses(env, key)
        if all(s == expected for s in seen):
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            pytest.fail(f"after {limit_s:.1f}s still {sorted(set(seen))}, wanted {expected}\n{env.log_tail(40)}")
        time.sleep(0.05)


@pytest.fixture(params=["sync_service", "lease"], scope="module")
def synced(request, envoy_workdir, wasm):
    server = SnapshotServer().start()
    server.publish(sign(snapshot(1)))
    env = sync_envoy(envoy_workdir, wasm, f"sync-{request.param}", server.port, request.param)
    env.start()
    wait_until_all(env, ALICE, (200, None), 10)
    yield env, server, request.param
    env.stop()
    server.stop()


def test_revocation_pause_and_resume_reach_every_worker(synced):
    env, server, _mode = synced
    version = int(time.time())  # any version above the ones already published
    server.publish(sign(snapshot(version, "revoked")))
    took = wait_until_all(env, ALICE, (401, "key_revoked"), PROPAGATION_S)
    assert all(s == (200, None) for s in statuses(env, BOB)), "other keys unaffected"
    server.publish(sign(snapshot(version + 1, "paused")))
    wait_until_all(env, ALICE, (403, "key_paused"), PROPAGATION_S)
    server.publish(sign(snapshot(version + 2, "active")))
    wait_until_all(env, ALICE, (200, None), PROPAGATION_S)
    print(f"revocation visible on all workers after {took:.2f}s")


def test_bad_pushes_are_rejected_counted_and_change_nothing(synced):
    env, server, _mode = synced
    good = snapshot(int(time.time()) + 100)
    published = env.metric("keyward.sync.published") or 0
    server.publish(sign(good))
    # Wait for this very snapshot to be published: ALICE answers 200 under the previous one too,
    # and a bad push fetched before `good` would be judged against the wrong baseline.
    deadline = time.monotonic() + 5
    while (env.metric("keyward.sync.published") or 0) <= published:
        assert time.monotonic() < deadline, f"the good snapshot was not published\n{env.log_tail(30)}"
        time.sleep(0.05)
    wait_until_all(env, ALICE, (200, None), PROPAGATION_S)

    revoked = snapshot(good["version"] + 1, "revoked")
    tampered = sign(revoked).replace(b'"revoked"', b'"active" ')
    unsigned = json.dumps(revoked).encode()
    # Signed with another private key under the trusted id; with a key the filter does not (or
    # no longer, after a rotation) trust; with the shared HMAC secret of old (the v1 format).
    wrong_key = sign(revoked, key=b"\x07" * 32)
    retired_key = sign(revoked, key_id="retired-key", key=b"\x08" * 32)
    symmetric = symmetric_envelope(compact(expiring(revoked)), SIGNING_KEY_ID, b"s" * 32)
    now = int(time.time())
    expired = sign(dict(snapshot(good["version"] + 1, "revoked", issued_at=now - 100), expires_at=now - 50))
    old = sign(snapshot(good["version"] - 1, "revoked"))
    for body, reason in [(tampered, "bad_signature"), (unsigned, "not_an_envelope"), (wrong_key, "bad_signature"),
                         (retired_key, "unknown_signing_key"), (symmetric, "symmetric_signature"),
                         (expired, "expired"), (old, "stale_version")]:
        before = env.metric(f"keyward.sync.rejected.{reason}") or 0
        server.publish(body)
        env.wait_metric_above(f"keyward.sync.rejected.{reason}", before, limit_s=5)
        assert all(s == (200, None) for s in statuses(env, ALICE)), f"{reason} replaced the good snapshot"
    assert "snapshot rejected" in env.log()
    assert server.last_authorization == f"Bearer {DATAPLANE_TOKEN}", "polls carry the data-plane token"


def test_control_plane_outage_keeps_the_last_good_snapshot(synced):
    env, server, _mode = synced
    version = int(time.time()) + 200
    server.publish(sign(snapshot(version, "revoked")))
    wait_until_all(env, ALICE, (401, "key_revoked"), PROPAGATION_S)
    server.fail_with(503)
    time.sleep(INTERVAL_MS / 1000 * 3)
    assert (env.metric("keyward.sync.http_error") or 0) > 0
    assert all(s == (401, "key_revoked") for s in statuses(env, ALICE))
    assert all(s == (200, None) for s in statuses(env, BOB))
    server.publish(sign(snapshot(version + 1)))
    wait_until_all(env, ALICE, (200, None), PROPAGATION_S)


def test_one_poller_and_conditional_polls(synced):
    """One VM polls (the singleton, or the lease holder among main + 2 workers), with ETags."""
    env, server, mode = synced
    requests, hits = server.requests, server.conditional_hits
    window_s = 3.0
    time.sleep(window_s)
    polls = server.requests - requests
    one_poller = window_s / (INTERVAL_MS / 1000)
    assert 1 <= polls <= one_poller * 1.5, f"{mode}: {polls} polls in {window_s}s, one poller makes ~{one_poller:.0f}"
    assert server.conditional_hits - hits == polls, "every poll should send If-None-Match and get a 304"


def test_fresh_envoy_without_control_plane_fails_closed(envoy_workdir, wasm):
    closed_port = harness.free_port()  # nothing listens here
    env = sync_envoy(envoy_workdir, wasm, "sync-unreachable", closed_port, "sync_service")
    env.start()
    try:
        time.sleep(INTERVAL_MS / 1000 * 2)
        resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {ALICE.plaintext}")])
        assert resp.status == 503, resp
        assert resp.header("x-keyward-error") == "policy_unavailable"
        assert ALICE.secret not in resp.raw_text()
        # Nothing listens: Envoy answers the poll itself, and that counts as unreachable.
        assert (env.metric("keyward.sync.unreachable") or 0) > 0
        assert (env.metric("keyward.sync.http_error") or 0) == 0
    finally:
        env.stop()
