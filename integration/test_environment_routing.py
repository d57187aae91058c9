"""Test keys reach a sandbox upstream: keyward sets x-keyward-environment before routing is final,
and a header set by the filter makes Envoy select the route again (DESIGN §3, seed 004)."""

from __future__ import annotations

import copy
import json

import pytest

import harness
from checks import bearer, xkey
from world import WORLD as W, enforce_config


@pytest.fixture(scope="module")
def routed_envoy(envoy_workdir, wasm):
    sandbox = harness.EchoUpstream().start()

    def render(listen_port, admin_port, upstream_port):
        cfg = harness.render_bootstrap(listen_port, admin_port, upstream_port, enforce_config(), wasm)
        resources = cfg["static_resources"]
        cluster = copy.deepcopy(resources["clusters"][0])
        cluster["name"] = "sandbox"
        cluster["load_assignment"]["cluster_name"] = "sandbox"
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = sandbox.port
        resources["clusters"].append(cluster)
        hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(
            0,
            {
                # The twin of the production route "default" carries the same name, so the
                # plugin applies the same requirements whichever of the two Envoy picked first.
                "name": "default",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "x-keyward-environment", "string_match": {"exact": "test"}}],
                },
                "route": {"cluster": "sandbox", "timeout": "5s"},
            },
        )
        return json.dumps(cfg)

    env = harness.Envoy("env-routing", envoy_workdir, render=render)
    env.start()
    yield env, sandbox
    env.stop()
    sandbox.stop()


def test_test_key_goes_to_sandbox(routed_envoy):
    env, sandbox = routed_envoy
    resp = env.request("GET", "/v1/models", [xkey(W.alpha_test)])
    assert resp.status == 200, resp
    got = sandbox.one(resp.request_id)
    assert got.header("x-keyward-environment") == "test"
    assert env.upstream.by_request_id(resp.request_id) == []


def test_live_key_goes_to_production(routed_envoy):
    env, sandbox = routed_envoy
    resp = env.request("GET", "/v1/models", [bearer(W.alpha)])
    assert resp.status == 200, resp
    assert env.upstream.one(resp.request_id).header("x-keyward-environment") == "live"
    assert sandbox.by_request_id(resp.request_id) == []


def test_client_cannot_route_itself_to_the_sandbox(routed_envoy):
    """A spoofed environment header is removed before the route is chosen again."""
    env, sandbox = routed_envoy
    resp = env.request("GET", "/v1/models", [bearer(W.alpha), ("x-keyward-environment", "test")])
    assert resp.status == 200, resp
    assert env.upstream.one(resp.request_id).header("x-keyward-environment") == "live"
    assert sandbox.by_request_id(resp.request_id) == []
