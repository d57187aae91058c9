"""Clients that send a request exactly as written: HTTP/1.1 over a raw socket (any
request-target, absolute form, repeated or odd headers) and HTTP/2 cleartext with prior knowledge
through the `h2` package with its own checks turned off (any `:path`, `:authority` next to
`host`, names with `_`). Each request gets its own connection."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import pytest

try:  # the HTTP/2 client, pinned in the Makefile's pip line
    import h2.config
    import h2.connection
    import h2.events
except ImportError as e:
    H2_MISSING: Optional[str] = f"the h2 package is missing ({e}): .tools/venv/bin/pip install h2==4.4.1"
else:
    H2_MISSING = None

LOOPBACK = "127.0.0.1"
TIMEOUT = 5.0
Text = Union[str, bytes]


def _bytes(value: Text) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class Answer:
    status: Optional[int] = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    ended: str = ""  # "response", "closed" (no response), "reset" (HTTP/2 RST_STREAM)

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k == name), None)

    def text(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.status} ({self.ended})\n{head}\n\n{self.body.decode('latin-1')}"

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, ended={self.ended}, headers={self.headers}, body={self.body[:300]!r})"


def _read_chunked(sock: socket.socket, buf: bytes) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in buf:
            more = sock.recv(65536)
            if not more:
                return body
            buf += more
        line, _, buf = buf.partition(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        while len(buf) < size + 2:
            more = sock.recv(65536)
            if not more:
                return body + buf[:size]
            buf += more
        if size == 0:
            return body
        body += buf[:size]
        buf = buf[size + 2:]


def send_h1(port: int, method: str, target: Text, headers: Sequence[tuple[Text, Text]], body: Optional[bytes] = None,
            timeout: float = TIMEOUT) -> Answer:
    """One HTTP/1.1 request; `headers` go out as written (no `host` is added), then
    `content-length` when a body is given and none was named."""
    lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1"]
    names = {_bytes(k).lower() for k, _ in headers}
    lines += [_bytes(k) + b": " + _bytes(v) for k, v in headers]
    if body is not None and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"content-length: " + str(len(body)).encode())
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except OSError:
            pass  # Envoy may answer and close before it read everything
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return Answer(ended="closed")
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            got = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
            answer = Answer(status=int(status_line.split(" ")[1]), headers=got, ended="response")
            lengths = [int(v) for k, v in got if k == "content-length"]
            if any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in got):
                answer.body = _read_chunked(s, rest)
            elif lengths:
                while len(rest) < lengths[0]:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                answer.body = rest[: lengths[0]]
            elif method.upper() != "HEAD" and answer.status not in (204, 304):
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                answer.body = rest
            return answer
        except (ConnectionResetError, socket.timeout):
            return Answer(ended="closed")


def send_h2(port: int, method: str, path: Text, authority: Optional[Text], headers: Sequence[tuple[Text, Text]] = (),
            body: Optional[bytes] = None, timeout: float = TIMEOUT) -> Answer:
    """One HTTP/2 request: the pseudo-headers (`:authority` left out when None), then `headers`
    exactly as given (any name, repeated names, a `host` next to `:authority`)."""
    if H2_MISSING:
        pytest.fail(H2_MISSING, pytrace=False)
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    block = [(b":method", _bytes(method)), (b":scheme", b"http"), (b":path", _bytes(path))]
    if authority is not None:
        block.append((b":authority", _bytes(authority)))
    block += [(_bytes(k), _bytes(v)) for k, v in headers]
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, block, end_stream=not body)
    if body:
        conn.send_data(stream_id, body, end_stream=True)
    answer = Answer()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + timeout
        while not answer.ended:
            if time.monotonic() > deadline:
                answer.ended = "closed"
                break
            try:
                data = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                data = b""
            if not data:
                answer.ended = "closed"
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
                    answer.status = int(dict(got)[":status"])
                    answer.headers = [(k, v) for k, v in got if not k.startswith(":")]
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    answer.ended = "response"
                elif isinstance(event, h2.events.StreamReset):
                    answer.ended = "reset"
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer.ended = answer.ended or "closed"
            pending = conn.data_to_send()
            if pending and not answer.ended:
                try:
                    s.sendall(pending)
                except OSError:
                    pass
    return answer
