"""The call pipeline: what every endpoint does with one call, from its caller to its ledger row.

An endpoint module (``chat``, ``messages``, ``media``) holds only its dialect: how to read its
request, what to send upstream and how to render the answer. The steps they share are here:

1. ``serve(request, endpoint, steps)``: the caller, authenticated by the API
   (``gateway.api.routes``), gets a ``Call``; ``steps`` are the endpoint's.
2. ``call.parse_json(body)``: the body, refused before it is parsed when too large or too complex;
   the call learns the requested model even when the rest of the body is bad.
3. ``call.resolve(model, operation)``: the route (provider, upstream model, prices); 404, or 400
   when the model does not serve the operation.
4. ``call.admit(...)``: allow-lists, rate limits and budgets (``gateway.limits.policy``).
5. ``call.upstream(attempt)``: the one place an upstream is called.
6. ``call.answer_json(...)`` or ``call.answer_stream(...)``: the answer, and the call's ledger row.

Every call that got past authentication leaves exactly one ledger row: successes, upstream
failures, invalid bodies, and streams the client walked away from (with the tokens seen so far).
Whatever the steps raise becomes the error answer, in the endpoint's shape, and its row.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from gateway.api.errors import ErrorRenderer, ResponseAborted, error_renderer_for
from gateway.calls.metering import StreamMeter, estimate_prompt_tokens
from gateway.calls.parsing import parse_json_object
from gateway.limits.policy import Admission, Estimate
from gateway.runtime import Runtime, get_runtime
from gateway.telemetry import Attempt
from gateway.tenants.auth import Caller
from gateway.usage.endpoints import Endpoint
from providers.errors import GatewayError, InternalError, UpstreamTimeout, UpstreamUnavailable
from providers.factory import Route, unsupported
from providers.ids import time_ordered_hex
from providers.pricing import cost_of
from providers.redaction import redact
from providers.types import Operation, Units, Usage

log = logging.getLogger("tollgate.calls")

T = TypeVar("T")
ItemT = TypeVar("ItemT")

CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a call the client abandoned (nginx's convention; never sent)."""
SERVER_SHUTDOWN = 503
"""Status recorded for a call cut at the end of a stopping worker's grace (``gateway.drain``)."""

ACTIVE_CALLS: contextvars.ContextVar[list[Call] | None] = contextvars.ContextVar(
    "tollgate_active_calls", default=None
)
"""The calls of the request being handled: ``gateway.api.handler.ApiHandler`` stamps their
headers on the answer, settles any call left without a ledger row, and tells the observers of
each call once its answer is sent (``Call.tell_observers``)."""

Steps = Callable[["Call", HttpRequest], Awaitable[HttpResponseBase]]

SESSION_HEADER = "x-claude-code-session-id"
"""A client's session id: its calls keep to one deployment (``Call.affinity_key``)."""
_SESSION_META = "HTTP_" + SESSION_HEADER.upper().replace("-", "_")  # as Django's META names it


async def serve(request: HttpRequest, endpoint: Endpoint, steps: Steps) -> HttpResponseBase:
    """Run one call of ``endpoint`` for the request's authenticated caller (``request.auth``)."""
    caller: Caller = request.auth  # type: ignore[attr-defined]
    call = Call(get_runtime(), caller, endpoint, error_renderer_for(request.path))
    request.call = call  # type: ignore[attr-defined]  # its headers: gateway.api.middleware
    meta = request.META  # not request.headers: a dict of every header built for two lookups
    call.affinity_key = meta.get(_SESSION_META)
    call.traceparent = meta.get("HTTP_TRACEPARENT")
    return await call.run(lambda: steps(call, request))


@dataclass(slots=True)
class OpenStream(Generic[ItemT]):
    """An upstream stream whose first item has arrived: a failure before it is answered as a
    plain error (and may be retried); ``first`` is None for a stream that may be empty (audio)."""

    first: ItemT | None
    rest: AsyncIterator[ItemT]
    aclose: Callable[[], Awaitable[None]]


