"""Test harness: an echo upstream, an Envoy launcher and a small HTTP client.

Everything binds 127.0.0.1 only and every network call carries a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from keyward_testkit.envoy import EnvoyExited, EnvoyLaunch, EnvoyNotReady, find_envoy
from keyward_testkit.envoy_config import HCM_TYPE, http_listener, router_filter, static_bootstrap, static_cluster
from keyward_testkit.envoy_config import native_filter, native_search_dir
from keyward_testkit.envoy_config import wasm_filter as _wasm_filter
from keyward_testkit.http_servers import RecordingHTTPServer, read_body, send_json
from keyward_testkit.net import LOOPBACK, free_port
from keyward_testkit.process import terminate

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WASM = REPO_ROOT / "target" / "keyward.wasm"
DEFAULT_NATIVE = REPO_ROOT / "target" / "keyward.so"
# the control plane and CLI (cargo build -p keyward; `make integration` sets KEYWARD_BIN)
KEYWARD_BIN = Path(os.environ.get("KEYWARD_BIN", str(REPO_ROOT / "target" / "debug" / "keyward")))
HTTP_TIMEOUT = 5.0
READY_TIMEOUT = 30.0

# The echo upstream must accept the same large headers as Envoy (max_request_headers_kb: 96),
# otherwise a large header that Envoy legitimately forwards would be refused by Python's parser
# (65536 bytes per line by default). Only affects this test process.
http.client._MAXLINE = 256 * 1024  # type: ignore[attr-defined]

HeaderValue = Union[str, bytes]
HeaderList = Sequence[tuple[str, HeaderValue]]


def wasm_path() -> Path:
    return Path(os.environ.get("KEYWARD_WASM", str(DEFAULT_WASM)))


def native_path() -> Path:
    """The native build (an Envoy dynamic module, `make native`)."""
    return Path(os.environ.get("KEYWARD_NATIVE", str(DEFAULT_NATIVE)))


HOSTS = ("wasm", "native")


def default_host() -> str:
    """The build the suite runs against: KEYWARD_HOST=native runs it on the native build (the
    Envoy dynamic module), anything else is an error; the Wasm build by default. Every Envoy the
    harness starts without naming a host uses this one."""
    host = os.environ.get("KEYWARD_HOST", "wasm")
    if host not in HOSTS:
        raise ValueError(f"KEYWARD_HOST={host!r}: expected one of {HOSTS}")
    return host


def render_build_args(wasm: Optional[Path] = None) -> list[str]:
    """The `keyward render envoy` arguments that pick the build under test (default_host)."""
    if default_host() == "native":
        return ["--host", "native"]
    return ["--wasm", str(wasm or wasm_path())]


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex


# --------------------------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------------------------


class Headers:
    """Lookup in a list of (lower-case name, value) pairs, which keeps duplicates and order."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> Optional[str]:
        found = self.header_all(name)
        return found[0] if found else None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


@dataclass
class Response(Headers):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    request_id: Optional[str] = None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def raw_text(self) -> str:
        """Status, headers and body as one string, for "never contains X" checks."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.status}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"

    def __repr__(self) -> str:  # shown by pytest on failure
        return f"Response(status={self.status}, headers={self.headers!r}, body={self.body[:2000]!r})"


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: HeaderList = (),
    body: Optional[bytes] = None,
    timeout: float = HTTP_TIMEOUT,
    request_id: Optional[str] = None,
    host: str = LOOPBACK,
) -> Response:
    """Send one request on a fresh connection.

    `headers` is a list so that duplicates and raw byte values (non-ASCII) can be sent as is.
    An `x-request-id` is added unless given (pass request_id="" to send none).
    """
    hdrs = list(headers)
    names = {k.lower() for k, _ in hdrs}
    if request_id is None and "x-request-id" not in names:
        request_id = new_request_id()
    if request_id and "x-request-id" not in names:
        hdrs.append(("x-request-id", request_id))
    if "host" not in names:
        hdrs.insert(0, ("host", "api.local"))
    if body is not None and "content-length" not in names:
        hdrs.append(("content-length", str(len(body))))

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in hdrs:
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(
            status=resp.status,
            headers=[(k.lower(), v) for k, v in resp.getheaders()],
            body=data,
            request_id=request_id,
        )
    finally:
        conn.close()


def raw_request(port: int, payload: bytes, timeout: float = HTTP_TIMEOUT) -> bytes:
    """Send raw bytes and return everything read until the peer closes (or times out)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# --------------------------------------------------------------------------------------------
# Echo upstream
# --------------------------------------------------------------------------------------------


@dataclass
class Recorded(Headers):
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def text(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.method} {self.path}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keyward-echo"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _handle(self):
        rec = Recorded(
            method=self.command,
            path=self.path,
            headers=[(k.lower(), v) for k, v in self.headers.items()],
            body=read_body(self),
        )
        self.server.owner.record(rec)  # type: ignore[attr-defined]
        send_json(self, {"method": rec.method, "path": rec.path, "headers": rec.headers})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class AlwaysLive(BaseHTTPRequestHandler):
    """Stands for a foreign server on a port we wanted, e.g. another Envoy's admin: answers every
    GET, /ready included, with 200 LIVE."""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        send_json(self, b"LIVE")


