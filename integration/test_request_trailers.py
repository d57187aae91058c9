"""A request whose body ends with trailers (HTTP/2: DATA without END_STREAM, then a HEADERS frame
that ends the stream) is decided on its body like any other, on both builds. Before this, the Wasm
filter only decided on a body chunk that carried end-of-stream, so trailers let a disallowed model
through to the upstream unchecked."""

import json
import socket

import h2.config  # pinned in the Makefile's pip line: missing, the import fails loudly
import h2.connection
import h2.events
import pytest

import harness
import world
from world import WORLD as W

# starts both builds itself: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host


def _config() -> dict:
    cfg = world.enforce_config()
    cfg["routes"].insert(0, {"name": "body-model", "match": {"path_prefix": "/bm"}, "model": "body"})
    return cfg


@pytest.fixture(scope="module", params=["wasm", "native"])
def body_envoy(request, envoy_workdir):
    host = request.param
    if host == "native" and not harness.native_path().is_file():
        pytest.fail(f"{harness.native_path()} missing: run `make native`", pytrace=False)
    if host == "wasm" and not harness.wasm_path().is_file():
        pytest.fail(f"{harness.wasm_path()} missing: run `make wasm`", pytrace=False)
    env = harness.Envoy(f"trailers-{host}", envoy_workdir, plugin_config=_config(), host=host)
    try:
        env.start()
    except harness.EnvoyStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield env
    env.stop()


def _h2_post(port: int, body: bytes, trailers: bool, request_id: str) -> int:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection((harness.LOOPBACK, port), timeout=harness.HTTP_TIMEOUT) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [
            (":method", "POST"), (":path", "/bm/x"), (":scheme", "http"), (":authority", "api.local"),
            ("authorization", f"Bearer {W.alpha.plaintext}"), ("content-type", "application/json"),
            ("x-request-id", request_id),
        ])
        conn.send_data(sid, body, end_stream=not trailers)
        if trailers:
            conn.send_headers(sid, [("x-checksum", "1")], end_stream=True)
        sock.sendall(conn.data_to_send())
        status = None
        while True:
            data = sock.recv(65536)
            assert data, "connection closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("trailers", [False, True], ids=["end_stream_on_data", "trailers"])
def test_a_disallowed_body_model_is_refused(body_envoy, trailers):
    rid = harness.new_request_id()
    status = _h2_post(body_envoy.port, json.dumps({"model": "o1"}).encode(), trailers, rid)
    assert status == 403, body_envoy.log_tail(20)
    assert body_envoy.upstream.by_request_id(rid) == []


@pytest.mark.parametrize("trailers", [False, True], ids=["end_stream_on_data", "trailers"])
def test_an_allowed_body_model_goes_upstream_whole(body_envoy, trailers):
    rid = harness.new_request_id()
    body = json.dumps({"model": "gpt-4o-mini", "input": "x" * 3000}).encode()
    assert _h2_post(body_envoy.port, body, trailers, rid) == 200
    got = body_envoy.upstream.one(rid)
    assert got.body == body
    assert got.header("authorization") is None
