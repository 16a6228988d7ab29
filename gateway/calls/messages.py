"""``POST /v1/messages``: Anthropic's Messages API, for clients written for Anthropic.

A model routed to Anthropic gets the request as it is (no translation: cache_control, thinking,
documents all keep working), with the client's ``anthropic-version`` and ``anthropic-beta``
headers, and the answer goes back as it came, its usage read on the way. A model routed anywhere
else is reached through OpenAI's shape: the request is translated, and the answer, streams
included, is translated back into Anthropic's event sequence. Either way the call lands in the
same ledger, and errors come back in Anthropic's error shape.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponseBase

from gateway.calls.metering import StreamMeter, estimate_prompt_tokens, tools_of
from gateway.calls.parsing import validate_request
from gateway.calls.pipeline import Call, OpenStream, Relay, open_stream
from providers.anthropic import AnthropicProvider, NativeEvent
from providers.anthropic.endpoint import anthropic_request_to_openai, openai_response_to_anthropic
from providers.anthropic.stream import OpenAIToAnthropicStream, anthropic_error_body
from providers.base import ChatRequest
from providers.errors import GatewayError, InvalidRequest
from providers.factory import Route
from providers.types import StreamChunk, Usage

FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
"""Client headers that a call passed through to Anthropic keeps: the API version the client
was written for, and the beta features it asks for (each provider keeps those it accepts:
``AnthropicProvider.accepted``)."""

_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def forwarded_headers(request: HttpRequest) -> dict[str, str]:
    """The client's Anthropic headers; an ``anthropic-version`` that is not a version date is a
    400 naming it (Anthropic's versions are dates: 2023-06-01)."""
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    version = headers.get("anthropic-version")
    if version is not None and not _VERSION.fullmatch(version.strip()):
        raise InvalidRequest(
            f"anthropic-version: '{version[:40]}' is not a version of the API "
            "(a date, e.g. 2023-06-01).",
            param="anthropic-version",
            code="invalid_header",
        )
    return headers


def read_request(call: Call, data: dict[str, Any]) -> str:
    """Check what every Messages request needs; its model."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: a model name is required", param="model")
    turns = data.get("messages")
    if not isinstance(turns, list) or not turns:
        raise InvalidRequest(
            "messages: at least one message is required", param="messages", code="invalid_value"
        )
    call.prompt = [data.get("system"), *turns, *tools_of(data, "tools")]
    return model


async def create(call: Call, request: HttpRequest) -> HttpResponseBase:
    data = await call.parse_json(request.body)
    model = read_request(call, data)
    headers = forwarded_headers(request)
    call.stream = data.get("stream") is True
    call.keep_affinity(data)
    route = call.resolve(model)
    limit = route.prices.max_output_tokens if route.prices is not None else None
    max_tokens = data.get("max_tokens")
    if limit is not None and isinstance(max_tokens, int) and max_tokens > limit:
        data = {**data, "max_tokens": limit}  # the model cannot write more: capped, not refused
    await call.admit_prompt(data.get("max_tokens"))
    messages = Messages(call, data, headers)
    if call.stream:
        return call.answer_stream(await call.upstream(messages.open), error_event)
    content, usage = await call.upstream(messages.ask)
    return call.answer_json(content, usage)


class Messages:
    """One Messages request, sent along a route: as it is to Anthropic, translated elsewhere."""

    def __init__(self, call: Call, data: dict[str, Any], headers: dict[str, str]) -> None:
        self.call = call
        self.data = data
        self.headers = headers
        self._translated: dict[bool, ChatRequest] = {}

    def translated(self, route: Route) -> ChatRequest:
        """The request in OpenAI's shape for ``route``, translated once however many routes
        need it. ``reasoning_effort`` (from thinking or ``output_config.effort``: Claude Code
        always asks for one) goes only to models that config.toml says take it (``reasoning``):
        others (gpt-4o, most local models) refuse the field."""
        reasoning = route.prices is not None and route.prices.reasoning
        chat = self._translated.get(reasoning)
        if chat is None:
            body = anthropic_request_to_openai(self.data)
            if not reasoning:
                body.pop("reasoning_effort", None)
            chat = self._translated[reasoning] = validate_request(ChatRequest, body)
        return chat

    async def ask(self, route: Route) -> tuple[bytes, Usage]:
        provider = route.provider
        if isinstance(provider, AnthropicProvider):
            return await provider.messages(self.data, route.upstream_model, self.headers)
        answer = await provider.chat(self.translated(route), route.upstream_model)
        message = openai_response_to_anthropic(answer.body, self.call.requested_model, answer.usage)
        return orjson.dumps(message), answer.usage

    async def open(self, route: Route) -> Relay:
        provider = route.provider
        meter = StreamMeter(self.call.estimate_prompt_tokens)
        if isinstance(provider, AnthropicProvider):
            events = provider.messages_stream(self.data, route.upstream_model, self.headers)
            native = await open_stream(events, route)
            return Relay(native, _passed_through(native, meter), meter)
        chunks = provider.stream(self.translated(route), route.upstream_model)
        stream = await open_stream(chunks, route)
        return Relay(stream, _translated(stream, meter, self.call.requested_model), meter)


async def _passed_through(
    stream: OpenStream[NativeEvent], meter: StreamMeter
) -> AsyncGenerator[bytes, None]:
    """Anthropic's own events, as they came."""
    event = stream.first
    while event is not None:
        meter.partial = event.usage
        meter.content_chunks += event.is_delta
        yield event.raw
        event = await anext(stream.rest, None)
    meter.usage = meter.partial  # message_stop came: the usage is complete


async def _translated(
    stream: OpenStream[StreamChunk], meter: StreamMeter, requested_model: str
) -> AsyncGenerator[bytes, None]:
    """OpenAI chunks as Anthropic's event sequence."""
    translator = OpenAIToAnthropicStream(requested_model)
    chunk = stream.first
    while chunk is not None:
        meter.observe(chunk)
        for name, data in translator.feed(chunk.payload, chunk.usage):
            yield sse(name, data)
        chunk = await anext(stream.rest, None)
    for name, data in translator.finish():
        yield sse(name, data)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    return sse("error", anthropic_error_body(error.status, error.message))


# --- POST /v1/messages/count_tokens ------------------------------------------------------------


async def count_tokens(call: Call, request: HttpRequest) -> HttpResponseBase:
    """The input tokens a Messages request would use: Anthropic's own count for a model routed
    to Anthropic; for any other model, the gateway's count of the request as it would be
    translated (``estimate_request_tokens``). Held to the caller's allow-lists and rate limits;
    no ledger row, nothing billed."""
    call.keeps_row = False  # a count is not a call: no ledger row, nothing spent
    data = await call.parse_json(request.body)
    model = read_request(call, data)
    headers = forwarded_headers(request)
    call.resolve(model)
    await call.admit_prompt(0)

    async def count(chosen: Route) -> bytes:
        # Per route: an alias may mix Anthropic deployments and others, and fall back to either.
        if isinstance(chosen.provider, AnthropicProvider):
            return await chosen.provider.count_tokens(data, chosen.upstream_model, headers)
        body = anthropic_request_to_openai({**data, "max_tokens": data.get("max_tokens") or 1})
        return orjson.dumps({"input_tokens": estimate_request_tokens(body)})

    # Recorded as answered, as every call is (no ledger row: it keeps none). It used to be left
    # unrecorded, and the handler settled it as a client gone (499).
    return call.answer_json(await call.upstream(count), Usage())


def estimate_request_tokens(body: dict[str, Any]) -> int:
    """About 4 characters a token over the text of the messages, plus the tools' JSON, plus a
    few tokens per message for its framing: OpenAI's rule of thumb for English and code, not
    measured against a real tokenizer (none is available offline)."""
    messages = body.get("messages") or []
    framing = 4 * len(messages)
    return estimate_prompt_tokens([*messages, *tools_of(body, "tools")]) + framing
