"""End to end: OpenAI clients on /v1/chat/completions with models routed to Anthropic."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from support.anthropic_e2e import (
    AN_CACHE_READ,
    AN_CACHE_WRITE,
    AN_OUTPUT,
    AN_PROMPT,
    CLAUDE_MODELS,
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    WEATHER,
    assert_claude_usage,
    assert_gpt_usage,
    assert_row,
    echoed,
    one_row,
    raw_key,
    server_fixture,  # noqa: F401 - a fixture: server
)
from support.e2e import (
    HELLO,
    STREAM_TEXT,
    TOOLS,
    check_error,
    rows_of,
    settle,
    sse_events,
    validate,
)

from conftest import GatewayServer, TenantKey

pytestmark = pytest.mark.e2e

PINNED_VERSION = "2023-06-01"  # the claude provider's anthropic_version (the default)


@pytest.fixture
def oai(server: GatewayServer) -> Iterator[Callable[..., openai.OpenAI]]:
    """``oai(tenant_or_key)``: an openai SDK client on this module's gateway, no retries."""
    clients: list[openai.OpenAI] = []

    def make(who: TenantKey | str, **options: Any) -> openai.OpenAI:
        options = {"max_retries": 0, "timeout": 15.0, **options}
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=raw_key(who), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_chat_to_claude_answers_and_bills_cache_tokens(
    server: GatewayServer, tenants: dict[str, TenantKey], oai: Callable[..., openai.OpenAI]
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(model="claude-test", messages=HELLO)
    completion = raw.parse()

    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert completion.model == "claude-test"
    assert completion.choices[0].message.content == STREAM_TEXT
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        AN_PROMPT,
        AN_OUTPUT,
        AN_PROMPT + AN_OUTPUT,
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == AN_CACHE_READ

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=False,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
def test_chat_stream_to_claude_answers_and_bills_cache_tokens(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    include_usage: bool,
) -> None:
    alice = tenants["alice"]
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-test", messages=HELLO, stream=True, **extra
    )
    chunks = list(raw.parse())

    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
        assert chunk.model == "claude-test"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == STREAM_TEXT
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == [
        "stop"
    ]
    assert len({chunk.id for chunk in chunks}) == 1
    usage_chunks = [chunk for chunk in chunks if not chunk.choices]
    if include_usage:
        assert usage_chunks == [chunks[-1]], "one usage chunk, last"
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            AN_PROMPT,
            AN_OUTPUT,
            AN_PROMPT + AN_OUTPUT,
        )
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == AN_CACHE_READ
    else:
        assert usage_chunks == [], "a usage chunk reached a client that never asked"
        assert all(chunk.usage is None for chunk in chunks)

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
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
def test_chat_to_claude_tool_use_is_a_tool_call(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-tool", messages=WEATHER, tools=TOOLS, stream=stream
    )
    if stream:
        chunks = list(raw.parse())
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
        deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
        text = "".join(delta.content or "" for delta in deltas)
        calls = [call for delta in deltas for call in delta.tool_calls or ()]
        assert {call.index for call in calls} == {0}
        headers = [call for call in calls if call.id]
        assert len(headers) == 1, "one tool call, announced once"
        assert (headers[0].id, headers[0].type) == ("toolu_fake1", "function")
        assert headers[0].function is not None
        name = headers[0].function.name
        arguments = "".join(call.function.arguments or "" for call in calls if call.function)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert [f for f in finishes if f] == ["tool_calls"]
    else:
        validate("CreateChatCompletionResponse", raw.http_response.json())
        choice = raw.parse().choices[0]
        text = choice.message.content or ""
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id == "toolu_fake1"
        name, arguments = call.function.name, call.function.arguments
        assert choice.finish_reason == "tool_calls"
    assert text == "Let me check."
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-tool",
        provider="claude",
        upstream_model="tool-use",
        stream=stream,
    )
    assert_claude_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_to_claude_sends_an_anthropic_request_with_the_gateway_credential(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]},
    ]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-echo",
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        temperature=1.5,
        stop="END",
        user="user-42",
        seed=7,
        stream=stream,
    )
    if stream:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    sent, headers = echoed(text)

    assert sent["model"] == "echo", "the upstream gets its own model name"
    assert sent["max_tokens"] == 4096, "Anthropic requires max_tokens: the default is filled in"
    assert sent["system"] == "Be brief.", "the system message is hoisted"
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]}]
    function = TOOLS[0]["function"]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": function["parameters"],
            "description": function["description"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["temperature"] == 1, "OpenAI's 0-2 capped to Anthropic's 0-1"
    assert sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "user-42"}
    assert "seed" not in sent and "user" not in sent and "stop" not in sent
    assert sent.get("stream", False) is stream
    assert headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    assert headers["anthropic-version"] == PINNED_VERSION
    assert "authorization" not in headers, "Anthropic is sent x-api-key only"
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped
    assert UPSTREAM_OPENAI_KEY not in dumped

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
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
    ("model", "status", "code", "received"),
    [
        ("claude-stream-error", 503, "upstream_overloaded", "tok0 tok1 "),
        ("claude-drop", 502, "upstream_unavailable", "tok0 tok1 "),
    ],
    ids=["error-event", "dropped-connection"],
)
def test_chat_stream_to_claude_failing_midway_is_in_band_and_billed_with_exact_prompt(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    model: str,
    status: int,
    code: str,
    received: str,
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True
    )
    assert raw.http_response.status_code == 200, "the stream had started: the error is in-band"
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
            assert chunk.choices[0].finish_reason is None, "no clean finish on a failed stream"
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == received
    assert type(caught.value) is openai.APIError, "an error event, not a broken connection"
    assert isinstance(caught.value.body, dict)
    validate("Error", caught.value.body)
    assert caught.value.body["code"] == code

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=True,
        status=status,
        error=code,
    )
    assert row.usage_estimated is True
    # The input was reported exactly by message_start; the output is the larger of what was
    # reported (1) and the content chunks the client got (2).
    assert row.completion_tokens is not None and row.completion_tokens >= 2
    assert_claude_usage(row, completion=row.completion_tokens)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("claude-fail-500", 502, "upstream_unavailable"),
        ("claude-overloaded", 503, "upstream_overloaded"),
    ],
    ids=["fail-500", "overloaded"],
)
def test_chat_to_failing_claude_is_an_openai_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    model: str,
    status: int,
    code: str,
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(openai.InternalServerError) as caught:
        oai(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
    response = caught.value.response
    check_error(response, status, type="upstream_error", code=code)
    assert response.headers["x-should-retry"] == "true"
    assert UPSTREAM_ANTHROPIC_KEY not in response.text

    row = one_row(response.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=stream,
        status=status,
        error=code,
    )
    assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


# --- the same OpenAI request shapes, OpenAI-routed or Anthropic-routed ---------------------------

SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "stream": {"stream": True, "stream_options": {"include_usage": True}},
    "tools": {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    "tools-stream": {"tools": TOOLS, "stream": True},
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_openai_and_anthropic_routed_answers_validate_against_the_same_schema(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str, shape: str
) -> None:
    alice = tenants["alice"]
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, *HELLO],
        "max_tokens": 100,
        **SHAPES[shape],
    }
    validate("CreateChatCompletionRequest", body)
    response = httpx.post(
        server.base_url + "/v1/chat/completions", headers=alice.headers, json=body, timeout=10
    )
    assert response.status_code == 200, response.text

    if body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.text)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        chunks = [json.loads(event) for event in events[:-1]]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
        contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert "".join(content or "" for content in contents) == STREAM_TEXT
        usage_chunks = [chunk for chunk in chunks if not chunk["choices"]]
        assert len(usage_chunks) == (1 if "stream_options" in body else 0)
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert [f for f in finishes if f] == ["stop"]
    else:
        answer = response.json()
        validate("CreateChatCompletionResponse", answer)
        assert answer["choices"][0]["message"]["content"] == STREAM_TEXT
        assert answer["choices"][0]["finish_reason"] == "stop"

    row = one_row(response.headers["x-request-id"])
    assert (row.status_code, row.stream) == (200, bool(body.get("stream")))
    if model == "claude-test":
        assert_claude_usage(row)
    else:
        assert_gpt_usage(row)
