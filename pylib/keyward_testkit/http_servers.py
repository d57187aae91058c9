"""Small HTTP servers on loopback: the test upstreams, the stand-in control plane, the fault proxy."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence, Type, Union

from .net import LOOPBACK


class BackgroundHTTPServer:
    """A threaded HTTP server on 127.0.0.1:`port` (0: any free port; `self.port` is the bound
    one), serving from a daemon thread once started. Handlers reach this object as
    `self.server.owner`. backlog: connections the kernel queues before accept (5 by default,
    too few for many concurrent streams)."""

    def __init__(self, handler: Type[BaseHTTPRequestHandler], port: int = 0, backlog: int = 5):
        self.httpd = ThreadingHTTPServer((LOOPBACK, port), handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = backlog
        self.httpd.owner = self  # type: ignore[attr-defined]
        try:
            self.httpd.server_bind()
            self.httpd.server_activate()
        except OSError:
            self.httpd.server_close()
            raise
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RecordingHTTPServer(BackgroundHTTPServer):
    """A BackgroundHTTPServer whose handlers `self.server.owner.record(x)` what they saw, for the
    test to read back (`recorded()`) from its own thread."""

    def __init__(self, handler: Type[BaseHTTPRequestHandler], port: int = 0, backlog: int = 5):
        self._lock = threading.Lock()
        self._records: list = []
        super().__init__(handler, port, backlog)

    def record(self, item) -> None:
        with self._lock:
            self._records.append(item)

    def recorded(self) -> list:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def read_body(handler: BaseHTTPRequestHandler, limit: Optional[int] = None) -> bytes:
    """The request body, chunked or with a content-length (at most `limit` bytes of it)."""
    te = (handler.headers.get("transfer-encoding") or "").lower()
    if "chunked" in te:
        out = bytearray()
        while True:
            line = handler.rfile.readline(1024).strip()
            size = int(line.split(b";")[0] or b"0", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, until the empty line
                return bytes(out[:limit] if limit is not None else out)
            out += handler.rfile.read(size)
            handler.rfile.readline(16)
    length = int(handler.headers.get("content-length") or 0)
    if limit is not None:
        length = min(length, limit)
    return handler.rfile.read(length) if length else b""


def send_json(
    handler: BaseHTTPRequestHandler,
    payload: Union[bytes, dict, list],
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """One complete JSON answer (no body for HEAD)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def serve_until_interrupted(handler: Type[BaseHTTPRequestHandler], port: int, backlog: int = 5) -> int:
    """An upstream's main: serve on 127.0.0.1:`port` in this thread until SIGINT.

    Prints `listening 127.0.0.1:PORT` on stdout once bound: the parent reads it to know the port
    is this process's (a connection to the port could reach another one). A port that cannot be
    bound is one line on stderr and exit status 1."""
    try:
        server = BackgroundHTTPServer(handler, port, backlog)
    except OSError as e:
        print(f"cannot listen on {LOOPBACK}:{port}: {e.strerror or e}", file=sys.stderr, flush=True)
        return 1
    print(f"listening {LOOPBACK}:{server.port}", flush=True)
    try:
        server.httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
