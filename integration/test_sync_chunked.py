"""The chunked policy sync in a real Envoy (`--concurrency 2`, both poller modes): a 20k-key
snapshot in ten chunks reaches every worker while requests keep being answered, a tampered
chunk is refused and counted, and a one-key change fetches only the chunk that holds it."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

import harness
from keys import ak_key
from snapshot_server import SnapshotServer, split_chunked
from test_sync import INTERVAL_MS, statuses, sync_envoy, wait_until_all

KEYS = 20_000
PER_CHUNK = 2048
# The whole load (ten chunks, 20k keys compiled in 8 ms slices on every worker) has seconds.
LOAD_LIMIT_S = 20.0
# No request may wait much longer than one slice; generous for a shared CI machine.
MAX_LATENCY_S = 0.5

ALICE = ak_key()
BOB = ak_key()


def bulk_key(i: int) -> tuple[str, str]:
    """(key id, secret) of generated key i."""
    return f"z{i:07d}", f"chunkSecret{i:010d}"


def bulk_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        kid, secret = bulk_key(i)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        out.append({"id": kid, "secret_sha256": digest, "project": "proj_sync", "status": "active"})
    return out


BULK = bulk_records(KEYS)


def snapshot(version: int, alice: str = "active", bulk: bool = True) -> dict:
    return {
        "version": version,
        "issued_at": int(time.time()) - 5,
        "projects": [{"id": "proj_sync", "org": "org_sync", "status": "active"}],
        "keys": [ALICE.record(project="proj_sync", status=alice), BOB.record(project="proj_sync", status="active")]
        + (BULK if bulk else []),
    }


class Client(threading.Thread):
    """Sends BOB's requests back to back on fresh connections; records the slowest answer."""

    def __init__(self, env: harness.Envoy):
        super().__init__(daemon=True)
        self.env = env
        self.stop_flag = threading.Event()
        self.max_latency = 0.0
        self.count = 0
        self.unexpected: list = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            resp = self.env.request("GET", "/v1/models", [("authorization", f"Bearer {BOB.plaintext}")])
            took = time.monotonic() - t0
            self.max_latency = max(self.max_latency, took)
            self.count += 1
            if resp.status != 200:
                self.unexpected.append(resp.status)
            time.sleep(0.005)


def wait_metric_above(env, name: str, before: int, limit_s: float) -> int:
    deadline = time.monotonic() + limit_s
    while True:
        value = env.metric(name) or 0
        if value > before:
            return value
        assert time.monotonic() < deadline, f"{name} stayed at {value}\n{env.log_tail(30)}"
        time.sleep(0.1)


@pytest.fixture(params=["sync_service", "lease"], scope="module")
def chunked_env(request, envoy_workdir, wasm):
    server = SnapshotServer().start()
    server.publish_chunked(*split_chunked(snapshot(1, bulk=False), PER_CHUNK))
    env = sync_envoy(envoy_workdir, wasm, f"chunked-{request.param}", server.port, request.param, layout="chunked")
    env.start()
    wait_until_all(env, ALICE, (200, None), 10)
    yield env, server
    env.stop()
    server.stop()


def test_a_large_snapshot_loads_on_every_worker_while_requests_are_answered(chunked_env):
    env, server = chunked_env
    client = Client(env)
    client.start()
    try:
        time.sleep(0.3)
        manifest, chunks = split_chunked(snapshot(2, alice="revoked"), PER_CHUNK)
        assert len(chunks) >= 10
        started = time.monotonic()
        server.publish_chunked(manifest, chunks)
        took = wait_until_all(env, ALICE, (401, "key_revoked"), LOAD_LIMIT_S)
        for i in (0, KEYS // 2, KEYS - 1):
            kid, secret = bulk_key(i)
            key = type(ALICE)(plaintext=f"ak_{kid}.{secret}", id=kid)
            assert all(s == (200, None) for s in statuses(env, key)), f"bulk key {i} on every worker"
        time.sleep(0.3)
    finally:
        client.stop_flag.set()
        client.join(5)
    print(
        f"20k keys in {len(chunks)} chunks applied on every worker {took:.2f}s after publication "
        f"({time.monotonic() - started:.2f}s with checks); background client: {client.count} requests, "
        f"max latency {client.max_latency * 1000:.0f} ms"
    )
    assert client.count > 20
    assert client.unexpected == [], "BOB is active in every snapshot"
    assert client.max_latency < MAX_LATENCY_S, f"a request waited {client.max_latency:.3f}s during the load"
    assert (env.metric("keyward.sync.chunks_fetched") or 0) >= len(chunks)


def test_a_tampered_chunk_is_refused_and_a_one_key_change_fetches_one_chunk(chunked_env):
    env, server = chunked_env
    version = int(time.time())
    manifest, chunks = split_chunked(snapshot(version, alice="revoked"), PER_CHUNK)
    server.publish_chunked(manifest, chunks)
    wait_until_all(env, ALICE, (401, "key_revoked"), LOAD_LIMIT_S)

    # ALICE active again, but the chunk holding her arrives altered: refused, counted.
    manifest, chunks = split_chunked(snapshot(version + 1, alice="active"), PER_CHUNK)
    first = next(iter(chunks))
    before = env.metric("keyward.sync.rejected.chunk_mismatch") or 0
    server.publish_chunked(manifest, chunks, tamper=first)
    wait_metric_above(env, "keyward.sync.rejected.chunk_mismatch", before, 5)
    assert all(s == (401, "key_revoked") for s in statuses(env, ALICE)), "the last good policy stays"

    # Served right: only ALICE's chunk is fetched, the other chunks are reused.
    fetched = env.metric("keyward.sync.chunks_fetched") or 0
    server.publish_chunked(manifest, chunks)
    wait_until_all(env, ALICE, (200, None), LOAD_LIMIT_S)
    assert (env.metric("keyward.sync.chunks_fetched") or 0) - fetched == 1
    assert (env.metric("keyward.sync.chunks_reused") or 0) >= len(chunks) - 1
    assert (env.metric("keyward.sync.published") or 0) >= 3
    assert INTERVAL_MS <= 1000
