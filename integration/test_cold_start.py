"""Issue #17, cold start without the control plane, against the real `keyward serve` and the
filter (either build) in a real Envoy:

- `keyward snapshot fetch` writes the control plane's signed snapshot to a last-known-good file
  (0600; unchanged when run again);
- an Envoy started while the control plane is down loads it (`render envoy --last-good-file`):
  the valid key passes, the revoked and unknown ones are refused, from the file alone;
- when the control plane comes back, its newer snapshot replaces the file's;
- a tampered file is refused (bad signature, said in the log) and the Envoy fails closed;
- an empty file (none fetched yet) lets Envoy start, failing closed until the control plane
  answers."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness
from checks import answer, wait_for_answer as wait_for
from keyward_testkit.control_plane import ControlPlane
from keyward_testkit.net import free_port

INTERVAL_MS = 300


def render(cp: ControlPlane, control_plane: str, last_good: Path, last_good_port: int = 0):
    """Envoy for the build under test, its control plane at `control_plane` (maybe down)."""
    port = last_good_port or free_port()

    def rendered(listen: int, admin: int, upstream: int) -> str:
        return cp.cli(
            "render", "envoy", *harness.render_build_args(), "--control-plane", control_plane,
            *cp.trust_args(), "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
            "--upstream", f"127.0.0.1:{upstream}", "--interval-ms", str(INTERVAL_MS),
            "--last-good-file", str(last_good), "--last-good-listen", f"127.0.0.1:{port}",
        ).stdout
    return rendered


def get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.read()


def fetch(cp: ControlPlane, out: Path) -> str:
    return cp.cli(
        "snapshot", "fetch", "--control-plane", f"http://{cp.address}",
        "--snapshot-token-file", str(cp.dataplane_token_file),
        "--public-key", f"{cp.signing_key_id}={cp.public_key_file}", "--out", str(out),
    ).stderr


@pytest.fixture
def plane(tmp_path, keyward_bin):
    """A store with a project, a valid key and a revoked one; `keyward serve` running."""
    cp = ControlPlane(keyward_bin, tmp_path / "cp")
    cp.work.mkdir()
    cp.create_secrets()
    cp.cli("project", "create", "proj_c", "--org", "org_c")
    alice = json.loads(cp.cli("key", "create", "--project", "proj_c", "--json").stdout)
    bob = json.loads(cp.cli("key", "create", "--project", "proj_c", "--json").stdout)
    cp.cli("key", "revoke", bob["id"])
    cp.start(stderr=(tmp_path / "serve.log").open("w"))
    yield cp, alice, bob
    cp.stop()


def test_an_envoy_restarted_while_the_control_plane_is_down_serves_from_the_file(plane, envoy_workdir, tmp_path):
    cp, alice, bob = plane
    last_good = tmp_path / "last-good.json"
    said = fetch(cp, last_good)
    assert "wrote" in said and "2 keys" in said, said
    assert oct(last_good.stat().st_mode & 0o777) == "0o600", "a snapshot holds key hashes"
    assert "unchanged" in fetch(cp, last_good)
    version = json.loads(last_good.read_text())["snapshot"]["version"]

    address = cp.address
    port = int(address.rsplit(":", 1)[1])
    cp.stop()  # the outage starts; Envoy (re)starts during it
    file_port = free_port()
    env = harness.Envoy("cold-start", envoy_workdir, render=render(cp, address, last_good, file_port)).start()
    try:
        # Envoy serves the file (key hashes) to the data-plane token only.
        served = f"http://127.0.0.1:{file_port}/last-good.json"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served, timeout=5)
        assert refused.value.code == 404
        with pytest.raises(urllib.error.HTTPError):
            get(served, "kwdp_not_the_token")
        assert get(served, cp.dataplane_token()) == last_good.read_bytes()
        wait_for(env, alice["key"], (200, None))
        assert answer(env, bob["key"]) == (401, "key_revoked")
        unknown = alice["key"][:-4] + ("aaaa" if not alice["key"].endswith("aaaa") else "bbbb")
        assert answer(env, unknown)[0] == 401
        log = env.wait_for_log(lambda text: "from the last-known-good file" in text)
        assert f"published policy version {version} (2 keys) from the last-known-good file" in log, env.log_tail(30)

        # Changed while the control plane is down (in its store), served once it is back.
        carol = json.loads(cp.cli("key", "create", "--project", "proj_c", "--json").stdout)
        assert answer(env, carol["key"])[0] == 401
        cp.start(port=port)
        wait_for(env, carol["key"], (200, None))
        assert answer(env, bob["key"]) == (401, "key_revoked")
    finally:
        env.stop()
    said = fetch(cp, last_good)
    assert "wrote" in said and "3 keys" in said, said
    assert json.loads(last_good.read_text())["snapshot"]["version"] > version


def test_a_tampered_file_is_refused_and_an_empty_one_waits_for_the_control_plane(plane, envoy_workdir,
                                                                                 tmp_path):
    cp, alice, bob = plane
    last_good = tmp_path / "last-good.json"
    fetch(cp, last_good)
    # Reinstating the revoked key: valid JSON, but the signature no longer covers it.
    text = last_good.read_text()
    assert text.count('"revoked"') >= 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(text.replace('"revoked"', '"active"'))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    shutil.copy(last_good, tmp_path / "kept.json")
    address = cp.address
    cp.stop()

    env = harness.Envoy("cold-start-tampered", envoy_workdir, render=render(cp, address, tampered)).start()
    try:
        env.wait_metric_above("keyward.sync.rejected.bad_signature")
        log = env.wait_for_log(lambda text: "last-known-good file rejected (bad_signature)" in text)
        assert "last-known-good file rejected (bad_signature)" in log, env.log_tail(30)
        for key in (alice["key"], bob["key"]):
            assert answer(env, key) == (503, "policy_unavailable"), "fails closed"
        assert env.metric("keyward.sync.published") in (None, 0)
    finally:
        env.stop()

    env = harness.Envoy("cold-start-empty", envoy_workdir, render=render(cp, address, empty)).start()
    try:
        log = env.wait_for_log(lambda text: "the last-known-good file is empty" in text)
        assert "the last-known-good file is empty" in log, env.log_tail(30)
        assert answer(env, alice["key"]) == (503, "policy_unavailable")
    finally:
        env.stop()
