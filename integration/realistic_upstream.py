"""An upstream that reads requests the way common servers do, for the bypass battery.

keyward decides on its own canonical view of a request. A bypass happens when the server behind
it reads the same bytes differently: it decodes `%2F`, drops `;` parameters, merges slashes,
resolves `..`, folds case, takes a header spelt with `_` for the one spelt with `-`, or believes
a header that names another host or path. This server records every request it receives with
every such reading, so a test can ask whether any reading reaches something keyward did not
check.

Readings of the path (each applied to the request-target as received, query removed):

- `merged`: slashes merged and dot segments resolved, nothing decoded (routers that clean paths);
- `decoded`: percent-decoded once (`%2F` and `%5C` included, `\\` read as `/`), then merged and
  resolved (file servers, nginx, IIS);
- `tomcat`: `;parameters` cut from each segment, then decoded and resolved (Tomcat, Jetty);
- `decoded_then_cut`: decoded first, `;parameters` cut after (frameworks that decode the whole
  path before they look for `;`, the reason Spring's firewall refuses `%3B`);
- `override`: the path named by `X-Original-URL` or `X-Rewrite-URL`, for servers that honour
  them (IIS URL Rewrite, older Symfony), read as `decoded`;
- with `fold_case`, every reading is also lower-cased (IIS, case-insensitive file systems).

`..` above the root is clamped at `/`, the permissive choice some servers make.

Readings of the host: the `Host` header (each value, if repeated), and `X-Forwarded-Host` and
`Forwarded: host=` for frameworks that trust them; each lower-cased, without port or trailing
dot. Headers are also read CGI-style (`HTTP_X_NAME`: case folded, `_` and `-` alike), every
value kept in order, since one server takes the first and another the last.

It is also the AI provider for `/v1/chat/...` (any reading): OpenAI chat completions, usage
consistent with the request (input tokens from the message text, output tokens from the largest
output limit the request states times its `n`, at most `MODEL_MAX_OUTPUT` per choice, as a
provider honours its limits). It compresses the answer with gzip when the request's
`accept-encoding` allows it, so keyward's `identity` rewrite is visible. `x-upstream-mode`
(a test control header) makes it misbehave: `gzip` compresses regardless, `negative`,
`fraction`, `string` and `huge` report invalid usage.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional

import harness

MODEL_MAX_OUTPUT = 16_384
DEFAULT_OUTPUT = 100  # a provider's answer when the request states no limit
OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
CHOICE_FIELDS = ("n", "best_of")
OVERRIDE_PATH_HEADERS = ("x-original-url", "x-rewrite-url")

# --------------------------------------------------------------------------------------------
# readings of a path


def percent_decode(text: str) -> str:
    """Every `%XX` decoded once, as bytes (latin-1), so `%2F` becomes `/`."""
    return urllib.parse.unquote_to_bytes(text).decode("latin-1")


def cut_parameters(path: str) -> str:
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def merge_and_resolve(path: str) -> str:
    """Slashes merged, `.` and `..` resolved (clamped at the root), a trailing slash kept."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    trailing = path.split("/")[-1] in ("", ".", "..") and out
    return "/" + "/".join(out) + ("/" if trailing else "")


def split_target(target: str) -> tuple[str, str]:
    """The path and query of a request-target (origin or absolute form)."""
    if "://" in target.split("?", 1)[0]:
        after = target.split("://", 1)[1]
        target = "/" + after.split("/", 1)[1] if "/" in after else "/"
    path, _, query = target.partition("?")
    return path, query


def path_readings(target: str, override: Optional[str], fold_case: bool) -> dict[str, str]:
    path, _ = split_target(target)
    readings = {
        "merged": merge_and_resolve(path),
        "decoded": merge_and_resolve(percent_decode(path).replace("\\", "/")),
        "tomcat": merge_and_resolve(percent_decode(cut_parameters(path)).replace("\\", "/")),
        "decoded_then_cut": merge_and_resolve(cut_parameters(percent_decode(path).replace("\\", "/"))),
    }
    if override:
        readings["override"] = merge_and_resolve(percent_decode(split_target(override)[0]).replace("\\", "/"))
    if fold_case:
        readings.update({f"{name}+folded": value.lower() for name, value in list(readings.items())})
    return readings


