"""The stream translators, fed recorded-style event sequences: every chunk or event asserted."""

from __future__ import annotations

from typing import Any

import pytest
from support.anthropic_streams import (
    OA_USAGE,
    OA_USAGE_AS_ANTHROPIC,
    Event,
    oa_chunk,
    rebuilt_message,
    to_anthropic_events,
)

from providers.anthropic.endpoint import openai_response_to_anthropic
from providers.anthropic.stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from providers.errors import (
    ProviderError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.types import Usage

# --- Anthropic events -> OpenAI chunks -----------------------------------------------------------


def message_start(**usage: int) -> Event:
    start_usage = usage or {
        "input_tokens": 11,
        "output_tokens": 1,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }
    message: dict[str, Any] = {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    return ("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> Event:
    return (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta(index: int, kind: str, **fields: str) -> Event:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}},
    )


def block_stop(index: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, **usage: int) -> Event:
    data = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage,
    }
    return ("message_delta", data)


PING: Event = ("ping", {"type": "ping"})
MESSAGE_STOP: Event = ("message_stop", {"type": "message_stop"})


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-01XYZ",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "claude-alias",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        **chunk({}),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


ROLE = chunk({"role": "assistant", "content": "", "refusal": None})


def translate(events: list[Event]) -> tuple[AnthropicToOpenAIStream, list[dict[str, Any]]]:
    translator = AnthropicToOpenAIStream("claude-alias", provider="claude", created=1700000000)
    chunks: list[dict[str, Any]] = []
    for name, data in events:
        chunks += translator.feed(name, data)
    return translator, chunks


