#!/usr/bin/env python3
"""Demo upstream: answers every request with 200 and a JSON echo of what it received.

Binds 127.0.0.1 only and prints `listening 127.0.0.1:PORT` on stdout once bound. Standard
library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))
from keyward_testkit.http_servers import read_body, send_json, serve_until_interrupted  # noqa: E402


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keyward-demo-upstream"
    sys_version = ""
    timeout = 30  # per-connection socket timeout

    def log_message(self, format, *args):  # noqa: A002
        sys.stderr.write("upstream: %s\n" % (format % args))

    def _handle(self):
        body = read_body(self, limit=1 << 20)
        echo = {
            "upstream": "keyward demo echo",
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        if self.command == "POST" and self.path.split("?")[0].endswith("/chat/completions"):
            # Like a provider: what the call used, which keyward meters and charges.
            prompt_tokens = max(1, len(body) // 4)
            echo["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": 20,
                             "total_tokens": prompt_tokens + 20}
        send_json(self, json.dumps(echo, indent=2).encode() + b"\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=10001)
    args = ap.parse_args(argv)
    return serve_until_interrupted(Echo, args.port)


if __name__ == "__main__":
    sys.exit(main())
