"""Fuzz what an upstream answers, for every path where the gateway reads one, through the real
ASGI app in process (the upstream faked with ``httpx.MockTransport``).

The answers are built to reach past the first check: a valid answer of the upstream's dialect
with one or two parts wrong (a field missing, null, or of another type: text for a count, an
object for a list...), and for streams events dropped, repeated, renamed, cut short, or not JSON,
an error event or ``[DONE]`` in the middle; error statuses with bodies that are not JSON or not
an error; 200 with a body that is not JSON. For every one, the caller gets 200 or the upstream's
error (never a 500), errors in the called API's shape, a stream that ends with its API's own end
or error event (speech, which has none, is cut off), exactly one ledger row whose status is what
the caller was told, and no error logged with a traceback. The examples are derandomized, so the
suite runs the same ones every time.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.inprocess import ANTHROPIC_PATH, assert_error_shape
from support.upstream_answers import (
    CHUNKS,
    COMPLETION,
    EMBEDDINGS,
    IMAGES,
    MESSAGE,
    MESSAGE_EVENTS,
    RESPONSE,
    RESPONSE_EVENTS,
    Answer,
    Event,
    answers,
    json_answer,
    speech,
    stream_answer,
    transcription,
)

from bench.inprocess import post_scope
from conftest import TenantKey
from gateway import runtime
from gateway.models import StoredResponse, UsageRecord
from tollgate.asgi import application

EXTRA_CONFIG = """
[providers.native]
type = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses = true

[models."native-model"]
provider = "native"
upstream_model = "gpt-native"
input_per_mtok = 1.0
output_per_mtok = 2.0

[router]
backoff_base_seconds = 0.0
"""
"""A model on an upstream that serves the Responses API itself; retries without backoff."""

# --- the calls --------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any]]
"""The path and the body (or multipart form) of a call."""
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]


def chat(model: str, stream: bool) -> Request:
    body = {"model": model, "messages": HI, "tools": TOOLS, "stream": stream}
    return "/v1/chat/completions", {"json": body}


def messages(model: str, stream: bool) -> Request:
    body = {"model": model, "max_tokens": 100, "messages": HI, "tools": ANTHROPIC_TOOLS}
    return ANTHROPIC_PATH, {"json": {**body, "stream": stream}}


def responses(model: str, stream: bool, store: bool) -> Request:
    body = {"model": model, "input": "hi", "tools": [{"type": "function", "name": "f"}]}
    return "/v1/responses", {"json": {**body, "stream": stream, "store": store}}


def both(
    name: str,
    calls: Callable[[bool], st.SearchStrategy[Request]],
    json_base: Any,
    events: list[Event],
    count: int,
) -> list[tuple[str, st.SearchStrategy[tuple[Request, Answer]], int]]:
    """The JSON and the streamed case of one path and upstream dialect (``calls(stream)``)."""
    return [
        (name, st.tuples(calls(False), answers(json_answer(json_base))), count),
        (name + " stream", st.tuples(calls(True), answers(stream_answer(events))), count),
    ]


def stored_or_not(model: str) -> Callable[[bool], st.SearchStrategy[Request]]:
    """A Responses request to ``model``, with ``store`` on or off."""
    return lambda stream: st.builds(responses, st.just(model), st.just(stream), st.booleans())


CASES: list[tuple[str, st.SearchStrategy[tuple[Request, Answer]], int]] = [
    *both("chat to openai", lambda s: st.just(chat("gpt-test", s)), COMPLETION, CHUNKS, 200),
    *both(
        "chat to anthropic",
        lambda s: st.just(chat("claude-media", s)),
        MESSAGE,
        MESSAGE_EVENTS,
        200,
    ),
    *both(
        "messages to anthropic",
        lambda s: st.just(messages("claude-media", s)),
        MESSAGE,
        MESSAGE_EVENTS,
        200,
    ),
    *both(
        "messages to openai", lambda s: st.just(messages("gpt-test", s)), COMPLETION, CHUNKS, 200
    ),
    *both("responses bridged", stored_or_not("gpt-test"), COMPLETION, CHUNKS, 200),
    *both("responses native", stored_or_not("native-model"), RESPONSE, RESPONSE_EVENTS, 200),
    (
        "embeddings",
        st.tuples(
            st.just(("/v1/embeddings", {"json": {"model": "embed-test", "input": "hi"}})),
            answers(json_answer(EMBEDDINGS)),
        ),
        150,
    ),
    (
        "images",
        st.tuples(
            st.just(("/v1/images/generations", {"json": {"model": "image-test", "prompt": "x"}})),
            answers(json_answer(IMAGES)),
        ),
        150,
    ),
    (
        "speech",
        st.tuples(
            st.just(
                (
                    "/v1/audio/speech",
                    {"json": {"model": "tts-test", "input": "hi", "voice": "alloy"}},
                )
            ),
            answers(speech),
        ),
        100,
    ),
    (
        "transcriptions",
        st.tuples(
            st.just(
                (
                    "/v1/audio/transcriptions",
                    {"data": {"model": "stt-test"}, "files": {"file": ("a.wav", b"RIFF0000")}},
                )
            ),
            answers(transcription),
        ),
        100,
    ),
]
assert sum(count for *_, count in CASES) >= 2_000

# --- the gateway, in process --------------------------------------------------------------------


@dataclass
class Reply:
    """What the ASGI app sent: ``complete`` is False when it left the body unfinished (the
    server then cuts the connection: a broken download)."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool


