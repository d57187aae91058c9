#!/usr/bin/env python3
"""Render envoy/demo.yaml (a template) into a runnable Envoy config.

Envoy takes the Wasm plugin configuration as one string, so the plugin configuration in
envoy/demo-policy.json is embedded here as a JSON string. Also builds the demo's curl lines from
envoy/demo-keys.json. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "envoy" / "demo.yaml"
PLUGIN_CONFIG = REPO / "envoy" / "demo-policy.json"
DEMO_KEYS = REPO / "envoy" / "demo-keys.json"
DEFAULT_WASM = REPO / "target" / "keyward.wasm"
DEFAULT_OUT = REPO / ".tools" / "demo" / "envoy.yaml"

LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT = 10000, 9901, 10001
CONTROL_PLANE_PORT = 10002
DEMO_SIGNING_KEY_ID = "demo"



def plugin_config() -> dict:
    return json.loads(PLUGIN_CONFIG.read_text())


def scenarios() -> list[dict]:
    return json.loads(DEMO_KEYS.read_text())["scenarios"]


def render(
    listen_port: int = LISTEN_PORT,
    admin_port: int = ADMIN_PORT,
    upstream_port: int = UPSTREAM_PORT,
    wasm: Path = DEFAULT_WASM,
    control_plane_port: int = CONTROL_PLANE_PORT,
    public_key_base64: str | None = None,
    dataplane_token: str | None = None,
) -> str:
    """With the control plane's public key (and the data-plane token it hands out), the filter
    also follows the policy the demo control plane pushes; the inline demo policy stays in force
    until then, and whenever it is unreachable (for the default maximum age of a synced policy,
    two days from now: it is stamped as issued at render time)."""
    text = TEMPLATE.read_text()
    config = plugin_config()
    if public_key_base64:
        config["sync"] = {
            "cluster": "keyward_control_plane",
            "interval_ms": 1000,
            "timeout_ms": 2000,
            "public_keys": [{"id": DEMO_SIGNING_KEY_ID, "public_key_base64": public_key_base64}],
            "poller": "lease",
        }
        if dataplane_token:
            config["sync"]["token"] = dataplane_token
        config["policy"]["issued_at"] = int(time.time())
    compact = json.dumps(config, separators=(",", ":"))
    # a JSON string literal is a valid YAML double-quoted scalar
    values = {
        "@LISTEN_PORT@": str(int(listen_port)),
        "@ADMIN_PORT@": str(int(admin_port)),
        "@UPSTREAM_PORT@": str(int(upstream_port)),
        "@CONTROL_PLANE_PORT@": str(int(control_plane_port)),
        "@WASM_PATH@": json.dumps(str(Path(wasm).resolve())),
        "@PLUGIN_CONFIGURATION@": json.dumps(compact),
    }
    for placeholder, value in values.items():
        if placeholder not in text:
            raise SystemExit(f"{TEMPLATE}: placeholder {placeholder} missing")
        text = text.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"{TEMPLATE}: unknown placeholder(s) {sorted(set(left))}")
    return text


def curl_command(s: dict, port: int = LISTEN_PORT) -> str:
    parts = ["curl", "-sS", "-i"]
    if s.get("method", "GET") != "GET" or s.get("body"):
        parts += ["-X", s.get("method", "GET")]
    for k, v in s.get("headers", {}).items():
        parts += ["-H", f"{k}: {v}"]
    if s.get("body"):
        parts += ["--data", s["body"]]
    parts.append(f"http://127.0.0.1:{port}{s['path']}")
    return " ".join(shlex.quote(p) for p in parts)


def curl_lines(port: int = LISTEN_PORT) -> str:
    out = []
    for s in scenarios():
        out.append(f"# {s['name']}: expect {s['expect']}")
        out.append(curl_command(s, port))
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    ap.add_argument("--listen-port", type=int, default=LISTEN_PORT)
    ap.add_argument("--admin-port", type=int, default=ADMIN_PORT)
    ap.add_argument("--upstream-port", type=int, default=UPSTREAM_PORT)
    ap.add_argument("--print-curl", action="store_true", help="print the demo curl lines and exit")
    args = ap.parse_args(argv)
    if args.print_curl:
        print(curl_lines(args.listen_port))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.listen_port, args.admin_port, args.upstream_port, args.wasm))
    print(f"rendered {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
