"""Error responses, in the shape of the API that was called.

``/v1/messages`` speaks Anthropic's error shape ``{"type": "error", "error": {"type",
"message"}}``; every other ``/v1`` path speaks OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. Both carry the same headers: ``x-should-retry`` (which the official
SDKs obey over their own status-based retry policy) and ``retry-after`` on 429, with the
``x-ratelimit-*`` headers when the gateway's own rate limit refused the call.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from django.http import HttpResponse

from providers.anthropic.stream import anthropic_error_body
from providers.errors import GatewayError

ANTHROPIC_PATH = "/v1/messages"


class ResponseAborted(Exception):
    """Raised by a streamed body that cannot go on and has no way to say so in-band (audio):
    the server then drops the connection, so the client sees a cut-off body, not a short one."""


ErrorRenderer = Callable[[GatewayError], HttpResponse]


def _response(body: object, error: GatewayError) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(body), status=error.status, content_type="application/json"
    )
    response.error_code = error.code or error.type  # type: ignore[attr-defined]  # request log
    response["x-should-retry"] = "true" if error.retryable else "false"
    if error.status == 429:
        response["retry-after"] = "1"
    for name, value in getattr(error, "headers", {}).items():  # the policy's x-ratelimit-*
        response[name] = value
    return response


def error_response(error: GatewayError) -> HttpResponse:
    """OpenAI's error shape."""
    return _response(error.to_openai(), error)


def anthropic_error_response(error: GatewayError) -> HttpResponse:
    """Anthropic's error shape, for ``/v1/messages``."""
    return _response(anthropic_error_body(error.status, error.message), error)


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def error_renderer_for(path: str) -> ErrorRenderer:
    """How errors are answered on the API at ``path``."""
    return anthropic_error_response if is_anthropic_path(path) else error_response


def error_response_for(path: str, error: GatewayError) -> HttpResponse:
    """The error in the shape of the API at ``path``."""
    return error_renderer_for(path)(error)
