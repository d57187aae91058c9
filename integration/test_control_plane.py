"""End to end with the real control plane: keys minted and revoked with the `keyward` command,
served by `keyward serve`, rendered into an Envoy config by `keyward render envoy`, and enforced
by the filter in Envoy with two workers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import harness
from keyward_testkit.control_plane import ControlPlane

KEYWARD = harness.KEYWARD_BIN
INTERVAL_MS = 500
PROPAGATION_S = INTERVAL_MS / 1000 + 1.0


def keyward(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return ControlPlane(KEYWARD, workdir).cli(*args)


def trust(workdir: Path) -> list[str]:
    """The public key and data-plane token arguments of `render envoy` for this control plane."""
    return ControlPlane(KEYWARD, workdir).trust_args()


@pytest.fixture(scope="module")
def plane(tmp_path_factory, envoy_workdir, wasm, keyward_bin):
    work = tmp_path_factory.mktemp("control-plane")
    plane = ControlPlane(keyward_bin, work)
    plane.create_secrets()
    keyward(work, "project", "create", "proj_e2e", "--org", "org_e2e")
    created = json.loads(keyward(work, "key", "create", "--project", "proj_e2e", "--json").stdout)
    address = plane.start()
    try:

        def render(listen_port, admin_port, upstream_port):
            return keyward(
                work, "render", "envoy", *harness.render_build_args(wasm), "--control-plane", address,
                *trust(work),
                "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
                "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
            ).stdout

        env = harness.Envoy("control-plane", envoy_workdir, render=render, concurrency=2)
        env.start()
        yield env, work, created, address
        env.stop()
    finally:
        plane.stop()


def answers(env, key: str, n: int = 16) -> set[tuple[int, str | None]]:
    seen = set()
    for _ in range(n):
        resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")])
        seen.add((resp.status, resp.header("x-keyward-error")))
    return seen


def wait_for(env, key: str, expected: tuple[int, str | None], limit_s: float) -> float:
    start = time.monotonic()
    while True:
        seen = answers(env, key)
        if seen == {expected}:
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            pytest.fail(f"after {limit_s}s: {seen}, wanted {expected}\n{env.log_tail(40)}")
        time.sleep(0.05)


def test_rendered_config_validates(plane, tmp_path):
    env, _work, _created, _address = plane
    result = harness.envoy_validate(env.config_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_minted_key_works_and_lifecycle_propagates_to_every_worker(plane):
    env, work, created, _address = plane
    key, key_id = created["key"], created["id"]
    wait_for(env, key, (200, None), 10)
    resp = env.request("GET", "/v1/models", [("authorization", f"Bearer {key}")])
    got = env.upstream.one(resp.request_id)
    assert got.header("x-keyward-key-id") == key_id and got.header("authorization") is None

    keyward(work, "key", "pause", key_id)
    wait_for(env, key, (403, "key_paused"), PROPAGATION_S)
    keyward(work, "key", "resume", key_id)
    wait_for(env, key, (200, None), PROPAGATION_S)
    keyward(work, "key", "revoke", key_id)
    took = wait_for(env, key, (401, "key_revoked"), PROPAGATION_S)
    print(f"revocation through keyward visible on every worker after {took:.2f}s")


def test_no_secret_in_any_log_or_the_store(plane):
    env, work, created, _address = plane
    secret = created["key"].split(".", 1)[1]
    assert secret not in env.log()
    for path in work.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret found in {path.name}"


def test_rendered_routes_exemptions_and_per_route_off_switch(plane, envoy_workdir, tmp_path):
    """`render envoy --route/--disable-on/--plugin-config`: route names carry the plugin's
    per-route policy, an exempt plugin route needs no key, and a route with the filter switched
    off bypasses keyward entirely."""
    _env, work, _created, address = plane
    fresh = json.loads(keyward(work, "key", "create", "--project", "proj_e2e", "--json").stdout)
    plugin = tmp_path / "plugin.json"
    plugin.write_text(json.dumps({"routes": [
        {"name": "chat", "match": {"route_name": "chat"}, "scopes": ["chat:write"]},
        {"name": "public", "match": {"path_prefix": "/v1/public/"}, "exempt": True},
    ]}))
    def render(listen_port, admin_port, upstream_port):
        return keyward(
            work, "render", "envoy", *harness.render_build_args(), "--control-plane", address,
            *trust(work),
            "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS),
            "--route", "chat=/v1/chat/", "--route", "health=/healthz", "--disable-on", "health",
            "--plugin-config", str(plugin),
        ).stdout

    env = harness.Envoy("control-plane-routes", envoy_workdir, render=render)
    env.start()
    try:
        assert harness.envoy_validate(env.config_path).returncode == 0
        key = fresh["key"]
        wait_for(env, key, (200, None), 10)
        chat = env.request("POST", "/v1/chat/completions", [("authorization", f"Bearer {key}")])
        assert (chat.status, chat.header("x-keyward-error")) == (403, "insufficient_scope"), chat
        public = env.request("GET", "/v1/public/docs")
        assert public.status == 200, public
        # Filter off: no authentication, and keyward does not touch headers either.
        health = env.request("GET", "/healthz", [("x-keyward-key-id", "spoofed")])
        assert health.status == 200, health
        assert env.upstream.one(health.request_id).header("x-keyward-key-id") == "spoofed"
    finally:
        env.stop()


def test_chunked_sync_from_keyward_serve(plane, envoy_workdir, wasm):
    """`render envoy --chunked-sync`: the manifest and chunks come from the real `keyward serve`,
    and a revocation still reaches every worker within interval + 1 s."""
    _env, work, _created, address = plane
    created = json.loads(keyward(work, "key", "create", "--project", "proj_e2e", "--json").stdout)
    key, key_id = created["key"], created["id"]

    def render(listen_port, admin_port, upstream_port):
        rendered = keyward(
            work, "render", "envoy", *harness.render_build_args(wasm), "--control-plane", address,
            *trust(work),
            "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(INTERVAL_MS), "--chunked-sync",
        ).stdout
        assert '\\"layout\\":\\"chunked\\"' in rendered
        return rendered

    env = harness.Envoy("control-plane-chunked", envoy_workdir, render=render, concurrency=2)
    env.start()
    try:
        wait_for(env, key, (200, None), 10)
        assert (env.metric("keyward.sync.chunks_fetched") or 0) >= 1
        keyward(work, "key", "revoke", key_id)
        took = wait_for(env, key, (401, "key_revoked"), PROPAGATION_S)
        print(f"chunked sync: revocation on every worker after {took:.2f}s")
    finally:
        env.stop()


@pytest.mark.one_host
@pytest.mark.parametrize("args,message", [
    ([], "--wasm PATH is needed with --host wasm"),  # the default build needs the module's path
    (["--host", "native", "--wasm", "/x/keyward.wasm"], "--wasm goes with --host wasm"),  # native has no .wasm
])
def test_render_envoy_refuses_a_build_it_cannot_render(tmp_path, keyward_bin, args, message):
    plane = ControlPlane(keyward_bin, tmp_path)
    plane.create_secrets()
    done = subprocess.run(
        [str(keyward_bin), "render", "envoy", *args, "--control-plane", "127.0.0.1:7070",
         *plane.trust_args()],
        env=plane.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0, done.stdout[:500]
    assert message in done.stderr, done.stderr
    assert done.stdout == ""
