#!/usr/bin/env python3
"""Run the keyward demo in the foreground: the `keyward` control plane (seeded with the demo
policy), a demo upstream, and Envoy with the keyward filter following the pushed policy.

Checks first that none of its four ports is taken, and says which one is. "Ready" means ready
*here*: each server proves it bound its own port (the control plane and the upstream print so,
Envoy writes its admin address), so a foreign server on a port is never taken for the demo.
Prints ready-to-paste curl lines once Envoy is ready. Ctrl-C (or any of the three dying) stops
all three. Run it with the project venv's python (`make run` does), which provides Envoy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "pylib"))
import render_demo  # noqa: E402
from keyward_testkit.control_plane import ControlPlane  # noqa: E402
from keyward_testkit.envoy import EnvoyExited, EnvoyLaunch, EnvoyNotReady  # noqa: E402
from keyward_testkit.net import LOOPBACK, first_line, port_taken  # noqa: E402
from keyward_testkit.process import die_with_parent, terminate  # noqa: E402

READY_TIMEOUT = 30.0
BIND_TIMEOUT = 20.0

# (argument, `make run` variable, what listens there)
PORTS = (
    ("listen_port", "DEMO_PORT", "Envoy listener"),
    ("admin_port", "DEMO_ADMIN_PORT", "Envoy admin"),
    ("upstream_port", "DEMO_UPSTREAM_PORT", "demo upstream"),
    ("control_plane_port", "DEMO_CONTROL_PLANE_PORT", "control plane"),
)

PORTS_TAKEN = 3  # exit status when a port is taken or invalid


class DemoError(RuntimeError):
    """A start-up failure, said in one message."""


def port_problems(args) -> list[str]:
    """What stops the demo from listening on its ports, one line each (nothing: all free)."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for attr, variable, what in PORTS:
        port = getattr(args, attr)
        if not 1 <= port <= 65535:
            problems.append(f"{what} port {port} ({variable}) is not a port number (1-65535)")
        elif port in seen:
            problems.append(f"{what} and {seen[port]} are both on port {port}: give {variable} another value")
        else:
            seen[port] = what
            reason = port_taken(port)
            if reason:
                problems.append(
                    f"port {port} ({what}, {variable}) is taken: {reason}. Stop what listens there "
                    f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port: make run {variable}=<port>"
                )
    return problems


def start_control_plane(keyward: Path, work: Path, port: int, log: Path) -> ControlPlane:
    """A fresh demo store seeded with the demo policy's hashed keys, served on `port`."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    plane = ControlPlane(keyward, work, actor="demo", signing_key_id=render_demo.DEMO_SIGNING_KEY_ID)
    plane.create_secrets()
    snapshot = work / "demo-snapshot.json"
    snapshot.write_text(json.dumps(render_demo.plugin_config()["policy"]))
    plane.cli("snapshot", "import", str(snapshot))
    with open(log, "wb") as stderr:
        try:
            plane.start(port, timeout=BIND_TIMEOUT, stderr=stderr, start_new_session=True, preexec_fn=die_with_parent)
        except RuntimeError as e:
            raise DemoError(f"{e}; its log: {log}\n{log.read_text(errors='replace')[-2000:]}") from None
    return plane


def start_upstream(port: int) -> subprocess.Popen:
    """The demo upstream, once it said it listens on `port` (its requests are logged on stderr)."""
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "demo_upstream.py"), "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        start_new_session=True,  # Ctrl-C is handled here, then forwarded as SIGTERM
        preexec_fn=die_with_parent,
    )
    line = first_line(upstream.stdout, BIND_TIMEOUT)
    if line.strip() != f"listening {LOOPBACK}:{port}":
        terminate(upstream, name="demo upstream")
        raise DemoError(f"the demo upstream did not start on {LOOPBACK}:{port} (exit status {upstream.returncode})")
    return upstream


def write_private(path: Path, text: str) -> None:
    """Created 0600: the rendered config holds the signing secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when it existed with other modes
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start_envoy(args, launch: EnvoyLaunch) -> subprocess.Popen:
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "wb") as log:
        envoy = subprocess.Popen(
            launch.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )
    try:
        launch.wait_ready(envoy, READY_TIMEOUT, poll_s=0.1)
    except EnvoyExited as e:
        tail = args.log.read_text(errors="replace")[-4000:]
        raise DemoError(f"envoy exited with {e.returncode} during start-up; its log: {args.log}\n{tail}") from None
    except EnvoyNotReady:
        terminate(envoy, name="envoy")
        raise DemoError(f"envoy not ready after {READY_TIMEOUT:.0f} s; its log: {args.log}") from None
    return envoy


