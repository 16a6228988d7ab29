"""End to end: Claude Code on /v1/messages with a model routed to an OpenAI upstream.

Its captured first request (tests/spec/claude-code-2.1.197-first-turn.json: its headers, its path
with ``?beta=true``, its 115 KB body) goes to the gateway as Claude Code sent it, for the alias
``gpt-echo`` (the fake upstream's ``echo`` model answers with what it received); the answer is
read as Claude Code reads it, and what reached the upstream is asserted field by field. A
reasoning model's answer comes back as ``thinking`` blocks through the ``anthropic`` SDK, and the
next turn, sending that block back with a tool round trip, reaches the upstream without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest
from support.anthropic_e2e import (
    UPSTREAM_OPENAI_KEY,
    anthropic_events,
    assert_row,
    claude_fixture,  # noqa: F401 - a fixture: claude
    echoed,
    one_row,
    server_fixture,  # noqa: F401 - a fixture: server
)
from support.anthropic_shapes import CLAUDE_CODE_CAPTURE, CLAUDE_CODE_FIRST_TURN
from support.anthropic_streams import rebuilt_message
from support.e2e import HELLO, STREAM_TEXT, rows_of, settle, validate

from conftest import GatewayServer, TenantKey
from fake_upstream import REASONING_TEXT
from providers.anthropic.stream import TRANSLATED_SIGNATURE

pytestmark = pytest.mark.e2e

ANTHROPIC_ONLY = ("system", "thinking", "output_config", "context_management", "metadata")


def claude_code_headers(who: TenantKey) -> dict[str, str]:
    """The captured request's headers, with ``who``'s key (httpx keeps the connection)."""
    headers = {k: v for k, v in CLAUDE_CODE_CAPTURE["headers"].items() if k != "connection"}
    return {**headers, "x-api-key": who.raw}


def post_as_claude_code(
    server: GatewayServer, who: TenantKey, body: dict[str, Any]
) -> tuple[httpx.Response, dict[str, Any]]:
    """POST ``body`` as Claude Code does; the answer and the message it reads from it."""
    response = httpx.post(
        server.base_url + CLAUDE_CODE_CAPTURE["path"],
        headers=claude_code_headers(who),
        content=json.dumps(body),
        timeout=15,
    )
    assert response.status_code == 200, response.text
    if body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        message = rebuilt_message(anthropic_events(response.text))
    else:
        message = response.json()
    anthropic.types.Message.model_validate(message)
    return response, message


@pytest.mark.parametrize("stream", [True, False], ids=["stream-as-captured", "plain"])
def test_claude_code_first_request_with_a_mid_conversation_system_message_reaches_the_upstream(
    server: GatewayServer, tenants: dict[str, TenantKey], stream: bool
) -> None:
    """Regression: it was a 400, ``messages.1.role: must be 'user' or 'assistant'``."""
    alice = tenants["alice"]
    body = {**copy.deepcopy(CLAUDE_CODE_FIRST_TURN), "model": "gpt-echo", "stream": stream}
    response, message = post_as_claude_code(server, alice, body)

    assert message["model"] == "gpt-echo"
    assert [block["type"] for block in message["content"]] == ["text"]
    assert message["stop_reason"] == "end_turn"
    sent, headers = echoed(message["content"][0]["text"])
    validate("CreateChatCompletionRequest", sent)
    assert sent["model"] == "echo"
    system, (first, middle) = CLAUDE_CODE_FIRST_TURN["system"], CLAUDE_CODE_FIRST_TURN["messages"]
    assert sent["messages"] == [
        {"role": "system", "content": "\n".join(block["text"] for block in system)},
        {
            "role": "user",
            "content": [{"type": "text", "text": block["text"]} for block in first["content"]],
        },
        {"role": "system", "content": middle["content"]},
    ], "the mid-conversation system message stays where it was"
    assert "reasoning_effort" not in sent, "gpt-echo does not declare reasoning: never sent"
    user_id = CLAUDE_CODE_FIRST_TURN["metadata"]["user_id"]
    assert sent["user"] == hashlib.sha256(user_id.encode()).hexdigest()
    assert sent["max_tokens"] == 32000
    assert [tool["function"]["name"] for tool in sent["tools"]] == [
        tool["name"] for tool in CLAUDE_CODE_FIRST_TURN["tools"]
    ]
    assert (
        sent["tools"][1]["function"]["parameters"]
        == CLAUDE_CODE_FIRST_TURN["tools"][1]["input_schema"]
    )
    for anthropic_only in ANTHROPIC_ONLY:
        assert anthropic_only not in sent
    if stream:
        assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})
    else:
        assert sent.get("stream") in (None, False)

    assert headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    for anthropic_header in ("x-api-key", "anthropic-version", "anthropic-beta", "x-app"):
        assert anthropic_header not in headers
    assert alice.raw not in json.dumps([sent, headers])

    row = one_row(response.headers["request-id"])
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-echo",
        provider="fake",
        upstream_model="echo",
        stream=stream,
    )
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_a_model_that_takes_reasoning_gets_the_effort_claude_code_asks_for(
    server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    body = {**copy.deepcopy(CLAUDE_CODE_FIRST_TURN), "model": "gpt-echo-thinker", "stream": False}
    _, message = post_as_claude_code(server, tenants["alice"], body)
    sent, _ = echoed(message["content"][0]["text"])
    assert sent["reasoning_effort"] == "high", "from output_config.effort"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_reasoning_model_answers_with_a_thinking_block_the_sdk_reads(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    client = claude(tenants["alice"])
    params: dict[str, Any] = {
        "model": "gpt-reasoning",
        "max_tokens": 64,
        "messages": HELLO,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    if stream:
        with client.messages.stream(**params) as events:
            thoughts = [e.thinking for e in events if e.type == "thinking"]
            message = events.get_final_message()
        assert "".join(thoughts) == REASONING_TEXT
    else:
        message = client.messages.create(**params)

    thinking, answer = message.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock)
    assert (thinking.thinking, thinking.signature) == (REASONING_TEXT, TRANSLATED_SIGNATURE)
    assert isinstance(answer, anthropic.types.TextBlock)
    assert answer.text == STREAM_TEXT
    assert message.stop_reason == "end_turn"


def test_the_next_turn_sends_the_thinking_block_back_and_the_upstream_never_sees_it(
    server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    body = copy.deepcopy(CLAUDE_CODE_FIRST_TURN)
    tool_use = {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}}
    body["messages"] += [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "List.", "signature": TRANSLATED_SIGNATURE},
                {"type": "text", "text": "Listing."},
                tool_use,
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "README.md"}],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    body["model"] = "gpt-echo"
    _, message = post_as_claude_code(server, alice, body)

    sent, _ = echoed(message["content"][0]["text"])
    validate("CreateChatCompletionRequest", sent)
    arguments = '{"command":"ls"}'
    assert sent["messages"][3:] == [
        {
            "role": "assistant",
            "content": "Listing.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md"},
    ]
    assert "List." not in json.dumps(sent), "no thinking reaches the upstream"
