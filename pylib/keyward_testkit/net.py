"""Loopback networking: ports, a one-shot GET, a child's "listening" line."""

from __future__ import annotations

import http.client
import select
import socket
from typing import IO, Optional

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; someone may take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_taken(port: int, host: str = LOOPBACK) -> Optional[str]:
    """None when a server could listen on host:port now, else why not (the OS's error).

    SO_REUSEADDR, as Envoy and Python's servers set it, so that connections of an earlier run in
    TIME_WAIT do not count. No SO_REUSEPORT: a listener that set it (every Envoy listener does,
    by default) must count as taken, or a second Envoy would silently share its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def http_status(port: int, path: str, timeout: float = 0.5, host: str = LOOPBACK) -> Optional[int]:
    """Status of `GET path` on a fresh connection; None when nothing answers."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()
    except OSError:
        return None


def http_ok(port: int, path: str, timeout: float = 0.5) -> bool:
    return http_status(port, path, timeout) == 200


def first_line(stream: Optional[IO], timeout: float) -> str:
    """The first line a child writes to its stdout pipe, or "" if none comes within `timeout`
    (or the child exits first). Servers print one once they are bound: that line proves the
    port is theirs, which a connection to the port cannot."""
    if stream is None:
        return ""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return ""
    line = stream.readline()
    return line.decode(errors="replace") if isinstance(line, bytes) else line
