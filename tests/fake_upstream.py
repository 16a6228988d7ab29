"""A fast fake LLM upstream (OpenAI + Anthropic wire formats) for end-to-end tests and benchmarks.

Script: ``python tests/fake_upstream.py [--host 127.0.0.1] [--port 0] [--delay-ms 0]
[--stream-chunks 5] [--chunk-gap-ms 0] [--slow-seconds 5]`` prints one line ``READY <port>`` once
listening (port 0 picks a free port) and exits cleanly on SIGTERM/SIGINT. From Python,
``with run_fake_upstream(delay_ms=0, ...) as base_url:`` runs it as a subprocess.

A hand-written HTTP/1.1 server on ``asyncio.Protocol`` (uvloop when importable): keep-alive,
pipelining, Content-Length and chunked request bodies, ``Expect: 100-continue``. Every answer is
a *plan*: wire bytes, pauses, and "close the connection" steps. Plans depending only on (api,
model, stream, include_usage, keep-alive) are cached, so the zero-delay path is: parse the head,
``json.loads`` the body, one dict lookup, one ``write``.

Endpoints: ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic),
``GET /v1/models``, and OpenAI's ``POST /v1/embeddings``, ``/v1/images/generations``,
``/v1/audio/speech`` and ``/v1/audio/transcriptions`` (tests/fake_media.py: what they answer and
how their model names behave); other paths get a 404 OpenAI error, a body that is not a JSON
object with a string ``model`` gets a 400. The HTTP framing and the failure behaviours shared by
every endpoint are in tests/fake_wire.py. The request's ``model`` picks the behaviour of chat and
messages (both APIs unless noted):

- anything else: ``tok0 tok1 ...`` (N = --stream-chunks pieces) after --delay-ms; streams send the
  N content events --chunk-gap-ms apart. Usage: OpenAI prompt_tokens 11, cached_tokens 3,
  reasoning_tokens 2, completion_tokens N (streams: a usage chunk only when
  ``stream_options.include_usage``); Anthropic input_tokens 11, cache_creation_input_tokens 4,
  cache_read_input_tokens 3, output_tokens N.
- ``echo``: content is the JSON string ``{"body": <request JSON>, "headers": {<lower-cased>}}``
  (streamed as one content event).
- ``slow``: waits --slow-seconds first. ``slow-stream``: 100 content events 100 ms apart
  (non-streaming: waits 10 s, then 100 tokens).
- ``fail-500`` / ``fail-429`` (``retry-after: 1``) / ``fail-400`` / ``fail-401``: that status with
  the API's error body; ``overloaded`` (Anthropic): 529 overloaded_error.
- ``drop-mid-stream``: streams the opening events and 2 content events, then closes the socket
  with no terminator; non-streaming: closes without any response.
- ``garbage``: 200, ``content-type: application/json``, body ``not json``.
- ``tool-use`` (Anthropic): text "Let me check." plus a ``get_weather`` tool_use block
  (stop_reason tool_use; streamed input as two ``input_json_delta`` fragments).
- ``stream-error`` (Anthropic streaming): an ``error`` event (overloaded_error) after 2 text
  deltas, then the stream ends and the connection closes.
- ``echo-auth-<status>`` (400, 401, 403, 404, 422, 429, 500; every endpoint): that status, with
  an error whose message (and OpenAI ``param``) quotes the request's Authorization and x-api-key
  headers. ``echo-auth-stream`` (streaming): opens the stream, then fails in-band with such an
  error (OpenAI: a ``data: {"error"}`` event; Anthropic: an ``error`` event).

Responses carry ``x-request-id`` (OpenAI) or ``request-id`` (Anthropic).
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

from fake_media import MEDIA_PATHS, media_plan
from fake_wire import (
    ECHO_AUTH,
    FAILURES,
    LAST_CHUNK,
    SSE_HEADERS,
    Failure,
    Headers,
    Plan,
    chunk,
    compact,
    dumps,
    echo_auth_answer,
    echo_auth_message,
    error_body,
    failure_answer,
    full,
    head,
)

MAX_HEAD = 64 * 1024
MAX_CACHE = 1024
PROMPT_TOKENS = 11
_MODELS = {
    "object": "list",
    "data": [
        {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}
        for m in ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5")
    ],
}
_ANTHROPIC_ONLY: dict[str, Failure] = {
    "overloaded": (529, "", None, None, "overloaded_error", "Overloaded")
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
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool


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
    gap: float  # pause between content pieces, seconds
    headers: dict[str, str]  # the request's, for echo-auth-stream


# --------------------------------------------------------------------------- wire helpers


def _oa_event(obj: Any) -> bytes:
    return chunk(b"data: " + dumps(obj) + b"\n\n")


def _an_event(obj: dict[str, Any]) -> bytes:
    return chunk(b"event: " + obj["type"].encode() + b"\ndata: " + dumps(obj) + b"\n\n")


# --------------------------------------------------------------------------- behaviours


def _openai_plan(c: Call) -> Plan:
    extra: Headers = [("x-request-id", "req_fake")]
    created = int(time.time())
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": c.tokens,
        "total_tokens": PROMPT_TOKENS + c.tokens,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": created,
        "model": c.model,
    }
    if not c.stream:
        message = {"role": "assistant", "content": "".join(c.texts), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return [*c.pre, full(200, {**base, "choices": [choice], "usage": usage}, c.keep, extra)]
    base["object"] = "chat.completion.chunk"
    no_usage = {"usage": None} if c.include_usage else {}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _oa_event({**base, "choices": [choice], **no_usage})

    plan: Plan = [
        *c.pre,
        head(200, SSE_HEADERS + extra, c.keep),
        event({"role": "assistant", "content": "", "refusal": None}),
    ]
    for i, text in enumerate(c.texts):
        plan += [c.gap if i else 0.0, event({"content": text})]
    if c.model == "drop-mid-stream":
        return [*plan, None]
    if c.model == ECHO_AUTH + "stream":
        error = error_body(False, "invalid_request_error", echo_auth_message(c.headers))
        return [*plan, _oa_event(error), LAST_CHUNK, None]
    plan.append(event({}, "stop"))
    if c.include_usage:
        plan.append(_oa_event({**base, "choices": [], "usage": usage}))
    return [*plan, chunk(b"data: [DONE]\n\n"), LAST_CHUNK]


def _anthropic_plan(c: Call) -> Plan:
    extra: Headers = [("request-id", "req_fake")]
    tool = c.model == "tool-use"
    texts = ["Let me check."] if tool else c.texts
    tool_block = {"type": "tool_use", "id": "toolu_fake1", "name": "get_weather"}
    stop_reason = "tool_use" if tool else "end_turn"
    usage = {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": c.tokens,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": c.model}
    if not c.stream:
        content: list[Any] = [{"type": "text", "text": "".join(texts)}]
        if tool:
            content.append({**tool_block, "input": {"city": "Paris"}})
        return [
            *c.pre,
            full(
                200,
                {
                    **message,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
                c.keep,
                extra,
            ),
        ]

    def delta(index: int, kind: str, key: str, value: str) -> bytes:
        return _an_event(
            {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: value}}
        )

    failing = c.model in ("stream-error", ECHO_AUTH + "stream")
    start: dict[str, Any] = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    plan: Plan = [
        *c.pre,
        head(200, SSE_HEADERS + extra, c.keep and not failing),
        _an_event({"type": "message_start", "message": start}),
        _an_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        _an_event({"type": "ping"}),
    ]
    for i, text in enumerate(texts[:2] if failing else texts):
        plan += [c.gap if i else 0.0, delta(0, "text_delta", "text", text)]
    if c.model == "drop-mid-stream":
        return [*plan, None]
    if failing:
        return [
            *plan,
            _an_event(
                error_body(True, "invalid_request_error", echo_auth_message(c.headers))
                if c.model.startswith(ECHO_AUTH)
                else error_body(True, "overloaded_error", "Overloaded")
            ),
            LAST_CHUNK,
            None,
        ]
    plan.append(_an_event({"type": "content_block_stop", "index": 0}))
    if tool:
        plan += [
            _an_event(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {**tool_block, "input": {}},
                }
            ),
            delta(1, "input_json_delta", "partial_json", '{"city": '),
            delta(1, "input_json_delta", "partial_json", '"Paris"}'),
            _an_event({"type": "content_block_stop", "index": 1}),
        ]
    return [
        *plan,
        _an_event(
            {
                "type": "message_delta",
                "usage": {"output_tokens": c.tokens},
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            }
        ),
        _an_event({"type": "message_stop"}),
        LAST_CHUNK,
    ]


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
                message = "the body must be a JSON object with a string 'model'"
                return [
                    full(400, error_body(anthropic, "invalid_request_error", message), keep, [])
                ]
            model: str = body["model"]
            stream = body.get("stream") is True
            options = body.get("stream_options")
            usage = stream and isinstance(options, dict) and options.get("include_usage") is True
            if model == "echo" or model.startswith(ECHO_AUTH):  # depend on the request: uncached
                return self._build(anthropic, model, stream, usage, keep, body, req.headers)
            key = (anthropic, model, stream, usage, keep)
            plan = self._cache.get(key)
            if plan is None:
                if len(self._cache) >= MAX_CACHE:
                    self._cache.clear()
                plan = self._cache[key] = self._build(anthropic, model, stream, usage, keep)
            return plan
        if req.method == "POST" and req.path in MEDIA_PATHS:
            o = self.options
            timing = (o.delay_ms / 1000, o.slow_seconds, o.chunk_gap_ms / 1000)
            return media_plan(req.path, req.headers, req.body, keep, *timing)
        if req.method == "GET" and req.path == "/v1/models":
            return [full(200, _MODELS, keep, [])]
        message = f"Unknown request URL: {req.method} {req.path}."
        error = error_body(False, "invalid_request_error", message, code="unknown_url")
        return [full(404, error, keep, [])]

    def _build(
        self,
        anthropic: bool,
        model: str,
        stream: bool,
        usage: bool,
        keep: bool,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Plan:
        extra: Headers = [("request-id" if anthropic else "x-request-id", "req_fake")]
        failure = FAILURES.get(model) or (_ANTHROPIC_ONLY.get(model) if anthropic else None)
        if failure:
            return [failure_answer(failure, anthropic, keep, extra)]
        if (echoed := echo_auth_answer(model, anthropic, headers or {}, keep, extra)) is not None:
            return [echoed]
        if model == "garbage":
            return [full(200, b"not json", keep, extra)]
        if model == "drop-mid-stream" and not stream:
            return [None]
        o = self.options
        n, gap, pre = o.stream_chunks, o.chunk_gap_ms / 1000, o.delay_ms / 1000
        if model == "slow":
            pre = o.slow_seconds
        elif model == "slow-stream":
            n, gap = 100, 0.1
            pre = 0.0 if stream else n * gap
        texts = [f"tok{i} " for i in range(n)]
        if model == "echo":
            texts = [json.dumps({"body": body, "headers": headers})]
        elif model == "drop-mid-stream":
            texts = texts[:2]
        call = Call(model, stream, usage, keep, texts, n, [pre], gap, headers or {})
        return compact((_anthropic_plan if anthropic else _openai_plan)(call))


# --------------------------------------------------------------------------- HTTP/1.1


class Connection(asyncio.Protocol):
    """One client connection: parses requests in order and executes their plans."""

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.eof = False
        self.continued = False  # "100 Continue" already sent for the current request

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
            except (ValueError, UnicodeError):
                error = error_body(False, "invalid_request_error", "malformed HTTP request")
                t.write(full(400, error, False, []))
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
                    self.run_later(plan, pending, req.keep_alive)
                )
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
        """Pop one complete request off the buffer (None: incomplete; ValueError: malformed)."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise ValueError("request head too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(buf, start)
        else:
            size = int(headers.get("content-length", "0"))
            if size < 0:
                raise ValueError("negative content-length")
            complete = len(buf) >= start + size
            decoded = (bytes(buf[start : start + size]), start + size) if complete else None
        if decoded is None:
            if not self.continued and headers.get("expect", "").lower() == "100-continue":
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body, consumed = decoded
        del buf[:consumed]
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return Request(method, target.partition("?")[0], headers, body, keep)


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
            end = buf.find(b"\r\n\r\n", eol)  # skips optional trailers
            return None if end < 0 else (bytes(out), end + 4)
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
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
    coro = serve(
        a.host, a.port, Options(a.delay_ms, a.stream_chunks, a.chunk_gap_ms, a.slow_seconds)
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


@contextlib.contextmanager
def run_fake_upstream(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    delay_ms: float = 0.0,
    stream_chunks: int = 5,
    chunk_gap_ms: float = 0.0,
    slow_seconds: float = 5.0,
    ready_timeout: float = 10.0,
) -> Iterator[str]:
    """Run this script as a subprocess; yield its base URL, e.g. ``"http://127.0.0.1:4321"``."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--host",
        host,
        "--port",
        str(port),
        "--delay-ms",
        str(delay_ms),
        "--stream-chunks",
        str(stream_chunks),
        "--chunk-gap-ms",
        str(chunk_gap_ms),
        "--slow-seconds",
        str(slow_seconds),
    ]
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
