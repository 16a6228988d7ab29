"""The lean ASGI handler of the ``/v1`` API (``tollgate.asgi`` sends it every ``/v1`` request, and
the load balancers' probes ``/healthz`` and ``/readyz``).

``ApiHandler`` is Django's ``ASGIHandler`` without the per-request costs that a profile showed to
dominate a gateway call, none of which the API needs:

- Django gives every request its own thread-sensitive context, so each request that touches sync
  code starts and joins an OS thread of its own. The API's sync work (a key lookup on a cache miss)
  instead shares one thread, asgiref's process-wide executor. The trade-off: sync work of all
  concurrent API requests queues on that one thread, so it must stay short; the hot path does none.
- The session, auth, CSRF and messages middleware run their hooks through ``sync_to_async`` (one
  thread hop each per request). The API authenticates with its own keys and runs only
  ``API_MIDDLEWARE``.
- ``request_started`` / ``request_finished`` run ``close_old_connections`` around every request.
  The API instead checks its connection's age and health right before it uses it
  (``gateway.outage``), which on the hot path is never.

And for a call (``POST`` to one of ``gateway.api.routes.CALLS``) it skips the URL resolution, the
middleware chain and ninja's operation, a sixth of a call's time on the event loop: the call goes
straight to its view (``answer_call``), its answer through the middleware's work (``finish``).
Django's thread hop to log a 4xx/5xx answer is skipped for every ``/v1`` request.

Before Django sees a request, the handler refuses what no view should parse: headers over
TOLLGATE_MAX_HEADER_BYTES (431) or not ASCII where the gateway reads them (400), and bodies over
the path's limit (413, as soon as it is known). After the view, it settles the calls the request
left without a ledger row (``gateway.calls.pipeline``), and then tells the observers of its
calls (metrics, the request log, traces): after the answer, not before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import ResolverMatch, set_script_prefix, set_urlconf

from gateway.api.errors import ResponseAborted, error_response_for
from gateway.api.middleware import GATEWAY_HEADERS, count_without_call, finish, stamp
from gateway.api.routes import CALLS, answer_call
from gateway.calls.pipeline import ACTIVE_CALLS, Call, Steps
from gateway.runtime import get_runtime
from gateway.telemetry.logs import request_answered
from gateway.usage.endpoints import Endpoint
from providers.errors import (
    CallerError,
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
)

log = logging.getLogger("tollgate")

Scope = dict[str, Any]
API_MIDDLEWARE = ["gateway.api.middleware.api_responses"]
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions"})
"""Endpoints that take a file: their bodies are capped by TOLLGATE_MAX_UPLOAD_BYTES."""
FORM_ROOM_BYTES = 1024 * 1024
"""Room in an upload's body for the multipart framing and the form's other fields; the view
then holds the file itself to TOLLGATE_MAX_UPLOAD_BYTES."""


def body_limit(path: str) -> int:
    if path in UPLOAD_PATHS:
        return int(settings.TOLLGATE_MAX_UPLOAD_BYTES) + FORM_ROOM_BYTES
    return int(settings.TOLLGATE_MAX_BODY_BYTES)


def too_large(path: str, limit: int) -> PayloadTooLarge:
    if path in UPLOAD_PATHS:
        return PayloadTooLarge(
            f"The upload is too large: files may be up to "
            f"{settings.TOLLGATE_MAX_UPLOAD_BYTES} bytes.",
            param="file",
        )
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.")


ASCII_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"anthropic-version", b"anthropic-beta", b"content-type"}
)
"""Headers the gateway reads or sends upstream: their values must be ASCII (a key or a version
never is anything else, and httpx cannot send anything else)."""


def header_problem(scope: Scope) -> CallerError | None:
    """A 431 when the headers add up to more than TOLLGATE_MAX_HEADER_BYTES, a 400 naming the
    header when one the gateway uses is not ASCII; None for every normal request. One pass over
    a dozen headers: it runs on every request."""
    size = 0
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value)
        if name in ASCII_HEADERS and not value.isascii():
            return InvalidRequest(
                f"The header '{name.decode()}' must be ASCII.", code="invalid_header"
            )
    limit = settings.TOLLGATE_MAX_HEADER_BYTES
    if size > limit:
        return HeadersTooLarge(f"The request's headers are larger than {limit} bytes.")
    return None


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


class ApiHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._static_routes: dict[str, ResolverMatch] = {}

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """Django's URL resolution, kept for the paths without parameters (a fixed handful, such
        as ``/v1/models``): resolving walks every pattern of the API on each request. Calls do
        not come here (``answer_call``); the model list, usage and wrong methods on call paths
        do. The URLconf does not change while serving."""
        match = self._static_routes.get(request.path_info)
        if match is None:
            match = super().resolve_request(request)
            if not match.args and not match.kwargs and not hasattr(request, "urlconf"):
                self._static_routes[request.path_info] = match
        request.resolver_match = match
        return match

    def load_middleware(self, is_async: bool = False) -> None:
        stock = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = stock

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # No ThreadSensitiveContext: see the docstring. The request runs in an asyncio task that a
        # disconnect may cancel: the server's, or one of ours where the server's is not a plain
        # asyncio task (granian's --task-impl rust, whose tasks take no callbacks).
        if type(asyncio.current_task()) is asyncio.Task:
            await self.handle(scope, receive, send)
        else:
            await asyncio.create_task(self.handle(scope, receive, send))

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        if (problem := header_problem(scope)) is not None:
            await self._refuse(scope, problem, send)
            return
        try:
            body = await self._read_body(receive, scope)
        except RequestAborted:
            return
        except PayloadTooLarge as exc:
            await self._refuse(scope, exc, send)
            return
        prefix = settings.FORCE_SCRIPT_NAME or scope.get("root_path", "")
        if prefix:  # else "/", which Django takes when none is set: a context write saved
            set_script_prefix(prefix)
        request, early_response = self.create_request(scope, io.BytesIO(body))
        if request is None:
            assert early_response is not None  # create_request returns one or the other
            count_without_call(scope["path"], early_response.status_code)
            await self.send_response(early_response, send)
            return
        if scope["path"] not in UPLOAD_PATHS:
            # The body is read and held to its limit (``_read_body``): Django's ``body`` would
            # check its size again, read it from the stream and wrap it in a new one.
            request._body = body

        answering = False
        direct = CALLS.get(request.path_info) if request.method == "POST" else None

        async def process_request() -> None:
            nonlocal answering
            if direct is not None:
                response = await self.answer_call(request, *direct)
            else:
                response = await self.run_get_response(request)
            answering = True
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:  # the client went away meanwhile
                pass
            except ResponseAborted:  # the server closes the connection: the body is cut off
                log.warning("response to %r cut off: its upstream failed", scope["path"])

        # As Django does: a client that disconnects cancels the request, and with it the
        # upstream call or stream, whose ledger row then records the disconnect. The request
        # runs in the server's own task, which the listener (or the drain, at its cut) cancels:
        # no second task to start and wait for, two turns of the event loop fewer per request.
        task = asyncio.current_task()
        assert task is not None
        drain = get_runtime().drain
        calls: list[Call] = []
        token = ACTIVE_CALLS.set(calls)  # the request's calls register here
        listener = asyncio.create_task(self._cancel_on_disconnect(receive, task))
        drain.track(task)
        try:
            await process_request()
        except asyncio.CancelledError:
            if not (listener.done() or drain.cutting):
                raise  # the server cancels the request: its calls are settled below all the same
        finally:
            # Also when the server cancels the request (a stream still running when uvicorn's
            # --timeout-graceful-shutdown is up): the call ends as if its client had gone, and
            # is recorded before the ledger's last flush.
            listener.cancel()
            drain.untrack(task)
            ACTIVE_CALLS.reset(token)
            if task.cancelling() and (listener.done() or drain.cutting):
                task.uncancel()  # our own cancel, handled: later awaits are not cancelled
            try:
                for call in calls:
                    if not call.recorded:
                        await call.settle_unrecorded()
            finally:
                for call in calls:
                    call.tell_observers()  # the answer is sent: off the call's latency
        if not answering and drain.cutting:
            await self._answer_cut(scope["path"], calls, send)

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        """Django's, with two differences.

        - Every answer that is not a stream says its length, as Django's CommonMiddleware has
          the admin's say it (the API's chain leaves it out): without it the server frames a
          whole answer in chunks, and an HTTP/1.0 client loses its connection.
        - The headers the gateway made itself (``GATEWAY_HEADERS``: a rate-limited caller's
          ``x-ratelimit-*``) are sent as they are, not put through Django's conversion of each
          header set on a response, and a whole answer goes in one message, its headers encoded
          in one pass: for six rate-limit headers, a twentieth of a call's instructions
          (bench/README.md, ninth pass)."""
        made: dict[str, str] = getattr(response, GATEWAY_HEADERS, None) or {}
        if response.streaming:
            for name, value in made.items():
                response[name] = value
            await super().send_response(response, send)
            return
        body: bytes = response.content  # type: ignore[attr-defined]
        headers = [
            (name.encode("ascii"), value.encode("latin-1")) for name, value in response.items()
        ]
        if "content-length" not in response:
            headers.append((b"Content-Length", str(len(body)).encode("ascii")))
        headers += [(name.encode("ascii"), value.encode("ascii")) for name, value in made.items()]
        for cookie in response.cookies.values():
            headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _cancel_on_disconnect(receive: Any, request: asyncio.Task[Any]) -> None:
        """Cancel ``request`` when its client disconnects (the body has been read: nothing else
        comes)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        request.cancel()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Django's, without its thread hop to log each 4xx/5xx answer under ``/v1/``: a line the
        logging configuration drops (``tollgate.log_filters.SkipApiResponses``), which cost a
        thread hop on every refusal of a flood."""
        if not request.path.startswith("/v1/"):
            return await super().get_response_async(request)
        set_urlconf(settings.ROOT_URLCONF)
        response: HttpResponseBase = await self._middleware_chain(request)  # type: ignore[attr-defined]
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        return response

    @staticmethod
    async def answer_call(
        request: HttpRequest, endpoint: Endpoint, steps: Steps
    ) -> HttpResponseBase:
        """A call (``gateway.api.routes.CALLS``) straight to its view, and its answer through the
        API middleware's work: what Django's URL resolution, middleware chain and ninja's
        operation would do for it (a sixth of a call's time on the loop), bar one thing the API
        does not want, Django's thread hop to log each 4xx/5xx answer (the request log has it)."""
        started = time.perf_counter()
        return finish(request, await answer_call(request, endpoint, steps), started, apart=True)

    async def _answer_cut(self, path: str, calls: list[Call], send: Any) -> None:
        """A call cut by a stopping worker before its answer began (``gateway.drain``): the client
        gets a retryable 503 rather than a closed connection."""
        error = ServiceUnavailable("The gateway is restarting and cut the call; retry it.")
        response = error_response_for(path, error)
        stamp(response, path, calls[0].request_id if calls else None)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.send_response(response, send)

    async def _refuse(self, scope: Scope, error: CallerError, send: Any) -> None:
        """Answer a request refused before Django sees it (with its request-log line)."""
        path = scope["path"]
        response = error_response_for(path, error)
        request_id = stamp(response, path)
        count_without_call(path, response.status_code)
        request_answered(request_id, scope.get("method", ""), path, response)
        await self.send_response(response, send)

    async def _read_body(self, receive: Any, scope: Scope) -> bytes:
        """The whole body, or ``PayloadTooLarge`` as soon as it is known to exceed the path's
        limit: at once when Content-Length says so (the server discards what the client still
        sends, and the client then reads the 413)."""
        limit = body_limit(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            raise too_large(scope["path"], limit)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(scope["path"], limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


api_application = ApiHandler()