def canonical_host(value: str) -> str:
    host = value.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    host = host.rsplit("@", 1)[-1]
    host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_readings(cgi: dict[str, list[str]]) -> set[str]:
    hosts = {canonical_host(v) for v in cgi.get("HTTP_HOST", [])}
    hosts |= {canonical_host(v.split(",")[0]) for v in cgi.get("HTTP_X_FORWARDED_HOST", [])}
    for value in cgi.get("HTTP_FORWARDED", []):
        for match in re.finditer(r"host=\"?([^;,\"]+)", value, re.IGNORECASE):
            hosts.add(canonical_host(match.group(1)))
    return hosts


def accepts_gzip(values: list[str]) -> bool:
    """Whether `accept-encoding` allows gzip (named, or `*`, with a q above 0)."""
    for item in ",".join(values).lower().split(","):
        coding, _, params = item.strip().partition(";")
        q = re.search(r"q=([0-9.]+)", params)
        if coding.strip() in ("gzip", "*") and (q is None or float(q.group(1)) > 0):
            return True
    return False


def cgi_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def query_names(query: str) -> list[str]:
    """Parameter names as a server reads them: percent-decoded, `+` a space."""
    names = []
    for pair in query.split("&"):
        if pair:
            names.append(urllib.parse.unquote_plus(pair.split("=", 1)[0]))
    return names


# --------------------------------------------------------------------------------------------
# the provider