class EchoUpstream(RecordingHTTPServer):
    """HTTP/1.1 server on 127.0.0.1:<ephemeral> that records every request and answers 200 JSON."""

    def __init__(self, handler: Optional[type[BaseHTTPRequestHandler]] = None):
        """handler: another request handler (it calls `self.server.owner.record(...)`). Bursts of
        concurrent requests need a listen backlog above the default 5."""
        super().__init__(handler or _EchoHandler, backlog=128)

    def by_request_id(self, request_id: str) -> list[Recorded]:
        return [r for r in self.recorded() if r.header("x-request-id") == request_id]

    def one(self, request_id: str) -> Recorded:
        got = self.by_request_id(request_id)
        assert len(got) == 1, f"upstream received {len(got)} requests with x-request-id {request_id}"
        return got[0]


# --------------------------------------------------------------------------------------------
# Envoy bootstrap
# --------------------------------------------------------------------------------------------

# Envoy routes. Names are what the filter sees as `xds.route_name`.
DEFAULT_ROUTES = [
    {"name": "healthz", "prefix": "/healthz"},
    {"name": "chat", "prefix": "/v1/chat/"},
    # a second Envoy route carrying the same name: plugin routes matched by route_name apply here too
    {"name": "chat", "prefix": "/legacy/chat/"},
    {"name": "default", "prefix": "/"},
]


def wasm_filter(plugin_config: dict, wasm: Path) -> dict:
    # Pausing in on_http_request_headers keeps the headers from the upstream while the body is
    # read (Envoy >= 1.35; otherwise Envoy stops the body too).
    return _wasm_filter(wasm, plugin_config, hold_headers=True)


def keyward_filter(plugin_config: Union[dict, str], wasm: Optional[Path] = None, host: Optional[str] = None) -> dict:
    """The keyward HTTP filter of the build under test (`host`, default_host() by default); a
    str plugin_config is passed as is (e.g. to test text that is not JSON)."""
    if (host or default_host()) == "native":
        return native_filter(plugin_config)
    return wasm_filter(plugin_config, wasm or wasm_path())


def render_bootstrap(
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    plugin_config: Optional[Union[dict, str]] = None,
    wasm: Optional[Path] = None,
    routes: Iterable[dict] = DEFAULT_ROUTES,
    host: Optional[str] = None,
) -> dict:
    """Envoy bootstrap as a dict (written as JSON, which Envoy reads as YAML).

    plugin_config None: a plain proxy without the keyward filter (harness self-test).
    host: "wasm" (the proxy-wasm build) or "native" (the dynamic module; the Envoy process needs
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which `Envoy` sets).
    """
    http_filters = []
    if plugin_config is not None:
        http_filters.append(keyward_filter(plugin_config, wasm, host))
    http_filters.append(router_filter())
    envoy_routes = [
        {"name": r["name"], "match": {"prefix": r["prefix"]}, "route": {"cluster": "upstream", "timeout": "5s"}}
        for r in routes
    ]
    connection_manager = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "max_request_headers_kb": 96,
        # keep the client's x-request-id so tests can correlate
        "preserve_external_request_id": True,
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": envoy_routes}],
        },
        "http_filters": http_filters,
    }
    return static_bootstrap(
        admin_port, [http_listener("main", listen_port, connection_manager)], [static_cluster("upstream", upstream_port)]
    )


# --------------------------------------------------------------------------------------------
# Envoy process
# --------------------------------------------------------------------------------------------

RUNNING: list["Envoy"] = []  # for printing logs of live instances when a test fails


class EnvoyStartError(RuntimeError):
    pass


