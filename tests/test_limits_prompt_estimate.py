"""A call is admitted on the whole prompt its upstream is sent: the tools it offers and, in a
chat history, the calls an assistant made with their arguments, not only its messages' text.

A coding agent's tool definitions are thousands of tokens on every call (Claude Code's, Codex's),
and its history is mostly tool calls: counted on their messages' text alone, a call over its
tenant's tokens per minute was let through, and a stream cut before the upstream said its usage
was recorded as a fraction of what it cost. The count is the gateway's rough one (4 characters a
token: ``gateway.calls.metering``). Through the real ASGI app in process, the upstream faked.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from support.inprocess import ANTHROPIC_PATH, answer_everything, api_client

from conftest import TenantKey
from gateway.tenants import auth

TPM = 5000
BIG = "a" * 24000
"""6,000 tokens at 4 characters a token: more than the tenant's tokens per minute."""
OWN = "x" * 40
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "read", "description": BIG, "parameters": {"type": "object"}},
}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "read", "arguments": orjson.dumps({"path": BIG}).decode()},
        }
    ],
}
ANSWERED = {"role": "tool", "tool_call_id": "call_1", "content": "ok"}


def chat(**extra: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": OWN}], "max_tokens": 10}
    return "/v1/chat/completions", {**body, **extra}


def chat_after_a_tool_call() -> tuple[str, dict[str, Any]]:
    path, body = chat()
    return path, {**body, "messages": [*body["messages"], CALLED, ANSWERED]}


def messages(**extra: Any) -> tuple[str, dict[str, Any]]:
    turn = {"role": "user", "content": OWN}
    return ANTHROPIC_PATH, {"model": "claude-media", "messages": [turn], "max_tokens": 10, **extra}


def responses(**extra: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-test", "input": OWN, "max_output_tokens": 10, "store": False}
    return "/v1/responses", {**body, **extra}


ANTHROPIC_TOOL = {"name": "read", "description": BIG, "input_schema": {"type": "object"}}
RESPONSES_TOOL = {"type": "function", "name": "read", "description": BIG, "parameters": {}}


@pytest.fixture
async def tenant_key(tenants: dict[str, TenantKey], gateway_runtime: Any) -> str:
    """Alice's key, her tenant held to ``TPM`` tokens per minute; an upstream answering all."""
    alice = tenants["alice"]
    alice.tenant.tpm_limit = TPM
    await sync_to_async(alice.tenant.save)()
    auth._key_cache.clear()
    gateway_runtime(answer_everything)
    return alice.raw


async def status_of(key: str, call: tuple[str, dict[str, Any]]) -> tuple[int, str]:
    path, body = call
    async with api_client() as client:
        answer = await client.post(path, json=body, headers={"x-api-key": key})
    error = answer.json().get("error") if answer.status_code != 200 else None
    return answer.status_code, (error or {}).get("type", "")


@pytest.mark.parametrize(
    ("within", "over"),
    [
        (chat(), chat(tools=[CHAT_TOOL])),
        (chat(), chat(functions=[CHAT_TOOL["function"]])),
        (chat(), chat_after_a_tool_call()),
        (messages(), messages(tools=[ANTHROPIC_TOOL])),
        (responses(), responses(tools=[RESPONSES_TOOL])),
    ],
    ids=["chat-tools", "chat-functions", "chat-tool-call", "messages-tools", "responses-tools"],
)
async def test_tools_and_tool_calls_count_toward_tokens_per_minute(
    tenant_key: str, within: tuple[str, dict[str, Any]], over: tuple[str, dict[str, Any]]
) -> None:
    """The same call fits without the 24,000 characters, and is refused with them (before, it
    was admitted on its 40 characters)."""
    assert await status_of(tenant_key, over) == (429, "rate_limit_error")
    assert (await status_of(tenant_key, within))[0] == 200


async def test_a_count_of_tokens_counts_the_tool_calls_of_a_translated_history(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """``count_tokens`` for a model not routed to Anthropic counts the request as translated to
    chat: the assistant's tool call (its 24,000-character input) is an assistant message's
    ``tool_calls`` there, which the count had left out (Claude Code counts its context so)."""
    gateway_runtime(answer_everything)
    use = {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": BIG}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    turns = [
        {"role": "user", "content": OWN},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    async with api_client() as client:
        answer = await client.post(
            f"{ANTHROPIC_PATH}/count_tokens",
            json={"model": "gpt-test", "messages": turns},
            headers={"x-api-key": tenants["bob"].raw},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["input_tokens"] >= len(BIG) // 4


IMAGE_BASE64 = "iVBORw0KGgo" + "A" * 400_000
"""About 300 kB of PNG as base64: 100,000 tokens counted by its characters, 1,600 as an image."""
WAV_BASE64 = "UklGR" + "A" * 426_662
"""Ten seconds of 16 kHz 16-bit mono WAV (320,000 bytes) as base64: a hundred tokens of audio."""


def chat_image(detail: str = "auto") -> dict[str, Any]:
    url = {"url": f"data:image/png;base64,{IMAGE_BASE64}", "detail": detail}
    return {"type": "image_url", "image_url": url}


def anthropic_image() -> dict[str, Any]:
    source = {"type": "base64", "media_type": "image/png", "data": IMAGE_BASE64}
    return {"type": "image", "source": source}


def responses_image() -> dict[str, Any]:
    return {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE_BASE64}"}


def chat_parts(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return chat(messages=[{"role": "user", "content": [{"type": "text", "text": OWN}, *parts]}])


def messages_parts(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return messages(messages=[{"role": "user", "content": [{"type": "text", "text": OWN}, *parts]}])


def messages_tool_result(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Claude Code's Read of a screenshot: the image comes back inside a tool's result."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.png"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": list(parts)}
    turns = [
        {"role": "user", "content": OWN},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    return messages(messages=turns)


def responses_parts(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    content = [{"type": "input_text", "text": OWN}, *parts]
    return responses(input=[{"type": "message", "role": "user", "content": content}])


NEARLY = "a" * 19_800
"""4,950 tokens: with the call's own text and ``max_tokens``, within 5,000 without its audio."""


def chat_audio() -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": WAV_BASE64, "format": "wav"}}


@pytest.mark.parametrize(
    ("within", "over"),
    [
        (chat_parts(chat_image()), chat_parts(*[chat_image()] * 4)),
        (chat_parts(*[chat_image("low")] * 20), chat_parts(*[chat_image("high")] * 4)),
        (messages_parts(anthropic_image()), messages_parts(*[anthropic_image()] * 4)),
        (messages_tool_result(anthropic_image()), messages_tool_result(*[anthropic_image()] * 4)),
        (responses_parts(responses_image()), responses_parts(*[responses_image()] * 4)),
        (chat_parts(chat_audio()), chat_parts(chat_audio(), {"type": "text", "text": NEARLY})),
    ],
    ids=["chat", "chat-detail", "messages", "messages-tool-result", "responses", "chat-audio"],
)
async def test_images_and_audio_count_as_what_a_model_reads_not_their_base64(
    tenant_key: str,
    within: tuple[str, dict[str, Any]],
    over: tuple[str, dict[str, Any]],
) -> None:
    """An inline image counts as 1,600 tokens (85 at ``detail: low``) and audio by its seconds,
    not by the length of its base64: a 300 kB screenshot under 5,000 tokens a minute was refused
    as 100,000 tokens (and a budget reserved for them). Four images are still over, and so is
    nearly a minute's tokens of text with ten seconds of audio."""
    assert await status_of(tenant_key, within) == (200, "")
    assert await status_of(tenant_key, over) == (429, "rate_limit_error")
