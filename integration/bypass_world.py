"""The bypass battery's world: a real `keyward serve` with the battery's projects, prices and
keys, and the Envoys the variants go through, each with its own realistic upstream.

- `rendered`: the bootstrap `keyward render envoy --plugin-config … --route ops=/ops` writes,
  with Envoy's own request hardening;
- `plain`: a hand-written bootstrap with the same plugin configuration and Envoy routes, and no
  normalization, no slash merging and no underscore-header rule at all;
- each in a case-sensitive run (the upstream does not fold case) and a case-insensitive one
  (`case_insensitive_paths: true`, the upstream folds case);
- `shadow`: the plain bootstrap in `mode: shadow`.

All of them follow the same control plane, so one set of keys works everywhere.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import bypass_cases as C
import harness
from control_plane import ControlPlane
from raw_clients import send_h1
from realistic_upstream import RealisticUpstream

LIVE_TIMEOUT_S = 15.0
# Keys for the spend-bound runs (test_spend_bound.py): one fresh $0.01 budget per run.
SPEND_RUNS = ("conflicting_max_fields", "n_128", "client_accepts_gzip", "provider_always_gzip")
SPEND_CAP_USD = "0.01"


def plain_bootstrap(listen_port: int, admin_port: int, upstream_port: int, control_plane: str, plugin: dict) -> dict:
    """An Envoy bootstrap as an operator might write it by hand: the keyward filter, the same
    Envoy routes as the rendered one, and none of Envoy's path or header hardening."""

    def cluster(name: str, port: int) -> dict:
        return {
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": harness.LOOPBACK, "port_value": port}}}}]}]},
        }

    host, port = control_plane.rsplit(":", 1)
    assert host == harness.LOOPBACK
    routes = [{"name": name, "match": {"prefix": prefix}, "route": {"cluster": "upstream", "timeout": "10s"}}
              for name, prefix in C.ENVOY_ROUTES.items()]
    routes.append({"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}})
    keyward = harness.keyward_filter(plugin)
    return {
        "admin": {"address": {"socket_address": {"address": harness.LOOPBACK, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": harness.LOOPBACK, "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                                 "HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"name": "local", "virtual_hosts": [
                            {"name": "all", "domains": ["*"], "routes": routes}]},
                        "http_filters": [keyward, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [cluster("upstream", upstream_port), cluster("keyward_control_plane", int(port))],
        },
    }


@dataclass
class Gateway:
    name: str
    envoy: harness.Envoy
    upstream: RealisticUpstream
    rendered: bool
    folded: bool
    shadow: bool = False


class BypassWorld:
    def __init__(self, workdir: Path, envoy_workdir: Path):
        self.workdir = Path(workdir)
        self.envoy_workdir = Path(envoy_workdir)
        self.plane = ControlPlane(self.workdir / "control-plane")
        self.gateways: dict[str, Gateway] = {}
        for project, org in C.PROJECTS.items():
            self.plane.cli("project", "create", project, "--org", org)
        self.plane.cli("price", "set", "--model", "gpt-4o*", "--input", C.PRICE_INPUT_USD, "--output", C.PRICE_OUTPUT_USD)
        self.keys: dict[str, C.KeyFacts] = {}
        for name, (_meaning, flags) in C.KEYS.items():
            self.keys[name] = self._mint(name, flags)
        self.spend_keys = {
            run: self._mint(f"spend_{run}", ["--project", "proj_alpha", "--scopes", "chat:write", "--models", C.MODEL_OK,
                                             "--spend-cap-usd", SPEND_CAP_USD])
            for run in SPEND_RUNS
        }

    def _mint(self, name: str, flags: list) -> C.KeyFacts:
        made = self.plane.create_key(*flags)
        project = made.get("project")
        return C.KeyFacts(name=name, id=made["id"], plaintext=made["key"], scopes=made["scopes"], models=made["models"],
                          project=project, org=made.get("org") or C.PROJECTS[project])

    def start(self) -> "BypassWorld":
        self.plane.start()
        for rendered in (True, False):
            for folded in (False, True):
                self._start_gateway(rendered, folded)
        self._start_gateway(rendered=False, folded=False, shadow=True)
        for gateway in self.gateways.values():
            self._wait_live(gateway)
        return self

    def _start_gateway(self, rendered: bool, folded: bool, shadow: bool = False) -> None:
        name = ("shadow" if shadow else "rendered" if rendered else "plain") + ("-folded" if folded else "")
        plugin = C.plugin_config(case_insensitive=folded, mode="shadow" if shadow else "enforce")
        upstream = RealisticUpstream(fold_case=folded).start()
        if rendered:
            plugin_path = self.workdir / f"{name}-plugin.json"
            plugin_path.write_text(json.dumps(plugin))
            extra = ["--plugin-config", str(plugin_path)]
            for route, prefix in C.ENVOY_ROUTES.items():
                extra += ["--route", f"{route}={prefix}"]

            def render(listen, admin, upstream_port):
                return self.plane.render_envoy(listen, admin, upstream_port, *extra)
        else:
            plugin = dict(plugin, sync=self.plane.lease_sync_block())

            def render(listen, admin, upstream_port):
                return json.dumps(plain_bootstrap(listen, admin, upstream_port, self.plane.address, plugin), indent=1)

        envoy = harness.Envoy(f"bypass-{name}", self.envoy_workdir, render=render, upstream=upstream, concurrency=2)
        try:
            envoy.start()
        except harness.EnvoyStartError:
            upstream.stop()
            raise
        self.gateways[name] = Gateway(name, envoy, upstream, rendered, folded, shadow)

    def _wait_live(self, gateway: Gateway) -> None:
        """Until the policy is loaded on every worker: a run of requests with the plain key that
        all reach the upstream with its identity (shadow mode lets requests through without)."""
        key = self.keys["plain"]
        deadline = time.monotonic() + LIVE_TIMEOUT_S
        while time.monotonic() < deadline:
            live = 0
            for attempt in range(6):
                request_id = f"live-{gateway.name}-{attempt}-{time.monotonic_ns()}"
                headers = [("host", "api.local"), ("authorization", f"Bearer {key.plaintext}"), ("x-request-id", request_id)]
                answer = send_h1(gateway.envoy.port, "GET", "/v1/models", headers)
                hits = gateway.upstream.by_request_id(request_id)
                live += answer.status == 200 and [h.header("x-keyward-key-id") for h in hits] == [key.id]
            if live == 6:
                gateway.upstream.clear()
                return
            time.sleep(0.1)
        raise RuntimeError(f"{gateway.name}: the policy did not load within {LIVE_TIMEOUT_S}s\n{gateway.envoy.log_tail(40)}")

    def gateway(self, rendered: bool, folded: bool) -> Gateway:
        return self.gateways[("rendered" if rendered else "plain") + ("-folded" if folded else "")]

    def stop(self) -> None:
        for gateway in self.gateways.values():
            gateway.envoy.stop()
            gateway.upstream.stop()
        self.plane.stop()
