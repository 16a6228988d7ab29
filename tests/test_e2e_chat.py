"""End to end: the official ``openai`` SDK against the gateway under uvicorn.

The gateway runs as a real process (``gateway_server``) routed to the fake upstream
(tests/fake_upstream.py), whose model name picks its behaviour. Assertions are what a user or an
accountant would notice: HTTP status, the ``{"error": {...}}`` body, the stream as the SDK yields
it, and the ledger row (``UsageRecord``) with its exact tokens and cost.

The ledger is written by a background thread, in FIFO order. To assert that a call wrote *no* row
(or exactly one), ``settle`` makes one more call and waits for its row: every row queued before it
is then in the database. No test sleeps to wait for the ledger.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone
from support.e2e import (
    CACHED,
    COMPLETION,
    ERROR_KEYS,
    GPT_TEST_COST,
    HELLO,
    PROMPT,
    REASONING,
    STREAM_TEXT,
    TOOLS,
    UNCHECKED,
    chat_url,
    check_error,
    rows_of,
    settle,
    sse_events,
    validate,
)

from conftest import GatewayServer, TenantKey, start_gateway, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def sdk(gateway_server: GatewayServer) -> Iterator[Callable[..., openai.OpenAI]]:
    """``sdk(tenant_key_or_raw_key, **options)``: an SDK client (no retries unless asked)."""
    clients: list[openai.OpenAI] = []

    def make(who: TenantKey | str, **options: Any) -> openai.OpenAI:
        raw = who.raw if isinstance(who, TenantKey) else who
        options = {"max_retries": 0, "timeout": 15.0, **options}
        client = openai.OpenAI(base_url=gateway_server.base_url + "/v1", api_key=raw, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def assert_exact_usage(row: UsageRecord) -> None:
    assert row.prompt_tokens == PROMPT
    assert row.completion_tokens == COMPLETION
    assert row.total_tokens == PROMPT + COMPLETION
    assert row.cache_read_tokens == CACHED
    assert row.cache_write_tokens is None
    assert row.reasoning_tokens == REASONING
    assert row.usage_estimated is False
    assert row.cost_usd == GPT_TEST_COST


# --- 1. a plain chat completion ------------------------------------------------------------------


def test_chat_completion_answers_and_bills_exact_usage(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    raw = sdk(alice).chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO)
    completion = raw.parse()

    assert raw.http_response.status_code == 200
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == STREAM_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (PROMPT, COMPLETION, PROMPT + COMPLETION)
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_") and request_id != "req_fake"

    rows = wait_for_rows(1, tenant=alice.tenant)
    assert len(rows) == 1
    row = rows[0]
    assert row.tenant_id == alice.tenant.pk
    assert row.api_key_id == alice.key.pk
    assert row.request_id == request_id
    assert row.endpoint == "chat.completions"
    assert row.requested_model == "gpt-test"
    assert row.provider == "fake"
    assert row.upstream_model == "fake-gpt"
    assert row.stream is False
    assert row.status_code == 200
    assert row.error_type == ""
    assert row.latency_ms >= 0
    assert_exact_usage(row)
    assert row.cost_usd == Decimal("0.0000195")  # (8 * 1.0 + 3 * 0.5 + 5 * 2.0) / 1e6

    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1, "one call, one ledger row"


# --- 2. streaming --------------------------------------------------------------------------------


def test_stream_without_usage_option_hides_usage_chunk_and_bills_exact_usage(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())

    assert chunks
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
        assert chunk.object == "chat.completion.chunk"
        assert chunk.choices, "a usage-only chunk (choices == []) reached a client that never asked"
        assert chunk.usage is None
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == STREAM_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({(chunk.id, chunk.created, chunk.model) for chunk in chunks}) == 1

    rows = wait_for_rows(1, request_id=raw.headers["x-request-id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    assert (row.requested_model, row.provider, row.upstream_model) == (
        "gpt-test",
        "fake",
        "fake-gpt",
    )
    assert row.stream is True
    assert (row.status_code, row.error_type) == (200, "")
    assert_exact_usage(row)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_stream_with_include_usage_ends_with_one_usage_chunk(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())

    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
    usage_chunks = [chunk for chunk in chunks if not chunk.choices]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1], "the usage chunk comes last"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        PROMPT,
        COMPLETION,
        PROMPT + COMPLETION,
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == CACHED
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == REASONING
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1]) == STREAM_TEXT

    rows = wait_for_rows(1, request_id=raw.headers["x-request-id"])
    assert len(rows) == 1
    assert rows[0].stream is True and rows[0].status_code == 200
    assert_exact_usage(rows[0])
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
def test_raw_sse_is_data_events_ending_with_done(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey], include_usage: bool
) -> None:
    alice = tenants["alice"]
    body: dict[str, Any] = {"model": "gpt-test", "messages": HELLO, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = httpx.post(chat_url(gateway_server), headers=alice.headers, json=body, timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    events = sse_events(response.text)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    empty = [chunk for chunk in chunks if chunk["choices"] == []]
    assert len(empty) == (1 if include_usage else 0)
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] == PROMPT + COMPLETION

    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    assert_exact_usage(rows[0])
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_stream_without_usage_option_has_no_usage_field(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    response = httpx.post(
        chat_url(gateway_server),
        headers=tenants["alice"].headers,
        timeout=10,
        json={"model": "gpt-test", "messages": HELLO, "stream": True},
    )
    chunks = [json.loads(event) for event in sse_events(response.text)[:-1]]
    assert chunks and all(chunk["choices"] for chunk in chunks)
    wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert [chunk for chunk in chunks if "usage" in chunk] == []


# --- 3. request fields pass through untouched ----------------------------------------------------

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}
METADATA = {"team": "alpha", "trace": "ünïcødé ✓"}
VENDOR_FIELD = {"nested": [1, 2.5, {"deep": None, "flag": False}], "text": "x\u2028y"}


@pytest.mark.parametrize("model", ["echo", "fake/echo"])
def test_unknown_fields_reach_the_upstream_unchanged(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    model: str,
) -> None:
    alice = tenants["alice"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]},
    ]
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model=model,
        messages=messages,
        tools=TOOLS,
        tool_choice="auto",
        response_format=RESPONSE_FORMAT,
        seed=42,
        logprobs=True,
        top_logprobs=2,
        metadata=METADATA,
        temperature=0.25,
        extra_body={"x_vendor_field": VENDOR_FIELD},
    )
    completion = raw.parse()
    validate("CreateChatCompletionResponse", raw.http_response.json())
    content = completion.choices[0].message.content
    assert content is not None
    echoed = json.loads(content)
    sent, headers = echoed["body"], echoed["headers"]

    assert sent["model"] == "echo", "the upstream gets its own model name"
    assert sent["messages"] == messages
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"
    assert sent["response_format"] == RESPONSE_FORMAT
    assert sent["seed"] == 42
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert sent["metadata"] == METADATA
    assert sent["temperature"] == 0.25
    assert sent["x_vendor_field"] == VENDOR_FIELD
    assert sent.get("stream") in (None, False)
    assert "stream_options" not in sent
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert alice.raw not in content, "the tenant's key must never reach the upstream"
    assert alice.raw[:12] not in content

    rows = wait_for_rows(1, request_id=raw.headers["x-request-id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.requested_model, row.provider, row.upstream_model) == (model, "fake", "echo")
    assert (row.status_code, row.prompt_tokens, row.completion_tokens) == (200, PROMPT, COMPLETION)
    # echo: input and output at 1.0 and 2.0 USD/Mtok, no cache price (cached input at 1.0)
    assert row.cost_usd == Decimal(PROMPT * 1 + COMPLETION * 2) / Decimal(1_000_000)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": False, "include_obfuscation": False}],
    ids=["no-stream-options", "usage-off"],
)
def test_stream_always_asks_the_upstream_for_usage(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    stream_options: dict[str, Any] | None,
) -> None:
    alice = tenants["alice"]
    extra: dict[str, Any] = {"stream_options": stream_options} if stream_options else {}
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, stream=True, seed=7, tools=TOOLS, **extra
    )
    chunks = list(raw.parse())
    assert all(chunk.choices for chunk in chunks), "the client did not ask for the usage chunk"
    echoed = json.loads("".join(chunk.choices[0].delta.content or "" for chunk in chunks))
    sent, headers = echoed["body"], echoed["headers"]

    assert sent["stream"] is True
    assert sent["stream_options"] == {**(stream_options or {}), "include_usage": True}
    assert sent["seed"] == 7 and sent["tools"] == TOOLS and sent["model"] == "echo"
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert alice.raw not in json.dumps(echoed)

    rows = wait_for_rows(1, request_id=raw.headers["x-request-id"])
    assert len(rows) == 1
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (PROMPT, COMPLETION)
    assert rows[0].usage_estimated is False
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


# --- 4. errors -----------------------------------------------------------------------------------


def _unknown_key(tenants: dict[str, TenantKey]) -> str:
    return "tg-" + "x" * 43


def _right_prefix_wrong_secret(tenants: dict[str, TenantKey]) -> str:
    raw = tenants["alice"].raw
    return raw[:12] + ("y" if raw[12] != "y" else "z") * (len(raw) - 12)


def _revoked(tenants: dict[str, TenantKey]) -> str:
    tenants["alice"].key.revoke()
    return tenants["alice"].raw


def _expired(tenants: dict[str, TenantKey]) -> str:
    key = tenants["alice"].key
    key.expires_at = timezone.now() - timedelta(minutes=1)
    key.save(update_fields=["expires_at"])
    return tenants["alice"].raw


def _inactive_tenant(tenants: dict[str, TenantKey]) -> str:
    tenant = tenants["alice"].tenant
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    return tenants["alice"].raw


@pytest.mark.parametrize(
    "make_key",
    [_unknown_key, _right_prefix_wrong_secret, _revoked, _expired, _inactive_tenant],
    ids=["unknown", "wrong-secret", "revoked", "expired", "inactive-tenant"],
)
def test_rejected_key_is_401_and_not_billed(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    make_key: Callable[[dict[str, TenantKey]], str],
) -> None:
    key = make_key(tenants)
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(key).chat.completions.create(model="gpt-test", messages=HELLO, stream=stream)
        check_error(
            caught.value.response, 401, type="invalid_request_error", code="invalid_api_key"
        )
        assert key not in caught.value.response.text

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_revoking_and_expiring_a_key_take_effect_on_the_next_call(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    sdk(alice).chat.completions.create(model="gpt-test", messages=HELLO)
    sdk(bob).chat.completions.create(model="gpt-test", messages=HELLO)
    alice.key.revoke()
    bob.key.expires_at = timezone.now() - timedelta(seconds=1)
    bob.key.save(update_fields=["expires_at"])
    for who in (alice, bob):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(who).chat.completions.create(model="gpt-test", messages=HELLO)
        check_error(caught.value.response, 401, code="invalid_api_key")

    settle(gateway_server, tenants["charlie"])
    assert [row.status_code for row in rows_of(alice)] == [200]
    assert [row.status_code for row in rows_of(bob)] == [200]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwdw==", "tg-notbearer"],
    ids=["absent", "empty", "bearer-only", "basic", "no-scheme"],
)
def test_missing_key_is_401_and_not_billed(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.post(
        chat_url(gateway_server),
        headers=headers,
        json={"model": "gpt-test", "messages": HELLO},
        timeout=10,
    )
    check_error(response, 401, type="invalid_request_error", code="invalid_api_key")

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_unknown_model_is_404_model_not_found(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    for model in ("no-such-model", "nope/gpt-4o"):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as caught:
                sdk(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
            error = check_error(
                caught.value.response,
                404,
                type="invalid_request_error",
                code="model_not_found",
                param="model",
            )
            assert model in error["message"]
            assert caught.value.code == "model_not_found" and caught.value.param == "model"

    settle(gateway_server, tenants["bob"])
    rows = rows_of(alice)
    assert len(rows) == 4
    for row, (model, stream) in zip(
        rows,
        [
            ("no-such-model", False),
            ("no-such-model", True),
            ("nope/gpt-4o", False),
            ("nope/gpt-4o", True),
        ],
        strict=True,
    ):
        assert (row.status_code, row.error_type) == (404, "model_not_found")
        assert row.requested_model == model and row.stream is stream
        assert row.api_key_id == alice.key.pk
        assert row.prompt_tokens is None and row.cost_usd == 0


INVALID_BODIES = [
    # (body bytes, code, param)
    (b'{"model": "gpt-test", "messages": [', "invalid_json", None),
    (b"", "invalid_json", None),
    (b"\xff\xfe not utf-8", "invalid_json", None),
    (b'[{"model": "gpt-test", "messages": []}]', "invalid_json", None),
    (b'"gpt-test"', "invalid_json", None),
    (b"null", "invalid_json", None),
    (b'{"model": "gpt-test"}', "missing_required_parameter", "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_required_parameter", "model"),
    (b'{"model": "gpt-test", "messages": []}', "invalid_value", "messages"),
    (b'{"model": "gpt-test", "messages": "hi"}', "invalid_value", "messages"),
    (
        b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        "invalid_value",
        "stream",
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    INVALID_BODIES,
    ids=[
        "truncated-json",
        "empty",
        "not-utf8",
        "array",
        "string",
        "null",
        "no-messages",
        "no-model",
        "empty-messages",
        "messages-string",
        "stream-not-bool",
    ],
)
def test_invalid_body_is_400_and_billed_as_an_error(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    body: bytes,
    code: str,
    param: str | None,
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        chat_url(gateway_server),
        content=body,
        timeout=10,
        headers={**alice.headers, "content-type": "application/json"},
    )
    check_error(response, 400, type="invalid_request_error", code=code, param=param)

    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    assert (rows[0].status_code, rows[0].error_type) == (400, code)
    assert (rows[0].tenant_id, rows[0].api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_empty_messages_from_the_sdk_is_400_with_param(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(tenants["alice"]).chat.completions.create(model="gpt-test", messages=[])
    check_error(caught.value.response, 400, type="invalid_request_error", param="messages")
    assert caught.value.param == "messages"
    wait_for_rows(1, tenant=tenants["alice"].tenant)
    settle(gateway_server, tenants["bob"])
    rows = rows_of(tenants["alice"])
    assert [(row.status_code, row.error_type) for row in rows] == [(400, "invalid_value")]


UPSTREAM_FAILURES = [
    # (model, stream, status, SDK exception, type, code)
    ("fail-500", False, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-500", True, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-429", False, 429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
    ("fail-429", True, 429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
    ("slow", False, 504, openai.InternalServerError, "upstream_error", "upstream_timeout"),
    ("slow", True, 504, openai.InternalServerError, "upstream_error", "upstream_timeout"),
    ("fail-401", False, 502, openai.InternalServerError, "upstream_error", "upstream_auth_failed"),
    ("fail-401", True, 502, openai.InternalServerError, "upstream_error", "upstream_auth_failed"),
    ("garbage", False, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("garbage", True, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-400", False, 400, openai.BadRequestError, "invalid_request_error", "upstream_rejected"),
    (
        "drop-mid-stream",
        False,
        502,
        openai.InternalServerError,
        "upstream_error",
        "upstream_unavailable",
    ),
]


@pytest.mark.parametrize(
    ("model", "stream", "status", "exception", "type_", "code"),
    UPSTREAM_FAILURES,
    ids=[f"{f[0]}-{'stream' if f[1] else 'plain'}" for f in UPSTREAM_FAILURES],
)
def test_upstream_failure_is_mapped_and_billed_as_an_error(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    model: str,
    stream: bool,
    status: int,
    exception: type[openai.APIStatusError],
    type_: str,
    code: str,
) -> None:
    alice = tenants["alice"]
    started = time.monotonic()
    with pytest.raises(exception) as caught:
        sdk(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started
    response = caught.value.response
    error = check_error(
        response, status, type=type_, code=code, param=None if model != "fail-400" else UNCHECKED
    )
    assert caught.value.status_code == status
    assert "sk-fake" not in response.text and "sk-upstream-secret" not in response.text
    assert alice.raw not in response.text
    if model == "fail-429":
        assert response.headers.get("retry-after") is not None
        assert "Rate limit reached" in error["message"]
    if model == "slow":
        assert elapsed < 2.5, "the 1 s upstream timeout must cut the call short"
    if model == "fail-400":
        assert "fake bad request" in error["message"], "an upstream 4xx explains itself"

    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_code, row.error_type) == (status, code)
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    assert (row.requested_model, row.provider, row.upstream_model) == (model, "fake", model)
    assert row.stream is stream
    assert row.cost_usd == 0
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "with-key"])
def test_unknown_url_and_wrong_method_are_json_errors(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey], authenticated: bool
) -> None:
    headers = tenants["alice"].headers if authenticated else {}
    with httpx.Client(base_url=gateway_server.base_url, headers=headers, timeout=10) as client:
        for method, path in (
            ("GET", "/v1/nope"),
            ("POST", "/v1/nope"),
            ("POST", "/v1/chat/completion"),
        ):
            error = check_error(
                client.request(method, path, json={}),
                404,
                type="invalid_request_error",
                code="unknown_url",
            )
            assert path in error["message"]
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(method, "/v1/chat/completions")
            check_error(response, 405, type="invalid_request_error", code="method_not_allowed")

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_wrong_method_405_keeps_the_allow_header(gateway_server: GatewayServer) -> None:
    response = httpx.get(chat_url(gateway_server), timeout=10)
    check_error(response, 405, type="invalid_request_error", code="method_not_allowed")
    assert response.headers.get("allow") == "POST"


def test_sdk_does_not_retry_what_the_gateway_calls_not_retryable(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    with pytest.raises(openai.InternalServerError) as caught:  # SDK defaults: max_retries=2
        sdk(alice, max_retries=2).chat.completions.create(model="fail-401", messages=HELLO)
    check_error(caught.value.response, 502, code="upstream_auth_failed")
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1, "the SDK retried a call that cannot succeed"
    assert caught.value.response.headers.get("x-should-retry") == "false"


# --- 5. the upstream breaks off a stream ---------------------------------------------------------


def test_upstream_drop_mid_stream_is_an_in_band_error_and_billed_as_estimated(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model="drop-mid-stream", messages=HELLO, stream=True
    )
    assert raw.http_response.status_code == 200  # the stream had started: the error is in-band
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 "
    assert type(caught.value) is openai.APIError, "an error event, not a broken connection"
    assert isinstance(caught.value.body, dict)
    validate("Error", caught.value.body)
    assert caught.value.body["code"] == "upstream_unavailable"

    response = httpx.post(
        chat_url(gateway_server),
        headers=alice.headers,
        timeout=10,
        json={"model": "drop-mid-stream", "messages": HELLO, "stream": True},
    )
    events = sse_events(response.text)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    validate("ErrorResponse", last)
    assert set(last["error"]) == ERROR_KEYS
    assert last["error"]["code"] == "upstream_unavailable"
    contents = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:-1]]
    assert "".join(c or "" for c in contents) == "tok0 tok1 "

    rows = wait_for_rows(2, tenant=alice.tenant)
    assert [row.request_id for row in rows] == [
        raw.headers["x-request-id"],
        response.headers["x-request-id"],
    ]
    for row in rows:
        assert (row.status_code, row.error_type) == (502, "upstream_unavailable")
        assert row.stream is True
        assert row.usage_estimated is True
        assert row.completion_tokens == 2
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
        # drop-mid-stream is priced at 1.0 in / 2.0 out per Mtok: the estimate is billed
        assert row.cost_usd == Decimal(row.prompt_tokens + 2 * 2) / Decimal(1_000_000)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 2


# --- 6. the client walks away --------------------------------------------------------------------


def test_client_disconnect_mid_stream_is_billed_at_once_as_499(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    body = {"model": "slow-stream", "messages": HELLO, "stream": True}
    contents = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", chat_url(gateway_server), headers=alice.headers, json=body
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"tok' in line:
                contents += 1
                if contents == 3:
                    break
    closed_at = time.monotonic()  # leaving the blocks closed the half-read response's connection

    rows = wait_for_rows(1, timeout=9.0, request_id=request_id)
    waited = time.monotonic() - closed_at
    assert rows, "no ledger row for the abandoned stream"
    assert waited < 5.0, f"the row took {waited:.1f} s: the gateway streamed on to the end"
    row = rows[0]
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert row.usage_estimated is True
    assert row.stream is True
    assert row.completion_tokens is not None and 1 <= row.completion_tokens <= 99
    assert row.completion_tokens >= contents, "every chunk the client got was metered"
    assert row.prompt_tokens is not None and row.prompt_tokens >= 1
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_client_timeout_before_the_answer_is_billed_as_499(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    # "slow" answers after 3 s; the gateway would give up at 1 s (504); the client leaves first.
    with pytest.raises(openai.APITimeoutError):
        sdk(alice, timeout=0.3).chat.completions.create(model="slow", messages=HELLO, stream=stream)

    rows = wait_for_rows(1, tenant=alice.tenant)
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert row.usage_estimated is True and row.completion_tokens == 0
    assert row.stream is stream
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


# --- 7. models -----------------------------------------------------------------------------------


def test_models_list_and_retrieve(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    client = sdk(tenants["alice"])
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    models = {model.id: model for model in raw.parse()}
    assert {"gpt-test", "echo", "slow", "fail-500", "drop-mid-stream", "garbage"} <= set(models)
    assert models["gpt-test"].owned_by == "fake"
    assert models["gpt-test"].object == "model"

    retrieved = client.models.with_raw_response.retrieve("gpt-test")
    validate("Model", retrieved.http_response.json())
    model = retrieved.parse()
    assert (model.id, model.object, model.owned_by) == ("gpt-test", "model", "fake")

    passthrough = client.models.retrieve("fake/any-upstream-model")  # passthrough_models = true
    assert (passthrough.id, passthrough.owned_by) == ("fake/any-upstream-model", "fake")

    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    check_error(caught.value.response, 404, code="model_not_found", param="model")

    with pytest.raises(openai.AuthenticationError) as denied:
        sdk("tg-" + "x" * 43).models.list()
    check_error(denied.value.response, 401, code="invalid_api_key")
    for path in ("/v1/models", "/v1/models/gpt-test", "/v1/models/no-such-model"):
        check_error(
            httpx.get(gateway_server.base_url + path, timeout=10),
            401,
            type="invalid_request_error",
            code="invalid_api_key",
        )


# --- 8. tenants are isolated ---------------------------------------------------------------------


def test_each_call_is_billed_to_its_own_tenant_and_key(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    from gateway.models import ApiKey

    second_key, second_raw = ApiKey.objects.issue(alice.tenant, name="alice-second")
    calls = [
        (alice.raw, alice.key.pk, alice.tenant.pk, False),
        (bob.raw, bob.key.pk, bob.tenant.pk, True),
        (second_raw, second_key.pk, alice.tenant.pk, True),
        (alice.raw, alice.key.pk, alice.tenant.pk, True),
        (bob.raw, bob.key.pk, bob.tenant.pk, False),
    ]
    expected: dict[str, tuple[int, int, bool]] = {}
    for raw_key, key_id, tenant_id, stream in calls:
        raw = sdk(raw_key).chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO, stream=stream
        )
        if stream:
            list(raw.parse())
        expected[raw.headers["x-request-id"]] = (tenant_id, key_id, stream)

    rows = wait_for_rows(len(calls), request_id__in=list(expected))
    assert len(rows) == len(calls)
    for row in rows:
        assert (row.tenant_id, row.api_key_id, row.stream) == expected[row.request_id]
    assert UsageRecord.objects.filter(tenant=charlie.tenant).count() == 0
    assert UsageRecord.objects.filter(api_key=charlie.key).count() == 0
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 3
    assert UsageRecord.objects.filter(api_key=second_key).count() == 1
    assert UsageRecord.objects.filter(tenant=bob.tenant).count() == 2
    assert UsageRecord.objects.count() == len(calls)


# --- 9. concurrency: every call billed exactly once ----------------------------------------------


def test_concurrent_calls_are_each_billed_exactly_once(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    total = 50

    async def one(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO, stream=stream
        )
        if stream:
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse()])
        else:
            text = raw.parse().choices[0].message.content or ""
        return raw.headers["x-request-id"], text

    async def run() -> list[tuple[str, str]]:
        clients = [
            openai.AsyncOpenAI(
                base_url=gateway_server.base_url + "/v1", api_key=who.raw, max_retries=0, timeout=20
            )
            for who in (alice, bob)
        ]
        try:
            return await asyncio.gather(
                *(one(clients[i % 2], stream=i % 3 == 0) for i in range(total))
            )
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(run())
    request_ids = [request_id for request_id, _ in results]
    assert all(text == STREAM_TEXT for _, text in results)
    assert len(set(request_ids)) == total

    rows = wait_for_rows(total, request_id__in=request_ids)
    assert len(rows) == total
    settle(gateway_server, tenants["charlie"])
    rows = list(UsageRecord.objects.exclude(tenant=tenants["charlie"].tenant))
    assert len(rows) == total, "exactly one row per call"
    assert sorted(row.request_id for row in rows) == sorted(request_ids)
    assert all(row.status_code == 200 for row in rows)
    assert sum(row.stream for row in rows) == len([i for i in range(total) if i % 3 == 0])
    assert sum(row.tenant_id == alice.tenant.pk for row in rows) == total // 2
    assert sum((row.cost_usd for row in rows), Decimal(0)) == GPT_TEST_COST * total


# --- 10. shutdown writes what is queued ----------------------------------------------------------


def test_shutdown_flushes_queued_ledger_rows(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    server = start_gateway(tmp_path, fake_upstream, env={"TOLLGATE_LEDGER_FLUSH_SECONDS": "30"})
    try:
        request_ids = []
        with openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=alice.raw, max_retries=0, timeout=15
        ) as client:
            for stream in (False, True, False):
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=HELLO, stream=stream
                )
                if stream:
                    list(raw.parse())
                request_ids.append(raw.headers["x-request-id"])
        # The batch window is 30 s: the rows are still in the gateway's memory.
        assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 0
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -SIGTERM).
        assert server.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log_path.read_text()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    rows = list(UsageRecord.objects.filter(request_id__in=request_ids).order_by("id"))
    assert sorted(row.request_id for row in rows) == sorted(request_ids)
    for row in rows:
        assert (row.tenant_id, row.status_code) == (alice.tenant.pk, 200)
        assert_exact_usage(row)
    assert not list((tmp_path / "ledger").glob("*.jsonl")), "rows were written, not spooled"
