"""A fast fake LLM upstream (OpenAI + Anthropic wire formats) for end-to-end tests and benchmarks.

Script: ``python tests/fake_upstream.py [--host 127.0.0.1] [--port 0] [--delay-ms 0]
[--stream-chunks 5] [--chunk-gap-ms 0] [--slow-seconds 5] [--name NAME] [--fail-rate R]
[--fail-status 500] [--seed 0] [--down]`` prints one line ``READY <port>`` once listening (port 0
picks a free port) and exits cleanly on SIGTERM/SIGINT. From Python, ``with
run_fake_upstream(delay_ms=0, name="dep-a", ...) as base_url:`` runs it as a subprocess (its
keyword arguments are the flags). Each process is one *instance*; several of them can play the
deployments of one model, each scripted to behave its own way ("Scripts" below).

A hand-written HTTP/1.1 server on ``asyncio.Protocol`` (uvloop when importable): keep-alive,
pipelining, Content-Length and chunked request bodies, ``Expect: 100-continue``. Every answer is
a *plan*: wire bytes, pauses, and "close the connection" steps. Plans depending only on (api,
model, stream, include_usage, keep-alive) are cached, so the zero-delay path is: parse the head,
``json.loads`` the body, one dict lookup, one ``write`` (``echo``, ``echo-auth-*``, ``agent`` and
``claude-agent`` answer each request anew).

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
- ``demo`` (``make run``'s demo model): ``DEMO_TEXT``, one content event per word; usage as
  above with completion_tokens the number of words.
- ``echo``: content is the JSON string ``{"body": <request JSON>, "headers": {<lower-cased>}}``
  (streamed as one content event).
- ``slow``: waits --slow-seconds first. ``slow-stream``: 100 content events 100 ms apart
  (non-streaming: waits 10 s, then 100 tokens).
- ``fail-500`` / ``fail-429`` (``retry-after: 1``) / ``fail-400`` / ``fail-401``: that status with
  the API's error body; ``overloaded`` (Anthropic): 529 overloaded_error.
- ``drop-mid-stream``: streams the opening events and 2 content events, then closes the socket
  with no terminator; non-streaming: closes without any response.
- ``garbage``: 200, ``content-type: application/json``, body ``not json``.
- ``reasoning`` (OpenAI): reasons first, as DeepSeek and vLLM do: the message's
  ``reasoning_content`` is ``REASONING_TEXT`` (streamed as two ``reasoning_content`` deltas, the
  content events after them), then the text ``tok0 tok1 ...`` as usual.
- ``tool-use`` (Anthropic): text "Let me check." plus a ``get_weather`` tool_use block
  (stop_reason tool_use; streamed input as two ``input_json_delta`` fragments).
- ``agent`` (for Codex) and ``claude-agent`` (for Claude Code): a coding agent's tool round trip
  (tests/fake_agent.py tells the rules). While the request holds no tool result since the model
  last spoke and offers the model's tool (``agent``: ``exec_command``; ``claude-agent``:
  ``Bash``): one call of it, arguments ``{"cmd": "ls"}`` / ``{"command": "ls", "description":
  "List files"}`` (OpenAI: content null, ``tool_calls``, finish_reason tool_calls; streamed as a
  first chunk opening the call, then its arguments in two fragments. Anthropic: a lone tool_use
  block, stop_reason tool_use; its input streamed as two ``input_json_delta`` fragments). Once a
  tool result follows the model's last message (OpenAI role ``tool``, Anthropic a
  ``tool_result`` block): the text ``Done: `` and the first 40 (``claude-agent``: 60) characters
  of the last tool output (of a Codex exec_command result: of the command's output). Without the
  tool: the text ``hi`` (``claude-agent``: ``ok``, as Claude Code's side requests get). Usage as
  above.
- ``stream-error`` (Anthropic streaming): an ``error`` event (overloaded_error) after 2 text
  deltas, then the stream ends and the connection closes.
- ``echo-auth-<status>`` (400, 401, 403, 404, 422, 429, 500; every endpoint): that status, with
  an error whose message (and OpenAI ``param``) quotes the request's Authorization and x-api-key
  headers. ``echo-auth-stream`` (streaming): opens the stream, then fails in-band with such an
  error (OpenAI: a ``data: {"error"}`` event; Anthropic: an ``error`` event).

Responses carry ``x-request-id`` (OpenAI) or ``request-id`` (Anthropic).

Scripts
-------
Each instance also does what its *script* says, set at run time through a control API under
``/_fake/`` (which no script affects and the stats do not count). tests/support/fake.py is its
client: ``script(base_url, **fields)``, ``reset(base_url)``, ``stats(base_url)``.

- ``POST /_fake/script`` with a JSON object: replaces the whole script (a field not given is off;
  the fail_next count and the fail_rate draws start afresh) and answers ``{"script": {...}}``, the
  script with every field. An unknown field or a value of the wrong type: 400, nothing changes.
  ``GET /_fake/script``: the current one (``fail_next``: how many are left; null: none active).
- ``POST /_fake/reset``: back to the script the instance started with (from --fail-rate / --down;
  else an empty one), with empty stats and an empty prompt cache.
- ``GET /_fake/stats``: ``{"requests": [...], "count": N, "recording": true}``, one entry per
  ``/v1`` request since the last reset, oldest first: ``{"path", "model", "stream", "at",
  "status", "prompt_cache_key", "user"}`` (the last 10,000; ``count`` counts them all). ``at`` is
  ``time.monotonic()`` once the request (head and body) had arrived: one clock for every process
  of the machine, so it compares across instances and with the test's own. ``status`` is the
  status sent: null until the status line is written (during first_byte_delay_ms), and for good
  when none ever is (down, a connection closed without answer). ``model`` and ``stream`` come from
  the body (null and false without one); ``user`` is OpenAI's ``user`` or Anthropic's
  ``metadata.user_id``.

  Recording is the price of a script: an instance records while one is active, that is after its
  first ``POST /_fake/script`` or ``/_fake/reset``, or from the start with --fail-rate or --down.
  Until then ``recording`` is false and the list stays empty (tests/support/fake.py's ``stats``
  raises): reset the instance first. An instance without a script pays one attribute check per
  request, and --name costs it nothing (the header is part of its cached answers).

Script fields, all optional and combinable. Unless said otherwise they apply to the POST
endpoints (chat completions, /v1/messages, the media endpoints), on top of the model names above.

- ``"name": "dep-a"``: every answer, the control API's too, has the header ``x-fake-instance:
  dep-a``, so that a test sees which instance served. --name sets it from the start; a script
  without ``name`` keeps that one.
- ``"down": true``: every ``/v1`` request (``GET /v1/models`` too) has its connection closed as
  soon as it has arrived, with no response: a dead upstream (whose control API still answers).
- ``"fail_next": N, "status": S``: the next N requests, whatever their body, get status S (400 to
  599, default 500) with the API's error body: OpenAI's shape, Anthropic's on /v1/messages. Its
  message is the reason phrase; its type (OpenAI / Anthropic): 401 invalid_request_error (code
  invalid_api_key) / authentication_error; 403 invalid_request_error / permission_error; 404
  invalid_request_error (code model_not_found) / not_found_error; 409 invalid_request_error /
  conflict_error; 429 requests (code rate_limit_exceeded) / rate_limit_error; 504 server_error /
  timeout_error; 529 overloaded_error in both; any other 4xx (400, 408, 422...)
  invalid_request_error in both; any other 5xx (500, 502, 503) server_error / api_error.
- ``"retry_after": "2"``, ``"retry_after_ms": "150"``: scripted failures also carry the header
  ``retry-after: 2``, ``retry-after-ms: 150`` (sent as given; a number is written as a string).
  Without them a scripted failure has neither (unlike the ``fail-429`` model).
- ``"fail_rate": 0.5, "seed": 1`` (and ``"status"``): a request that fail_next did not fail fails
  with probability fail_rate, drawn from ``random.Random(seed)`` (seed 0 by default): the same
  script fails the same requests, counted in order of arrival.
- ``"first_byte_delay_ms": D``: wait D ms before the status line (of failures too).
- ``"stall_after_chunks": K, "stall_seconds": T`` (only together): streams send K content
  events, pause T seconds, then go on as usual. Content events: the OpenAI chunks carrying
  content, Anthropic's ``content_block_delta`` events, the audio chunks of speech; K = 0 pauses
  right after the opening events, K at least their number pauses after the last one.
- ``"close_after_chunks": K``: streams send K content events (counted the same way), then the
  socket closes, with no terminator (no finish chunk, ``[DONE]``, ``message_stop`` nor last
  chunk).
- ``"cache": true``: a prompt cache per instance. The cache key of a chat or messages request is
  its ``prompt_cache_key`` (OpenAI), else its ``user`` (OpenAI) or ``metadata.user_id``
  (Anthropic), else its first message's content. A key this instance has already answered (under
  a script with cache, since the last reset) reads 8 of the 11 prompt tokens from the cache:
  OpenAI ``prompt_tokens_details.cached_tokens`` 8; Anthropic ``input_tokens`` 3 (Anthropic counts
  the cached tokens apart), ``cache_read_input_tokens`` 8, ``cache_creation_input_tokens`` 0. The
  first time, and without any key: OpenAI cached_tokens 0; Anthropic ``input_tokens`` 3,
  ``cache_creation_input_tokens`` 8, ``cache_read_input_tokens`` 0. Without ``cache`` the usage is
  the one above. A new script keeps the keys seen, a reset forgets them.

Checks run in this order: down, fail_next, fail_rate, then the answer (delayed, bent, cached).
The command line scripts an instance from the start, for benchmarks that make no control call:
--name (``name=``), --fail-rate R --fail-status S --seed N (``fail_rate=``, ``fail_status=``,
``seed=``), --down (``down=``); --fail-rate and --down make the script that reset goes back to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from fake_agent import AGENTS, ToolCall, agent_turn
from fake_media import MEDIA_PATHS, TRANSCRIPTIONS, media_plan, parse_form
from fake_wire import (
    ECHO_AUTH,
    FAILURES,
    LAST_CHUNK,
    SSE_HEADERS,
    Failure,
    Headers,
    Plan,
    Shape,
    chunk,
    compact,
    dumps,
    echo_auth_answer,
    echo_auth_message,
    error_body,
    failure_answer,
    full,
    head,
    paced,
    status_failure,
    with_header,
)

MAX_HEAD = 64 * 1024
MAX_CACHE = 1024
MAX_STATS = 10_000
PROMPT_TOKENS = 11
CACHED_TOKENS = 8  # of the PROMPT_TOKENS, when a script's prompt cache hits
CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})
CONTROL = "/_fake/"
INSTANCE_HEADER = "x-fake-instance"
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
REQUEST_DEPENDENT = frozenset({"echo", *AGENTS})
"""Models whose answers depend on the request, never cached (with the echo-auth-* ones)."""
WEATHER_CALL = ToolCall("toolu_fake1", "get_weather", {"city": "Paris"})  # the tool-use model's
DEMO_TEXT = (
    "Hello from Tollgate's demo upstream! This answer went through the gateway, "
    "and its tokens and cost are in the ledger. "
)
"""The ``demo`` model's answer (``make run``'s first call), streamed word by word."""
REASONING_TEXT = "The user greets me. I greet back."  # the reasoning model's


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
    hit: bool | None = None  # a script's prompt cache: hit, miss, or None (no such script)
    shape: Shape | None = None  # a script's stall or close of streams
    tool_call: ToolCall | None = None  # called after the texts (the tool-use and agent models)
    reasoning: str = ""  # reasoning_content before the texts (the reasoning model, OpenAI only)


_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


@dataclass
class Script:
    """What a scripted instance does: the module docstring tells each field."""

    name: str | None = None
    down: bool = False
    fail_next: int = 0
    status: int = 500
    retry_after: str | None = None
    retry_after_ms: str | None = None
    fail_rate: float = 0.0
    seed: int = 0
    first_byte_delay_ms: float = 0.0
    stall_after_chunks: int | None = None
    stall_seconds: float | None = None
    close_after_chunks: int | None = None
    cache: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.shape: Shape | None = None
        if self.stall_after_chunks is not None or self.close_after_chunks is not None:
            self.shape = Shape(
                self.stall_after_chunks, self.stall_seconds or 0.0, self.close_after_chunks
            )

    @classmethod
    def parse(cls, data: Any) -> Script:
        """The script a JSON object describes (null: the field's default); ValueError if none."""
        if not isinstance(data, dict):
            raise ValueError("a script is a JSON object")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown script fields: {', '.join(unknown)}")
        script = cls(**{k: _field(k, v) for k, v in data.items() if v is not None})
        if (script.stall_after_chunks is None) != (script.stall_seconds is None):
            raise ValueError("stall_after_chunks and stall_seconds go together")
        return script

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def fails(self) -> bool:
        """Whether the next request fails: fail_next first, then a fail_rate draw."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return self.fail_rate > 0 and self.rng.random() < self.fail_rate


def _field(name: str, value: Any) -> Any:
    """A script field's value, checked (ValueError: what is wrong)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name in ("down", "cache"):
        ok = isinstance(value, bool)
    elif name in ("fail_next", "stall_after_chunks", "close_after_chunks"):
        ok = number and isinstance(value, int) and value >= 0
    elif name == "seed":
        ok = number and isinstance(value, int)
    elif name == "status":
        ok = number and isinstance(value, int) and 400 <= value <= 599
    elif name == "fail_rate":
        ok = number and 0 <= value <= 1
        value = float(value) if ok else value
    elif name in ("first_byte_delay_ms", "stall_seconds"):
        ok = number and math.isfinite(value) and value >= 0
        value = float(value) if ok else value
    else:  # name, retry_after, retry_after_ms: header values
        value = str(value) if number and name != "name" else value
        ok = isinstance(value, str) and _HEADER_VALUE.fullmatch(value) is not None
    if not ok:
        raise ValueError(f"bad value for {name}: {value!r}")
    return value


# --------------------------------------------------------------------------- wire helpers


def _oa_event(obj: Any) -> bytes:
    return chunk(b"data: " + dumps(obj) + b"\n\n")


def _an_event(obj: dict[str, Any]) -> bytes:
    return chunk(b"event: " + obj["type"].encode() + b"\ndata: " + dumps(obj) + b"\n\n")


def _argument_fragments(call: ToolCall) -> list[str]:
    """A tool call's arguments as JSON, in the two pieces a stream sends (split after ``: ``)."""
    arguments = json.dumps(call.arguments)
    cut = arguments.find(": ") + 2 if ": " in arguments else len(arguments) // 2
    return [arguments[:cut], arguments[cut:]]


# --------------------------------------------------------------------------- behaviours


def _openai_plan(c: Call) -> Plan:
    extra: Headers = [("x-request-id", "req_fake")]
    created = int(time.time())
    cached = 3 if c.hit is None else CACHED_TOKENS if c.hit else 0
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": c.tokens,
        "total_tokens": PROMPT_TOKENS + c.tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": created,
        "model": c.model,
    }
    call = c.tool_call
    finish = "stop" if call is None else "tool_calls"
    if not c.stream:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if c.reasoning:
            message["reasoning_content"] = c.reasoning
        if call is None:
            message["content"] = "".join(c.texts)
        else:
            function = {"name": call.name, "arguments": json.dumps(call.arguments)}
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return [*c.pre, full(200, {**base, "choices": [choice], "usage": usage}, c.keep, extra)]
    base["object"] = "chat.completion.chunk"
    no_usage = {"usage": None} if c.include_usage else {}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _oa_event({**base, "choices": [choice], **no_usage})

    opening: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    half = len(c.reasoning) // 2
    thoughts = [c.reasoning[:half], c.reasoning[half:]] if c.reasoning else []
    pieces = [event({"reasoning_content": thought}) for thought in thoughts]
    pieces += [event({"content": text}) for text in c.texts]
    if call is not None:  # OpenAI opens the call in the first chunk, then streams its arguments
        function = {"name": call.name, "arguments": ""}
        start = {"index": 0, "id": call.id, "type": "function", "function": function}
        opening = {"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}
        pieces = [
            event({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            for fragment in _argument_fragments(call)
        ]
    plan: Plan = [*c.pre, head(200, SSE_HEADERS + extra, c.keep), event(opening)]
    plan += paced(pieces, c.gap, c.shape)
    if plan[-1] is None:
        return plan
    if c.model == "drop-mid-stream":
        return [*plan, None]
    if c.model == ECHO_AUTH + "stream":
        error = error_body(False, "invalid_request_error", echo_auth_message(c.headers))
        return [*plan, _oa_event(error), LAST_CHUNK, None]
    plan.append(event({}, finish))
    if c.include_usage:
        plan.append(_oa_event({**base, "choices": [], "usage": usage}))
    return [*plan, chunk(b"data: [DONE]\n\n"), LAST_CHUNK]


def _anthropic_plan(c: Call) -> Plan:
    extra: Headers = [("request-id", "req_fake")]
    call = c.tool_call
    stop_reason = "end_turn" if call is None else "tool_use"
    usage = {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": c.tokens,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }
    if c.hit is not None:  # Anthropic's input_tokens leave out what was read or written
        read = CACHED_TOKENS if c.hit else 0
        usage.update(
            input_tokens=PROMPT_TOKENS - CACHED_TOKENS,
            cache_creation_input_tokens=CACHED_TOKENS - read,
            cache_read_input_tokens=read,
        )
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": c.model}
    tool_block = {} if call is None else {"type": "tool_use", "id": call.id, "name": call.name}
    if not c.stream:
        content: list[Any] = [{"type": "text", "text": "".join(c.texts)}] if c.texts else []
        if call is not None:
            content.append({**tool_block, "input": call.arguments})
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

    def tool_deltas(index: int) -> list[bytes]:
        assert call is not None
        return [
            delta(index, "input_json_delta", "partial_json", fragment)
            for fragment in _argument_fragments(call)
        ]

    failing = c.model in ("stream-error", ECHO_AUTH + "stream")
    start: dict[str, Any] = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    # The first block (the text, else the tool call) has its deltas paced, as scripts bend them.
    if c.texts:
        first: dict[str, Any] = {"type": "text", "text": ""}
        texts = c.texts[:2] if failing else c.texts
        events = [delta(0, "text_delta", "text", text) for text in texts]
    else:
        first, events = {**tool_block, "input": {}}, tool_deltas(0)
    plan: Plan = [
        *c.pre,
        head(200, SSE_HEADERS + extra, c.keep and not failing),
        _an_event({"type": "message_start", "message": start}),
        _an_event({"type": "content_block_start", "index": 0, "content_block": first}),
        _an_event({"type": "ping"}),
    ]
    plan += paced(events, c.gap, c.shape)
    if plan[-1] is None:
        return plan
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
    if c.texts and call is not None:
        plan += [
            _an_event(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {**tool_block, "input": {}},
                }
            ),
            *tool_deltas(1),
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
    """Turns requests into (cached) plans; holds the instance's script and stats."""

    def __init__(
        self, options: Options, name: str | None = None, start: Script | None = None
    ) -> None:
        self.options = options
        self.connections: set[Connection] = set()
        self._cache: dict[tuple[Any, ...], Plan] = {}
        self.name = name  # --name: the instance's name unless its script has one
        self.start = start  # the script of --fail-rate / --down, which reset goes back to
        self.script: Script | None = None  # None: no script, no stats, the fast path
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_STATS)
        self.count = 0  # requests since the last reset (``requests`` keeps the last MAX_STATS)
        self.seen: set[str] = set()  # the prompt cache's keys
        self._instance = b""  # the x-fake-instance header line of every answer, if named
        self._set(None if start is None else replace(start))

    def plan_for(self, req: Request) -> Plan:
        if self.script is not None:
            return self._scripted(req, self.script)
        keep = req.keep_alive
        if req.method == "POST" and req.path in ("/v1/chat/completions", "/v1/messages"):
            anthropic = req.path == "/v1/messages"
            try:
                body = json.loads(req.body)
            except (ValueError, RecursionError):
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                return self._bad_body(anthropic, keep)
            model: str = body["model"]
            stream = body.get("stream") is True
            options = body.get("stream_options")
            usage = stream and isinstance(options, dict) and options.get("include_usage") is True
            if model in REQUEST_DEPENDENT or model.startswith(ECHO_AUTH):  # uncached
                return self._build(anthropic, model, stream, usage, keep, body, req.headers)
            key = (anthropic, model, stream, usage, keep)
            plan = self._cache.get(key)
            if plan is None:
                if len(self._cache) >= MAX_CACHE:
                    self._cache.clear()
                plan = self._cache[key] = self._build(anthropic, model, stream, usage, keep)
            return plan
        return self._other(req)

    def _other(self, req: Request) -> Plan:
        """Media (as they come, unscripted), models, the control API and unknown paths."""
        keep = req.keep_alive
        if req.method == "POST" and req.path in MEDIA_PATHS:
            return self._media(req, None)
        if req.method == "GET" and req.path == "/v1/models":
            return self.stamp([full(200, _MODELS, keep, [])])
        if req.path.startswith(CONTROL):
            return self.stamp([self._control(req)])
        message = f"Unknown request URL: {req.method} {req.path}."
        error = error_body(False, "invalid_request_error", message, code="unknown_url")
        return self.stamp([full(404, error, keep, [])])

    def _bad_body(self, anthropic: bool, keep: bool) -> Plan:
        message = "the body must be a JSON object with a string 'model'"
        error = error_body(anthropic, "invalid_request_error", message)
        return self.stamp([full(400, error, keep, [])])

    def _media(self, req: Request, shape: Shape | None) -> Plan:
        o = self.options
        timing = (o.delay_ms / 1000, o.slow_seconds, o.chunk_gap_ms / 1000)
        return self.stamp(
            media_plan(req.path, req.headers, req.body, req.keep_alive, *timing, shape)
        )

    def stamp(self, plan: Plan) -> Plan:
        """``plan`` with the instance's name header, if it has a name."""
        return with_header(plan, self._instance) if self._instance else plan

    # ----------------------------------------------------------------------- scripts

    def _scripted(self, req: Request, script: Script) -> Plan:
        """The answer while a script is active: recorded, then as the script says."""
        path = req.path
        if not path.startswith("/v1/"):
            return self._other(req)
        arrived = time.monotonic()
        anthropic = path == "/v1/messages"
        body: Any = None
        if req.method == "POST":
            if path == TRANSCRIPTIONS:
                body = parse_form(req.headers.get("content-type", ""), req.body)
            else:
                try:
                    body = json.loads(req.body)
                except (ValueError, RecursionError):
                    body = None
        got = body if isinstance(body, dict) else {}
        model = got.get("model")
        entry = {
            "path": path,
            "model": model if isinstance(model, str) else None,
            "stream": got.get("stream") is True,
            "at": arrived,
            "status": None,
            "prompt_cache_key": got.get("prompt_cache_key"),
            "user": _user(got, anthropic),
        }
        self.requests.append(entry)
        self.count += 1
        if script.down:
            return [None]
        if req.method != "POST" or (path not in CHAT_PATHS and path not in MEDIA_PATHS):
            plan = self._other(req)
        else:
            if script.fails():
                plan = self._failure(script, anthropic, req.keep_alive)
            elif path in CHAT_PATHS:
                plan = self._chat(req, body, anthropic, script)
            else:
                plan = self._media(req, script.shape)
            if script.first_byte_delay_ms:
                plan = [script.first_byte_delay_ms / 1000, *plan]
        return _noting(plan, entry)

    def _failure(self, script: Script, anthropic: bool, keep: bool) -> Plan:
        key = ("fail", anthropic, keep)  # the cache is emptied when the script changes
        plan = self._cache.get(key)
        if plan is None:
            headers: Headers = [("request-id" if anthropic else "x-request-id", "req_fake")]
            if script.retry_after is not None:
                headers.append(("retry-after", script.retry_after))
            if script.retry_after_ms is not None:
                headers.append(("retry-after-ms", script.retry_after_ms))
            answer = status_failure(script.status, anthropic, keep, headers)
            plan = self._cache[key] = self.stamp([answer])
        return plan

    def _chat(self, req: Request, body: Any, anthropic: bool, script: Script) -> Plan:
        """plan_for's chat and messages (kept inline there, the fast path), as scripted."""
        keep = req.keep_alive
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._bad_body(anthropic, keep)
        model: str = body["model"]
        stream = body.get("stream") is True
        options = body.get("stream_options")
        usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        hit = None
        if script.cache:
            prompt = _prompt_key(body, anthropic)
            hit = prompt in self.seen
            if prompt is not None:
                self.seen.add(prompt)
        shape = script.shape
        if model in REQUEST_DEPENDENT or model.startswith(ECHO_AUTH):
            return self._build(anthropic, model, stream, usage, keep, body, req.headers, hit, shape)
        key = (anthropic, model, stream, usage, keep, hit)  # the script's shape: the same
        plan = self._cache.get(key)
        if plan is None:
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            plan = self._cache[key] = self._build(
                anthropic, model, stream, usage, keep, hit=hit, shape=shape
            )
        return plan

    def _set(self, script: Script | None) -> None:
        self.script = script
        name = script.name if script is not None and script.name else self.name
        self._instance = f"{INSTANCE_HEADER}: {name}\r\n".encode() if name else b""
        self._cache.clear()

    def _control(self, req: Request) -> bytes:
        """The control API's answer (``/_fake/...``)."""
        keep, route = req.keep_alive, (req.method, req.path)
        if route == ("POST", CONTROL + "script"):
            try:
                script = Script.parse(json.loads(req.body) if req.body.strip() else {})
            except (ValueError, RecursionError) as exc:
                return full(400, error_body(False, "invalid_request_error", str(exc)), keep, [])
            self._set(script)
            return full(200, {"script": script.as_json()}, keep, [])
        if route == ("POST", CONTROL + "reset"):
            self.requests.clear()
            self.count = 0
            self.seen.clear()
            self._set(Script() if self.start is None else replace(self.start))
            return full(200, {"script": self.script and self.script.as_json()}, keep, [])
        if route == ("GET", CONTROL + "script"):
            return full(200, {"script": self.script and self.script.as_json()}, keep, [])
        if route == ("GET", CONTROL + "stats"):
            stats = {
                "requests": list(self.requests),
                "count": self.count,
                "recording": self.script is not None,
            }
            return full(200, stats, keep, [])
        status = 405 if req.path in _CONTROL_PATHS else 404
        message = f"Unknown control request: {req.method} {req.path}."
        return full(status, error_body(False, "invalid_request_error", message), keep, [])

    def _build(
        self,
        anthropic: bool,
        model: str,
        stream: bool,
        usage: bool,
        keep: bool,
        body: Any = None,
        headers: dict[str, str] | None = None,
        hit: bool | None = None,
        shape: Shape | None = None,
    ) -> Plan:
        extra: Headers = [("request-id" if anthropic else "x-request-id", "req_fake")]
        failure = FAILURES.get(model) or (_ANTHROPIC_ONLY.get(model) if anthropic else None)
        if failure:
            return self.stamp([failure_answer(failure, anthropic, keep, extra)])
        if (echoed := echo_auth_answer(model, anthropic, headers or {}, keep, extra)) is not None:
            return self.stamp([echoed])
        if model == "garbage":
            return self.stamp([full(200, b"not json", keep, extra)])
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
        tool_call = None
        if model == "echo":
            texts = [json.dumps({"body": body, "headers": headers})]
        elif model == "drop-mid-stream":
            texts = texts[:2]
        elif model == "demo":
            texts = [word + " " for word in DEMO_TEXT.split()]
            n = len(texts)
        elif model == "tool-use" and anthropic:
            texts, tool_call = ["Let me check."], WEATHER_CALL
        elif model in AGENTS:
            turn = agent_turn(model, body, anthropic)
            texts, tool_call = [turn.text] if turn.text else [], turn.tool_call
        call = Call(
            model, stream, usage, keep, texts, n, [pre], gap, headers or {}, hit, shape, tool_call
        )
        if model == "reasoning" and not anthropic:
            call.reasoning = REASONING_TEXT
        return self.stamp(compact((_anthropic_plan if anthropic else _openai_plan)(call)))


_CONTROL_PATHS = frozenset(CONTROL + name for name in ("script", "reset", "stats"))


def _user(body: dict[str, Any], anthropic: bool) -> Any:
    """OpenAI's ``user``, Anthropic's ``metadata.user_id``."""
    if anthropic:
        metadata = body.get("metadata")
        return metadata.get("user_id") if isinstance(metadata, dict) else None
    return body.get("user")


def _prompt_key(body: dict[str, Any], anthropic: bool) -> str | None:
    """What a script's prompt cache knows a request by (None: nothing, never a hit)."""
    key = None if anthropic else body.get("prompt_cache_key")
    if isinstance(key, str):
        return "key:" + key
    user = _user(body, anthropic)
    if isinstance(user, str):
        return "user:" + user
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    if isinstance(first, dict) and "content" in first:
        return "content:" + json.dumps(first["content"], sort_keys=True)
    return None


def _noting(plan: Plan, entry: dict[str, Any]) -> Plan:
    """``plan``, noting in its stats ``entry`` the status it sends once that is written."""
    for i, step in enumerate(plan):
        if isinstance(step, bytes):
            note = functools.partial(entry.__setitem__, "status", int(step[9:12]))
            return [*plan[: i + 1], note, *plan[i + 1 :]]
        if step is None:
            break
    return plan


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
                t.write(self.server.stamp([full(400, error, False, [])])[0])  # type: ignore[arg-type]
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
            elif callable(step):
                step()
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


async def serve(
    host: str, port: int, options: Options, name: str | None = None, start: Script | None = None
) -> None:
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream(options, name, start)
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
    p.add_argument("--name", help="the x-fake-instance header of every answer")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests that fail")
    p.add_argument("--fail-status", type=int, default=500, help="their status")
    p.add_argument("--seed", type=int, default=0, help="of the failure draws")
    p.add_argument("--down", action="store_true", help="close every /v1 request unanswered")
    a = p.parse_args(argv)
    flags = {"name": a.name, "fail_rate": a.fail_rate, "status": a.fail_status, "seed": a.seed}
    try:
        script = Script.parse({**flags, "down": a.down})
    except ValueError as exc:
        p.error(str(exc))
    start = replace(script, name=None) if script.fail_rate or script.down else None
    options = Options(a.delay_ms, a.stream_chunks, a.chunk_gap_ms, a.slow_seconds)
    coro = serve(a.host, a.port, options, script.name, start)
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
    name: str | None = None,
    fail_rate: float = 0.0,
    fail_status: int = 500,
    seed: int = 0,
    down: bool = False,
    ready_timeout: float = 10.0,
) -> Iterator[str]:
    """Run this script as a subprocess; yield its base URL, e.g. ``"http://127.0.0.1:4321"``.
    The keyword arguments are its command-line flags."""
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
        "--fail-rate",
        str(fail_rate),
        "--fail-status",
        str(fail_status),
        "--seed",
        str(seed),
        *(["--name", name] if name is not None else []),
        *(["--down"] if down else []),
    ]
    from bench.processes import read_ready_port  # the test process's: this file also runs alone

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        yield f"http://{host}:{read_ready_port(proc, ready_timeout)}"
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