async def open_stream(
    items: AsyncIterator[ItemT],
    route: Route,
    aclose: Callable[[], Awaitable[None]] | None = None,
    may_be_empty: bool = False,
) -> OpenStream[ItemT]:
    """Wait for the first item of ``items`` (an async generator, or closed by ``aclose``)."""
    close: Callable[[], Awaitable[None]] = aclose or items.aclose  # type: ignore[attr-defined]
    try:
        first: ItemT | None = await anext(items)
    except StopAsyncIteration:
        if not may_be_empty:
            raise UpstreamUnavailable(
                f"The upstream provider '{route.provider_name}' sent an empty stream."
            ) from None
        first = None
    except BaseException:
        await close()
        raise
    return OpenStream(first, items, close)


@dataclass(slots=True)
class Relay:
    """A stream ready for the client: the upstream's, its ``events`` rendered in the endpoint's
    dialect, and the ``meter`` that learns its usage on the way."""

    stream: OpenStream[Any]
    events: AsyncGenerator[bytes, None]
    meter: StreamMeter
    content_type: str = "text/event-stream"


ErrorEvent = Callable[[GatewayError], bytes]


async def _within(
    events: AsyncGenerator[bytes, None], seconds: float, route: Route
) -> AsyncGenerator[bytes, None]:
    """``events`` until ``seconds`` have passed (the route's total timeout), then a timeout.
    Each wait is timed on its own, so that no timeout is pending while the client is sent."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                event = await anext(events, None)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream provider '{route.provider_name}' did not finish its answer within "
                f"{route.total_timeout:g} s."
            ) from None
        if event is None:
            return
        yield event


class Call:
    """The state of one call, from its caller to its ledger row: who, what, where to, since when.
    ``render_error`` answers in the shape of the endpoint that was called."""

    def __init__(
        self,
        runtime: Runtime,
        caller: Caller,
        endpoint: Endpoint,
        render_error: ErrorRenderer,
    ) -> None:
        self.runtime = runtime
        self.caller = caller
        self.endpoint = endpoint
        self.render_error = render_error
        self.request_id = "req_" + time_ordered_hex()
        self.started = time.perf_counter()
        self.started_at = time.time()
        """The wall-clock time of ``started`` (traces)."""
        self.ended: float | None = None
        """When the call was recorded (``time.perf_counter``): its answer is complete."""
        self.attempt_log: list[Attempt] = []
        """Every upstream attempt, in order, with its timing (``gateway.telemetry``)."""
        self.answer_started: float | None = None
        """When the upstream's answer started: a stream's first chunk, a JSON answer whole."""
        self.route: Route | None = None
        """The deployment tried last: the one that served, once the call is answered."""
        self.routes: tuple[Route, ...] = ()
        """Every deployment of the alias being tried (``gateway.routing.router``)."""
        self.affinity_key: str | None = None
        """Calls with the same key go to the same deployment while it is healthy (prompt
        caches): ``prompt_cache_key``, ``user``, or a client's session id."""
        self.attempts = 0
        self.fallback_used = False
        self.traceparent: str | None = None
        """The caller's W3C trace context: the call's span continues its trace (traces)."""
        self._admitted: tuple[int, int | None, Units | None] | None = None
        self.operation: Operation = "chat"
        self.requested_model = ""
        self.stream = False
        self.prompt: Any = None
        """The input messages, for an estimate of the prompt tokens if the upstream never says."""
        self.abandoned_usage: Usage | None = None
        self.abandoned_units: Units | None = None
        """What the call is billed if the client hangs up before the answer (the upstream does
        the work all the same); by default, the prompt's estimate."""
        self.recorded = False
        self.error: GatewayError | None = None
        """What ended the call short of its answer (a refusal, an upstream failure), if
        anything did (``gateway.telemetry``)."""
        self.keeps_row = True
        """False for what is not a call to a model (a token count): no budget holds it (it
        costs nothing), ``record`` only settles its rate limits and writes no ledger row."""
        self.close_pending: Callable[[], Awaitable[None]] | None = None
        """Closes the upstream stream handed to a streaming response, should it never be read."""
        self.admission: Admission | None = None
        """The call's share of its rate limits and budgets, settled by ``record``."""
        self._told: dict[str, Any] | None = None
        """The row whose observers are still to be told; see ``tell_observers``."""
        self._tell_later = False
        if (calls := ACTIVE_CALLS.get()) is not None:
            calls.append(self)
            self._tell_later = True  # the handler tells them once the answer is sent

    # --- the steps -------------------------------------------------------------------------------

    async def parse_json(self, body: bytes) -> dict[str, Any]:
        """The body as a JSON object; the call learns its model even if the rest is bad."""
        data = await parse_json_object(body)
        if isinstance(model := data.get("model"), str):
            self.requested_model = model
        return data

    def resolve(self, model: str, operation: Operation = "chat") -> Route:
        """Route ``model`` for ``operation``: 404 if it does not exist, 400 if it does not
        declare the operation."""
        self.requested_model, self.operation = model, operation
        self.routes = self.runtime.factory.routes(model, operation)
        self.route = self.routes[0]
        return self.route

    async def fall_back_to(self, alias: str) -> None:
        """Move the call to the fallback ``alias`` (``gateway.routing.router``): its deployments,
        held to the caller's allow-list (``ModelNotAllowed``), and its tokens and cost admitted
        again on its prices once the first admission's are released (``Admission.release``: not
        twice in the room it is admitted in); its request stays counted, once, with the requests
        headers it gave. A fallback refused leaves the call where it was."""
        routes = self.runtime.factory.routes(alias, self.operation)
        limits = self.caller.limits
        self.runtime.policy.check_model(limits, alias, self.runtime.factory, routes[0])
        previous = self.admission
        if self._admitted is not None:
            if previous is not None:
                await previous.release()
            await self._admit(routes[0], *self._admitted, request=False)
            if previous is not None and self.admission is not None:
                self.admission.headers = {**previous.headers, **self.admission.headers}
                previous.settle(0, Decimal(0))  # given back: the fallback's admission counts
        self.routes, self.route = routes, routes[0]

    def keep_affinity(self, body: dict[str, Any]) -> None:
        """The body's own affinity key, over the session header's: OpenAI's
        ``prompt_cache_key``, else ``user``, else Anthropic's ``metadata.user_id``."""
        for key in (body.get("prompt_cache_key"), body.get("user")):
            if isinstance(key, str) and key:
                self.affinity_key = key
                return
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(user := metadata.get("user_id"), str):
            self.affinity_key = user or self.affinity_key

    def estimate_prompt_tokens(self) -> int:
        return estimate_prompt_tokens(self.prompt)

    async def admit(
        self, prompt_tokens: int, max_tokens: int | None = None, units: Units | None = None
    ) -> None:
        """Hold the call to its caller's allow-lists, rate limits and budgets before it goes
        upstream (``gateway.limits.policy``). Tokens per minute count the prompt and
        ``max_tokens``; the budget reserves the worst case: ``max_tokens``, else
        TOLLGATE_DEFAULT_RESERVE_TOKENS (none for a call billed by ``units``)."""
        route = self.route
        assert route is not None, "resolve the call's model before admitting it"
        limits = self.caller.limits
        policy = self.runtime.policy
        policy.check_model(limits, self.requested_model, self.runtime.factory, route)
        if limits.scopes:
            self._admitted = (prompt_tokens, max_tokens, units)
            await self._admit(route, prompt_tokens, max_tokens, units)

    async def admit_prompt(self, max_tokens: Any) -> None:
        """``admit`` on the prompt's estimate and the body's own output limit, if it is one."""
        limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
        await self.admit(self.estimate_prompt_tokens(), limit)

    async def _admit(
        self,
        route: Route,
        prompt_tokens: int,
        max_tokens: int | None,
        units: Units | None,
        *,
        request: bool = True,
    ) -> None:
        """Admit the call on ``route``'s prices."""
        worst = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=max_tokens
            if max_tokens is not None
            else (0 if units is not None else settings.TOLLGATE_DEFAULT_RESERVE_TOKENS),
        )
        estimate = Estimate(prompt_tokens + (max_tokens or 0), cost_of(worst, route.prices, units))
        self.admission = await self.runtime.policy.admit(
            self.caller.limits, estimate, request=request, spends=self.keeps_row
        )

    async def upstream(self, attempt: Callable[[Route], Awaitable[T]]) -> T:
        """The one place a call reaches its upstream: ``attempt`` sends it along one route and
        returns the answer (for a stream, ``open_stream``'s: the first item has arrived). The
        router (``gateway.routing.router``) chooses the route of each attempt, retries and
        falls back; ``self.route`` is then the deployment that served."""
        assert self.routes, "resolve the call's model before calling its upstream"
        try:
            return await self.runtime.router.run(self, attempt)
        except NotImplementedError:  # a provider that cannot (Anthropic serves chat only)
            raise unsupported(self.requested_model, self.operation) from None

    def attempted(self, route: Route, started: float, error: GatewayError | None) -> None:
        """The router reports an attempt that ended: with ``error``, or with the answer
        started (``answer_started``)."""
        ended = time.perf_counter()
        self.attempt_log.append(Attempt(route, started, ended, error))
        if error is None:
            self.answer_started = ended

    @property
    def upstream_seconds(self) -> float:
        """Time spent waiting on upstreams: the attempts, then a stream's relay after its first
        chunk. The rest of the call's time is the gateway's own (and backoff between retries)."""
        seconds = sum(attempt.seconds for attempt in self.attempt_log)
        if self.stream and self.answer_started is not None and self.ended is not None:
            seconds += self.ended - self.answer_started
        return seconds

    def answer_json(
        self,
        content: bytes,
        usage: Usage,
        units: Units | None = None,
        content_type: str = "application/json",
    ) -> HttpResponse:
        """The upstream's answer, complete: record the call and answer it."""
        self.record(usage, 200, units=units)
        return HttpResponse(content, content_type=content_type)

    def answer_stream(
        self, relay: Relay, error_event: ErrorEvent | None, units: Units | None = None
    ) -> StreamingHttpResponse:
        """Stream the relay's events; the call is recorded when the stream ends, however it
        ends. A failure after the first byte reaches the client in-band (``error_event``), or,
        for a body that cannot carry one (audio), cuts the response off (``ResponseAborted``)
        so that the client sees a broken download, not a short file."""
        self.close_pending = relay.stream.aclose
        response = StreamingHttpResponse(
            self._relay(relay, error_event, units), content_type=relay.content_type
        )
        if relay.content_type == "text/event-stream":
            response["cache-control"] = "no-cache"
        response["x-accel-buffering"] = "no"  # tell nginx not to buffer the stream
        return response

    async def _relay(
        self, relay: Relay, error_event: ErrorEvent | None, units: Units | None
    ) -> AsyncIterator[bytes]:
        status, error, message = 200, "", ""
        route = self.route
        try:
            if route is None or route.total_timeout is None:
                async for event in relay.events:
                    yield event
            else:
                remaining = route.total_timeout - (time.perf_counter() - self.started)
                async for event in _within(relay.events, remaining, route):
                    yield event
        except GatewayError as exc:
            self.error = exc
            status, error, message = exc.status, exc.code or exc.type, exc.message
            relay.meter.failed(exc)
            if error_event is None:
                raise ResponseAborted(exc.message) from exc
            yield error_event(exc)
        except (asyncio.CancelledError, GeneratorExit):
            status, error = self.cut_short()
            raise
        except Exception as exc:
            log.exception("stream %s failed", self.request_id)
            failure = InternalError("The gateway failed while streaming the response.")
            status, error, message = failure.status, "internal_error", failure.message
            if error_event is None:
                raise ResponseAborted("internal error") from exc
            yield error_event(failure)
        finally:
            if status == 200 and relay.meter.failure is not None:
                status, error, message = relay.meter.failure
            self.record(relay.meter.final_usage(), status, error, units, message)
            await relay.events.aclose()
            await relay.stream.aclose()

    # --- the ledger row ---------------------------------------------------------------------------

    def record(
        self,
        usage: Usage,
        status: int,
        error: str = "",
        units: Units | None = None,
        message: str = "",
    ) -> None:
        """Queue the call's ledger row: its tokens, its other ``units`` if any, and its cost;
        for a failed call, its ``error`` code and the ``message`` the caller was told, redacted
        (``providers.redaction``) before the ledger cuts it to its column.
        Exactly once: a second record of the same call is a bug, logged and dropped. The call
        counts as recorded once its row is made: a failure while making it (a value the cost
        cannot use) leaves the error answer's row to be recorded instead, not none."""
        if self.recorded:
            log.error("call %s recorded twice; the second record is dropped", self.request_id)
            return
        self.ended = time.perf_counter()
        route = self.route
        total = usage.total_tokens
        if (
            total is None
            and usage.prompt_tokens is not None
            and usage.completion_tokens is not None
        ):
            total = usage.prompt_tokens + usage.completion_tokens
        # Dated when the call was admitted, if it was: in the budget period it counted in, which
        # a period's counter is loaded from (a call admitted before midnight, answered after).
        admission = self.admission
        row: dict[str, Any] = {
            "created_at": admission.admitted_at if admission is not None else datetime.now(UTC),
            "request_id": self.request_id,
            "tenant_id": self.caller.tenant_id,
            "api_key_id": self.caller.key_id,
            "endpoint": self.endpoint.value,
            "requested_model": self.requested_model[:200],
            "served_model": route.requested_model[:200] if route else "",
            "attempts": self.attempts,
            "fallback": self.fallback_used,
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
            "error_message": redact(message) if message else "",
            "latency_ms": int((self.ended - self.started) * 1000),
        }
        if units is not None:
            row["image_count"] = units.images
            row["input_characters"] = units.characters
            row["audio_seconds"] = units.audio_seconds
        self.recorded = True
        if self.keeps_row:
            self.runtime.ledger.record(row)
            if self.admission is not None:
                self.admission.settle(total or usage.prompt_tokens or 0, row["cost_usd"])
        elif self.admission is not None:  # a token count: it costs nothing
            self.admission.settle(0, Decimal(0))
        self._told = row
        if not self._tell_later:
            self.tell_observers()

    def tell_observers(self) -> None:
        """Hand the recorded call to the runtime's observers (metrics, the request log, traces):
        once. Under ``ApiHandler`` (every served request) this waits until the answer has been
        sent, so that what only watches the call is not on its latency; the ledger row, which
        must outlive a crash, is queued before the answer all the same (``record``)."""
        row, self._told = self._told, None
        if row is None:
            return
        for observer in self.runtime.observers:
            try:
                observer.call_finished(self, row)
            except Exception:
                log.exception("observer %r failed on call %s", observer, self.request_id)

    def record_error(self, error: GatewayError) -> HttpResponse:
        self.error = error
        self.record(Usage(), error.status, error.code or error.type, message=error.message)
        return self.render_error(error)

    def record_abandoned(self) -> None:
        """The client hung up before any answer: the upstream may still bill the request."""
        usage = self.abandoned_usage or Usage(
            prompt_tokens=self.estimate_prompt_tokens() if self.prompt else None,
            completion_tokens=0,
            estimated=True,
        )
        self.record(usage, *self.cut_short(), self.abandoned_units)

    def cut_short(self) -> tuple[int, str]:
        """Why a call cancelled before its end ended: its client went away, or the worker is
        stopping and its grace ran out (``gateway.drain``)."""
        if self.runtime.drain.cutting:
            return SERVER_SHUTDOWN, "server_shutdown"
        return CLIENT_CLOSED_REQUEST, "client_disconnected"

    async def settle_unrecorded(self) -> None:
        """For a call its request left behind without a row: the client went away after the
        view returned a streaming response but before it was read, so the relay that records
        the row never ran. Close the upstream stream and record the call as abandoned."""
        if self.close_pending is not None:
            await self.close_pending()
        if not self.recorded:
            self.record_abandoned()

    async def run(self, steps: Callable[[], Awaitable[HttpResponseBase]]) -> HttpResponseBase:
        """Run the call's steps. Whatever they raise before the answer becomes the call's error
        answer and ledger row; a client that hangs up meanwhile leaves a 499 row."""
        try:
            return await steps()
        except GatewayError as error:
            return self.record_error(error)
        except asyncio.CancelledError:
            self.record_abandoned()
            raise
        except Exception:
            log.exception("call %s failed", self.request_id)
            return self.record_error(InternalError("The gateway failed to handle the request."))
