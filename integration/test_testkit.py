"""The shared helpers (pylib/keyward_testkit) where a mistake would hide: readiness that a
foreign server could fake, a port check that a shared Envoy listener could pass."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

import harness
from keyward_testkit.envoy import EnvoyExited, EnvoyLaunch
from keyward_testkit.http_servers import BackgroundHTTPServer
from keyward_testkit.net import LOOPBACK, free_port, http_ok, port_taken
from keyward_testkit.process import terminate

# the test helpers themselves: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host


@pytest.fixture
def foreign_admin():
    with BackgroundHTTPServer(harness.AlwaysLive) as server:
        yield server


def test_foreign_ready_answer_is_not_our_envoy(tmp_path, foreign_admin):
    """Our Envoy cannot bind the admin port a foreign server holds and exits; meanwhile the
    foreign server answers /ready. The launch must report the exit, never "ready"."""
    assert http_ok(foreign_admin.port, "/ready")
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(harness.render_bootstrap(free_port(), foreign_admin.port, free_port())))
    launch = EnvoyLaunch(config, foreign_admin.port)
    assert not launch.serving(), "a foreign /ready answer counted as our Envoy serving"
    with open(tmp_path / "envoy.log", "wb") as log:
        proc = subprocess.Popen(launch.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(EnvoyExited):
            launch.wait_ready(proc, timeout=30)
    finally:
        terminate(proc)
    assert "Address already in use" in (tmp_path / "envoy.log").read_text(errors="replace")


def test_our_envoy_owns_its_admin_port(plain_envoy):
    launch = EnvoyLaunch(plain_envoy.config_path, plain_envoy.admin_port)
    assert launch.owns_admin_port() and launch.serving()
    assert not EnvoyLaunch(plain_envoy.config_path, plain_envoy.port).owns_admin_port()


def test_port_taken_sees_a_reuse_port_listener():
    """Envoy's listeners set SO_REUSEPORT, so a second Envoy binds the same port without an
    error and the two share the traffic: the check must count such a port as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_taken(port) is not None
    assert port_taken(port) is None
