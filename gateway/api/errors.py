"""Error responses, in the shape of the API that was called.

``/v1/messages`` speaks Anthropic's error shape ``{"type": "error", "error": {"type",
"message"}}``; every other ``/v1`` path speaks OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. Both carry the same headers: the request id, ``x-should-retry`` (which the official
SDKs obey over their own status-based retry policy) and ``retry-after`` on 429, with the
``x-ratelimit-*`` headers when the gateway's own rate limit refused the call.
"""

from __future__ import annotations

import orjson
from django.http import HttpResponse

from providers.anthropic.stream import anthropic_error_body
from providers.errors import GatewayError

ANTHROPIC_PATH = "/v1/messages"


class ResponseAborted(Exception):
    """Raised by a streamed body that cannot go on and has no way to say so in-band (audio):
    the server then drops the connection, so the client sees a cut-off body, not a short one."""


def _response(body: object, error: GatewayError, request_id: str | None) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(body), status=error.status, content_type="application/json"
    )
    if request_id:
        response["x-request-id"] = request_id
    response["x-should-retry"] = "true" if error.retryable else "false"
    if error.status == 429:
        response["retry-after"] = "1"
    for name, value in getattr(error, "headers", {}).items():  # the policy's x-ratelimit-*
        response[name] = value
    return response


def error_response(error: GatewayError, request_id: str | None = None) -> HttpResponse:
    """OpenAI's error shape."""
    return _response(error.to_openai(), error, request_id)


def anthropic_error_response(error: GatewayError, request_id: str | None = None) -> HttpResponse:
    """Anthropic's error shape, for ``/v1/messages``."""
    response = _response(anthropic_error_body(error.status, error.message), error, request_id)
    if request_id:
        response["request-id"] = request_id
    return response


def error_response_for(path: str, error: GatewayError) -> HttpResponse:
    """The error in the shape of the API at ``path``."""
    if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
        return anthropic_error_response(error)
    return error_response(error)
