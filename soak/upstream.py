#!/usr/bin/env python3
"""The soak run's upstream: a fast JSON answer for every path, and a slow server-sent-events
stream under /v1/stream/ (STREAM_EVENTS events, STREAM_GAP_S apart, then `data: [DONE]`).

Every answer says which identity Envoy forwarded (`x-keyward-key-id`), and whether a credential
reached the upstream at all (`authorization`, `x-api-key`, or an `api_key` query parameter):
keyward must never forward one. One line per request goes to stderr (method, path, the names
and values of every header): the soak's leak scan reads that log too.

Binds 127.0.0.1 only. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))
from keyward_testkit.http_servers import read_body, send_json, serve_until_interrupted  # noqa: E402

STREAM_PREFIX = "/v1/stream/"
STREAM_EVENTS = 20
STREAM_GAP_S = 0.075  # 20 events over 1.5 s
CREDENTIAL_HEADERS = ("authorization", "x-api-key")

_log_lock = threading.Lock()


def credential_seen(handler: BaseHTTPRequestHandler) -> bool:
    if any(handler.headers.get(name) is not None for name in CREDENTIAL_HEADERS):
        return True
    return "api_key=" in handler.path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body are separate writes: no 40 ms delayed-ACK stalls
    server_version = "keyward-soak-upstream"
    sys_version = ""
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002 - one line per request, written below
        pass

    def _log(self, status: int, seen: bool) -> None:
        headers = " ".join(f"{k.lower()}={v}" for k, v in self.headers.items())
        line = f"{time.time():.3f} {self.command} {self.path} {status} credential_seen={int(seen)} {headers}\n"
        with _log_lock:
            sys.stderr.write(line)
            sys.stderr.flush()

    def _handle(self) -> None:
        read_body(self, limit=1 << 20)
        seen = credential_seen(self)
        key_id = self.headers.get("x-keyward-key-id") or ""
        common = [
            ("x-upstream-key-id", key_id),
            ("x-upstream-credential-seen", "yes" if seen else "no"),
        ]
        self._log(200, seen)
        if self.path.startswith(STREAM_PREFIX):
            self._stream(common, key_id)
            return
        send_json(self, {"ok": True, "path": self.path, "key_id": key_id}, headers=common)

    def _stream(self, common, key_id: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for k, v in common:
            self.send_header(k, v)
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        for i in range(STREAM_EVENTS):
            event = json.dumps({"i": i, "key_id": key_id, "delta": "tok%d" % i})
            chunk(f"data: {event}\n\n".encode())
            time.sleep(STREAM_GAP_S)
        chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    return serve_until_interrupted(Handler, args.port, backlog=256)


if __name__ == "__main__":
    sys.exit(main())
