"""A fast fake LLM upstream (OpenAI + Anthropic wire formats) for end-to-end tests and benchmarks.

Run it as a script::

    python tests/fake_upstream.py [--host 127.0.0.1] [--port 0] [--delay-ms 0]
        [--stream-chunks 5] [--chunk-gap-ms 0] [--slow-seconds 5]

Once listening it prints exactly one line ``READY <port>`` to stdout; SIGTERM/SIGINT stop it.
From Python, ``with run_fake_upstream(delay_ms=0, ...) as base_url:`` starts it as a subprocess
and yields ``"http://127.0.0.1:<port>"``.

It is a hand-written HTTP/1.1 server on ``asyncio.Protocol`` (uvloop when available): keep-alive,
pipelining, Content-Length and chunked request bodies, ``Expect: 100-continue``. Each answer is a
precomputed *plan* (wire bytes, pauses, and "close the connection" steps); plans that do not depend
on the request beyond (api, model, stream, include_usage, keep-alive) are cached, so the zero-delay
path is: parse the head, ``json.loads`` the body, one dict lookup, one ``write``.

Endpoints: ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic),
``GET /v1/models``; anything else is a 404 with an OpenAI error body; a missing or invalid JSON
body (or no string ``model``) is a 400. The request's ``model`` picks the behaviour:

=================  ================================================================================
model              behaviour (both APIs unless noted)
=================  ================================================================================
(anything else)    normal answer ``tok0 tok1 ...`` (N = --stream-chunks pieces) after --delay-ms;
                   streaming sends N content events --chunk-gap-ms apart; usage as OpenAI/Anthropic
echo               the content is the JSON string ``{"body": <request JSON>, "headers": {...}}``
                   (header names lower-cased); streamed as a single content event
slow               waits --slow-seconds, then answers normally
slow-stream        streams 100 content events 100 ms apart (non-streaming: waits 10 s, 100 tokens)
fail-500           500 server_error / api_error
fail-429           429 with ``retry-after: 1`` (rate_limit_exceeded / rate_limit_error)
fail-400           400 invalid_request_error
fail-401           401 ("Incorrect API key provided: sk-fake***" / authentication_error)
overloaded         Anthropic only: 529 overloaded_error
drop-mid-stream    streaming: role/start events and 2 content events, then the TCP connection is
                   closed with no terminator; non-streaming: closed without any response
garbage            200, ``content-type: application/json``, body ``not json``
tool-use           Anthropic only: a text block and a ``get_weather`` tool_use block, stop_reason
                   tool_use; streamed as a text delta then two ``input_json_delta`` fragments
stream-error       Anthropic streaming only: after 2 text deltas an ``error`` event
                   (overloaded_error), then the stream ends and the connection closes
=================  ================================================================================

Usage: OpenAI ``prompt_tokens`` 11, ``cached_tokens`` 3, ``reasoning_tokens`` 2,
``completion_tokens`` N; Anthropic ``input_tokens`` 11, ``cache_creation_input_tokens`` 4,
``cache_read_input_tokens`` 3, ``output_tokens`` N. OpenAI streams carry a usage chunk only when
``stream_options.include_usage`` is true. Responses carry ``x-request-id`` (OpenAI) or
``request-id`` (Anthropic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Step = bytes | float | None  # wire bytes to write, a pause in seconds, or None = close connection
Plan = list[Step]
Headers = list[tuple[str, str]]

MAX_HEAD = 64 * 1024
MAX_CACHE = 1024
PROMPT_TOKENS = 11
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 529: "Overloaded"}
_SSE: Headers = [("content-type", "text/event-stream; charset=utf-8"),
                 ("transfer-encoding", "chunked"), ("cache-control", "no-cache")]
_LAST_CHUNK = b"0\r\n\r\n"
_MODELS = {"object": "list", "data": [
    {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}
    for m in ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5")]}


def _oa_err(message: str, type_: str, param: str | None = None, code: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _an_err(type_: str, message: str) -> Any:
    return {"type": "error", "error": {"type": type_, "message": message}}


_RETRY: Headers = [("retry-after", "1")]
_OPENAI_ERRORS: dict[str, tuple[int, Any, Headers]] = {
    "fail-500": (500, _oa_err("fake upstream failure", "server_error"), []),
    "fail-429": (429, _oa_err("Rate limit reached for fake upstream", "requests",
                              code="rate_limit_exceeded"), _RETRY),
    "fail-400": (400, _oa_err("fake bad request", "invalid_request_error", "messages"), []),
    "fail-401": (401, _oa_err("Incorrect API key provided: sk-fake***. You can find your API key"
                              " at https://platform.openai.com/account/api-keys.",
                              "invalid_request_error", code="invalid_api_key"), []),
}
_ANTHROPIC_ERRORS: dict[str, tuple[int, Any, Headers]] = {
    "fail-500": (500, _an_err("api_error", "fake upstream failure"), []),
    "fail-429": (429, _an_err("rate_limit_error", "fake rate limit exceeded"), _RETRY),
    "fail-400": (400, _an_err("invalid_request_error", "fake bad request"), []),
    "fail-401": (401, _an_err("authentication_error", "invalid x-api-key"), []),
    "overloaded": (529, _an_err("overloaded_error", "Overloaded"), []),
}


@dataclass(frozen=True)
class Options:
    delay_ms: float = 0.0
    stream_chunks: int = 5
    chunk_gap_ms: float = 0.0
    slow_seconds: float = 5.0


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class BadRequest(Exception):
    pass


# --------------------------------------------------------------------------- wire helpers


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _head(status: int, headers: Headers, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _full(status: int, body: Any, keep: bool, headers: Headers) -> bytes:
    data = body if isinstance(body, bytes) else _dumps(body)
    framing = [("content-type", "application/json"), ("content-length", str(len(data)))]
    return _head(status, framing + headers, keep) + data


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _oa_event(obj: Any) -> bytes:
    return _chunk(b"data: " + _dumps(obj) + b"\n\n")


def _an_event(obj: dict[str, Any]) -> bytes:
    return _chunk(b"event: " + obj["type"].encode() + b"\ndata: " + _dumps(obj) + b"\n\n")


def _compact(plan: Plan) -> Plan:
    """Merge adjacent byte steps and drop zero pauses so each burst is one ``write``."""
    out: Plan = []
    for step in plan:
        if isinstance(step, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += step
        elif step is None or isinstance(step, bytes) or step > 0:
            out.append(step)
    return out


# --------------------------------------------------------------------------- behaviours


@dataclass(slots=True)
class Call:
    """What a plan builder needs to know about one API request."""

    model: str
    stream: bool
    include_usage: bool
    keep: bool
    texts: list[str]  # content pieces
    tokens: int  # completion/output tokens reported in usage
    pre: Plan  # pauses before the response starts
    gap: float  # pause between content pieces (seconds)


def _openai_plan(c: Call) -> Plan:
    extra: Headers = [("x-request-id", "req_fake")]
    created = int(time.time())
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": c.tokens,
             "total_tokens": PROMPT_TOKENS + c.tokens,
             "prompt_tokens_details": {"cached_tokens": 3},
             "completion_tokens_details": {"reasoning_tokens": 2}}
    if not c.stream:
        message = {"role": "assistant", "content": "".join(c.texts), "refusal": None}
        return [*c.pre, _full(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
            "model": c.model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                           "finish_reason": "stop"}],
            "usage": usage}, c.keep, extra)]

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
            "model": c.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}
        if c.include_usage:
            chunk["usage"] = None
        return _oa_event(chunk)

    plan: Plan = [*c.pre, _head(200, _SSE + extra, c.keep),
                  event({"role": "assistant", "content": "", "refusal": None})]
    for i, text in enumerate(c.texts):
        plan += [c.gap if i else 0.0, event({"content": text})]
    if c.model == "drop-mid-stream":
        return [*plan, None]
    plan.append(event({}, "stop"))
    if c.include_usage:
        plan.append(_oa_event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                               "created": created, "model": c.model, "choices": [],
                               "usage": usage}))
    return [*plan, _chunk(b"data: [DONE]\n\n"), _LAST_CHUNK]


def _anthropic_plan(c: Call) -> Plan:
    extra: Headers = [("request-id", "req_fake")]
    tool = c.model == "tool-use"
    texts = ["Let me check."] if tool else c.texts
    tool_block = {"type": "tool_use", "id": "toolu_fake1", "name": "get_weather"}
    stop_reason = "tool_use" if tool else "end_turn"
    usage = {"input_tokens": PROMPT_TOKENS, "output_tokens": c.tokens,
             "cache_creation_input_tokens": 4, "cache_read_input_tokens": 3}
    message: dict[str, Any] = {"id": "msg_fake", "type": "message", "role": "assistant",
                               "model": c.model}
    if not c.stream:
        content: list[Any] = [{"type": "text", "text": "".join(texts)}]
        if tool:
            content.append({**tool_block, "input": {"city": "Paris"}})
        return [*c.pre, _full(200, {**message, "content": content, "stop_reason": stop_reason,
                                    "stop_sequence": None, "usage": usage}, c.keep, extra)]

    failing = c.model == "stream-error"
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    plan: Plan = [*c.pre, _head(200, _SSE + extra, c.keep and not failing),
                  _an_event({"type": "message_start", "message": start}),
                  _an_event({"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
                  _an_event({"type": "ping"})]
    for i, text in enumerate(texts[:2] if failing else texts):
        plan += [c.gap if i else 0.0, _an_event({"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": text}})]
    if c.model == "drop-mid-stream":
        return [*plan, None]
    if failing:
        error = _an_event(_an_err("overloaded_error", "Overloaded"))
        return [*plan, error, _LAST_CHUNK, None]
    plan.append(_an_event({"type": "content_block_stop", "index": 0}))
    if tool:
        plan.append(_an_event({"type": "content_block_start", "index": 1,
                               "content_block": {**tool_block, "input": {}}}))
        for fragment in ('{"city": ', '"Paris"}'):
            plan.append(_an_event({"type": "content_block_delta", "index": 1, "delta": {
                "type": "input_json_delta", "partial_json": fragment}}))
        plan.append(_an_event({"type": "content_block_stop", "index": 1}))
    return [*plan,
            _an_event({"type": "message_delta", "usage": {"output_tokens": c.tokens},
                       "delta": {"stop_reason": stop_reason, "stop_sequence": None}}),
            _an_event({"type": "message_stop"}), _LAST_CHUNK]


class FakeUpstream:
    """Turns requests into (cached) plans."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.connections: set[Connection] = set()
        self._cache: dict[tuple[Any, ...], Plan] = {}

    def plan_for(self, req: Request) -> Plan:
        keep = req.keep_alive
        if req.method == "POST" and req.path in ("/v1/chat/completions", "/v1/messages"):
            anthropic = req.path == "/v1/messages"
            try:
                body = json.loads(req.body)
            except (ValueError, RecursionError):
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                return [self._invalid_body(anthropic, keep)]
            model: str = body["model"]
            stream = body.get("stream") is True
            options = body.get("stream_options")
            usage = stream and isinstance(options, dict) and options.get("include_usage") is True
            if model == "echo":  # depends on the whole request: never cached
                return self._build(anthropic, model, stream, usage, keep, body, req.headers)
            key = (anthropic, model, stream, usage, keep)
            plan = self._cache.get(key)
            if plan is None:
                if len(self._cache) >= MAX_CACHE:
                    self._cache.clear()
                plan = self._cache[key] = self._build(anthropic, model, stream, usage, keep)
            return plan
        if req.method == "GET" and req.path == "/v1/models":
            return [_full(200, _MODELS, keep, [])]
        message = f"Unknown request URL: {req.method} {req.path}."
        return [_full(404, _oa_err(message, "invalid_request_error", code="unknown_url"),
                      keep, [])]

    @staticmethod
    def _invalid_body(anthropic: bool, keep: bool) -> bytes:
        message = "request body must be a JSON object with a string 'model'"
        if anthropic:
            return _full(400, _an_err("invalid_request_error", message), keep, [])
        return _full(400, _oa_err(message, "invalid_request_error"), keep, [])

    def _build(self, anthropic: bool, model: str, stream: bool, usage: bool, keep: bool,
               body: Any = None, headers: dict[str, str] | None = None) -> Plan:
        errors = _ANTHROPIC_ERRORS if anthropic else _OPENAI_ERRORS
        extra: Headers = [("request-id" if anthropic else "x-request-id", "req_fake")]
        if model in errors:
            status, payload, more = errors[model]
            return [_full(status, payload, keep, more + extra)]
        if model == "garbage":
            return [_full(200, b"not json", keep, extra)]
        if model == "drop-mid-stream" and not stream:
            return [None]
        o = self.options
        n, gap = o.stream_chunks, o.chunk_gap_ms / 1000
        pre: Plan = [o.delay_ms / 1000]
        if model == "slow":
            pre = [o.slow_seconds]
        elif model == "slow-stream":
            n, gap = 100, 0.1
            pre = [] if stream else [n * gap]
        texts = [f"tok{i} " for i in range(n)]
        if model == "echo":
            texts = [json.dumps({"body": body, "headers": headers})]
        elif model == "drop-mid-stream":
            texts = texts[:2]
        call = Call(model, stream, usage, keep, texts, n, pre, gap)
        return _compact((_anthropic_plan if anthropic else _openai_plan)(call))