def live_lines(keyward: Path, work: Path, port: int, listen_port: int) -> str:
    db = work / "keyward.db"
    return "\n".join([
        f"# Live policy changes: the control plane serves on http://127.0.0.1:{port}; Envoy polls it",
        "# every second and every worker follows within about a second more.",
        f"export KEYWARD_DB={db}",
        "# mint a key (its secret is printed once), then use it like the first curl line above:",
        f"{keyward} key create --project proj_demo --scopes chat:write",
        "# revoke the allowed demo key; the first curl line above then answers 401 key_revoked:",
        f"{keyward} key revoke demoAlpha1",
        f"{keyward} key list",
        "# the allowed chat completion above is metered: Envoy reports its usage, priced, and the",
        "# control plane adds it to the key's and the project's spend within a second or two:",
        f"{keyward} spend",
        "",
    ])


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=render_demo.DEFAULT_OUT)
    ap.add_argument("--wasm", type=Path, default=render_demo.DEFAULT_WASM)
    ap.add_argument("--keyward", type=Path, default=REPO / "target" / "debug" / "keyward",
                    help="the keyward command (cargo build -p keyward)")
    ap.add_argument("--log", type=Path, default=render_demo.DEFAULT_OUT.parent / "envoy.log")
    ap.add_argument("--listen-port", type=int, default=render_demo.LISTEN_PORT, help="Envoy listener (make: DEMO_PORT)")
    ap.add_argument("--admin-port", type=int, default=render_demo.ADMIN_PORT, help="Envoy admin (make: DEMO_ADMIN_PORT)")
    ap.add_argument("--upstream-port", type=int, default=render_demo.UPSTREAM_PORT,
                    help="demo upstream (make: DEMO_UPSTREAM_PORT)")
    ap.add_argument("--control-plane-port", type=int, default=render_demo.CONTROL_PLANE_PORT,
                    help="keyward serve (make: DEMO_CONTROL_PLANE_PORT)")
    ap.add_argument("--check-ports", action="store_true",
                    help=f"only check that the four ports are free (exit status {PORTS_TAKEN} if not)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = port_problems(args)
    if problems:
        print("keyward demo not started:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return PORTS_TAKEN
    if args.check_ports:
        return 0
    if not args.keyward.is_file():
        print(f"{args.keyward} missing: cargo build -p keyward (make run does)", file=sys.stderr)
        return 2

    children: list[tuple[subprocess.Popen, str]] = []
    work = args.config.parent / "control-plane"

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ready = False
    try:
        plane = start_control_plane(args.keyward, work, args.control_plane_port, args.config.parent / "keyward-serve.log")
        children.append((plane.proc, "keyward serve"))
        write_private(args.config, render_demo.render(
            args.listen_port, args.admin_port, args.upstream_port, args.wasm,
            control_plane_port=args.control_plane_port, signing_secret_base64=plane.signing_secret_base64(),
        ))
        children.append((start_upstream(args.upstream_port), "demo upstream"))
        launch = EnvoyLaunch(args.config, args.admin_port, concurrency=1)
        children.append((start_envoy(args, launch), "envoy"))
        ready = True

        print(
            f"\nkeyward demo ready: Envoy on http://127.0.0.1:{args.listen_port} "
            f"(admin http://127.0.0.1:{args.admin_port}), upstream on 127.0.0.1:{args.upstream_port}\n"
            f"Envoy log (denial log lines): {args.log}\n"
            f"Metrics: curl -s http://127.0.0.1:{args.admin_port}/stats | grep keyward\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        print(render_demo.curl_lines(args.listen_port), flush=True)
        print(live_lines(args.keyward, work, args.control_plane_port, args.listen_port), flush=True)
        while True:
            for proc, name in children:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    except RuntimeError as e:  # DemoError, a failed keyward command, no Envoy binary
        print(f"keyward demo not started: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        return 0 if ready else 130
    finally:
        # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc, name in reversed(children):
            terminate(proc, name=name)


if __name__ == "__main__":
    sys.exit(main())
