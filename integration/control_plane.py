"""The real control plane for a test: the `keyward` command on a fresh database, `keyward serve`
on a loopback port, and `keyward render envoy` against it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Optional

import harness

KEYWARD = Path(os.environ.get("KEYWARD_BIN", harness.REPO_ROOT / "target" / "debug" / "keyward"))
SIGNING_KEY_ID = "ops-1"


class ControlPlaneError(RuntimeError):
    pass


class ControlPlane:
    def __init__(self, workdir: Path):
        if not KEYWARD.is_file():
            raise ControlPlaneError(f"keyward binary not found at {KEYWARD}: cargo build -p keyward")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.signing_key = self.workdir / "signing.key"
        self.public_key = self.workdir / "signing.key.pub"
        self.dataplane_token_file = self.workdir / "dataplane.token"
        self.server: Optional[subprocess.Popen] = None
        self.address = ""
        self.cli("secret", "signing-key", "--out", str(self.signing_key))
        self.cli("secret", "admin-token", "--out", str(self.workdir / "admin.tokens"))
        self.cli("dataplane", "token", "create", "--name", "fleet", "--out", str(self.dataplane_token_file))

    def cli(self, *args: str) -> str:
        env = dict(os.environ, KEYWARD_DB=str(self.workdir / "keyward.db"), KEYWARD_ACTOR="integration")
        done = subprocess.run(
            [str(KEYWARD), *args], env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise ControlPlaneError(f"keyward {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def create_key(self, *flags: str) -> dict:
        """`keyward key create ... --json`: the new key (plaintext in `key`) and its settings."""
        return json.loads(self.cli("key", "create", "--json", *flags))

    def key_view(self, key_id: str) -> dict:
        return json.loads(self.cli("key", "show", key_id, "--json"))

    def public_key_base64(self) -> str:
        return self.public_key.read_text().strip()

    def dataplane_token(self) -> str:
        return self.dataplane_token_file.read_text().strip()

    def start(self) -> "ControlPlane":
        self.server = subprocess.Popen(
            [str(KEYWARD), "serve", "--listen", "127.0.0.1:0", "--admin-token-file", str(self.workdir / "admin.tokens"),
             "--signing-key-id", SIGNING_KEY_ID, "--signing-key-file", str(self.signing_key)],
            env=dict(os.environ, KEYWARD_DB=str(self.workdir / "keyward.db")),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        )
        first_line = self.server.stdout.readline()
        found = re.search(r"http://([0-9.]+:\d+)", first_line)
        if not found:
            self.stop()
            raise ControlPlaneError(f"unexpected first line from keyward serve: {first_line!r}")
        self.address = found.group(1)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
            self.server = None

    def render_envoy(self, listen_port: int, admin_port: int, upstream_port: int, *extra: str,
                     interval_ms: int = 300) -> str:
        return self.cli(
            "render", "envoy", *harness.render_build_args(), "--control-plane", self.address,
            "--public-key", f"{SIGNING_KEY_ID}={self.public_key}",
            "--dataplane-token-file", str(self.dataplane_token_file),
            "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--upstream", f"127.0.0.1:{upstream_port}", "--interval-ms", str(interval_ms), *extra,
        )

    def lease_sync_block(self, interval_ms: int = 300) -> dict:
        """A `sync` block for a hand-written Envoy config: the filter polls through the cluster
        `keyward_control_plane` itself (lease mode), no bootstrap singleton needed."""
        return {
            "cluster": "keyward_control_plane",
            "authority": "keyward-control-plane",
            "path": "/v1/snapshot",
            "interval_ms": interval_ms,
            "timeout_ms": 2000,
            "public_keys": [{"id": SIGNING_KEY_ID, "public_key_base64": self.public_key_base64()}],
            "token": self.dataplane_token(),
            "poller": "lease",
        }

    def wait_for_spent(self, key_id: str, expected: int, limit_s: float = 10.0) -> dict:
        deadline = time.monotonic() + limit_s
        view = self.key_view(key_id)
        while view["spent_microusd"] != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            view = self.key_view(key_id)
        return view