class Envoy:
    """One Envoy process with its own echo upstream, ports, base id and log file."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        plugin_config: Optional[dict] = None,
        wasm: Optional[Path] = None,
        concurrency: int = 1,
        routes: Iterable[dict] = DEFAULT_ROUTES,
        upstream: Optional[EchoUpstream] = None,
        render=None,
        host: Optional[str] = None,
        native: Optional[Path] = None,
    ):
        """render: optional callable (listen_port, admin_port, upstream_port) -> YAML text, used
        instead of render_bootstrap (e.g. the rendered demo config)."""
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.plugin_config = plugin_config
        self.wasm = wasm
        self.concurrency = concurrency
        self.routes = list(routes)
        self._own_upstream = upstream is None
        self.upstream = upstream or EchoUpstream()
        self.port = 0
        self.admin_port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.render = render
        self.host = host or default_host()
        self.native = native
        self.config_path = self.workdir / (f"{name}.yaml" if render else f"{name}.json")
        self.log_path = self.workdir / f"{name}.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Envoy":
        env = dict(os.environ)
        if self.host == "native":
            module = self.native or native_path()
            if not module.is_file():
                raise EnvoyStartError(f"keyward native module not found at {module}: build it first (make native)")
            env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_search_dir(self.workdir / self.name, module))
        elif self.plugin_config is not None or self.render is not None:
            wasm = self.wasm or wasm_path()
            if not wasm.is_file():
                raise EnvoyStartError(
                    f"keyward wasm not found at {wasm}: build it first "
                    "(make wasm, or set KEYWARD_WASM)"
                )
        if self._own_upstream:
            self.upstream.start()
        last_error = ""
        for _attempt in range(3):  # a freshly picked port may be taken by someone else: retry
            self.port, self.admin_port = free_port(), free_port()
            if self.render is not None:
                self.config_path.write_text(self.render(self.port, self.admin_port, self.upstream.port))
            else:
                cfg = render_bootstrap(
                    self.port, self.admin_port, self.upstream.port, self.plugin_config, self.wasm, self.routes, self.host
                )
                self.config_path.write_text(json.dumps(cfg, indent=1))
            try:
                self._spawn(env)
                RUNNING.append(self)
                return self
            except EnvoyStartError as e:
                last_error = str(e)
                if "address already in use" not in last_error.lower():
                    break
        if self._own_upstream:
            self.upstream.stop()
        raise EnvoyStartError(last_error)

    def _spawn(self, env: dict) -> None:
        # the admin port doubles as the base id: distinct per concurrently running instance
        launch = EnvoyLaunch(
            self.config_path, self.admin_port, concurrency=self.concurrency,
            extra=["--component-log-level", "wasm:debug,dynamic_modules:debug"],
        )
        cmd = launch.command()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"=== {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
        )
        try:
            launch.wait_ready(self.proc, READY_TIMEOUT)
        except EnvoyExited as e:
            self._log_file.close()
            raise EnvoyStartError(
                f"envoy {self.name} exited with {e.returncode} during start-up:\n{self.log_problems()}"
            ) from None
        except EnvoyNotReady:
            self._terminate()
            raise EnvoyStartError(
                f"envoy {self.name} not ready after {READY_TIMEOUT}s:\n{self.log_problems()}"
            ) from None

    def _terminate(self) -> None:
        terminate(self.proc)
        if self.proc is not None and not self._log_file.closed:
            self._log_file.close()

    def stop(self) -> None:
        self._terminate()
        if self in RUNNING:
            RUNNING.remove(self)
        if self._own_upstream:
            self.upstream.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- observation -------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 150) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_problems(self, tail: int = 8) -> str:
        """Warnings, errors and the last few lines: what explains a failed start."""
        all_lines = self.log().splitlines()
        bad = [ln for ln in all_lines if any(t in ln for t in ("[warning]", "[error]", "[critical]"))]
        rest = [ln for ln in all_lines[-tail:] if ln not in bad]
        return "\n".join(bad + rest) + f"\n(full log: {self.log_path})"

    def wait_for_log(self, predicate, timeout: float = 5.0) -> str:
        """Poll the log until predicate(text) is true; return the text (or the last one read)."""
        deadline = time.monotonic() + timeout
        text = self.log()
        while time.monotonic() < deadline:
            if predicate(text):
                return text
            time.sleep(0.05)
            text = self.log()
        return text

    def admin(self, path: str) -> Response:
        return http_request(self.admin_port, "GET", path, request_id="")

    def stats(self, filter_regex: str = "keyward") -> dict[str, int]:
        resp = self.admin(f"/stats?filter={filter_regex}")
        assert resp.status == 200, resp
        out: dict[str, int] = {}
        for line in resp.body.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                try:
                    out[name.strip()] = int(value.strip())
                except ValueError:
                    pass  # histograms
        return out

    def metric(self, name: str) -> Optional[int]:
        """Value of a custom metric, whatever prefix Envoy adds (e.g. `wasmcustom.`)."""
        for k, v in self.stats().items():
            if k == name or k.endswith("." + name):
                return v
        return None

    def wait_metric_above(self, name: str, floor: int = 0, limit_s: float = 10.0) -> int:
        """The metric's value once it exceeds `floor`; fails the test (with the log) after limit_s."""
        deadline = time.monotonic() + limit_s
        while True:
            value = self.metric(name) or 0
            if value > floor:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {value} (wanted > {floor}) for {limit_s}s\n{self.log_tail(30)}")
            time.sleep(0.1)

    # -- requests ----------------------------------------------------------------------------

    def request(self, method: str = "GET", path: str = "/", headers: HeaderList = (), **kw) -> Response:
        return http_request(self.port, method, path, headers, **kw)


def envoy_validate(config_path: Path, timeout: float = 60.0, host: Optional[str] = None) -> subprocess.CompletedProcess:
    """`envoy --mode validate`: loads the filter (Wasm: runs on_configure; native: creates the
    filter configuration, which compiles the plugin configuration)."""
    env = dict(os.environ)
    if (host or default_host()) == "native":
        search = native_search_dir(Path(config_path).parent / (Path(config_path).stem + "-validate"), native_path())
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(search)
    return subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config_path), "-l", "info"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
