"""The reasoning of a model behind an OpenAI upstream, answered to an Anthropic client (Claude
Code) as ``thinking`` blocks, without I/O: in a whole message (``openai_response_to_anthropic``)
and in a stream (``OpenAIToAnthropicStream``), whose exact event grammar is asserted.

``reasoning_content`` is how DeepSeek, vLLM and Ollama give it, ``reasoning`` how OpenRouter does.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from support.anthropic_shapes import call, text
from support.anthropic_streams import (
    OA_USAGE,
    OA_USAGE_AS_ANTHROPIC,
    Event,
    oa_chunk,
    rebuilt_message,
    to_anthropic_events,
)

from providers.anthropic.endpoint import openai_response_to_anthropic
from providers.anthropic.stream import TRANSLATED_SIGNATURE

THOUGHT = "The user says hi. Greet back."


def thinking(thought: str = THOUGHT) -> dict[str, Any]:
    return {"type": "thinking", "thinking": thought, "signature": TRANSLATED_SIGNATURE}


def completion(reply: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **reply},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": OA_USAGE["usage"],
    }


WEATHER_CALL = call("call_1", "get_weather", '{"city":"Paris"}')
WEATHER_USE = {
    "type": "tool_use",
    "id": "call_1",
    "name": "get_weather",
    "input": {"city": "Paris"},
}


# --- a whole message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "content"),
    [
        pytest.param(
            {"content": "Hi!", "reasoning_content": THOUGHT},
            [thinking(), text("Hi!")],
            id="reasoning_content",
        ),
        pytest.param(
            {"content": "Hi!", "reasoning": THOUGHT}, [thinking(), text("Hi!")], id="reasoning"
        ),
        pytest.param(
            {"content": "Hi!", "reasoning_content": THOUGHT, "reasoning": "Other."},
            [thinking(), text("Hi!")],
            id="both-reasoning_content-first",
        ),
        pytest.param(
            {"content": "Hi!", "reasoning_content": "", "reasoning": THOUGHT},
            [thinking(), text("Hi!")],
            id="empty-reasoning_content-then-reasoning",
        ),
        pytest.param(
            {"content": None, "reasoning_content": THOUGHT, "tool_calls": [WEATHER_CALL]},
            [thinking(), WEATHER_USE],
            id="reasoning-then-a-tool-call",
        ),
        pytest.param(
            {"content": "", "reasoning_content": THOUGHT}, [thinking()], id="reasoning-only"
        ),
        pytest.param(
            {"content": "Hi!", "reasoning_content": None}, [text("Hi!")], id="null-reasoning"
        ),
        pytest.param(
            {"content": "Hi!", "reasoning_content": ""}, [text("Hi!")], id="empty-reasoning"
        ),
        pytest.param({"content": "Hi!", "reasoning": 7}, [text("Hi!")], id="reasoning-a-number"),
    ],
)
def test_reasoning_is_a_thinking_block_before_the_text(
    reply: dict[str, Any], content: list[dict[str, Any]]
) -> None:
    finish = "tool_calls" if reply.get("tool_calls") else "stop"
    message = openai_response_to_anthropic(completion(reply, finish), "gpt-alias")
    assert message["content"] == content

    parsed = anthropic.types.Message.model_validate(message)  # as the anthropic SDK reads it
    blocks = [block for block in parsed.content if isinstance(block, anthropic.types.ThinkingBlock)]
    assert [(b.thinking, b.signature) for b in blocks] == [
        (b["thinking"], TRANSLATED_SIGNATURE) for b in content if b["type"] == "thinking"
    ]


# --- a stream ------------------------------------------------------------------------------------


def block_start(index: int, block: dict[str, Any]) -> Event:
    data = {"type": "content_block_start", "index": index, "content_block": block}
    return ("content_block_start", data)


def block_delta(index: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_streamed_reasoning_is_a_thinking_block_closed_before_the_text(key: str) -> None:
    events = to_anthropic_events(
        [
            oa_chunk({"role": "assistant", "content": ""}),
            oa_chunk({"content": "", key: "The user says hi."}),
            oa_chunk({"content": None, key: " Greet back."}),
            oa_chunk({"content": "Hi", key: None}),
            oa_chunk({"content": "!"}),
            oa_chunk({}, "stop"),
            OA_USAGE,
        ]
    )
    assert events[1:] == [
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "The user says hi."}),
        block_delta(0, {"type": "thinking_delta", "thinking": " Greet back."}),
        block_delta(0, {"type": "signature_delta", "signature": TRANSLATED_SIGNATURE}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "Hi"}),
        block_delta(1, {"type": "text_delta", "text": "!"}),
        block_stop(1),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": OA_USAGE_AS_ANTHROPIC,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert events[0][0] == "message_start"
    assert events[0][1]["message"]["content"] == []
    whole = completion({"content": "Hi!", "reasoning_content": THOUGHT})
    assert rebuilt_message(events) == openai_response_to_anthropic(whole, "gpt-alias")


CALL_START = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": ""},
}
CALL_ARGUMENTS = {"index": 0, "function": {"arguments": '{"city":"Paris"}'}}

THINKING_BLOCK = ["content_block_start", "thinking_delta", "signature_delta", "content_block_stop"]
TEXT_BLOCK = ["content_block_start", "text_delta", "content_block_stop"]
TOOL_BLOCK = ["content_block_start", "input_json_delta", "content_block_stop"]


@pytest.mark.parametrize(
    ("chunks", "grammar", "content"),
    [
        pytest.param(
            [
                oa_chunk({"reasoning_content": THOUGHT}),
                oa_chunk({"tool_calls": [CALL_START]}),
                oa_chunk({"tool_calls": [CALL_ARGUMENTS]}),
                oa_chunk({}, "tool_calls"),
            ],
            [*THINKING_BLOCK, *TOOL_BLOCK],
            [thinking(), WEATHER_USE],
            id="reasoning-then-a-tool-call",
        ),
        pytest.param(
            [oa_chunk({"reasoning": THOUGHT}), oa_chunk({}, "length")],
            THINKING_BLOCK,
            [thinking()],
            id="reasoning-cut-short",
        ),
        pytest.param(
            [oa_chunk({"reasoning_content": THOUGHT, "content": "Hi!"}), oa_chunk({}, "stop")],
            [*THINKING_BLOCK, *TEXT_BLOCK],
            [thinking(), text("Hi!")],
            id="reasoning-and-text-in-one-chunk",
        ),
        pytest.param(
            [
                oa_chunk({"reasoning_content": "First."}),
                oa_chunk({"content": "Hi!"}),
                oa_chunk({"reasoning_content": "Then."}),
                oa_chunk({"content": "Bye."}),
                oa_chunk({}, "stop"),
            ],
            [*THINKING_BLOCK, *TEXT_BLOCK, *THINKING_BLOCK, *TEXT_BLOCK],
            [thinking("First."), text("Hi!"), thinking("Then."), text("Bye.")],
            id="interleaved",
        ),
        pytest.param(
            [oa_chunk({"reasoning_content": THOUGHT})],
            THINKING_BLOCK,
            [thinking()],
            id="no-finish-reason",
        ),
        pytest.param(
            [
                oa_chunk({"reasoning_content": "", "content": "Hi!"}),
                oa_chunk({"reasoning_content": None}, "stop"),
            ],
            TEXT_BLOCK,
            [text("Hi!")],
            id="empty-reasoning-no-block",
        ),
    ],
)
def test_streamed_reasoning_keeps_anthropic_grammar(
    chunks: list[dict[str, Any]], grammar: list[str], content: list[dict[str, Any]]
) -> None:
    events = to_anthropic_events([*chunks, OA_USAGE])
    names = [
        data["delta"]["type"] if name == "content_block_delta" else name for name, data in events
    ]
    assert names == ["message_start", *grammar, "message_delta", "message_stop"]
    assert rebuilt_message(events)["content"] == content
