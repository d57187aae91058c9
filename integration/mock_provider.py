"""A mock AI provider for the metering tests: OpenAI chat completions, OpenAI Responses and
Anthropic Messages, as JSON or as server-sent event streams, always sent in many small chunks.

Usage is chosen by the test through request headers, and every response's reported usage is
recorded so the test can compare what keyward charged with what the provider said:

- `x-mock-input-tokens` (default 1000), `x-mock-output-tokens` (default: the request's max
  tokens, else 100), `x-mock-cached-tokens` (default 0);
- `x-mock-cut-after: N`: close the connection after N body chunks (a stream cut mid-way);
- `x-mock-chunk-delay-ms` (default 2): pause between chunks;
- `x-mock-status`: answer with this status and an error body (no usage).

OpenAI chat streams carry a usage chunk only when the request asked for it with
`stream_options.include_usage`, as the real API does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Optional

from keyward_testkit.http_servers import RecordingHTTPServer, read_body, send_json

# Every header a provider reads its key from (keyward's `provider` routes set one of them).
PROVIDER_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
CHUNK_BYTES = 23  # small and odd, so chunk boundaries fall inside JSON tokens


@dataclass
class Served:
    request_id: str
    path: str
    stream: bool
    key_id: Optional[str]
    # What the provider reported (None when the response carried no usage).
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cached_tokens: int = 0
    cut: bool = False
    body: dict = field(default_factory=dict)
    # The provider credential headers the request carried, by name (what keyward injected).
    credentials: dict = field(default_factory=dict)


def _usage_openai_chat(inp: int, out: int, cached: int) -> dict:
    return {
        "prompt_tokens": inp + cached,
        "completion_tokens": out,
        "total_tokens": inp + cached + out,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _usage_openai_responses(inp: int, out: int, cached: int) -> dict:
    return {
        "input_tokens": inp + cached,
        "output_tokens": out,
        "total_tokens": inp + cached + out,
        "input_tokens_details": {"cached_tokens": cached},
    }


def _usage_anthropic(inp: int, out: int, cached: int) -> dict:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _record(self, served: Served) -> None:
        self.server.owner.record(served)  # type: ignore[attr-defined]

    def do_GET(self):  # noqa: N802
        send_json(self, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        raw = read_body(self)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        h = self.headers
        model = body.get("model", "unknown")
        stream = bool(body.get("stream"))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
        inp = int(h.get("x-mock-input-tokens", 1000))
        out = int(h.get("x-mock-output-tokens", max_tokens or 100))
        cached = int(h.get("x-mock-cached-tokens", 0))
        cut_after = int(h["x-mock-cut-after"]) if "x-mock-cut-after" in h else None
        delay = int(h.get("x-mock-chunk-delay-ms", 2)) / 1000
        record = Served(
            request_id=h.get("x-request-id", ""), path=self.path, stream=stream,
            key_id=h.get("x-keyward-key-id"), body=body,
            credentials={name: h.get_all(name) for name in PROVIDER_CREDENTIAL_HEADERS if h.get_all(name)},
        )
        if "x-mock-status" in h:
            send_json(self, {"error": {"message": "mock failure", "type": "server_error"}}, int(h["x-mock-status"]))
            self._record(record)
            return

        if self.path.startswith("/v1/messages"):
            pieces, reports = self._anthropic(model, stream, inp, out, cached)
        elif self.path.startswith("/v1/responses"):
            pieces, reports = self._responses(model, stream, inp, out, cached)
        else:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            pieces, reports = self._chat(model, stream, include_usage, inp, out, cached)
        if reports:
            record.input_tokens, record.output_tokens, record.cached_tokens = inp, out, cached

        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        data = b"".join(pieces)
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        for index, chunk in enumerate(chunks):
            if cut_after is not None and index >= cut_after:
                record.cut = True
                record.input_tokens = record.output_tokens = None
                self._record(record)
                self.wfile.flush()
                self.close_connection = True
                # An abrupt end: no terminating chunk.
                self.connection.shutdown(2)
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if delay:
                time.sleep(delay)
        # Recorded before the terminating chunk: a client that has read the whole response
        # then finds this request in `recorded()`, never racing the handler thread.
        self._record(record)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    @staticmethod
    def _sse(obj, event: Optional[str] = None) -> bytes:
        prefix = f"event: {event}\n" if event else ""
        return (prefix + "data: " + json.dumps(obj) + "\n\n").encode()

    def _chat(self, model, stream, include_usage, inp, out, cached):
        usage = _usage_openai_chat(inp, out, cached)
        if not stream:
            doc = {
                "id": "chatcmpl-mock", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "usage decoy: \"usage\": {\"prompt_tokens\": 999999}"}, "finish_reason": "stop"}],
                "usage": usage,
            }
            return [json.dumps(doc).encode()], True
        pieces = [
            self._sse({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": f"word{i} "}}]})
            for i in range(12)
        ]
        if include_usage:
            pieces.append(self._sse({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}))
        pieces.append(b"data: [DONE]\n\n")
        return pieces, include_usage

    def _responses(self, model, stream, inp, out, cached):
        usage = _usage_openai_responses(inp, out, cached)
        response = {"id": "resp-mock", "object": "response", "model": model, "output": [], "usage": usage}
        if not stream:
            return [json.dumps(response).encode()], True
        pieces = [self._sse({"type": "response.output_text.delta", "delta": f"w{i} "}, "response.output_text.delta") for i in range(12)]
        pieces.append(self._sse({"type": "response.completed", "response": response}, "response.completed"))
        return pieces, True

    def _anthropic(self, model, stream, inp, out, cached):
        if not stream:
            doc = {"id": "msg-mock", "type": "message", "model": model, "content": [{"type": "text", "text": "hi"}],
                   "usage": _usage_anthropic(inp, out, cached)}
            return [json.dumps(doc).encode()], True
        start_usage = _usage_anthropic(inp, 1, cached)
        pieces = [self._sse({"type": "message_start", "message": {"id": "m", "model": model, "usage": start_usage}}, "message_start")]
        pieces += [
            self._sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"w{i} "}}, "content_block_delta")
            for i in range(12)
        ]
        pieces.append(self._sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": out}}, "message_delta"))
        pieces.append(self._sse({"type": "message_stop"}, "message_stop"))
        return pieces, True


class MockProvider(RecordingHTTPServer):
    """Has the `port`/`start`/`stop` of the harness's echo upstream, so an Envoy can use it;
    `recorded()` lists what it served, `clear()` forgets it."""

    def __init__(self, port: int = 0):
        # Twenty concurrent streams per test: the default backlog of 5 drops connections.
        super().__init__(_Handler, port, backlog=128)

    def served(self) -> list[Served]:
        return self.recorded()
