"""End to end: successful chat completions through the openai SDK, plain and streamed."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from support.chat_e2e import (
    assert_exact_usage,
    sdk_fixture,  # noqa: F401 - a fixture: sdk
)
from support.e2e import (
    CACHED,
    COMPLETION,
    HELLO,
    PROMPT,
    REASONING,
    STREAM_TEXT,
    TOOLS,
    chat_url,
    rows_of,
    settle,
    sse_events,
    validate,
)

from conftest import GatewayServer, TenantKey, wait_for_rows

pytestmark = pytest.mark.e2e

# --- a plain chat completion ---------------------------------------------------------------------


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


# --- streaming -----------------------------------------------------------------------------------


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


# --- request fields pass through untouched -------------------------------------------------------

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
