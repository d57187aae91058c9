"""A stand-in control plane for the filter's sync tests: serves signed snapshot envelopes with
ETag / If-None-Match, and can be told to fail, tamper, or serve old versions. The envelope format
and the signature are those of engine/src/signed_snapshot.rs (keyward_testkit.signing); the real control plane (`keyward serve`)
is exercised in test_control_plane.py.

It also serves the chunked layout (engine/src/chunked.rs): a signed manifest at
GET /v1/snapshot/manifest and content-addressed chunks (one key record per line) at
GET /v1/snapshot/chunks/<sha256>. Chunks of earlier publications stay available, as a poller
may be fetching them when a newer manifest appears."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Optional

from keyward_testkit.http_servers import BackgroundHTTPServer
from keyward_testkit.signing import sign_envelope

MANIFEST_PATH = "/v1/snapshot/manifest"
CHUNK_PATH = "/v1/snapshot/chunks/"
SIGNING_KEY_ID = "test-signing-key"
SIGNING_SECRET = b"integration-test-signing-secret-0123456789"
SIGNING_SECRET_B64 = base64.b64encode(SIGNING_SECRET).decode()


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sign(snapshot: dict, key_id: str = SIGNING_KEY_ID, secret: bytes = SIGNING_SECRET) -> bytes:
    """The signed envelope of a snapshot, under the test signing key by default."""
    return sign_envelope(compact(snapshot), key_id, secret)


def sync_block(
    cluster: str = "keyward_control_plane", poller: str = "sync_service", interval_ms: int = 500, layout: str = "envelope"
) -> dict:
    block = {
        "cluster": cluster,
        "authority": "keyward-control-plane",
        "path": "/v1/snapshot" if layout == "envelope" else MANIFEST_PATH,
        "interval_ms": interval_ms,
        "timeout_ms": 1000 if layout == "envelope" else 5000,
        "signing_keys": [{"id": SIGNING_KEY_ID, "secret_base64": SIGNING_SECRET_B64}],
        "poller": poller,
    }
    if layout != "envelope":
        block["layout"] = layout
    return block


def split_chunked(
    snapshot: dict, keys_per_chunk: int = 8192, key_id: str = SIGNING_KEY_ID, secret: bytes = SIGNING_SECRET
) -> tuple[bytes, dict[str, bytes]]:
    """(signed manifest envelope, {sha256: chunk bytes}) for a snapshot: keys in consecutive
    slices, one JSON record a line."""
    keys = snapshot.get("keys", [])
    chunks: dict[str, bytes] = {}
    refs = []
    for start in range(0, len(keys), keys_per_chunk):
        part = keys[start : start + keys_per_chunk]
        body = b"".join(compact(k) + b"\n" for k in part)
        digest = hashlib.sha256(body).hexdigest()
        chunks[digest] = body
        refs.append({"sha256": digest, "keys": len(part), "bytes": len(body)})
    manifest = {k: v for k, v in snapshot.items() if k != "keys"}
    manifest["keys"] = len(keys)
    manifest["chunks"] = refs
    return sign_envelope(compact(manifest), key_id, secret, kind="manifest"), chunks


class SnapshotServer(BackgroundHTTPServer):
    """Serves whatever `body` holds at GET /v1/snapshot; `status` overrides the answer."""

    def __init__(self):
        self.lock = threading.Lock()
        self.body: Optional[bytes] = None
        self.etag = ""
        self.status = 200
        self.requests = 0
        self.conditional_hits = 0
        self.manifest: Optional[bytes] = None
        self.manifest_etag = ""
        self.chunks: dict[str, bytes] = {}
        self.chunk_requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                content_type, missing = "application/json", 503
                with server.lock:
                    status = server.status
                    if path == MANIFEST_PATH:
                        server.requests += 1
                        body, etag, missing = server.manifest, server.manifest_etag, 404
                    elif path.startswith(CHUNK_PATH):
                        server.chunk_requests += 1
                        body, etag, missing = server.chunks.get(path[len(CHUNK_PATH) :]), "", 404
                        content_type = "application/x-ndjson"
                    else:
                        server.requests += 1
                        body, etag = server.body, server.etag
                if status != 200 or body is None:
                    self.answer(status if status != 200 else missing, b'{"error":"unavailable"}', "application/json")
                elif etag and self.headers.get("if-none-match") == etag:
                    with server.lock:
                        server.conditional_hits += 1
                    self.answer(304, b"", None, etag)
                else:
                    self.answer(200, body, content_type, etag)

            def answer(self, status: int, body: bytes, content_type: Optional[str], etag: str = "") -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("content-type", content_type)  # errors too, like keyward serve
                if etag:
                    self.send_header("etag", etag)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    def publish(self, envelope: bytes) -> None:
        with self.lock:
            self.body = envelope
            self.etag = '"%s"' % hashlib.sha256(envelope).hexdigest()[:16]
            self.status = 200

    def publish_chunked(self, manifest: bytes, chunks: dict[str, bytes], tamper: Optional[str] = None) -> None:
        """Serve this manifest and its chunks (earlier chunks stay); `tamper` names a chunk whose
        served bytes differ from what the manifest says."""
        with self.lock:
            self.manifest = manifest
            self.manifest_etag = '"%s"' % hashlib.sha256(manifest).hexdigest()[:16]
            self.chunks.update(chunks)
            if tamper is not None:
                self.chunks[tamper] = chunks[tamper].replace(b'"active"', b'"paused"', 1)
            self.status = 200

    def drop_chunks_except(self, keep: dict[str, bytes]) -> None:
        with self.lock:
            self.chunks = {k: v for k, v in self.chunks.items() if k in keep}

    def fail_with(self, status: int) -> None:
        with self.lock:
            self.status = status
