"""ProxyService: one call from the tenant's request to the upstream's answer and a ledger row.

Every call that got past authentication leaves exactly one ``UsageRecord``: successes, upstream
failures, invalid bodies, and streams the client walked away from (with the tokens seen so far).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from pydantic import ValidationError

from gateway.api.errors import error_response
from gateway.calls.body_limits import INLINE_BYTES, check_body_shape
from gateway.limits.policy import Admission, Estimate
from gateway.runtime import Runtime
from gateway.tenants.auth import Caller
from providers.base import ChatRequest, PassThroughRequest
from providers.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    ProviderError,
    UpstreamUnavailable,
)
from providers.factory import Route
from providers.pricing import cost_of
from providers.types import StreamChunk, Units, Usage

log = logging.getLogger("tollgate.proxy")

RequestT = TypeVar("RequestT", bound=PassThroughRequest)

CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a call the client abandoned (nginx's convention; never sent)."""


async def parse_json_object(body: bytes, call: ChatCall | None = None) -> dict[str, Any]:
    """Decode a JSON object body; ``call`` learns the model even if the rest is bad. A body
    over the nesting and item limits is refused before it is parsed
    (``gateway.calls.body_limits``)."""
    await check_body_shape(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object.",
            code="invalid_json",
        ) from None
    if len(body) > INLINE_BYTES:
        # Its parse held the event loop for up to ~45 ms (32 MB): let the other callers run
        # before the next stretch (validation, encoding the body for the upstream).
        await asyncio.sleep(0)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if call is not None and isinstance(data.get("model"), str):
        call.requested_model = data["model"]
    return data


