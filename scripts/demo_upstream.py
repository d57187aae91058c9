#!/usr/bin/env python3
"""Demo upstream: answers every request with 200 and a JSON echo of what it received.

Binds 127.0.0.1 only. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keyward-demo-upstream"
    sys_version = ""
    timeout = 30  # per-connection socket timeout

    def log_message(self, format, *args):  # noqa: A002
        sys.stderr.write("upstream: %s\n" % (format % args))

    def _handle(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(min(length, 1 << 20)) if length else b""
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
        payload = json.dumps(echo, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=10001)
    args = ap.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Echo)
    server.daemon_threads = True
    print(f"demo upstream on http://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
