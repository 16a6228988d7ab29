"""Anthropic Messages translated to OpenAI chat: requests there, answers back, without I/O."""

from __future__ import annotations

from typing import Any

import pytest
from support.anthropic_shapes import (
    CONFIG,
    HI,
    PNG,
    WEATHER_ANTHROPIC,
    WEATHER_TOOL,
    anthropic_body,
    call,
    text,
    user,
)

from providers.anthropic.endpoint import anthropic_request_to_openai, openai_response_to_anthropic
from providers.anthropic.stream import anthropic_error_body
from providers.anthropic.translate import to_anthropic
from providers.base import ChatRequest
from providers.errors import InvalidRequest, UpstreamUnavailable
from providers.types import Usage

# --- Anthropic request -> OpenAI request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, {"model": "gpt-alias", "max_tokens": 100, "messages": [HI]}, id="plain"),
        pytest.param(
            {
                "system": "Be brief.",
                "stop_sequences": ["END"],
                "temperature": 0.2,
                "top_p": 0.5,
                "top_k": 5,
            },
            {
                "model": "gpt-alias",
                "max_tokens": 100,
                "temperature": 0.2,
                "top_p": 0.5,
                "stop": ["END"],
                "messages": [{"role": "system", "content": "Be brief."}, HI],
            },
            id="system-and-sampling-top_k-dropped",
        ),
        pytest.param(
            {
                "system": [text("One."), text("Two.")],
                "metadata": {"user_id": "u-1"},
                "stream": True,
            },
            {
                "model": "gpt-alias",
                "max_tokens": 100,
                "user": "u-1",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": "One.\nTwo."}, HI],
            },
            id="system-blocks-user-and-stream",
        ),
    ],
)
def test_anthropic_request_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert anthropic_request_to_openai(anthropic_body(**fields)) == expected


def test_anthropic_request_with_images_and_tool_use() -> None:
    messages = [
        user(
            text("Weather where this is?"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
        ),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "...", "signature": "s"},
                text("Checking."),
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        user(
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [text("18C")]},
            text("Thanks"),
        ),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}],
        },
        user(
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon", "is_error": False}
        ),
    ]
    tools = [WEATHER_ANTHROPIC, {"name": "now", "input_schema": {"type": "object"}}]
    result = anthropic_request_to_openai(
        anthropic_body(
            messages=messages,
            tools=tools,
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert result["tools"] == [
        WEATHER_TOOL,
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
    ]
    assert (result["tool_choice"], result["parallel_tool_calls"]) == ("required", False)
    assert result["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this is?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("toolu_1", "get_weather", '{"city":"Paris"}')],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": None, "tool_calls": [call("toolu_2", "now", "{}")]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "noon"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "any"}, "required"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_anthropic_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    result = anthropic_request_to_openai(
        anthropic_body(tools=[WEATHER_ANTHROPIC], tool_choice=choice)
    )
    assert result["tool_choice"] == expected
    assert "parallel_tool_calls" not in result


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [user({"type": "document", "source": {"type": "url", "url": "x"}})]},
            "messages.0.content.0",
        ),
        (
            {
                "messages": [
                    user(
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "search_result"}],
                        }
                    )
                ]
            },
            "messages.0.content.0.content.0",
        ),
        (
            {
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                "tool_choice": {"type": "tool", "name": "web_search"},
            },
            "tool_choice.name",
        ),
        ({"tools": [WEATHER_ANTHROPIC], "tool_choice": {"type": "maybe"}}, "tool_choice"),
    ],
)
def test_anthropic_requests_without_an_openai_counterpart_are_400s(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        anthropic_request_to_openai(anthropic_body(**fields))
    assert (info.value.status, info.value.param) == (400, param)


def test_a_round_trip_through_both_request_translations_keeps_the_conversation() -> None:
    messages = [
        user(text("Weather?")),
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
        },
        user({"type": "tool_result", "tool_use_id": "t1", "content": "2C"}, text("Thanks")),
    ]
    original = anthropic_body(
        system="Be brief.",
        messages=messages,
        tools=[WEATHER_ANTHROPIC],
        stop_sequences=["END"],
        temperature=0.5,
    )
    back = to_anthropic(
        ChatRequest.from_body(anthropic_request_to_openai(original)), "claude-up", CONFIG
    )
    assert back == {
        **original,
        "model": "claude-up",
        "messages": [
            user(text("Weather?")),
            messages[1],
            user({"type": "tool_result", "tool_use_id": "t1", "content": "2C"}, text("Thanks")),
        ],
    }


# --- OpenAI chat.completion -> Anthropic message -------------------------------------------------


def completion(reply: dict[str, Any], finish_reason: str | None = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-up",
        "choices": [
            {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 6,
            "total_tokens": 26,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_every_finish_reason(finish_reason: str | None, stop_reason: str) -> None:
    result = openai_response_to_anthropic(
        completion({"role": "assistant", "content": "x"}, finish_reason), "a"
    )
    assert result["stop_reason"] == stop_reason


def test_openai_response_to_anthropic() -> None:
    reply = {
        "role": "assistant",
        "content": "Let me check.",
        "refusal": None,
        "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')],
    }
    assert openai_response_to_anthropic(completion(reply, "tool_calls"), "gpt-alias") == {
        "id": "msg_xyz",
        "type": "message",
        "role": "assistant",
        "model": "gpt-alias",
        "content": [
            text("Let me check."),
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 6,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 8,
        },
    }


def test_openai_response_usage_from_the_provider_keeps_cache_writes() -> None:
    usage = Usage(prompt_tokens=18, completion_tokens=5, cache_read_tokens=3, cache_write_tokens=4)
    result = openai_response_to_anthropic(
        completion({"role": "assistant", "content": "x"}), "m", usage
    )
    assert result["usage"] == {
        "input_tokens": 11,
        "output_tokens": 5,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }


def test_openai_refusal_is_an_anthropic_refusal() -> None:
    reply = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    result = openai_response_to_anthropic(completion(reply), "m")
    assert result["content"] == [text("I can't help with that.")]
    assert result["stop_reason"] == "refusal"


def test_openai_tool_arguments_that_are_not_json_are_an_upstream_failure() -> None:
    reply = {"role": "assistant", "content": None, "tool_calls": [call("c", "f", "{oops")]}
    with pytest.raises(UpstreamUnavailable):
        openai_response_to_anthropic(completion(reply, "tool_calls"), "m")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_body(status: int, error_type: str) -> None:
    assert anthropic_error_body(status, "boom") == {
        "type": "error",
        "error": {"type": error_type, "message": "boom"},
    }
