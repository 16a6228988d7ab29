"""One error tree for the whole gateway, grouped by who is at fault.

Every error carries what the API needs to answer in OpenAI's shape: the HTTP ``status``, the
OpenAI ``type`` and ``code``, the offending ``param`` when there is one, and whether a client may
``retryable`` the call. The API layer renders any ``GatewayError`` as
``{"error": {"message", "type", "param", "code"}}``; nothing else reaches a client.

    GatewayError
    ├── CallerError         the request is wrong (4xx)
    │   ├── InvalidRequest, AuthenticationFailed, PermissionDenied, ModelNotFound,
    │   │   UnsupportedOperation, PayloadTooLarge, HeadersTooLarge
    ├── PolicyError         the request is fine, the tenant's limits say no (429)
    ├── ProviderError       the upstream said no, timed out or broke
    │   ├── UpstreamRejected (upstream 4xx/429, status kept; ContextWindowExceeded),
    │   │   UpstreamUnavailable (502), UpstreamTimeout (504)
    ├── ServiceUnavailable  a service the gateway needs is down (503, with Retry-After)
    └── InternalError       our bug (500)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from providers.redaction import redact

if TYPE_CHECKING:
    from providers.types import Usage


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if retryable is not None:
            self.retryable = retryable

    def to_openai(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --- caller ---------------------------------------------------------------------------------


class CallerError(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidRequest(CallerError):
    code = "invalid_request"


class AuthenticationFailed(CallerError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(CallerError):
    status = 403
    code = "permission_denied"


class ModelNotFound(CallerError):
    status = 404
    code = "model_not_found"


class UnsupportedOperation(CallerError):
    """The routed provider cannot do what was asked (e.g. images on a chat-only backend)."""

    code = "unsupported_operation"


class PayloadTooLarge(CallerError):
    status = 413
    code = "payload_too_large"


class HeadersTooLarge(CallerError):
    status = 431
    code = "request_header_fields_too_large"


# --- policy ---------------------------------------------------------------------------------


class PolicyError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


# --- provider -------------------------------------------------------------------------------


class ProviderError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    usage_so_far: Usage | None = None
    """For a stream that failed part-way: the usage the upstream had reported by then (exact
    input tokens, output tokens reported so far), for the ledger. ``None`` when it reported none."""
    retry_after: float | None = None
    """Seconds the upstream asked us to wait (``retry-after-ms`` or ``retry-after``), if it did."""
    upstream_status: int | None = None
    """The upstream's own HTTP status, when it answered with one (the router cools a deployment
    down, or an upstream key on 401/403, by it)."""


class UpstreamRejected(ProviderError):
    """The upstream answered with a 4xx (or 429): its status is passed on to the client."""

    type = "invalid_request_error"


class ContextWindowExceeded(UpstreamRejected):
    """The upstream said the prompt does not fit the model (``context_window_fallbacks``)."""

    status = 400
    code = "context_length_exceeded"


class UpstreamUnavailable(ProviderError):
    """The upstream could not be reached, answered 5xx, or broke off a response."""

    status = 502
    code = "upstream_unavailable"
    retryable = True


class UpstreamKeyMissing(ProviderError):
    """The gateway has no key for the upstream: its message names the variable to set."""

    status = 503
    type = "server_error"
    code = "upstream_key_missing"


class UpstreamTimeout(ProviderError):
    status = 504
    code = "upstream_timeout"
    retryable = True


# --- gateway --------------------------------------------------------------------------------


class ServiceUnavailable(GatewayError):
    """The gateway cannot decide on the call now: its database or its shared counters are down.
    Retryable, with ``Retry-After``: the client should come back, not give up."""

    status = 503
    type = "server_error"
    code = "service_unavailable"
    retryable = True

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"retry-after": str(max(retry_after, 1))}


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


def error_for_upstream_status(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> ProviderError:
    """Classify an upstream HTTP failure by its status code and its error ``code`` (never by
    parsing its text, but for the one case below). The upstream's ``message`` and ``param``
    reach the tenant, so credentials are redacted from them here, the one place every upstream
    failure passes."""
    if status == 400 and is_context_window_error(code, message):
        error: ProviderError = ContextWindowExceeded(redact(message))
    else:
        error = _classified(status, redact(message))
    error.param = redact(param) if param is not None else None
    error.upstream_status = status
    return error


def is_context_window_error(code: str | None, message: str) -> bool:
    """OpenAI and the servers that copy it say ``context_length_exceeded``; Anthropic has no
    code for it, and its documented message is the only sign."""
    return code == "context_length_exceeded" or message.startswith("prompt is too long")


def _classified(status: int, message: str) -> ProviderError:
    if status == 429:
        return UpstreamRejected(
            message,
            status=429,
            type="rate_limit_error",
            code="rate_limit_exceeded",
            retryable=True,
        )
    if status in (401, 403):
        # The tenant's key was fine; ours (the gateway's upstream credential) was not.
        return UpstreamUnavailable(message, code="upstream_auth_failed", retryable=False)
    if status == 404:
        return UpstreamRejected(message, status=404, code="model_not_found")
    if status == 409:
        return UpstreamRejected(message, status=409, code="upstream_conflict", retryable=True)
    if status in (408, 504):
        return UpstreamTimeout(message)
    if 400 <= status < 500:
        return UpstreamRejected(
            message, status=400 if status != 413 else 413, code="upstream_rejected"
        )
    if status == 503 or status == 529:
        return UpstreamUnavailable(message, status=503, code="upstream_overloaded")
    return UpstreamUnavailable(message)