# --------------------------------------------------------------------------- HTTP/1.1


class Connection(asyncio.Protocol):
    """One client connection: parses requests in order and executes their plans."""

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.eof = False
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def eof_received(self) -> bool:
        self.eof = True
        return self.task is not None  # keep the socket open until the pending answer is sent

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self.serve()

    def serve(self) -> None:
        """Answer every complete buffered request, stopping at the first one that must wait."""
        t = self.transport
        while not t.is_closing():
            try:
                req = self.parse()
            except (BadRequest, ValueError, UnicodeError):
                t.write(_full(400, _oa_err("malformed HTTP request", "invalid_request_error"),
                              False, []))
                t.close()
                return
            if req is None:
                if self.eof:
                    t.close()
                return
            plan = self.server.plan_for(req)
            pending = self.run(plan, 0, req.keep_alive)
            if pending is not None:
                self.task = asyncio.get_running_loop().create_task(
                    self.run_later(plan, pending, req.keep_alive))
                return

    def run(self, plan: Plan, i: int, keep: bool) -> int | None:
        """Execute ``plan`` from step ``i``; return the index of a pause still to be waited."""
        t = self.transport
        for j in range(i, len(plan)):
            step = plan[j]
            if t.is_closing():
                return None
            if step is None:
                t.close()
                return None
            if isinstance(step, bytes):
                t.write(step)
            elif step > 0:
                return j
        if not keep:
            t.close()
        return None

    async def run_later(self, plan: Plan, i: int, keep: bool) -> None:
        try:
            pending: int | None = i
            while pending is not None:
                await asyncio.sleep(plan[pending])  # type: ignore[arg-type]
                pending = self.run(plan, pending + 1, keep)
        finally:
            self.task = None
        self.serve()

    def parse(self) -> Request | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise BadRequest("head too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(buf, start)
            if decoded is None:
                return self._await_body(headers)
            body, consumed = decoded
        else:
            consumed = start + int(headers.get("content-length", "0"))
            if len(buf) < consumed:
                return self._await_body(headers)
            body = bytes(buf[start:consumed])
        del buf[:consumed]
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return Request(method, target.partition("?")[0], headers, body, keep)

    def _await_body(self, headers: dict[str, str]) -> None:
        if not self.continued and headers.get("expect", "").lower() == "100-continue":
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``: (body, end offset), or None if incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # skip optional trailers
            return None if end < 0 else (bytes(out), end + 4)
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


# --------------------------------------------------------------------------- entry points


async def serve(host: str, port: int, options: Options) -> None:
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream(options)
    server = await loop.create_server(lambda: Connection(upstream), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    for conn in list(upstream.connections):
        conn.transport.abort()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake OpenAI/Anthropic upstream for Tollgate tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--stream-chunks", type=int, default=5)
    p.add_argument("--chunk-gap-ms", type=float, default=0.0)
    p.add_argument("--slow-seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    options = Options(a.delay_ms, a.stream_chunks, a.chunk_gap_ms, a.slow_seconds)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(a.host, a.port, options))
    else:
        uvloop.run(serve(a.host, a.port, options))


@contextlib.contextmanager
def run_fake_upstream(*, host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0.0,
                      stream_chunks: int = 5, chunk_gap_ms: float = 0.0,
                      slow_seconds: float = 5.0, ready_timeout: float = 10.0) -> Iterator[str]:
    """Start this script as a subprocess and yield its base URL, e.g. ``http://127.0.0.1:4321``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--host", host, "--port", str(port),
           "--delay-ms", str(delay_ms), "--stream-chunks", str(stream_chunks),
           "--chunk-gap-ms", str(chunk_gap_ms), "--slow-seconds", str(slow_seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line, deadline = b"", time.monotonic() + ready_timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
                raise RuntimeError(f"fake upstream not ready after {ready_timeout} s")
            data = os.read(proc.stdout.fileno(), 256)
            if not data:
                raise RuntimeError(f"fake upstream exited early (code {proc.wait()})")
            line += data
        if not line.startswith(b"READY "):
            raise RuntimeError(f"unexpected fake upstream output: {line!r}")
        yield f"http://{host}:{int(line.split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


if __name__ == "__main__":
    main()
