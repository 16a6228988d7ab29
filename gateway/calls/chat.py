"""``POST /v1/chat/completions``: OpenAI's Chat Completions, JSON or SSE, for every chat model.

The request reaches the provider in OpenAI's shape (the Anthropic provider translates it), and
the answer comes back as the upstream's own bytes where it speaks OpenAI's shape. A stream ends
with ``data: [DONE]``; a failure after its first byte arrives in-band as ``data: {"error": ...}``
and the stream ends without ``[DONE]`` (the ``openai`` SDK raises it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import orjson
from django.http import HttpRequest, HttpResponseBase

from gateway.calls.metering import StreamMeter, tools_of
from gateway.calls.parsing import validate_request
from gateway.calls.pipeline import Call, OpenStream, Relay, open_stream
from providers.base import ChatRequest
from providers.errors import GatewayError
from providers.factory import Route
from providers.types import StreamChunk


async def completions(call: Call, request: HttpRequest) -> HttpResponseBase:
    body = await call.parse_json(request.body)
    chat = validate_request(ChatRequest, body)
    call.stream = chat.stream
    call.prompt = [*body["messages"], *tools_of(body, "tools", "functions")]
    call.keep_affinity(body)
    call.resolve(chat.model)
    await call.admit(call.estimate_prompt_tokens(), chat.max_completion_tokens or chat.max_tokens)
    if chat.stream:
        relay = await call.upstream(lambda route: _open(call, chat, route))
        return call.answer_stream(relay, error_event)
    answer = await call.upstream(lambda route: route.provider.chat(chat, route.upstream_model))
    content = answer.raw if answer.raw is not None else orjson.dumps(answer.body)
    return call.answer_json(content, answer.usage)


async def _open(call: Call, chat: ChatRequest, route: Route) -> Relay:
    stream = await open_stream(route.provider.stream(chat, route.upstream_model), route)
    meter = StreamMeter(call.estimate_prompt_tokens)
    return Relay(stream, _events(stream, meter, hide_usage=not chat.wants_usage_chunk), meter)


async def _events(
    stream: OpenStream[StreamChunk], meter: StreamMeter, hide_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The chunks as SSE events, ending with ``[DONE]``."""
    chunk = stream.first
    while chunk is not None:
        meter.observe(chunk)
        if (event := sse_event(chunk, hide_usage)) is not None:
            yield event
        chunk = await anext(stream.rest, None)
    yield b"data: [DONE]\n\n"


def error_event(error: GatewayError) -> bytes:
    """A failure mid-stream: the client learns it in-band; the stream ends without [DONE]."""
    return b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"


def sse_event(chunk: StreamChunk, hide_usage: bool) -> bytes | None:
    """The chunk as an SSE event for the client, or None when the client must not see it.

    The gateway always asks the upstream for usage; a client that did not ask gets neither the
    usage-only chunk nor the ``"usage": null`` that the upstream then puts on every chunk.
    """
    raw = chunk.raw
    if hide_usage and "usage" in chunk.payload:
        if chunk.is_usage_only:
            return None
        del chunk.payload["usage"]
        if raw is not None and raw.endswith(_NULL_USAGE):
            raw = raw[: -len(_NULL_USAGE)] + b"}"  # OpenAI's compact JSON: cut, don't re-encode
        else:
            raw = None
    return b"data: " + (raw or orjson.dumps(chunk.payload)) + b"\n\n"


_NULL_USAGE = b',"usage":null}'
