"""``POST /v1/messages``: Anthropic's Messages API, for clients written for Anthropic.

A model routed to Anthropic gets the request as it is (no translation: cache_control, thinking,
documents all keep working) and the answer goes back as it came, its usage read on the way. A
model routed anywhere else is reached through OpenAI's shape: the request is translated, and the
answer, streams included, is translated back into Anthropic's event sequence. Either way the call
lands in the same ledger, and errors come back in Anthropic's error shape.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from gateway.api.errors import anthropic_error_response
from gateway.calls.pipeline import (
    ChatCall,
    StreamMeter,
    event_stream_headers,
    parse_json_object,
    relay_and_record,
    validate_request,
)
from gateway.runtime import Runtime
from gateway.tenants.auth import Caller
from providers.anthropic import AnthropicProvider, NativeEvent
from providers.anthropic.endpoint import anthropic_request_to_openai, openai_response_to_anthropic
from providers.anthropic.stream import OpenAIToAnthropicStream, anthropic_error_body
from providers.base import ChatRequest
from providers.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from providers.factory import Route
from providers.types import StreamChunk


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    return sse("error", anthropic_error_body(error.status, error.message))


class MessagesService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def create(
        self, caller: Caller, body: bytes, forwarded_headers: dict[str, str] | None = None
    ) -> HttpResponseBase:
        """``forwarded_headers`` (anthropic-version, anthropic-beta) go to Anthropic upstreams."""
        call = ChatCall(self.runtime, caller, "messages", anthropic_error_response)
        return await call.answer(lambda: self._create(call, body, forwarded_headers or {}))

    async def _create(
        self, call: ChatCall, body: bytes, forwarded_headers: dict[str, str]
    ) -> HttpResponseBase:
        data = await parse_json_object(body, call)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: a model name is required", param="model")
        call.stream = data.get("stream") is True
        turns = data.get("messages")
        if not isinstance(turns, list) or not turns:
            raise InvalidRequest(
                "messages: at least one message is required",
                param="messages",
                code="invalid_value",
            )
        call.prompt = [data.get("system"), *turns]
        call.route = route = self.runtime.factory.resolve(model, "chat")
        max_tokens = data.get("max_tokens")
        await call.admit(
            route,
            call.estimate_prompt_tokens(),
            max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        )
        if isinstance(route.provider, AnthropicProvider):
            return await self._native(call, data, route, forwarded_headers)
        request = validate_request(ChatRequest, anthropic_request_to_openai(data))
        return await self._translated(call, request, route)

    # --- Anthropic upstream: pass through --------------------------------------------------------

    async def _native(
        self, call: ChatCall, data: dict[str, Any], route: Route, headers: dict[str, str]
    ) -> HttpResponseBase:
        provider = route.provider
        assert isinstance(provider, AnthropicProvider)
        if not call.stream:
            raw, usage = await provider.messages(data, route.upstream_model, headers)
            call.record(usage, 200)
            return self._json(raw, call)
        events = provider.messages_stream(data, route.upstream_model, headers)
        first = await self._first(events, route)
        call.close_pending = events.aclose
        return self._streaming(self._relay_native(call, events, first), call)

    def _relay_native(
        self,
        call: ChatCall,
        events: AsyncGenerator[NativeEvent, None],
        first: NativeEvent,
    ) -> AsyncIterator[bytes]:
        """Anthropic's own events, as they came; see ``relay_and_record``."""
        meter = StreamMeter()

        async def passed_through() -> AsyncGenerator[bytes, None]:
            event: NativeEvent | None = first
            while event is not None:
                meter.partial = event.usage
                meter.content_chunks += event.is_delta
                yield event.raw
                event = await anext(events, None)
            meter.usage = meter.partial  # message_stop came: the usage is complete

        return relay_and_record(call, meter, passed_through(), events, error_event)

    # --- any other upstream: through OpenAI's shape ----------------------------------------------

    async def _translated(
        self, call: ChatCall, request: ChatRequest, route: Route
    ) -> HttpResponseBase:
        if not request.stream:
            response = await route.provider.chat(request, route.upstream_model)
            call.record(response.usage, 200)
            message = openai_response_to_anthropic(
                response.body, call.requested_model, response.usage
            )
            return self._json(orjson.dumps(message), call)
        chunks = route.provider.stream(request, route.upstream_model)
        first = await self._first(chunks, route)
        call.close_pending = chunks.aclose
        return self._streaming(self._relay_translated(call, chunks, first), call)

    def _relay_translated(
        self,
        call: ChatCall,
        chunks: AsyncGenerator[StreamChunk, None],
        first: StreamChunk,
    ) -> AsyncIterator[bytes]:
        """OpenAI chunks as Anthropic's event sequence; see ``relay_and_record``."""
        meter = StreamMeter()
        translator = OpenAIToAnthropicStream(call.requested_model)

        async def translated() -> AsyncGenerator[bytes, None]:
            chunk: StreamChunk | None = first
            while chunk is not None:
                meter.observe(chunk)
                for name, data in translator.feed(chunk.payload, chunk.usage):
                    yield sse(name, data)
                chunk = await anext(chunks, None)
            for name, data in translator.finish():
                yield sse(name, data)

        return relay_and_record(call, meter, translated(), chunks, error_event)

    # --- shared --------------------------------------------------------------------------------

    @staticmethod
    async def _first(stream: AsyncGenerator[Any, None], route: Route) -> Any:
        """The first item, so that a failure before it is answered as a plain JSON error."""
        try:
            return await anext(stream)
        except StopAsyncIteration:
            raise UpstreamUnavailable(
                f"The upstream provider '{route.provider_name}' sent an empty stream."
            ) from None
        except BaseException:
            await stream.aclose()
            raise

    @staticmethod
    def _json(content: bytes, call: ChatCall) -> HttpResponse:
        response = HttpResponse(content, content_type="application/json")
        response["request-id"] = call.request_id
        response["x-request-id"] = call.request_id
        return response

    @staticmethod
    def _streaming(events: AsyncIterator[bytes], call: ChatCall) -> StreamingHttpResponse:
        response = StreamingHttpResponse(events, content_type="text/event-stream")
        response["request-id"] = call.request_id
        return event_stream_headers(response, call)