def tool_call(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


def test_text_only() -> None:
    translator, chunks = translate(
        [
            message_start(),
            block_start(0, {"type": "text", "text": ""}),
            PING,
            delta(0, "text_delta", text="Hello"),
            delta(0, "text_delta", text=""),
            delta(0, "text_delta", text=" world"),
            block_stop(0),
            message_delta("end_turn", output_tokens=7),
            MESSAGE_STOP,
        ]
    )
    assert chunks == [
        ROLE,
        chunk({"content": "Hello"}),
        chunk({"content": " world"}),
        chunk({}, "stop"),
        usage_chunk(18, 7, 3),
    ]
    assert translator.finished
    assert translator.usage == Usage(
        prompt_tokens=18,
        completion_tokens=7,
        total_tokens=25,
        cache_read_tokens=3,
        cache_write_tokens=4,
    )


def test_text_and_two_tool_calls_are_numbered_among_tool_calls() -> None:
    _, chunks = translate(
        [
            message_start(input_tokens=50, output_tokens=2),
            block_start(0, {"type": "thinking", "thinking": ""}),
            delta(0, "thinking_delta", thinking="Weather for two cities."),
            delta(0, "signature_delta", signature="EqQBCgIYAhIM"),
            block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            delta(1, "text_delta", text="Checking both."),
            block_stop(1),
            block_start(
                2, {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}
            ),
            delta(2, "input_json_delta", partial_json=""),
            delta(2, "input_json_delta", partial_json='{"city": '),
            PING,
            delta(2, "input_json_delta", partial_json='"Paris"}'),
            block_stop(2),
            block_start(3, {"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}}),
            block_stop(3),
            message_delta("tool_use", output_tokens=40),
            MESSAGE_STOP,
        ]
    )
    header = {"type": "function"}
    assert chunks == [
        ROLE,
        chunk({"reasoning_content": "Weather for two cities."}),  # thinking, as DeepSeek's
        chunk({"content": "Checking both."}),
        chunk(
            tool_call(0, id="toolu_A", **header, function={"name": "get_weather", "arguments": ""})
        ),
        chunk(tool_call(0, function={"arguments": '{"city": '})),
        chunk(tool_call(0, function={"arguments": '"Paris"}'})),
        chunk(tool_call(1, id="toolu_B", **header, function={"name": "now", "arguments": ""})),
        chunk(tool_call(1, function={"arguments": "{}"})),
        chunk({}, "tool_calls"),
        usage_chunk(50, 40, 0),
    ]


def test_max_tokens_stop_and_cumulative_usage() -> None:
    translator, chunks = translate(
        [
            message_start(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, "text_delta", text="A long"),
            block_stop(0),
            message_delta("max_tokens", output_tokens=3),
            message_delta("max_tokens", output_tokens=16, cache_read_input_tokens=5),
            MESSAGE_STOP,
            ("some_future_event", {"type": "some_future_event"}),
        ]
    )
    assert chunks == [
        ROLE,
        chunk({"content": "A long"}),
        chunk({}, "length"),
        usage_chunk(20, 16, 5),
    ]
    assert translator.usage is not None and translator.usage.cache_write_tokens == 4


def test_an_error_mid_stream_raises_after_the_chunks_so_far_with_the_usage_so_far() -> None:
    translator = AnthropicToOpenAIStream("claude-alias", provider="claude", created=1700000000)
    events = [
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, "text_delta", text="tok0 "),
        delta(0, "text_delta", text="tok1 "),
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
        MESSAGE_STOP,
    ]
    chunks: list[dict[str, Any]] = []
    with pytest.raises(UpstreamUnavailable) as info:
        for name, data in events:
            chunks += translator.feed(name, data)
    assert chunks == [ROLE, chunk({"content": "tok0 "}), chunk({"content": "tok1 "})]
    error = info.value
    assert (error.status, error.code, error.retryable) == (503, "upstream_overloaded", True)
    assert "claude" in error.message
    assert error.usage_so_far == Usage(
        prompt_tokens=18,
        completion_tokens=1,
        total_tokens=19,
        cache_read_tokens=3,
        cache_write_tokens=4,
    )
    assert not translator.finished


def test_an_error_after_message_delta_never_shows_a_clean_finish() -> None:
    translator, chunks = translate([message_start(), block_start(0, {"type": "text", "text": ""})])
    translator.feed(*delta(0, "text_delta", text="x"))
    assert translator.feed(*message_delta("end_turn", output_tokens=2)) == []
    with pytest.raises(UpstreamUnavailable):
        translator.feed("error", {"type": "error", "error": {"type": "api_error", "message": "x"}})
    assert chunks == [ROLE]


@pytest.mark.parametrize(
    ("error_type", "error_class", "status", "code"),
    [
        ("overloaded_error", UpstreamUnavailable, 503, "upstream_overloaded"),
        ("api_error", UpstreamUnavailable, 502, "upstream_unavailable"),
        ("rate_limit_error", UpstreamRejected, 429, "rate_limit_exceeded"),
        ("invalid_request_error", UpstreamRejected, 400, "upstream_rejected"),
        ("request_too_large", UpstreamRejected, 413, "upstream_rejected"),
        ("not_found_error", UpstreamRejected, 404, "model_not_found"),
        ("authentication_error", UpstreamUnavailable, 502, "upstream_auth_failed"),
        ("permission_error", UpstreamUnavailable, 502, "upstream_auth_failed"),
        ("timeout_error", UpstreamTimeout, 504, "upstream_timeout"),
        ("an_error_added_later", UpstreamUnavailable, 502, "upstream_unavailable"),
    ],
)
def test_error_events_are_classified_by_type(
    error_type: str, error_class: type[ProviderError], status: int, code: str
) -> None:
    translator = AnthropicToOpenAIStream("m", provider="claude")
    error = {"type": error_type, "message": "secret upstream detail"}
    with pytest.raises(error_class) as info:
        translator.feed("error", {"type": "error", "error": error})
    assert (info.value.status, info.value.code) == (status, code)
    passes_message = status in (400, 404, 413, 429)
    assert ("secret upstream detail" in info.value.message) is passes_message
    assert info.value.usage_so_far is None  # nothing was reported before it


def test_events_named_only_in_their_data_are_understood() -> None:
    translator = AnthropicToOpenAIStream("claude-alias", created=1700000000)
    _, data = message_start()
    assert translator.feed(None, data) == [ROLE]


# --- OpenAI chunks -> Anthropic events -----------------------------------------------------------


def test_openai_text_stream_as_anthropic_events() -> None:
    events = to_anthropic_events(
        [
            oa_chunk({"role": "assistant", "content": ""}),
            oa_chunk({"content": "Hel"}),
            oa_chunk({"content": "lo"}),
            oa_chunk({}, "stop"),
            OA_USAGE,
        ]
    )
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_abc",
                    "type": "message",
                    "role": "assistant",
                    "model": "gpt-alias",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
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


def test_openai_text_and_tool_calls_each_in_their_own_block_and_agreeing_with_the_whole() -> None:
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
    ]
    chunks = [
        oa_chunk({"role": "assistant", "content": None}),
        oa_chunk({"content": "Checking."}),
        oa_chunk({"tool_calls": calls}),
        oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        oa_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "now", "arguments": "{}"},
                    }
                ]
            }
        ),
        oa_chunk({}, "tool_calls"),
        OA_USAGE,
    ]
    streamed = rebuilt_message(to_anthropic_events(chunks))
    whole = {
        "id": "chatcmpl-abc",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "now", "arguments": "{}"},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": OA_USAGE["usage"],
    }
    expected = openai_response_to_anthropic(whole, "gpt-alias")
    assert streamed == {**expected, "stop_sequence": None}
    assert [block["type"] for block in streamed["content"]] == ["text", "tool_use", "tool_use"]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([], id="no-chunks"),
        pytest.param(
            [oa_chunk({"role": "assistant", "content": ""}), oa_chunk({}, "length")],
            id="no-content",
        ),
        pytest.param(
            [
                oa_chunk({"content": "a"}),
                oa_chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}),
                oa_chunk({"content": "b"}),
                oa_chunk({}, "stop"),
            ],
            id="text-tool-text",
        ),
        pytest.param([oa_chunk({"content": "cut off"})], id="no-finish-reason"),
    ],
)
def test_openai_to_anthropic_grammar_holds(chunks: list[dict[str, Any]]) -> None:
    message = rebuilt_message(to_anthropic_events(chunks))
    assert message["stop_reason"] in ("end_turn", "max_tokens")