def lenient_count(value) -> Optional[int]:
    """A token count as a lenient provider reads it: numbers and numeric strings, rounded up;
    negative, infinite or other values are no count."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value < 0 or not math.isfinite(value):
        return None
    return math.ceil(value)


def _pairs_hook(pairs):
    """Duplicate keys kept: `{"__pairs__": [(k, v), ...]}` next to the last-wins dict."""
    out = dict(pairs)
    out["__pairs__"] = pairs
    return out


def request_limits(body: bytes) -> tuple[Optional[str], list[str], Optional[int], int]:
    """(last model, every model, largest output limit, choices) as a provider that takes the
    largest of every limit it knows would read them."""
    try:
        doc = json.loads(body or b"{}", object_pairs_hook=_pairs_hook)
    except ValueError:
        return None, [], None, 1
    if not isinstance(doc, dict):
        return None, [], None, 1
    pairs = doc.get("__pairs__", [])
    models = [v for k, v in pairs if k == "model" and isinstance(v, str)]
    limits = [lenient_count(v) for k, v in pairs if k in OUTPUT_LIMIT_FIELDS]
    choices = [lenient_count(v) for k, v in pairs if k in CHOICE_FIELDS]
    for key, value in pairs:
        if key == "generationConfig" and isinstance(value, dict):
            limits += [lenient_count(v) for k, v in value.get("__pairs__", []) if k == "maxOutputTokens"]
            choices += [lenient_count(v) for k, v in value.get("__pairs__", []) if k == "candidateCount"]
    limit = max((v for v in limits if v is not None), default=None)
    n = max([v for v in choices if v is not None] + [1])
    return (models[-1] if models else None), models, limit, max(n, 1)


def message_text(body: bytes) -> str:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return ""
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list):
        return ""
    return "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int
    valid: bool = True


def usage_for(body: bytes) -> Usage:
    _model, _models, limit, n = request_limits(body)
    per_choice = DEFAULT_OUTPUT if limit is None else min(limit, MODEL_MAX_OUTPUT)
    return Usage(input_tokens=math.ceil(len(message_text(body)) / 4), output_tokens=per_choice * n)


# --------------------------------------------------------------------------------------------
# the server


@dataclass
class Hit:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as received, names as written on the wire
    body: bytes
    paths: dict[str, str]
    hosts: set[str]
    query: str
    cgi: dict[str, list[str]] = field(default_factory=dict)
    usage: Optional[Usage] = None  # what the provider reported (chat hits)
    compressed: bool = False
    mode: str = ""

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str) -> Optional[str]:
        values = self.header_all(name)
        return values[0] if values else None

    def text(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.method} {self.target}\n{head}\n\n{self.body.decode('latin-1')}"

    def summary(self) -> str:
        return f"{self.method} {self.target!r} readings={self.paths} hosts={sorted(self.hosts)} headers={self.headers}"


class _Handler(harness._EchoHandler):  # the echo handler's body reading, another answer
    server_version = "realistic-upstream"

    def _handle(self):
        body = harness.read_body(self)
        headers = list(self.headers.items())
        cgi: dict[str, list[str]] = {}
        for name, value in headers:
            cgi.setdefault(cgi_name(name), []).append(value)
        override = next((cgi[cgi_name(h)][-1] for h in OVERRIDE_PATH_HEADERS if cgi_name(h) in cgi), None)
        owner = self.server.owner
        hit = Hit(
            method=self.command,
            target=self.path,
            headers=headers,
            body=body,
            paths=path_readings(self.path, override, owner.fold_case),
            hosts=host_readings(cgi),
            query=split_target(self.path)[1],
            cgi=cgi,
            mode=(cgi.get("HTTP_X_UPSTREAM_MODE") or [""])[-1],
        )
        chat = self.command == "POST" and any(
            p.lower().startswith("/v1/chat/") or p.lower() == "/v1/chat" for p in hit.paths.values()
        )
        if chat:
            payload, content_type = self._chat(hit)
        else:
            payload = json.dumps({"method": hit.method, "target": hit.target}).encode()
            content_type = "application/json"
        if chat and (hit.mode == "gzip" or accepts_gzip(cgi.get("HTTP_ACCEPT_ENCODING", []))):
            payload = gzip.compress(payload)
            hit.compressed = True
        owner.record(hit)
        if owner.delay_s and chat:
            time.sleep(owner.delay_s)
        self.send_response(200)
        self.send_header("content-type", content_type)
        if hit.compressed:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _chat(self, hit: Hit) -> tuple[bytes, str]:
        model, _models, _limit, _n = request_limits(hit.body)
        usage = usage_for(hit.body)
        hit.usage = usage
        numbers: dict = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
        if hit.mode == "negative":
            numbers["completion_tokens"] = -usage.output_tokens
        elif hit.mode == "fraction":
            numbers["completion_tokens"] = usage.output_tokens + 0.5
        elif hit.mode == "string":
            numbers["completion_tokens"] = str(usage.output_tokens)
        elif hit.mode == "huge":
            numbers["completion_tokens"] = 10**20
        if hit.mode in ("negative", "fraction", "string", "huge"):
            numbers["total_tokens"] = numbers["completion_tokens"]
            usage.valid = False
        try:
            stream = bool(json.loads(hit.body or b"{}").get("stream"))
        except (ValueError, AttributeError):
            stream = False
        if stream:
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
            final = {"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": numbers}
            text = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(final)}\n\ndata: [DONE]\n\n"
            return text.encode(), "text/event-stream"
        doc = {
            "id": "chatcmpl-battery", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": numbers,
        }
        return json.dumps(doc).encode(), "application/json"

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class RealisticUpstream(harness.EchoUpstream):
    """The harness's upstream (same `port`/`start`/`stop`, so an Envoy can use it) with the
    realistic handler above; `recorded()` gives the `Hit`s."""

    def __init__(self, fold_case: bool = False, delay_s: float = 0.0):
        self.fold_case = fold_case
        self.delay_s = delay_s
        super().__init__(handler=_Handler)

    def by_request_id(self, request_id: str) -> list[Hit]:
        return [h for h in self.recorded() if request_id in h.cgi.get("HTTP_X_REQUEST_ID", [])]

