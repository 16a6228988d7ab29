"""OpenAI chat translated to Anthropic Messages: requests there, answers back, without I/O."""

from __future__ import annotations

from typing import Any

import pytest
from support.anthropic_shapes import (
    CONFIG,
    HI,
    PNG,
    WEATHER_ANTHROPIC,
    WEATHER_TOOL,
    call,
    text,
    user,
)

from providers.anthropic.stream import usage_from_anthropic
from providers.anthropic.translate import from_anthropic, to_anthropic
from providers.base import ChatRequest
from providers.config import ProviderConfig
from providers.errors import InvalidRequest


def translate(config: ProviderConfig = CONFIG, **fields: Any) -> dict[str, Any]:
    body = {"model": "claude-alias", "messages": [HI], **fields}
    return to_anthropic(ChatRequest.from_body(body), "claude-up", config)


# --- OpenAI request -> Anthropic request ---------------------------------------------------------


def test_a_plain_request() -> None:
    assert translate() == {
        "model": "claude-up",
        "max_tokens": 1234,
        "messages": [user(text("hi"))],
    }


@pytest.mark.parametrize(
    ("fields", "max_tokens"),
    [
        ({}, 1234),
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70}, 70),
        ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
    ],
)
def test_max_tokens(fields: dict[str, Any], max_tokens: int) -> None:
    assert translate(**fields)["max_tokens"] == max_tokens


@pytest.mark.parametrize(
    ("messages", "system", "turns"),
    [
        pytest.param(
            [{"role": "system", "content": "Be brief."}, HI],
            "Be brief.",
            [user(text("hi"))],
            id="system",
        ),
        pytest.param(
            [
                {"role": "system", "content": [{"type": "text", "text": "One."}]},
                HI,
                {"role": "developer", "content": "Two."},
                {"role": "user", "content": "again"},
            ],
            "One.\nTwo.",
            [user(text("hi"), text("again"))],
            id="system-and-developer-hoisted-from-anywhere",
        ),
        pytest.param(
            [HI, {"role": "user", "content": [{"type": "text", "text": "there"}]}],
            None,
            [user(text("hi"), text("there"))],
            id="consecutive-users-merged",
        ),
        pytest.param(
            [
                HI,
                {"role": "assistant", "content": ""},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}],
                },
            ],
            None,
            [user(text("hi"), text("x"))],
            id="empty-text-never-makes-a-block",
        ),
        pytest.param(
            [HI, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "More"}],
            None,
            [
                user(text("hi")),
                {"role": "assistant", "content": [text("Hello.")]},
                user(text("More")),
            ],
            id="alternating-turns",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x.test/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ],
            None,
            [
                user(
                    text("What is this?"),
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                )
            ],
            id="images-data-url-and-http-url",
        ),
    ],
)
def test_messages(
    messages: list[dict[str, Any]], system: str | None, turns: list[dict[str, Any]]
) -> None:
    result = translate(messages=messages)
    assert result.get("system") == system
    assert result["messages"] == turns


def test_multi_turn_tool_use() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_1", "get_weather", '{"city": "Paris"}'),
                call("call_2", "get_weather", '{"city": "Rome"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "25C"}]},
        {"role": "assistant", "content": "Paris 18C, Rome 25C.", "tool_calls": []},
        {"role": "user", "content": "And Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("call_3", "get_weather", "")],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
        {"role": "user", "content": "Thanks"},
    ]
    assert translate(messages=messages, tools=[WEATHER_TOOL])["messages"] == [
        user(text("Weather in Paris and Rome?")),
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        user(
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [text("25C")]},
        ),
        {"role": "assistant", "content": [text("Paris 18C, Rome 25C.")]},
        user(text("And Oslo?")),
        {
            "role": "assistant",
            "content": [
                text("Checking."),
                {"type": "tool_use", "id": "call_3", "name": "get_weather", "input": {}},
            ],
        },
        user({"type": "tool_result", "tool_use_id": "call_3"}, text("Thanks")),
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tools": [WEATHER_TOOL]}, {"tools": [WEATHER_ANTHROPIC]}),
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tools": [WEATHER_TOOL], "tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            {"tool_choice": {"type": "tool", "name": "get_weather"}},
        ),
        (
            {"tools": [WEATHER_TOOL], "parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False},
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "now"}}]},
            {"tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]},
        ),
        ({"tool_choice": "required", "parallel_tool_calls": False}, {"tool_choice": None}),
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["A", "B", " "]}, {"stop_sequences": ["A", "B"]}),
        ({"stop": None}, {"stop_sequences": None}),
        ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3, "top_p": 0.9}),
        ({"temperature": 1.7}, {"temperature": 1}),
        ({"temperature": 0}, {"temperature": 0}),
        ({"user": "user-42"}, {"metadata": {"user_id": "user-42"}}),
        ({"seed": 7, "n": 1, "logprobs": True, "presence_penalty": 1}, {"seed": None, "n": None}),
    ],
)
def test_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    result = translate(**fields)
    for key, value in expected.items():
        assert result.get(key) == value, key


