#!/usr/bin/env python3
"""Run the keyward demo in the foreground: the `keyward` control plane (seeded with the demo
policy), a demo upstream, and Envoy with the keyward filter following the pushed policy.

Prints ready-to-paste curl lines once Envoy is ready. Ctrl-C (or either process dying) stops both.
Run it with the project venv's python (`make run` does), which provides the Envoy binary.
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
from keyward_testkit.envoy import find_envoy  # noqa: E402
from keyward_testkit.net import http_ok  # noqa: E402
from keyward_testkit.process import terminate  # noqa: E402

READY_TIMEOUT = 30.0


def stop(proc: subprocess.Popen | None, name: str) -> None:
    terminate(proc, name=name)


def start_control_plane(keyward: Path, work: Path, port: int) -> tuple[subprocess.Popen, str]:
    """A fresh demo store seeded with the demo policy's hashed keys, served on `port`.
    Returns the server process and the base64 signing secret the filter must trust."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ, KEYWARD_DB=str(work / "keyward.db"), KEYWARD_ACTOR="demo")

    def keyward_cli(*args: str) -> None:
        subprocess.run([str(keyward), *args], env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    keyward_cli("secret", "signing-key", "--out", str(work / "signing.key"))
    keyward_cli("secret", "admin-token", "--out", str(work / "admin.tokens"))
    snapshot = work / "demo-snapshot.json"
    snapshot.write_text(json.dumps(render_demo.plugin_config()["policy"]))
    keyward_cli("snapshot", "import", str(snapshot))
    server = subprocess.Popen(
        [str(keyward), "serve", "--listen", f"127.0.0.1:{port}",
         "--admin-token-file", str(work / "admin.tokens"),
         "--signing-key-id", render_demo.DEMO_SIGNING_KEY_ID, "--signing-key-file", str(work / "signing.key")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, text=True,
    )
    first_line = server.stdout.readline()
    if "listening" not in first_line:
        stop(server, "keyward serve")
        raise SystemExit(f"keyward serve did not start: {first_line!r}")
    return server, (work / "signing.key").read_text().strip()


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=render_demo.DEFAULT_OUT)
    ap.add_argument("--wasm", type=Path, default=render_demo.DEFAULT_WASM)
    ap.add_argument("--keyward", type=Path, default=REPO / "target" / "debug" / "keyward",
                    help="the keyward command (cargo build -p keyward)")
    ap.add_argument("--control-plane-port", type=int, default=render_demo.CONTROL_PLANE_PORT)
    ap.add_argument("--log", type=Path, default=render_demo.DEFAULT_OUT.parent / "envoy.log")
    ap.add_argument("--listen-port", type=int, default=render_demo.LISTEN_PORT)
    ap.add_argument("--admin-port", type=int, default=render_demo.ADMIN_PORT)
    ap.add_argument("--upstream-port", type=int, default=render_demo.UPSTREAM_PORT)
    args = ap.parse_args(argv)

    if not args.keyward.is_file():
        print(f"{args.keyward} missing: cargo build -p keyward (make run does)", file=sys.stderr)
        return 2

    upstream = envoy = control_plane = None
    work = args.config.parent / "control-plane"
    interrupted = False

    def on_signal(signum, _frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        control_plane, secret = start_control_plane(args.keyward, work, args.control_plane_port)
        args.config.parent.mkdir(parents=True, exist_ok=True)
        args.config.write_text(render_demo.render(
            args.listen_port, args.admin_port, args.upstream_port, args.wasm,
            control_plane_port=args.control_plane_port, signing_secret_base64=secret,
        ))
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "demo_upstream.py"), "--port", str(args.upstream_port)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C is handled here, then forwarded as SIGTERM
        )
        args.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(args.log, "wb")
        envoy = subprocess.Popen(
            [find_envoy(), "-c", str(args.config), "--concurrency", "1",
             "--base-id", str(args.admin_port), "-l", "info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (http_ok(args.admin_port, "/ready") and http_ok(args.upstream_port, "/")):
            if interrupted:
                return 130
            for p, name in ((envoy, "envoy"), (upstream, "demo upstream")):
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode}; Envoy log: {args.log}", file=sys.stderr)
                    sys.stderr.write(args.log.read_text(errors="replace")[-4000:])
                    return 1
            if time.monotonic() > deadline:
                print(f"not ready after {READY_TIMEOUT:.0f} s; Envoy log: {args.log}", file=sys.stderr)
                return 1
            time.sleep(0.1)

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
        while not interrupted:
            for p, name in ((envoy, "envoy"), (upstream, "demo upstream"), (control_plane, "keyward serve")):
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        print("\nstopping", file=sys.stderr)
        return 0
    finally:
        stop(envoy, "envoy")
        stop(upstream, "demo upstream")
        stop(control_plane, "keyward serve")


if __name__ == "__main__":
    sys.exit(main())
