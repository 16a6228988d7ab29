"""Keep ``/v1`` errors in OpenAI's shape even where Django answers on its own (e.g. 405)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from gateway.api.errors import error_response_for
from providers.errors import GatewayError

Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def _reshape(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    if (
        response.status_code >= 400
        and request.path.startswith("/v1/")
        and not response.get("content-type", "").startswith("application/json")
    ):
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
    return response


@sync_and_async_middleware
def openai_errors(get_response: Handler) -> Handler:
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            return _reshape(request, await get_response(request))

        markcoroutinefunction(middleware)
        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        return _reshape(request, get_response(request))  # type: ignore[arg-type]

    return sync_middleware  # type: ignore[return-value]
