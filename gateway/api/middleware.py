"""The API's one middleware, run by both handlers (``ApiHandler`` and Django's, for tests that
use Django's client). Every ``/v1`` answer gets here its request id, what served it
(``x-tollgate-model``, ``x-tollgate-deployment``, ``x-tollgate-attempts``) and the caller's
rate-limit headers, and keeps OpenAI's (or Anthropic's) error shape even where Django answers on
its own (e.g. 405). A request that made no call gets its request-log line here
(``gateway.telemetry.logs``); a call's once the call is recorded and answered."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from gateway.api.errors import error_response_for, is_anthropic_path
from gateway.runtime import get_runtime
from gateway.telemetry.logs import request_answered
from gateway.tenants.auth import Caller
from providers.errors import GatewayError
from providers.ids import time_ordered_hex

Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]
GATEWAY_HEADERS = "gateway_headers"
"""An answer's attribute: headers the gateway made itself, ASCII by construction (the policy's
``x-ratelimit-*``), which ``ApiHandler.send_response`` sends after the answer's own without
Django's checks of each header set on a response. Only a call's answer made by
``ApiHandler.answer_call`` carries them so (``finish(..., apart=True)``); through the middleware
(Django's own handler, as its test clients use it) they are the response's headers."""


def stamp(response: HttpResponseBase, path: str, request_id: str | None = None) -> str:
    """The request id every answer carries (``x-request-id``, and Anthropic's ``request-id`` on
    ``/v1/messages``): the call's, which its ledger row keeps, or a new one."""
    request_id = request_id or "req_" + time_ordered_hex()
    response["x-request-id"] = request_id
    if is_anthropic_path(path):
        response["request-id"] = request_id
    return request_id


def count_without_call(path: str, status: int, caller: object = None) -> None:
    """A ``/v1`` answer that is not a call's (a refusal before one, a model list), for the
    metrics; a call's own are counted when it is recorded (``gateway.telemetry``)."""
    metrics = get_runtime().metrics
    if metrics is not None:
        tenant = caller.tenant_name if isinstance(caller, Caller) else ""
        metrics.request_finished(path, status, tenant)


def finish(
    request: HttpRequest, response: HttpResponseBase, started: float, *, apart: bool = False
) -> HttpResponseBase:
    """The answer with what every ``/v1`` answer carries. With ``apart`` (the caller sends the
    answer through ``ApiHandler.send_response``), the rate-limit headers ride beside the
    response's own (``GATEWAY_HEADERS``); else they are set on it."""
    if not request.path.startswith("/v1/"):
        return response
    if response.status_code >= 400 and not response.get("content-type", "").startswith(
        "application/json"
    ):
        response = _reshaped(request, response)
    call = getattr(request, "call", None)  # set by gateway.calls.pipeline.serve
    if call is None:
        request_id = stamp(response, request.path)
        count_without_call(request.path, response.status_code, getattr(request, "auth", None))
        request_answered(request_id, request.method or "", request.path, response, request, started)
        return response
    stamp(response, request.path, call.request_id)
    if call.attempts:  # what served the call (gateway.routing)
        route = call.route
        response["x-tollgate-model"] = route.requested_model
        response["x-tollgate-deployment"] = route.deployment
        response["x-tollgate-attempts"] = str(call.attempts)
    if call.admission is not None:  # a rate-limited caller learns where it stands
        if apart:
            setattr(response, GATEWAY_HEADERS, call.admission.headers)
        else:
            for name, value in call.admission.headers.items():
                response[name] = value
    return response


def _reshaped(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    error = GatewayError(
        f"{request.method} is not allowed on {request.path}."
        if response.status_code == 405
        else f"The request failed with HTTP {response.status_code}.",
        status=response.status_code,
        type="invalid_request_error",
        code="method_not_allowed" if response.status_code == 405 else None,
    )
    reshaped = error_response_for(request.path, error)
    if allow := response.get("allow"):
        reshaped["allow"] = allow
    return reshaped


@sync_and_async_middleware
def api_responses(get_response: Handler) -> Handler:
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            started = time.perf_counter()
            return finish(request, await get_response(request), started)

        markcoroutinefunction(middleware)
        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        return finish(request, get_response(request), started)  # type: ignore[arg-type]

    return sync_middleware  # type: ignore[return-value]