async def send(path: str, options: dict[str, Any], key: str) -> Reply:
    """Call the ASGI app as a server would, keeping what it sent even when it never finished
    the body (``httpx.ASGITransport`` fails on that)."""
    request = httpx.Request(
        "POST", "http://127.0.0.1" + path, headers={"authorization": f"Bearer {key}"}, **options
    )
    body = request.read()
    scope = post_scope(path, [(name.lower(), value) for name, value in request.headers.raw])
    sent: list[dict[str, Any]] = []
    ended = asyncio.Event()
    unread = True

    async def receive() -> dict[str, Any]:
        nonlocal unread
        if unread:
            unread = False
            return {"type": "http.request", "body": body, "more_body": False}
        await ended.wait()
        return {"type": "http.disconnect"}

    async def reply(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            ended.set()

    try:
        await application(scope, receive, reply)
    finally:
        ended.set()
    [start] = [message for message in sent if message["type"] == "http.response.start"]
    parts = [message for message in sent if message["type"] == "http.response.body"]
    return Reply(
        start["status"],
        httpx.Headers(start.get("headers", [])),
        b"".join(part.get("body", b"") for part in parts),
        bool(parts) and not parts[-1].get("more_body"),
    )


@dataclass
class FakeUpstream:
    """The answer the upstream gives (to every request of the example: retries get the same)."""

    answer: Answer = field(default_factory=lambda: Answer(200, b"{}"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.answer.response()


@pytest.fixture
def run() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Runs a coroutine on one event loop kept for the whole fuzz run."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class Tracebacks(logging.Handler):
    """Every record logged at ERROR or above with a traceback, or by the gateway's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.name.startswith("tollgate"):
            self.records.append(record)


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


# --- what must hold -------------------------------------------------------------------------------


def sse_events(body: bytes) -> list[tuple[str | None, bytes]]:
    """The SSE events of a whole stream the gateway sent: each one's name and data."""
    events = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        events.append((name, b"\n".join(data)))
    return events


ENDS = {
    "/v1/chat/completions": ({"[DONE]"}, {"error"}),
    ANTHROPIC_PATH: ({"message_stop"}, {"error"}),
    "/v1/responses": ({"response.completed", "response.incomplete"}, {"response.failed", "error"}),
}
"""For each streaming API, the names of the events that end a stream: well, and in failure."""


def stream_failed(path: str, body: bytes) -> bool:
    """Whether the stream the gateway sent ended with its API's error (else it ended well);
    fails when it ended with neither, or carried an event whose data is not a JSON object."""
    events = sse_events(body)
    assert events, body
    for _, data in events[:-1] if path == "/v1/chat/completions" else events:
        assert isinstance(orjson.loads(data), dict), body
    name, data = events[-1]
    if path == "/v1/chat/completions":
        name = "[DONE]" if data == b"[DONE]" else "error" if "error" in orjson.loads(data) else None
    good, bad = ENDS[path]
    assert name in good | bad, ("the stream ended with neither its end nor an error", body[-300:])
    if name == "error" and path != "/v1/responses":
        assert_error_shape(path, httpx.Response(502, content=data))
    return name in bad


@pytest.mark.parametrize(("name", "cases", "count"), CASES, ids=[case[0] for case in CASES])
def test_no_upstream_answer_breaks_a_call(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    name: str,
    cases: st.SearchStrategy[tuple[Request, Answer]],
    count: int,
) -> None:
    key = tenants["alice"].raw
    upstream = FakeUpstream()
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: tuple[Request, Answer]) -> None:
        (path, options), upstream.answer = case
        UsageRecord.objects.all().delete()
        StoredResponse.objects.all().delete()
        tracebacks.records.clear()
        current = gateway_runtime(upstream, EXTRA_CONFIG)
        reply = run(send(path, copy.deepcopy(options), key))
        described = (reply.status, reply.body[-500:])
        assert reply.status != 500, described
        if upstream.answer.status >= 400:
            assert reply.status >= 400, described  # the upstream's failure is the call's
        status = reply.status
        if reply.status >= 400:
            assert reply.complete, described
            assert_error_shape(path, httpx.Response(reply.status, content=reply.body))
        elif path == "/v1/audio/speech":
            status = 200 if reply.complete else 502  # no error event: the download is cut off
        elif reply.headers["content-type"].startswith("text/event-stream"):
            assert reply.complete, ("a stream without its end", described)
            status = 502 if stream_failed(path, reply.body) else 200
        else:
            assert reply.complete, described
            if path != "/v1/audio/transcriptions":
                assert isinstance(orjson.loads(reply.body), dict), described
        current.ledger.flush()
        rows = list(UsageRecord.objects.all())
        assert len(rows) == 1, (len(rows), described)
        assert rows[0].request_id == reply.headers["x-request-id"]
        if status == 502 and reply.status == 200:  # a stream that failed once started
            assert rows[0].status_code >= 400 and rows[0].status_code != 500, rows[0].status_code
        else:
            assert rows[0].status_code == status, (rows[0].status_code, described)
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()