def validate_request(request_class: type[RequestT], data: dict[str, Any]) -> RequestT:
    """Validate a decoded body; the first problem becomes a 400 naming its ``param``."""
    try:
        return request_class.from_body(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise invalid_param(param, None if first["type"] == "missing" else first["msg"]) from None


def invalid_param(param: str | None, problem: str | None = None) -> InvalidRequest:
    """A 400 naming ``param``: missing when there is no ``problem``, else invalid."""
    if problem is None:
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return InvalidRequest(
        f"Invalid value for '{param}': {problem}.", param=param, code="invalid_value"
    )


def estimate_prompt_tokens(messages: Any) -> int:
    """A rough count (4 characters a token) for calls whose upstream never reported usage."""
    chars = 0
    for message in messages or ():
        content = message.get("content") if isinstance(message, dict) else message
        chars += (
            len(content) if isinstance(content, str) else len(orjson.dumps(content, default=str))
        )
    return math.ceil(chars / 4)


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


class StreamMeter:
    """Follows a stream to know its usage, or to estimate it if the stream is cut off."""

    __slots__ = ("content_chunks", "partial", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.partial: Usage | None = None
        self.content_chunks = 0

    def observe(self, chunk: StreamChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.payload.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                self.content_chunks += 1

    def failed(self, error: GatewayError) -> None:
        """Keep what a failed stream's upstream had reported (Anthropic reports input early)."""
        if isinstance(error, ProviderError) and error.usage_so_far is not None:
            self.partial = error.usage_so_far

    def final_usage(self, call: ChatCall) -> Usage:
        """The upstream's usage; else what it reported before failing, completed with our own
        count of the output; else an estimate: prompt at 4 characters, output one per chunk."""
        if self.usage is not None:
            return self.usage
        partial = self.partial
        if partial is not None and partial.prompt_tokens is not None:
            completion = max(partial.completion_tokens or 0, self.content_chunks)
            return Usage(
                prompt_tokens=partial.prompt_tokens,
                completion_tokens=completion,
                total_tokens=partial.prompt_tokens + completion,
                cache_read_tokens=partial.cache_read_tokens,
                cache_write_tokens=partial.cache_write_tokens,
                estimated=True,
            )
        return Usage(
            prompt_tokens=call.estimate_prompt_tokens(),
            completion_tokens=self.content_chunks,
            estimated=True,
        )


ErrorRenderer = Callable[[GatewayError, str | None], HttpResponse]

ACTIVE_CALLS: contextvars.ContextVar[list[ChatCall] | None] = contextvars.ContextVar(
    "tollgate_active_calls", default=None
)
"""The calls of the request being handled: ``gateway.api.handler.ApiHandler`` settles any it leaves
without a ledger row."""


class ChatCall:
    """The state of one call, from authentication to its ledger row: who, what, where to, since
    when. ``render_error`` answers in the shape of the endpoint that was called."""

    def __init__(
        self,
        runtime: Runtime,
        caller: Caller,
        endpoint: str = "chat.completions",
        render_error: ErrorRenderer = error_response,
    ) -> None:
        self.runtime = runtime
        self.caller = caller
        self.endpoint = endpoint
        self.render_error = render_error
        self.request_id = "req_" + uuid.uuid4().hex
        self.started = time.perf_counter()
        self.route: Route | None = None
        self.requested_model = ""
        self.stream = False
        self.prompt: Any = None
        """The input messages, for an estimate of the prompt tokens if the upstream never says."""
        self.recorded = False
        self.close_pending: Callable[[], Awaitable[None]] | None = None
        """Closes the upstream stream handed to a streaming response, should it never be read."""
        self.admission: Admission | None = None
        """The call's share of its rate limits and budgets, settled by ``record``."""
        if (calls := ACTIVE_CALLS.get()) is not None:
            calls.append(self)

    def estimate_prompt_tokens(self) -> int:
        return estimate_prompt_tokens(self.prompt)

    async def admit(
        self,
        route: Route,
        prompt_tokens: int,
        max_tokens: int | None = None,
        units: Units | None = None,
    ) -> None:
        """Hold the call to its caller's allow-lists, rate limits and budgets before it goes
        upstream (``gateway.limits.policy``). Tokens per minute count the prompt and ``max_tokens``;
        the budget reserves the worst case: ``max_tokens``, else TOLLGATE_DEFAULT_RESERVE_TOKENS."""
        limits = self.caller.limits
        policy = self.runtime.policy
        policy.check_model(limits, self.requested_model, self.runtime.factory, route)
        if not limits.scopes:
            return
        worst = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=max_tokens
            if max_tokens is not None
            else (0 if units is not None else settings.TOLLGATE_DEFAULT_RESERVE_TOKENS),
        )
        estimate = Estimate(prompt_tokens + (max_tokens or 0), cost_of(worst, route.prices, units))
        self.admission = await policy.admit(limits, estimate)

    def record(
        self, usage: Usage, status: int, error: str = "", units: Units | None = None
    ) -> None:
        """Queue the call's ledger row: its tokens, its other ``units`` if any, and its cost.
        Exactly once: a second record of the same call is a bug, logged and dropped."""
        if self.recorded:
            log.error("call %s recorded twice; the second record is dropped", self.request_id)
            return
        self.recorded = True
        route = self.route
        total = usage.total_tokens
        if (
            total is None
            and usage.prompt_tokens is not None
            and usage.completion_tokens is not None
        ):
            total = usage.prompt_tokens + usage.completion_tokens
        row: dict[str, Any] = {
            "created_at": datetime.now(UTC),
            "request_id": self.request_id,
            "tenant_id": self.caller.tenant_id,
            "api_key_id": self.caller.key_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model[:200],
            "provider": route.provider_name if route else "",
            "upstream_model": route.upstream_model[:200] if route else "",
            "stream": self.stream,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": total,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "usage_estimated": usage.estimated,
            "cost_usd": cost_of(usage, route.prices if route else None, units),
            "status_code": status,
            "error_type": error,
            "latency_ms": int((time.perf_counter() - self.started) * 1000),
        }
        if units is not None:
            row["image_count"] = units.images
            row["input_characters"] = units.characters
            row["audio_seconds"] = units.audio_seconds
        self.runtime.ledger.record(row)
        if self.admission is not None:
            self.admission.settle(total or usage.prompt_tokens or 0, row["cost_usd"])

    def record_error(self, error: GatewayError) -> HttpResponse:
        self.record(Usage(), error.status, error.code or error.type)
        return self.render_error(error, self.request_id)

    def record_abandoned(self) -> None:
        """The client hung up before any answer: the upstream may still bill the prompt."""
        usage = Usage(
            prompt_tokens=self.estimate_prompt_tokens() if self.prompt else None,
            completion_tokens=0,
            estimated=True,
        )
        self.record(usage, CLIENT_CLOSED_REQUEST, "client_disconnected")

    async def settle_unrecorded(self) -> None:
        """For a call its request left behind without a row: the client went away after the
        view returned a streaming response but before it was read, so the relay that records
        the row never ran. Close the upstream stream and record the call as abandoned."""
        if self.close_pending is not None:
            await self.close_pending()
        if not self.recorded:
            self.record_abandoned()

    async def answer(self, handle: Callable[[], Awaitable[HttpResponseBase]]) -> HttpResponseBase:
        """Run the call's handler. Whatever it raises before its answer becomes the call's error
        answer and ledger row; a client that hangs up meanwhile leaves a 499 row."""
        try:
            return await handle()
        except GatewayError as error:
            return self.record_error(error)
        except asyncio.CancelledError:
            self.record_abandoned()
            raise
        except Exception:
            return self.record_unexpected()

    def record_unexpected(self) -> HttpResponse:
        log.exception("call %s failed", self.request_id)
        return self.record_error(InternalError("The gateway failed to handle the request."))


async def relay_and_record(
    call: ChatCall,
    meter: StreamMeter,
    events: AsyncGenerator[bytes, None],
    upstream: AsyncGenerator[Any, None],
    error_event: Callable[[GatewayError], bytes],
) -> AsyncIterator[bytes]:
    """Relay a stream's ``events`` to the client and, whatever happens, record the call once.

    A failure after the first byte reaches the client in-band (``error_event``); a client that
    goes away is recorded as 499 with the usage seen so far (``meter``); either way the
    ``upstream`` stream is closed."""
    status, error = 200, ""
    try:
        async for event in events:
            yield event
    except GatewayError as exc:
        status, error = exc.status, exc.code or exc.type
        meter.failed(exc)
        yield error_event(exc)
    except (asyncio.CancelledError, GeneratorExit):
        status, error = CLIENT_CLOSED_REQUEST, "client_disconnected"
        raise
    except Exception:
        log.exception("stream %s failed", call.request_id)
        status, error = 500, "internal_error"
        yield error_event(InternalError("The gateway failed while streaming the response."))
    finally:
        call.record(meter.final_usage(call), status, error)
        await events.aclose()
        await upstream.aclose()


def event_stream_headers(response: StreamingHttpResponse, call: ChatCall) -> StreamingHttpResponse:
    response["cache-control"] = "no-cache"
    response["x-accel-buffering"] = "no"  # tell nginx not to buffer the stream
    response["x-request-id"] = call.request_id
    return response


class ProxyService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def chat(self, caller: Caller, body: bytes) -> HttpResponseBase:
        call = ChatCall(self.runtime, caller)
        return await call.answer(lambda: self._chat(call, body))

    async def _chat(self, call: ChatCall, body: bytes) -> HttpResponseBase:
        request = validate_request(ChatRequest, await parse_json_object(body, call))
        call.requested_model, call.stream = request.model, request.stream
        call.prompt = [message.content for message in request.messages]
        call.route = route = self.runtime.factory.resolve(request.model, "chat")
        await call.admit(
            route,
            call.estimate_prompt_tokens(),
            request.max_completion_tokens or request.max_tokens,
        )
        if request.stream:
            return await self._stream(call, request, route)
        response = await route.provider.chat(request, route.upstream_model)
        call.record(response.usage, 200)
        http = HttpResponse(
            response.raw if response.raw is not None else orjson.dumps(response.body),
            content_type="application/json",
        )
        http["x-request-id"] = call.request_id
        return http

    async def _stream(self, call: ChatCall, request: ChatRequest, route: Route) -> HttpResponseBase:
        """Open the upstream stream; answer errors that come before the first chunk as JSON."""
        chunks = route.provider.stream(request, route.upstream_model)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise UpstreamUnavailable(
                f"The upstream provider '{route.provider_name}' sent an empty stream."
            ) from None
        except BaseException:
            await chunks.aclose()
            raise
        call.close_pending = chunks.aclose
        response = StreamingHttpResponse(
            self._relay(call, request, chunks, first), content_type="text/event-stream"
        )
        return event_stream_headers(response, call)

    def _relay(
        self,
        call: ChatCall,
        request: ChatRequest,
        chunks: AsyncGenerator[StreamChunk, None],
        first: StreamChunk,
    ) -> AsyncIterator[bytes]:
        """Forward chunks as SSE, ending with ``[DONE]``; see ``relay_and_record``."""
        meter = StreamMeter()
        hide_usage = not request.wants_usage_chunk

        async def events() -> AsyncGenerator[bytes, None]:
            chunk: StreamChunk | None = first
            while chunk is not None:
                meter.observe(chunk)
                if (event := sse_event(chunk, hide_usage)) is not None:
                    yield event
                chunk = await anext(chunks, None)
            yield b"data: [DONE]\n\n"

        def error_event(error: GatewayError) -> bytes:
            # A mid-stream failure: the client learns it in-band; the stream ends without [DONE].
            return b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"

        return relay_and_record(call, meter, events(), chunks, error_event)