def test_a_tool_call_without_arguments_gets_an_empty_input() -> None:
    chunks = [
        oa_chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}),
        oa_chunk({}, "tool_calls"),
    ]
    message = rebuilt_message(to_anthropic_events(chunks))
    assert message["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert message["stop_reason"] == "tool_use"


def test_finish_is_idempotent_and_usage_from_the_provider_wins() -> None:
    translator = OpenAIToAnthropicStream("m")
    translator.feed(oa_chunk({"content": "x"}, "stop"))
    usage = Usage(prompt_tokens=18, completion_tokens=5, cache_read_tokens=3, cache_write_tokens=4)
    translator.feed(OA_USAGE, usage)
    events = translator.finish()
    assert events[-2][1]["usage"] == {
        "input_tokens": 11,
        "output_tokens": 5,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }
    assert translator.finish() == []


def test_interleaved_tool_call_arguments_are_an_upstream_failure() -> None:
    translator = OpenAIToAnthropicStream("m")
    translator.feed(
        oa_chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}
        )
    )
    translator.feed(
        oa_chunk(
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}
        )
    )
    with pytest.raises(UpstreamUnavailable):
        translator.feed(oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))


# --- an index that is not one --------------------------------------------------------------------


@pytest.mark.parametrize("index", [True, -1, "0", None])
def test_a_tool_call_index_that_is_not_one_is_the_first_calls(index: Any) -> None:
    """A boolean is not an index (Python's ``True`` was the call of index 1), nor is a negative
    number or text: such a call is the first call, as one that gives no index."""
    events = to_anthropic_events(
        [
            oa_chunk({"tool_calls": [{"index": index, "id": "a", "function": {"name": "f"}}]}),
            oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
            oa_chunk({}, "tool_calls"),
        ]
    )
    message = rebuilt_message(events)
    assert message["content"] == [{"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}}]


@pytest.mark.parametrize("index", [True, -1, "1"])
def test_a_block_index_that_is_not_one_opens_no_tool_call(index: Any) -> None:
    """A content block whose ``index`` is not one (a boolean, a negative number, text) is no
    block of ours, as one without an index: its tool call is not relayed, and a later block
    of index 1 is not taken for it."""
    translator = AnthropicToOpenAIStream("m")
    translator.feed(*message_start())
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    started = translator.feed(*block_start(index, tool))
    deltas = translator.feed(*delta(1, "input_json_delta", partial_json="{}"))
    assert started == [] and deltas == []
