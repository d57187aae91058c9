"""The real control plane on loopback: a `keyward` store in a work directory, its signing key and
admin token, and `keyward serve`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Optional

from .net import LOOPBACK, first_line
from .process import terminate

_ADDRESS = re.compile(r"http://([0-9.]+:\d+)")


class CommandFailed(RuntimeError):
    pass


class ControlPlane:
    """`keyward` commands on the store `work`/keyward.db, and `keyward serve` for it.

    The signing key and the admin token live in `work` (the `keyward secret` commands create
    them 0600); `signing_key_id` is the id the filter's configuration names the key by.
    cli_log: where the commands' stderr goes (appended), e.g. for a scan for leaked secrets."""

    def __init__(
        self, keyward: Path, work: Path, actor: str = "integration", signing_key_id: str = "ops-1",
        cli_log: Optional[Path] = None,
    ):
        self.keyward = Path(keyward)
        self.cli_log = cli_log
        self.work = Path(work)
        self.db = self.work / "keyward.db"
        self.signing_key_file = self.work / "signing.key"
        self.admin_tokens_file = self.work / "admin.tokens"
        self.signing_key_id = signing_key_id
        self.env = dict(os.environ, KEYWARD_DB=str(self.db), KEYWARD_ACTOR=actor)
        self.proc: Optional[subprocess.Popen] = None
        self.address = ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """One `keyward` command on this store; CommandFailed (with its stderr) when it fails."""
        done = subprocess.run(
            [str(self.keyward), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if self.cli_log is not None:
            with open(self.cli_log, "a") as log:
                log.write(f"=== keyward {' '.join(args[:2])}\n{done.stderr}")
        if done.returncode != 0:
            raise CommandFailed(f"keyward {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def create_secrets(self, admin_token_name: Optional[str] = None) -> None:
        self.cli("secret", "signing-key", "--out", str(self.signing_key_file))
        named = ["--name", admin_token_name] if admin_token_name else []
        self.cli("secret", "admin-token", *named, "--out", str(self.admin_tokens_file))

    def signing_secret_base64(self) -> str:
        """The signing key, base64, as the filter's `signing_keys` take it."""
        return self.signing_key_file.read_text().strip()

    def serve_command(self, port: int) -> list[str]:
        return [
            str(self.keyward), "serve", "--listen", f"{LOOPBACK}:{port}",
            "--admin-token-file", str(self.admin_tokens_file),
            "--signing-key-id", self.signing_key_id, "--signing-key-file", str(self.signing_key_file),
        ]

    def start(self, port: int = 0, timeout: float = 20, stderr=subprocess.DEVNULL, **popen) -> str:
        """Starts `keyward serve` on `port` (0: any free one) and returns the "HOST:PORT" it bound,
        from the line it prints once it listens. RuntimeError (and nothing left running) if it
        prints none within `timeout`: e.g. the port is taken."""
        self.proc = subprocess.Popen(
            self.serve_command(port), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            text=True, **popen,
        )
        line = first_line(self.proc.stdout, timeout)
        found = _ADDRESS.search(line)
        if not found:
            self.stop()
            raise RuntimeError(f"keyward serve did not start on {LOOPBACK}:{port} (first line {line.strip()!r})")
        self.address = found.group(1)
        return self.address

    def stop(self, grace: float = 10.0) -> Optional[int]:
        return terminate(self.proc, grace, name="keyward serve")
