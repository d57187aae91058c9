"""A fault-injecting HTTP proxy between Envoy's control-plane cluster and `keyward serve`.

It normally passes `GET /v1/snapshot` through (with the poller's `If-None-Match`). On command:

- `serve_once(body, label)`: the next snapshot poll gets `body` with 200 (a tampered or a stale
  envelope), whatever ETag the poller sent;
- `set_mode("error")`: every poll gets 503;
- `set_mode("down")`: every connection is reset without an answer (the control plane is
  unreachable);
- while `keyward serve` itself is killed, a pass-through that cannot connect resets the
  poller's connection the same way.

One line per poll goes to the proxy log: time, mode, what was served, status, ETag, version.
Snapshots carry hashes only, never a secret. Standard library only; runs as a thread of the soak.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Optional

from keyward_testkit.http_servers import BackgroundHTTPServer
from keyward_testkit.net import LOOPBACK
SNAPSHOT_PATH = "/v1/snapshot"
_VERSION = re.compile(rb'"snapshot":\{"version":(\d+),"issued_at":(\d+)')


def envelope_stamp(body: bytes) -> Optional[tuple[int, int]]:
    """(version, issued_at) of an envelope as keyward serve writes it, without a full parse."""
    m = _VERSION.search(body)
    if m:
        return int(m.group(1)), int(m.group(2))
    try:
        snap = json.loads(body)["snapshot"]
        return int(snap["version"]), int(snap["issued_at"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class OneShot:
    label: str
    body: bytes
    armed_at: float
    served_at: Optional[float] = None


class FaultProxy(BackgroundHTTPServer):
    def __init__(self, port: int, upstream_port: int, log_path: Path):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.mode = "pass"
        self.pending: Optional[OneShot] = None
        self.served_shots: list[OneShot] = []
        self.served_event = threading.Event()
        self.polls = 0
        self.by_outcome: dict[str, int] = {}
        self.versions_passed: set[int] = set()
        self._log = open(log_path, "a", buffering=1)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # header and body are separate writes: no 40 ms delayed-ACK stalls
            timeout = 30

            def log_message(self, format, *args):  # noqa: A002 - own log below
                pass

            def handle(self):
                if proxy.mode == "down":
                    proxy._reset(self.connection)
                    proxy._record("down", "reset", None, None)
                    return
                super().handle()

            def do_GET(self):  # noqa: N802 - http.server API
                proxy._serve(self)

        super().__init__(Handler, port)

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        super().stop()
        self._log.close()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "error", "down"), mode
        with self.lock:
            self.mode = mode
        self._line(f"mode {mode}")

    def serve_once(self, body: bytes, label: str) -> OneShot:
        shot = OneShot(label=label, body=body, armed_at=time.time())
        with self.lock:
            self.pending = shot
            self.served_event.clear()
        self._line(f"armed {label} ({len(body)} bytes, stamp {envelope_stamp(body)})")
        return shot

    def wait_served(self, timeout: float) -> bool:
        return self.served_event.wait(timeout)

    # -- serving --------------------------------------------------------------------------------

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        except OSError:
            pass

    def _line(self, text: str) -> None:
        with self.lock:
            if not self._log.closed:
                self._log.write(f"{time.time():.3f} {text}\n")

    def _record(self, mode: str, outcome: str, status: Optional[int], stamp, etag: str = "") -> None:
        with self.lock:
            self.polls += 1
            self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        self._line(f"poll mode={mode} outcome={outcome} status={status} etag={etag} stamp={stamp}")

    def _answer(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers=()) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            mode = self.mode
            shot = None
            if h.path == SNAPSHOT_PATH and self.pending is not None and mode == "pass":
                shot, self.pending = self.pending, None
        if mode == "down":
            self._reset(h.connection)
            h.close_connection = True
            self._record(mode, "reset", None, None)
            return
        if mode == "error":
            self._answer(h, 503, b'{"error":"injected by the soak fault proxy"}', [("content-type", "application/json")])
            self._record(mode, "error", 503, None)
            return
        if shot is not None:
            shot.served_at = time.time()
            etag = '"soak-%s-%d"' % (shot.label, int(shot.served_at))
            self._answer(h, 200, shot.body, [("content-type", "application/json"), ("etag", etag)])
            with self.lock:
                self.served_shots.append(shot)
            self.served_event.set()
            self._record(mode, shot.label, 200, envelope_stamp(shot.body), etag)
            return
        # pass through
        headers = {}
        inm = h.headers.get("if-none-match")
        if inm:
            headers["if-none-match"] = inm
        try:
            conn = http.client.HTTPConnection(LOOPBACK, self.upstream_port, timeout=1.5)
            try:
                conn.request("GET", h.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                passed = [(k, v) for k, v in resp.getheaders()
                          if k.lower() in ("content-type", "etag", "cache-control")]
            finally:
                conn.close()
        except OSError:
            # keyward serve is down: the poller sees a reset, as if the control plane were gone
            self._reset(h.connection)
            h.close_connection = True
            self._record(mode, "upstream_unreachable", None, None)
            return
        stamp = envelope_stamp(body) if status == 200 else None
        if stamp:
            with self.lock:
                self.versions_passed.add(stamp[0])
        self._answer(h, status, body, passed)
        etag = next((v for k, v in passed if k.lower() == "etag"), "")
        self._record(mode, "pass", status, stamp, etag)
