"""HTTP/1.1 wire helpers and the shared failure behaviours of the fake upstream.

Used by tests/fake_upstream.py (the server, chat and messages) and tests/fake_media.py
(embeddings, images, speech, transcriptions). An answer is a *plan*: wire bytes to write, pauses
in seconds, and ``None`` for "close the connection"; a scripted instance also puts a callable
right after the bytes that carry the status line (run once they are written: the request's stats
entry learns the status it was sent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Step = bytes | float | Callable[[], object] | None
"""Wire bytes to write, a pause in seconds, a note to run once the bytes before it are written,
or None: close the connection."""
Plan = list[Step]
Headers = list[tuple[str, str]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
SSE_HEADERS: Headers = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("transfer-encoding", "chunked"),
    ("cache-control", "no-cache"),
]
LAST_CHUNK = b"0\r\n\r\n"

Failure = tuple[int, str, str | None, str | None, str, str]
# model: (status, OpenAI type, OpenAI param, OpenAI code, Anthropic type, message)
FAILURES: dict[str, Failure] = {
    "fail-500": (500, "server_error", None, None, "api_error", "fake upstream failure"),
    "fail-429": (
        429,
        "requests",
        None,
        "rate_limit_exceeded",
        "rate_limit_error",
        "Rate limit reached for fake upstream",
    ),
    "fail-400": (
        400,
        "invalid_request_error",
        "messages",
        None,
        "invalid_request_error",
        "fake bad request",
    ),
    "fail-401": (
        401,
        "invalid_request_error",
        None,
        "invalid_api_key",
        "authentication_error",
        "Incorrect API key provided: sk-fake***",
    ),
}


ECHO_AUTH = "echo-auth-"
"""Models ``echo-auth-<status>`` answer that status with an error that quotes the request's
credentials; ``echo-auth-stream`` streams, then fails in-band with such an error."""
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
}


def echo_auth_message(headers: dict[str, str]) -> str:
    """An error message that quotes the credentials the request came with."""
    return (
        f"Invalid request. You sent Authorization: {headers.get('authorization')} "
        f"x-api-key: {headers.get('x-api-key')}"
    )


def echo_auth_answer(
    model: str, anthropic: bool, headers: dict[str, str], keep: bool, extra: Headers
) -> bytes | None:
    """The answer of an ``echo-auth-<status>`` model, None for other models (and the stream)."""
    status = model.removeprefix(ECHO_AUTH)
    if not model.startswith(ECHO_AUTH) or not status.isdigit():
        return None
    code = int(status)
    kind = ANTHROPIC_TYPES.get(code, "api_error") if anthropic else "invalid_request_error"
    message = echo_auth_message(headers)
    return full(code, error_body(anthropic, kind, message, message), keep, extra)


# status: (OpenAI type, OpenAI code, Anthropic type) of a scripted failure (tests/fake_upstream.py's
# ``fail_next`` / ``fail_rate``); other statuses: invalid_request_error (4xx) or server_error and
# api_error (5xx).
STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    403: ("invalid_request_error", None, "permission_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    409: ("invalid_request_error", None, "conflict_error"),
    413: ("invalid_request_error", None, "request_too_large"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error"),
    504: ("server_error", None, "timeout_error"),
    529: ("overloaded_error", None, "overloaded_error"),
}


def status_failure(status: int, anthropic: bool, keep: bool, headers: Headers) -> bytes:
    """A scripted failure: ``status`` with the API's error body (message: the reason phrase)."""
    default = ("invalid_request_error", None, "invalid_request_error")
    if status >= 500:
        default = ("server_error", None, "api_error")
    oa_type, code, an_type = STATUS_ERRORS.get(status, default)
    message = REASONS.get(status, f"fake upstream status {status}")
    error = error_body(anthropic, an_type if anthropic else oa_type, message, None, code)
    return full(status, error, keep, headers)


def error_body(
    anthropic: bool, type_: str, message: str, param: str | None = None, code: str | None = None
) -> Any:
    if anthropic:
        return {"type": "error", "error": {"type": type_, "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def failure_answer(failure: Failure, anthropic: bool, keep: bool, extra: Headers) -> bytes:
    status, oa_type, param, code, an_type, message = failure
    error = error_body(anthropic, an_type if anthropic else oa_type, message, param, code)
    retry: Headers = [("retry-after", "1")] if status == 429 else []
    return full(status, error, keep, retry + extra)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def head(status: int, headers: Headers, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def full(
    status: int,
    body: Any,
    keep: bool,
    headers: Headers,
    content_type: str = "application/json",
) -> bytes:
    data = body if isinstance(body, bytes) else dumps(body)
    framing = [("content-type", content_type), ("content-length", str(len(data)))]
    return head(status, framing + headers, keep) + data


def with_header(plan: Plan, line: bytes) -> Plan:
    """``plan`` with one more header line (``b"name: value\\r\\n"``) after its status line."""
    for i, step in enumerate(plan):
        if isinstance(step, bytes):
            end = step.index(b"\r\n") + 2
            return [*plan[:i], step[:end] + line + step[end:], *plan[i + 1 :]]
        if step is None:
            break
    return plan


@dataclass(frozen=True)
class Shape:
    """How a script bends a stream: pause ``stall_seconds`` after ``stall_after`` content events,
    close the connection after ``close_after`` of them (with fewer events: after the last one)."""

    stall_after: int | None = None
    stall_seconds: float = 0.0
    close_after: int | None = None


def paced(events: list[bytes], gap: float, shape: Shape | None) -> Plan:
    """Content events ``gap`` apart, bent by ``shape``; ending in None: the stream closes there."""
    plan: Plan = []
    for i, event in enumerate(events):
        if shape is not None:
            if i == shape.close_after:
                return [*plan, None]
            if i == shape.stall_after:
                plan.append(shape.stall_seconds)
        plan += [gap if i else 0.0, event]
    if shape is not None:
        if shape.stall_after is not None and shape.stall_after >= len(events):
            plan.append(shape.stall_seconds)
        if shape.close_after is not None and shape.close_after >= len(events):
            plan.append(None)
    return plan


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def compact(plan: Plan) -> Plan:
    """Merge adjacent byte steps and drop zero pauses so that each burst is one ``write``."""
    out: Plan = []
    for step in plan:
        if isinstance(step, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += step
        elif step is None or isinstance(step, bytes) or callable(step) or step > 0:
            out.append(step)
    return out
