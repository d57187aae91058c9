"""The demo (envoy/demo.yaml + demo-policy.json + demo-keys.json) does what `make run` promises."""

import hashlib
import json
import shlex
import sys

import pytest

import harness

sys.path.insert(0, str(harness.REPO_ROOT / "scripts"))
import render_demo  # noqa: E402

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


def test_make_run_follows_the_control_plane(tmp_path, wasm):
    """`make run`'s runner: the control plane seeded with the demo keys, the printed curl lines
    answered as documented, and a key minted and a key revoked live with the printed commands."""
    import os
    import re
    import subprocess
    import time

    keyward = os.environ.get("KEYWARD_BIN", str(harness.REPO_ROOT / "target" / "debug" / "keyward"))
    listen, admin, upstream, control = (harness.free_port() for _ in range(4))
    runner = subprocess.Popen(
        [sys.executable, str(harness.REPO_ROOT / "scripts" / "run_demo.py"), "--config", str(tmp_path / "envoy.yaml"),
         "--log", str(tmp_path / "envoy.log"), "--wasm", str(wasm), "--keyward", keyward,
         "--listen-port", str(listen), "--admin-port", str(admin), "--upstream-port", str(upstream),
         "--control-plane-port", str(control)],
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
    finally:
        runner.terminate()
        runner.wait(timeout=15)
