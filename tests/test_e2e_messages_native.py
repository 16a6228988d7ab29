"""End to end: Anthropic clients on /v1/messages with models routed to Anthropic, passed through."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.shared import ErrorResponse as AnthropicErrorResponse
from support.anthropic_e2e import (
    AN_CACHE_READ,
    AN_CACHE_WRITE,
    AN_INPUT,
    AN_OUTPUT,
    AN_PROMPT,
    ANTHROPIC_TOOL,
    CLAUDE_MODELS,
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    WEATHER,
    assert_claude_usage,
    assert_row,
    claude_fixture,  # noqa: F401 - a fixture: claude
    echoed,
    messages_url,
    one_row,
    server_fixture,  # noqa: F401 - a fixture: server
    x_api_key,
)
from support.e2e import HELLO, STREAM_TEXT, rows_of, settle

from conftest import GatewayServer, TenantKey, wait_for_rows

pytestmark = pytest.mark.e2e

BETA = {"anthropic-beta": "tools-2099-01-01"}


def test_messages_native_answers_with_anthropic_usage_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    raw = claude(alice).messages.with_raw_response.create(
        model="claude-test", max_tokens=64, messages=HELLO
    )
    message = raw.parse()

    assert raw.http_response.status_code == 200
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (AN_INPUT, AN_OUTPUT)
    assert usage.cache_creation_input_tokens == AN_CACHE_WRITE
    assert usage.cache_read_input_tokens == AN_CACHE_READ
    request_id = raw.headers["request-id"]
    assert request_id.startswith("req_") and request_id != "req_fake"
    assert raw.headers["x-request-id"] == request_id

    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=False,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    assert row.cost_usd == Decimal("0.0001239")
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_native_stream_gives_the_final_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    with claude(alice).messages.stream(
        model="claude-test", max_tokens=64, messages=HELLO
    ) as stream:
        request_id = stream.request_id
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(texts) == STREAM_TEXT
    assert len(texts) == 5, "the text arrives in pieces, as streamed"
    assert final.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens) == (AN_INPUT, AN_OUTPUT)
    assert usage.cache_creation_input_tokens == AN_CACHE_WRITE
    assert usage.cache_read_input_tokens == AN_CACHE_READ

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=True,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_native_tool_use_block(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    client = claude(alice)
    params: dict[str, Any] = {
        "model": "claude-tool",
        "max_tokens": 64,
        "messages": WEATHER,
        "tools": [ANTHROPIC_TOOL],
    }
    if stream:
        with client.messages.stream(**params) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(**params)
        request_id, message = raw.headers["request-id"], raw.parse()

    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("toolu_fake1", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == AN_OUTPUT

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-tool",
        provider="claude",
        upstream_model="tool-use",
        stream=stream,
    )
    assert_claude_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


NATIVE_FIELDS: dict[str, Any] = {
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Weather?"},
    ],
    "metadata": {"user_id": "user-42"},
    "stop_sequences": ["END"],
    "tools": [ANTHROPIC_TOOL],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
}
NATIVE_EXTRA: dict[str, Any] = {  # not in this SDK's parameters: sent as extra_body
    "top_k": 5,
    "x_vendor_field": {"nested": [1, 2.5, {"deep": None}], "text": "x\u2028y"},
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_native_request_reaches_anthropic_untouched_with_the_gateway_credential(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    client = claude(alice)
    if stream:
        with client.messages.stream(
            model="claude-echo", **NATIVE_FIELDS, extra_body=NATIVE_EXTRA, extra_headers=BETA
        ) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(
            model="claude-echo", **NATIVE_FIELDS, extra_body=NATIVE_EXTRA, extra_headers=BETA
        )
        request_id, message = raw.headers["request-id"], raw.parse()
    sent, headers = echoed(message.content[0].text)  # type: ignore[union-attr]

    assert sent["model"] == "echo", "the upstream gets its own model name"
    assert sent.get("stream", False) is stream
    passed = {key: value for key, value in sent.items() if key not in ("model", "stream")}
    assert passed == {**NATIVE_FIELDS, **NATIVE_EXTRA}, "every field passes through untouched"
    assert headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    # Passed through: the API version the client was written for, not the gateway's pin.
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert headers["anthropic-beta"] == "tools-2099-01-01"
    assert "authorization" not in headers, "the client's Bearer header is not passed on"
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped
    assert UPSTREAM_OPENAI_KEY not in dumped

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-echo",
        provider="claude",
        upstream_model="echo",
        stream=stream,
    )
    assert (row.prompt_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
        AN_PROMPT,
        AN_CACHE_READ,
        AN_CACHE_WRITE,
    )
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("claude-stream-error", 503, "overloaded_error", "upstream_overloaded"),
        ("claude-drop", 502, "api_error", "upstream_unavailable"),
    ],
    ids=["error-event", "dropped-connection"],
)
def test_messages_native_stream_failing_midway_raises_and_is_billed_with_exact_prompt(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    status: int,
    error_type: str,
    code: str,
) -> None:
    alice = tenants["alice"]
    texts: list[str] = []
    request_id = None
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(alice).messages.stream(model=model, max_tokens=64, messages=HELLO) as stream,
    ):
        request_id = stream.request_id
        texts.extend(stream.text_stream)
    assert "".join(texts) == "tok0 tok1 ", "the text before the failure was delivered"
    assert type(caught.value) is anthropic.APIStatusError, "an in-band error event"
    body = caught.value.body
    assert isinstance(body, dict)
    AnthropicErrorResponse.model_validate(body)
    assert body["error"]["type"] == error_type

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=True,
        status=status,
        error=code,
    )
    assert row.usage_estimated is True
    assert row.completion_tokens is not None and row.completion_tokens >= 2
    assert_claude_usage(row, completion=row.completion_tokens)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_accepts_the_key_as_api_key_auth_token_or_x_api_key(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    request_ids = []
    for auth in ("api_key", "token", "header"):
        raw = claude(alice, auth=auth).messages.with_raw_response.create(
            model="claude-test", max_tokens=64, messages=HELLO
        )
        assert raw.parse().content[0].text == STREAM_TEXT  # type: ignore[union-attr]
        request_ids.append(raw.headers["request-id"])
        sent = raw.http_request.headers
        if auth == "header":
            assert sent["x-api-key"] == alice.raw and "authorization" not in sent
        else:
            assert alice.raw in (sent.get("x-api-key"), sent.get("authorization", "")[7:])
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": "claude-test", "max_tokens": 64, "messages": HELLO},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == STREAM_TEXT
    request_ids.append(response.headers["request-id"])

    rows = wait_for_rows(4, request_id__in=request_ids)
    assert len(rows) == 4
    assert {(row.tenant_id, row.api_key_id) for row in rows} == {(alice.tenant.pk, alice.key.pk)}
