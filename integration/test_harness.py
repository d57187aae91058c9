"""Self-test of the harness with a plain Envoy proxy (no keyward filter)."""

import json

import harness


def test_echo_upstream_direct():
    with harness.EchoUpstream() as echo:
        resp = harness.http_request(echo.port, "POST", "/x?y=1", [("x-a", "1"), ("x-a", "2")], body=b"hi")
        assert resp.status == 200
        got = echo.one(resp.request_id)
        assert got.method == "POST" and got.path == "/x?y=1" and got.body == b"hi"
        assert got.header_all("x-a") == ["1", "2"]
        assert json.loads(resp.body)["path"] == "/x?y=1"


def test_plain_proxy_forwards(plain_envoy):
    resp = plain_envoy.request("GET", "/v1/models?limit=1", [("authorization", "Bearer abc")])
    assert resp.status == 200, resp
    got = plain_envoy.upstream.one(resp.request_id)
    assert got.path == "/v1/models?limit=1"
    # without the filter the credential passes through untouched (sanity check of the recorder)
    assert got.header("authorization") == "Bearer abc"
    assert got.header("x-request-id") == resp.request_id


def test_plain_proxy_large_header_reaches_upstream(plain_envoy):
    # max_request_headers_kb: 96 lets a 64 KiB header through Envoy's codec to the filters
    big = "a" * (64 * 1024)
    resp = plain_envoy.request("GET", "/big", [("x-api-key", big)])
    assert resp.status == 200, resp
    assert plain_envoy.upstream.one(resp.request_id).header("x-api-key") == big


def test_plain_proxy_non_ascii_header(plain_envoy):
    resp = plain_envoy.request("GET", "/bytes", [("x-api-key", b"ak_abcd.\xc3\xa9\xff secret")])
    assert resp.status == 200, resp
    assert plain_envoy.upstream.one(resp.request_id).header("x-api-key") is not None


def test_plain_proxy_duplicate_authorization(plain_envoy):
    resp = plain_envoy.request("GET", "/dup", [("authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert resp.status == 200, resp
    got = plain_envoy.upstream.one(resp.request_id)
    # Envoy may coalesce the inline header; either way both values arrive
    joined = ",".join(got.header_all("authorization"))
    assert "Bearer a" in joined and "Bearer b" in joined


def test_admin_and_stats(plain_envoy):
    assert plain_envoy.admin("/ready").status == 200
    stats = plain_envoy.stats("http.ingress.downstream_rq_total")
    assert stats.get("http.ingress.downstream_rq_total", 0) >= 1


def test_start_stop_twice(envoy_workdir):
    # ports, base ids and shutdown: two instances side by side, stopped cleanly
    a = harness.Envoy("twin-a", envoy_workdir).start()
    b = harness.Envoy("twin-b", envoy_workdir).start()
    try:
        assert a.port != b.port and a.admin_port != b.admin_port
        assert a.request("GET", "/").status == 200
        assert b.request("GET", "/").status == 200
    finally:
        a.stop()
        b.stop()
    assert a.proc.returncode is not None and b.proc.returncode is not None
    assert "exiting" in a.log().lower() or a.proc.returncode in (0, -15)
