"""The demo (envoy/demo.yaml + demo-policy.json + demo-keys.json) does what `make run` promises."""

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest

import harness
from keyward_testkit.http_servers import BackgroundHTTPServer
from keyward_testkit.net import LOOPBACK, free_port, port_taken

sys.path.insert(0, str(harness.REPO_ROOT / "scripts"))
import render_demo  # noqa: E402

# the demo runs the Wasm build: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host

SCENARIOS = render_demo.scenarios()


def test_demo_hashes_match_demo_keys():
    keys = {k["id"]: k for k in render_demo.plugin_config()["policy"]["keys"]}
    seen = set()
    for s in SCENARIOS:
        for name, value in s["headers"].items():
            if name not in ("authorization", "x-api-key"):
                continue
            key = value.split(" ", 1)[1] if name == "authorization" else value
            if key.startswith("ak_"):
                key_id, secret = key[3:].split(".", 1)
                if key_id in keys:
                    assert keys[key_id]["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest(), key_id
                    seen.add(key_id)
            elif key.startswith("vpx_"):
                digest = hashlib.sha256(key.encode()).hexdigest()
                match = [k for k in keys.values() if k.get("key_sha256") == digest]
                assert match, f"no demo policy record for {key[:12]}..."
                seen.add(match[0]["id"])
    assert seen == set(keys), f"demo keys without a scenario: {set(keys) - seen}"


def test_demo_renders_and_validates(tmp_path, wasm):
    path = tmp_path / "demo.yaml"
    path.write_text(render_demo.render(wasm=wasm))
    res = harness.envoy_validate(path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]


def test_curl_lines_are_shell_safe():
    for s in SCENARIOS:
        argv = shlex.split(render_demo.curl_command(s, 10000))
        assert argv[0] == "curl" and argv[-1].startswith("http://127.0.0.1:10000/")


@pytest.fixture(scope="module")
def demo_envoy(envoy_workdir, wasm):
    env = harness.Envoy(
        "demo", envoy_workdir,
        render=lambda listen, admin, up: render_demo.render(listen, admin, up, wasm),
    )
    error = None
    try:
        env.start()
    except harness.EnvoyStartError as e:
        error = str(e)
    if error:
        pytest.fail(error, pytrace=False)
    yield env
    env.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_demo_scenario(demo_envoy, scenario):
    body = scenario.get("body")
    resp = demo_envoy.request(
        scenario.get("method", "GET"), scenario["path"], list(scenario["headers"].items()),
        body=body.encode() if body is not None else None,
    )
    assert resp.status == scenario["expect_status"], resp
    if "expect_code" in scenario:
        assert resp.header("x-keyward-error") == scenario["expect_code"], resp
        assert demo_envoy.upstream.by_request_id(resp.request_id) == []
    else:
        got = demo_envoy.upstream.one(resp.request_id)
        assert got.header("authorization") is None and got.header("x-api-key") is None
        if scenario["path"] != "/healthz":
            assert got.header("x-keyward-project") == "proj_demo", got.headers


RUN_DEMO = harness.REPO_ROOT / "scripts" / "run_demo.py"
PORT_FLAGS = ("--listen-port", "--admin-port", "--upstream-port", "--control-plane-port")
MAKE_VARIABLES = ("DEMO_PORT", "DEMO_ADMIN_PORT", "DEMO_UPSTREAM_PORT", "DEMO_CONTROL_PLANE_PORT")


def run_demo_command(tmp_path, wasm, keyward_bin, ports) -> list[str]:
    """`make run`'s runner with its files in tmp_path and the given four ports."""
    command = [sys.executable, str(RUN_DEMO), "--config", str(tmp_path / "envoy.yaml"),
               "--log", str(tmp_path / "envoy.log"), "--wasm", str(wasm), "--keyward", str(keyward_bin)]
    for flag, port in zip(PORT_FLAGS, ports):
        command += [flag, str(port)]
    return command


def test_make_run_follows_the_control_plane(tmp_path, wasm, keyward_bin):
    """`make run`'s runner on ports other than the defaults: the control plane seeded with the
    demo keys, the printed curl lines answered as documented, and a key minted and a key revoked
    live with the printed commands."""
    keyward = str(keyward_bin)
    listen, admin, upstream, control = ports = [free_port() for _ in range(4)]
    runner = subprocess.Popen(
        run_demo_command(tmp_path, wasm, keyward_bin, ports),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("key list" in line for line in lines):
            line = runner.stdout.readline()
            assert line or runner.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        printed = "".join(lines)
        db = re.search(r"export KEYWARD_DB=(\S+)", printed).group(1)
        env = dict(os.environ, KEYWARD_DB=db)

        alpha = next(s for s in SCENARIOS if s["name"].startswith("allowed (Authorization"))

        def alpha_status() -> int:
            headers = list(alpha["headers"].items())
            body = alpha.get("body", "").encode() or None
            return harness.http_request(listen, alpha["method"], alpha["path"], headers, body=body).status

        assert alpha_status() == 200
        # That call is metered: 5 prompt tokens (23 body bytes / 4) and 20 completion tokens of
        # gpt-4o-mini at $0.15 / $0.60 per 1M = 12.75, rounded up to 13 micro-USD on top of the
        # seeded 1.25 USD, reported by Envoy and applied by the control plane.
        deadline = time.monotonic() + 10
        while True:
            shown = json.loads(subprocess.run([keyward, "key", "show", "demoAlpha1", "--json"], env=env,
                                              capture_output=True, text=True, check=True).stdout)
            if shown["spent_microusd"] == 1_250_013:
                break
            assert time.monotonic() < deadline, f"spend not reported: {shown['spent_microusd']}"
            time.sleep(0.2)
        created = json.loads(subprocess.run(
            [keyward, "key", "create", "--project", "proj_demo", "--scopes", "chat:write", "--json"],
            env=env, capture_output=True, text=True, check=True).stdout)
        subprocess.run([keyward, "key", "revoke", "demoAlpha1"], env=env, capture_output=True, check=True)
        deadline = time.monotonic() + 5
        while alpha_status() != 401:
            assert time.monotonic() < deadline, "revocation did not reach the demo Envoy"
            time.sleep(0.1)
        minted = harness.http_request(listen, "GET", "/v1/models", [("authorization", f"Bearer {created['key']}")])
        assert minted.status == 200, minted
        assert oct(os.stat(tmp_path / "envoy.yaml").st_mode & 0o777) == "0o600", "the config holds the data-plane token"
    finally:
        runner.terminate()
        runner.wait(timeout=15)
    # SIGTERM, like Ctrl-C, stops everything the runner started
    assert runner.returncode == 0, runner.returncode
    assert [port_taken(p) for p in ports] == [None] * 4


def _reuse_port_listener() -> socket.socket:
    """A listener like an Envoy listener (SO_REUSEPORT): another Envoy could silently share it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((LOOPBACK, 0))
    s.listen()
    return s


@pytest.mark.parametrize("taken", range(4), ids=MAKE_VARIABLES)
def test_make_run_refuses_a_taken_port(tmp_path, wasm, keyward_bin, taken):
    """With something already on one of its ports, the runner starts nothing, names the port and
    the `make run` variable that moves it, and exits non-zero; it never prints that it is ready."""
    ports = [free_port() for _ in range(4)]
    foreign = _reuse_port_listener() if taken == 0 else BackgroundHTTPServer(harness.AlwaysLive).start()
    ports[taken] = foreign.getsockname()[1] if taken == 0 else foreign.port
    try:
        done = subprocess.run(run_demo_command(tmp_path, wasm, keyward_bin, ports), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    finally:
        foreign.close() if taken == 0 else foreign.stop()
    said = done.stdout + done.stderr
    assert done.returncode == 3, said
    assert f"port {ports[taken]}" in said and f"{MAKE_VARIABLES[taken]}=" in said and "taken" in said, said
    assert "demo ready" not in said and "curl" not in said, said
    assert not (tmp_path / "envoy.yaml").exists() and not (tmp_path / "control-plane").exists()
    assert [port_taken(p) for i, p in enumerate(ports) if i != taken] == [None] * 3


def test_make_run_refuses_one_port_twice(tmp_path, wasm, keyward_bin):
    port = free_port()
    done = subprocess.run(run_demo_command(tmp_path, wasm, keyward_bin, [port, port, free_port(), free_port()]),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 3 and f"both on port {port}" in done.stderr, done.stderr


def test_make_run_passes_its_port_variables(tmp_path):
    """`make run DEMO_PORT=... DEMO_ADMIN_PORT=...` reaches the port check (before the build)
    and the runner (a dry run: nothing is built or started)."""
    ports = [free_port() for _ in range(4)]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(harness.REPO_ROOT), "run",
         *(f"{var}={port}" for var, port in zip(MAKE_VARIABLES, ports))],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    runner_lines = [line for line in done.stdout.replace("\\\n", " ").splitlines() if "scripts/run_demo.py" in line]
    assert len(runner_lines) == 2 and "--check-ports" in runner_lines[0], done.stdout
    expected = " ".join(f"{flag} {port}" for flag, port in zip(PORT_FLAGS, ports))
    for line in runner_lines:
        assert expected in " ".join(line.split()), line
