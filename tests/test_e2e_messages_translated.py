"""End to end: Anthropic clients on /v1/messages with models routed to an OpenAI upstream."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest
from support.anthropic_e2e import (
    AN_OUTPUT,
    ANTHROPIC_TOOL,
    OA_CACHED,
    OA_COMPLETION,
    OA_PROMPT,
    UPSTREAM_OPENAI_KEY,
    WEATHER,
    WEATHER_SCHEMA,
    anthropic_events,
    assert_gpt_usage,
    assert_row,
    claude_fixture,  # noqa: F401 - a fixture: claude
    echoed,
    messages_url,
    one_row,
    server_fixture,  # noqa: F401 - a fixture: server
    x_api_key,
)
from support.e2e import HELLO, STREAM_TEXT, rows_of, settle, validate

from conftest import GatewayServer, TenantKey

pytestmark = pytest.mark.e2e


def check_event_grammar(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's stream grammar: message_start first; blocks 0, 1, ... each opened, given its
    deltas and closed before the next opens; message_delta then message_stop last. Pings anywhere.
    """
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_stop") == 1
    open_index: int | None = None
    started: list[int] = []
    stopped: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None, "a block opened while another is open"
            open_index = data["index"]
            started.append(data["index"])
        elif name == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
        elif name == "content_block_stop":
            assert data["index"] == open_index, "a stop for a block that is not open"
            stopped.append(data["index"])
            open_index = None
        elif name in ("message_delta", "message_stop"):
            assert open_index is None, f"{name} while block {open_index} is open"
    assert started == list(range(len(started))), "block indices are 0, 1, 2, ..."
    assert stopped == started, "every content_block_start has its content_block_stop"


def test_messages_translated_answers_as_an_anthropic_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    raw = claude(alice).messages.with_raw_response.create(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=HELLO
    )
    message = raw.parse()

    assert message.type == "message" and message.role == "assistant"
    assert message.model == "gpt-test"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert usage.input_tokens == OA_PROMPT - OA_CACHED, "Anthropic's input excludes cached input"
    assert usage.output_tokens == OA_COMPLETION
    assert usage.cache_read_input_tokens == OA_CACHED
    assert usage.cache_creation_input_tokens == 0

    row = one_row(raw.headers["request-id"])
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-test",
        provider="fake",
        upstream_model="fake-gpt",
        stream=False,
    )
    assert_gpt_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_translated_stream_gives_the_final_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    with claude(alice).messages.stream(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=HELLO
    ) as stream:
        request_id = stream.request_id
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(texts) == STREAM_TEXT
    assert final.model == "gpt-test"
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens) == (OA_PROMPT - OA_CACHED, OA_COMPLETION)
    assert usage.cache_read_input_tokens == OA_CACHED

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-test",
        provider="fake",
        upstream_model="fake-gpt",
        stream=True,
    )
    assert_gpt_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_translated_request_reaches_the_openai_upstream_in_openai_shape(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    params: dict[str, Any] = {
        "model": "gpt-echo",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": WEATHER,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "extra_body": {"top_k": 5},
    }
    client = claude(alice)
    if stream:
        with client.messages.stream(**params) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(**params)
        request_id, message = raw.headers["request-id"], raw.parse()
    assert message.stop_reason == "end_turn"
    sent, headers = echoed(message.content[0].text)  # type: ignore[union-attr]

    validate("CreateChatCompletionRequest", sent)
    assert sent["model"] == "echo"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": WEATHER[0]["content"]},
    ], "the system prompt becomes the first message"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_SCHEMA,
                "description": "Weather in a city.",
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["max_tokens"] == 64
    assert sent["stop"] == ["END"]
    assert sent["user"] == "user-42"
    for anthropic_only in ("system", "top_k", "metadata", "stop_sequences"):
        assert anthropic_only not in sent
    if stream:
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}, "usage is always asked for"
    else:
        assert sent.get("stream") in (None, False)
    assert headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert "x-api-key" not in headers and "anthropic-version" not in headers
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-echo",
        provider="fake",
        upstream_model="echo",
        stream=stream,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (OA_PROMPT, OA_COMPLETION)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    ("model", "text", "stop_reason"),
    [
        ("gpt-test", STREAM_TEXT, "end_turn"),
        ("claude-test", STREAM_TEXT, "end_turn"),
        ("claude-tool", "Let me check.", "tool_use"),
    ],
    ids=["translated", "native", "native-tool"],
)
def test_messages_stream_follows_anthropic_event_grammar(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    model: str,
    text: str,
    stop_reason: str,
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": model, "max_tokens": 64, "messages": HELLO, "stream": True},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert "[DONE]" not in response.text
    events = anthropic_events(response.text)
    check_event_grammar(events)

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert (start["type"], start["role"], start["content"]) == ("message", "assistant", [])
    assert start["stop_reason"] is None
    if model == "gpt-test":
        assert start["model"] == "gpt-test"
    streamed = "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )
    assert streamed == text
    message_delta = next(data for name, data in events if name == "message_delta")
    assert message_delta["delta"]["stop_reason"] == stop_reason
    expected_output = OA_COMPLETION if model == "gpt-test" else AN_OUTPUT
    assert message_delta["usage"]["output_tokens"] == expected_output
    if model == "gpt-test":
        assert message_delta["usage"]["input_tokens"] == OA_PROMPT - OA_CACHED
        assert message_delta["usage"]["cache_read_input_tokens"] == OA_CACHED

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.endpoint, row.stream) == (200, "messages", True)
    assert row.usage_estimated is False
