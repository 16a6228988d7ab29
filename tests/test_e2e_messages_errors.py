"""End to end: errors on /v1/messages, in Anthropic's shape, and how those calls are billed."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.shared import ErrorResponse as AnthropicErrorResponse
from support.anthropic_e2e import (
    CLAUDE_MODELS,
    GPT_MODELS,
    MAX_BODY,
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    anthropic_events,
    assert_claude_usage,
    assert_row,
    claude_fixture,  # noqa: F401 - a fixture: claude
    messages_url,
    one_row,
    server_fixture,  # noqa: F401 - a fixture: server
    x_api_key,
)
from support.e2e import HELLO, rows_of, settle

from conftest import GatewayServer, TenantKey, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e


def check_anthropic_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if type_ != "request_too_large":  # the API's own type for 413, missing from the SDK's union
        AnthropicErrorResponse.model_validate(body)
    assert body["type"] == "error"
    assert set(body) <= {"type", "error", "request_id"}
    error = body["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    return error


def _bad_key(tenants: dict[str, TenantKey]) -> str:
    return "tg-" + "x" * 43


def _wrong_secret(tenants: dict[str, TenantKey]) -> str:
    raw = tenants["alice"].raw
    return raw[:12] + ("y" if raw[12] != "y" else "z") * (len(raw) - 12)


@pytest.mark.parametrize("make_key", [_bad_key, _wrong_secret], ids=["unknown", "wrong-secret"])
def test_messages_rejected_key_is_401_authentication_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    make_key: Callable[[dict[str, TenantKey]], str],
) -> None:
    key = make_key(tenants)
    for auth in ("api_key", "token", "header"):
        for stream in (False, True):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                claude(key, auth=auth).messages.create(
                    model="claude-test", max_tokens=64, messages=HELLO, stream=stream
                )
            check_anthropic_error(caught.value.response, 401, "authentication_error")
            assert key not in caught.value.response.text
    for headers in (x_api_key(key), {"anthropic-version": "2023-06-01"}):
        response = httpx.post(
            messages_url(server),
            headers=headers,
            json={"model": "gpt-test", "max_tokens": 64, "messages": HELLO},
            timeout=10,
        )
        check_anthropic_error(response, 401, "authentication_error")
        assert response.headers["x-should-retry"] == "false"

    settle(server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_messages_unknown_model_is_404_not_found_error(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    request_ids = []
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as caught:
            claude(alice).messages.create(
                model="claude-nope", max_tokens=64, messages=HELLO, stream=stream
            )
        error = check_anthropic_error(caught.value.response, 404, "not_found_error")
        assert "claude-nope" in error["message"]
        request_ids.append(caught.value.response.headers["request-id"])

    rows = wait_for_rows(2, request_id__in=request_ids)
    assert len(rows) == 2
    for row, stream in zip(rows, (False, True), strict=True):
        assert_row(
            row,
            alice,
            endpoint="messages",
            model="claude-nope",
            provider="",
            upstream_model="",
            stream=stream,
            status=404,
            error="model_not_found",
        )
        assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "claude-test", "max_tokens": 64, "messages": [', "invalid_json"),
        (b"[]", "invalid_json"),
        (b'{"model": "gpt-test", "max_tokens": 64, "messages": []}', "invalid_value"),
        (b'{"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}', "invalid_request"),
        # Regression: messages that were not a list crashed the call (a 500) before routing.
        (b'{"model": "claude-test", "max_tokens": 64, "messages": true}', "invalid_value"),
        (b'{"model": "gpt-test", "max_tokens": 64, "messages": 5}', "invalid_value"),
        (b'{"model": "claude-test", "max_tokens": 64, "messages": []}', "invalid_value"),
    ],
    ids=[
        "truncated-json",
        "array",
        "translated-no-messages",
        "no-model",
        "native-messages-not-a-list",
        "translated-messages-not-a-list",
        "native-no-messages",
    ],
)
def test_messages_invalid_body_is_400_invalid_request_error(
    server: GatewayServer, tenants: dict[str, TenantKey], body: bytes, code: str
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        content=body,
        headers={**x_api_key(alice), "content-type": "application/json"},
        timeout=10,
    )
    check_anthropic_error(response, 400, "invalid_request_error")

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.error_type, row.endpoint) == (400, code, "messages")
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


MESSAGES_FAILURES = [
    # (model, status, Anthropic error type, ledger error, SDK exception)
    ("claude-fail-500", 502, "api_error", "upstream_unavailable", anthropic.InternalServerError),
    ("gpt-fail-500", 502, "api_error", "upstream_unavailable", anthropic.InternalServerError),
    (
        "claude-overloaded",
        503,
        "overloaded_error",
        "upstream_overloaded",
        anthropic.InternalServerError,
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "error_type", "code", "exception"),
    MESSAGES_FAILURES,
    ids=[failure[0] for failure in MESSAGES_FAILURES],
)
def test_messages_upstream_failure_is_an_anthropic_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    status: int,
    error_type: str,
    code: str,
    exception: type[anthropic.APIStatusError],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(exception) as caught:
        claude(alice).messages.create(model=model, max_tokens=64, messages=HELLO, stream=stream)
    response = caught.value.response
    check_anthropic_error(response, status, error_type)
    assert response.headers["x-should-retry"] == "true"
    for secret in (UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, alice.raw):
        assert secret not in response.text

    row = one_row(response.headers["request-id"])
    provider = "claude" if model.startswith("claude") else "fake"
    upstream = {**CLAUDE_MODELS, **GPT_MODELS}[model]
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider=provider,
        upstream_model=upstream,
        stream=stream,
        status=status,
        error=code,
    )
    assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_translated_stream_cut_off_raises_and_is_billed_as_estimated(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    texts: list[str] = []
    request_id = None
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(alice).messages.stream(model="gpt-drop", max_tokens=64, messages=HELLO) as stream,
    ):
        request_id = stream.request_id
        texts.extend(stream.text_stream)
    assert "".join(texts) == "tok0 tok1 "
    assert type(caught.value) is anthropic.APIStatusError, "an in-band error event"
    body = caught.value.body
    assert isinstance(body, dict)
    AnthropicErrorResponse.model_validate(body)
    assert body["error"]["type"] == "api_error"

    # The same call as raw SSE: the error event ends the stream, no message_stop.
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": "gpt-drop", "max_tokens": 64, "messages": HELLO, "stream": True},
        timeout=10,
    )
    events = anthropic_events(response.text)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert "message_stop" not in [name for name, _ in events]

    assert request_id is not None
    rows = wait_for_rows(2, request_id__in=[request_id, response.headers["request-id"]])
    assert len(rows) == 2
    for row in rows:
        assert_row(
            row,
            alice,
            endpoint="messages",
            model="gpt-drop",
            provider="fake",
            upstream_model="drop-mid-stream",
            stream=True,
            status=502,
            error="upstream_unavailable",
        )
        assert row.usage_estimated is True
        assert row.completion_tokens == 2
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
        assert row.cost_usd == Decimal(row.prompt_tokens + 2 * 2) / Decimal(1_000_000)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 2


MESSAGES_RATE_LIMITED = ["claude-fail-429", "gpt-fail-429"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model", MESSAGES_RATE_LIMITED)
def test_messages_rate_limited_upstream_is_429_rate_limit_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude(alice).messages.create(model=model, max_tokens=64, messages=HELLO, stream=stream)
    response = caught.value.response
    error = check_anthropic_error(response, 429, "rate_limit_error")
    assert "Rate limit reached" in error["message"], "an upstream 4xx explains itself"
    assert response.headers["x-should-retry"] == "true"

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.error_type, row.endpoint) == (
        429,
        "rate_limit_exceeded",
        "messages",
    )
    assert row.stream is stream
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("model", MESSAGES_RATE_LIMITED)
def test_messages_429_tells_the_client_when_to_retry(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": model, "max_tokens": 64, "messages": HELLO},
        timeout=10,
    )
    one_row(response.headers["request-id"])
    check_anthropic_error(response, 429, "rate_limit_error")
    assert response.headers.get("retry-after") is not None


def _wrong_method(server: GatewayServer, who: TenantKey) -> httpx.Response:
    return httpx.get(messages_url(server), headers=x_api_key(who), timeout=10)


def _too_large(server: GatewayServer, who: TenantKey) -> httpx.Response:
    messages = [{"role": "user", "content": "x" * MAX_BODY}]
    body = {"model": "claude-test", "max_tokens": 64, "messages": messages}
    return httpx.post(messages_url(server), headers=x_api_key(who), json=body, timeout=10)


@pytest.mark.parametrize(
    ("call", "status", "error_type"),
    [(_wrong_method, 405, "invalid_request_error"), (_too_large, 413, "request_too_large")],
    ids=["wrong-method-405", "too-large-413"],
)
def test_messages_errors_outside_the_view_are_in_anthropic_shape(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    call: Callable[[GatewayServer, TenantKey], httpx.Response],
    status: int,
    error_type: str,
) -> None:
    response = call(server, tenants["alice"])
    assert response.status_code == status  # what works already
    check_anthropic_error(response, status, error_type)


@pytest.mark.parametrize(
    ("model", "provider"),
    [("claude-slow-stream", "claude"), ("gpt-slow-stream", "fake")],
    ids=["native", "translated"],
)
def test_messages_client_disconnect_mid_stream_is_billed_at_once_as_499(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str, provider: str
) -> None:
    alice = tenants["alice"]
    body = {"model": model, "max_tokens": 64, "messages": HELLO, "stream": True}
    deltas = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", messages_url(server), headers=x_api_key(alice), json=body
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                deltas += 1
                if deltas == 3:
                    break
    closed_at = time.monotonic()

    rows = wait_for_rows(1, timeout=9.0, request_id=request_id)
    waited = time.monotonic() - closed_at
    assert rows, "no ledger row for the abandoned stream"
    assert waited < 5.0, f"the row took {waited:.1f} s: the gateway streamed on to the end"
    row = rows[0]
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider=provider,
        upstream_model="slow-stream",
        stream=True,
        status=499,
        error="client_disconnected",
    )
    assert row.usage_estimated is True
    assert row.completion_tokens is not None and deltas <= row.completion_tokens <= 99
    if provider == "claude":  # message_start reported the input exactly
        assert_claude_usage(row, completion=row.completion_tokens)
    else:
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1
