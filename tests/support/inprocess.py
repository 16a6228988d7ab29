"""Drive the gateway's real ASGI application (``tollgate.asgi.application``: ``ApiHandler`` for
``/v1``) in process, with an upstream faked at the HTTP boundary that answers every endpoint.

Django's test client would bypass ``ApiHandler`` (its header checks, its body limits); this does
not, and needs no socket.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.api.errors import is_anthropic_path
from tollgate.asgi import application

BASE_URL = "http://127.0.0.1"
OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/models",
    "/v1/usage",
)
ANTHROPIC_PATH = "/v1/messages"


def api_client() -> httpx.AsyncClient:
    """A client of the ASGI app; an exception the app lets escape fails the test."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=BASE_URL)


_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
_CHUNKS = [
    {
        **_COMPLETION,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": None,
    },
    {**_COMPLETION, "object": "chat.completion.chunk", "choices": []},
]
_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
_MESSAGE_EVENTS = [
    ("message_start", {"type": "message_start", "message": {**_MESSAGE, "content": []}}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 1},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def _wants_stream(request: httpx.Request) -> bool:
    try:
        body = orjson.loads(request.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("stream") is True


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, data in events:
        out += (f"event: {name}\n".encode() if name else b"") + b"data: " + orjson.dumps(data)
        out += b"\n\n"
    return out


def answer_everything(request: httpx.Request) -> httpx.Response:
    """A successful upstream answer for any endpoint, streamed when the request asks."""
    path = request.url.path
    stream = _wants_stream(request)
    if path.endswith("/chat/completions"):
        if stream:
            body = _sse([(None, chunk) for chunk in _CHUNKS]) + b"data: [DONE]\n\n"
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=_COMPLETION)
    if path.endswith("/messages/count_tokens"):
        return httpx.Response(200, json={"input_tokens": 3})
    if path.endswith("/messages"):
        if stream:
            body = _sse(list(_MESSAGE_EVENTS))
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=_MESSAGE)
    if path.endswith("/embeddings"):
        data = [{"object": "embedding", "index": 0, "embedding": [0.1]}]
        return httpx.Response(
            200,
            json={"object": "list", "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}},
        )
    if path.endswith("/images/generations"):
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": "AA=="}]})
    if path.endswith("/audio/speech"):
        return httpx.Response(200, content=b"ID3", headers={"content-type": "audio/mpeg"})
    if path.endswith("/audio/transcriptions"):
        return httpx.Response(200, json={"text": "hi", "usage": {"type": "duration", "seconds": 1}})
    return httpx.Response(
        404, json={"error": {"message": "unknown", "type": "invalid_request_error"}}
    )


def assert_error_shape(path: str, response: httpx.Response) -> None:
    """The error body is the called API's: Anthropic's on /v1/messages (and its count_tokens),
    OpenAI's elsewhere."""
    body = response.json()
    if is_anthropic_path(path):
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
