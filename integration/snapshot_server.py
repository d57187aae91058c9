"""A stand-in control plane for the filter's sync tests: serves signed snapshot envelopes with
ETag / If-None-Match, and can be told to fail, tamper, or serve old versions. The envelope format
and the HMAC are those of engine/src/signed_snapshot.rs; the real control plane (`keyward serve`)
is exercised in test_control_plane.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

LOOPBACK = "127.0.0.1"
FORMAT = "keyward.signed-snapshot.v1"
SIGNING_KEY_ID = "test-signing-key"
SIGNING_SECRET = b"integration-test-signing-secret-0123456789"
SIGNING_SECRET_B64 = base64.b64encode(SIGNING_SECRET).decode()


def sign(snapshot: dict, key_id: str = SIGNING_KEY_ID, secret: bytes = SIGNING_SECRET) -> bytes:
    body = json.dumps(snapshot, separators=(",", ":"))
    signature = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    return ('{"format":"%s","key_id":"%s","signature":"%s","snapshot":%s}' % (FORMAT, key_id, signature, body)).encode()


def sync_block(cluster: str = "keyward_control_plane", poller: str = "sync_service", interval_ms: int = 500) -> dict:
    return {
        "cluster": cluster,
        "authority": "keyward-control-plane",
        "path": "/v1/snapshot",
        "interval_ms": interval_ms,
        "timeout_ms": 1000,
        "signing_keys": [{"id": SIGNING_KEY_ID, "secret_base64": SIGNING_SECRET_B64}],
        "poller": poller,
    }


class SnapshotServer:
    """Serves whatever `body` holds at GET /v1/snapshot; `status` overrides the answer."""

    def __init__(self):
        self.lock = threading.Lock()
        self.body: Optional[bytes] = None
        self.etag = ""
        self.status = 200
        self.requests = 0
        self.conditional_hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                with server.lock:
                    server.requests += 1
                    body, etag, status = server.body, server.etag, server.status
                if status != 200 or body is None:
                    payload = b'{"error":"unavailable"}'
                    self.send_response(status if status != 200 else 503)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if self.headers.get("if-none-match") == etag:
                    with server.lock:
                        server.conditional_hits += 1
                    self.send_response(304)
                    self.send_header("etag", etag)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("etag", etag)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "SnapshotServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, envelope: bytes) -> None:
        with self.lock:
            self.body = envelope
            self.etag = '"%s"' % hashlib.sha256(envelope).hexdigest()[:16]
            self.status = 200

    def fail_with(self, status: int) -> None:
        with self.lock:
            self.status = status