def test_sampling_is_never_sent_under_a_version_that_rejects_it() -> None:
    config = ProviderConfig(
        type="anthropic", base_url="http://x/v1", anthropic_version="2026-10-21"
    )
    result = translate(config, temperature=0.5, top_p=0.5)
    assert "temperature" not in result and "top_p" not in result


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call("c", "f", "{not json")],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            id="invalid-tool-arguments-json",
        ),
        pytest.param(
            {
                "messages": [
                    HI,
                    {
                        "role": "assistant",
                        "tool_calls": [call("a", "f", "{}"), call("c", "f", "[1, 2]")],
                    },
                ]
            },
            "messages[1].tool_calls[1].function.arguments",
            id="tool-arguments-not-an-object",
        ),
        pytest.param({"n": 2}, "n", id="n"),
        pytest.param({"temperature": 2.5}, "temperature", id="temperature-above-openai-range"),
        pytest.param({"temperature": -1}, "temperature", id="negative-temperature"),
        pytest.param({"top_p": "high"}, "top_p", id="top_p-not-a-number"),
        pytest.param({"stop": [1]}, "stop", id="stop-not-strings"),
        pytest.param(
            {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", id="role"
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": "only a system prompt"}]},
            "messages",
            id="no-turns",
        ),
        pytest.param(
            {"messages": [{"role": "tool", "content": "18C"}]},
            "messages[0].tool_call_id",
            id="tool-id",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
            id="audio-part",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url",
            id="image-scheme",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/bmp;base64,Qk0="},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url",
            id="image-media-type",
        ),
        pytest.param(
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]", id="custom-tool"
        ),
        pytest.param(
            {"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice", id="tool-choice"
        ),
    ],
)
def test_invalid_requests_are_400s_naming_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(**fields)
    assert (info.value.status, info.value.param) == (400, param)


# --- Anthropic message -> OpenAI chat.completion -------------------------------------------------

USAGE = {
    "input_tokens": 11,
    "output_tokens": 5,
    "cache_creation_input_tokens": 4,
    "cache_read_input_tokens": 3,
}


def message(content: list[dict[str, Any]], stop_reason: str | None = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": USAGE,
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("a_reason_added_next_year", "stop"),
        (None, "stop"),
    ],
)
def test_every_stop_reason(stop_reason: str | None, finish_reason: str) -> None:
    result = from_anthropic(message([text("x")], stop_reason), "alias")
    assert result["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize(
    ("content", "reply"),
    [
        pytest.param(
            [text("Hello"), text(" world")],
            {"role": "assistant", "content": "Hello world", "refusal": None},
            id="text-blocks-joined",
        ),
        pytest.param(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                text("Let me check."),
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
            {
                "role": "assistant",
                "content": "Let me check.",
                "refusal": None,
                "reasoning_content": "hmm",  # thinking, as DeepSeek and vLLM give it
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            id="text-and-tool-use",
        ),
        pytest.param(
            [
                {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {"n": [1, 2]}},
            ],
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "a", "arguments": "{}"},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "b", "arguments": '{"n":[1,2]}'},
                    },
                ],
            },
            id="only-tool-calls-content-is-null",
        ),
        pytest.param([], {"role": "assistant", "content": "", "refusal": None}, id="empty"),
    ],
)
def test_from_anthropic_message(content: list[dict[str, Any]], reply: dict[str, Any]) -> None:
    result = from_anthropic(message(content), "claude-alias")
    assert result["id"] == "chatcmpl-01abc"
    assert (result["object"], result["model"]) == ("chat.completion", "claude-alias")
    assert isinstance(result["created"], int)
    assert result["choices"][0]["message"] == reply
    assert result["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    ("usage", "openai", "cache"),
    [
        (
            USAGE,
            {
                "prompt_tokens": 18,
                "completion_tokens": 5,
                "total_tokens": 23,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
            (3, 4),
        ),
        (
            {"input_tokens": 9, "output_tokens": 2, "cache_creation_input_tokens": None},
            {
                "prompt_tokens": 9,
                "completion_tokens": 2,
                "total_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            (0, 0),
        ),
    ],
)
def test_usage_counts_all_input_as_prompt(
    usage: dict[str, Any], openai: dict[str, Any], cache: tuple[int, int]
) -> None:
    result = from_anthropic({**message([text("x")]), "usage": usage}, "m")
    assert result["usage"] == openai
    read = usage_from_anthropic(usage)
    assert (read.cache_read_tokens, read.cache_write_tokens) == cache
    assert (read.prompt_tokens, read.completion_tokens) == (
        openai["prompt_tokens"],
        usage["output_tokens"],
    )
