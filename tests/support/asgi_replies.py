"""A call to the real ASGI app in process, and what its caller was sent, held to what the fuzz
tests hold every answer to: never a 500, an error whole and in the called API's shape, a stream
that ends with its API's own end or error event, a JSON answer that is an object; and a log
handler that keeps what the gateway should never log (a traceback, an error of its own)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench.inprocess import post_scope
from support.inprocess import ANTHROPIC_PATH, assert_error_shape
from tollgate.asgi import application


@dataclass
class Reply:
    """What the ASGI app sent: ``complete`` is False when it left the body unfinished (the
    server then cuts the connection: a broken download)."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool


async def send(
    path: str,
    options: dict[str, Any],
    key: str,
    method: str = "POST",
    leave: asyncio.Event | None = None,
) -> Reply:
    """Call the ASGI app as a server would, keeping what it sent even when it never finished
    the body (``httpx.ASGITransport`` fails on that). ``path`` may be percent-encoded. The
    client disconnects once the body is whole, or as soon as ``leave`` is set: mid-answer, or
    before it began (then the reply's status is 0: nothing was sent)."""
    request = httpx.Request(
        method, "http://127.0.0.1" + path, headers={"authorization": f"Bearer {key}"}, **options
    )
    body = request.read()
    scope = {
        **post_scope(path, [(name.lower(), value) for name, value in request.headers.raw]),
        "method": method,
        "path": request.url.path,  # decoded, as a server hands it over
        "raw_path": request.url.raw_path,
    }
    sent: list[dict[str, Any]] = []
    ended = leave or asyncio.Event()
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
    starts = [message for message in sent if message["type"] == "http.response.start"]
    assert len(starts) == 1 or (leave is not None and not starts), sent
    start = starts[0] if starts else {"status": 0}
    parts = [message for message in sent if message["type"] == "http.response.body"]
    return Reply(
        start["status"],
        httpx.Headers(start.get("headers", [])),
        b"".join(part.get("body", b"") for part in parts),
        bool(parts) and not parts[-1].get("more_body"),
    )


class Tracebacks(logging.Handler):
    """Every record logged with a traceback (at WARNING or above), and every error the
    gateway's loggers log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        gateways_error = record.levelno >= logging.ERROR and record.name.startswith("tollgate")
        if record.exc_info or gateways_error:
            self.records.append(record)


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


def told(path: str, reply: Reply) -> int:
    """The status the caller was told, once what it was sent holds: never a 500; an error whole
    and in the called API's shape; a stream that ended with its API's end, or its error event
    (then 502); speech whole (200) or cut off (502: it has no error event); any other answer a
    JSON object (a transcription may be text)."""
    described = (reply.status, reply.body[-500:])
    assert reply.status != 500, described
    if reply.status >= 400:
        assert reply.complete, described
        assert_error_shape(path, httpx.Response(reply.status, content=reply.body))
        return reply.status
    if path == "/v1/audio/speech":
        return 200 if reply.complete else 502
    assert reply.complete, ("an answer without its end", described)
    if reply.headers["content-type"].startswith("text/event-stream"):
        return 502 if stream_failed(path, reply.body) else 200
    if path != "/v1/audio/transcriptions":
        assert isinstance(orjson.loads(reply.body), dict), described
    return 200
