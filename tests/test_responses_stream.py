"""The chat-to-Responses stream translator, fed written chunk sequences: every event validated
against the official schema, the event grammar checked, and the final response compared with
what ``from_chat`` answers for the same completion."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.e2e import validate
from support.jsonish import TEXT, lists, objects, one_of
from support.responses_shapes import (
    CREATED_AT,
    RESPONSE_ID,
    chat_completion,
    function_tool,
    namespace_tool,
    without_ids,
)

from providers.errors import UpstreamUnavailable
from providers.responses import ChatToResponsesStream, from_chat, to_chat
from providers.types import Usage

REQUEST = {
    "model": "bridged-model",
    "input": "x",
    "stream": True,
    "tools": [
        function_tool("get_weather"),
        namespace_tool("agents", function_tool("spawn")),
        {"type": "custom", "name": "apply_patch"},
    ],
}
TOOLS = to_chat(REQUEST).tools
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}

Step = tuple[Any, ...]
"""``("content" | "refusal" | "reasoning_content", text)``, ``("call", index, id, name,
arguments)`` or ``("arguments", index, fragment)``: one delta of a chat stream."""


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def delta_of(step: Step) -> dict[str, Any]:
    if step[0] == "call":
        _, index, call_id, name, arguments = step
        function = {"name": name, "arguments": arguments}
        return {
            "tool_calls": [
                {"index": index, "id": call_id, "type": "function", "function": function}
            ]
        }
    if step[0] == "arguments":
        return {"tool_calls": [{"index": step[1], "function": {"arguments": step[2]}}]}
    return {step[0]: step[1]}


def chunks_of(steps: list[Step], finish_reason: str) -> list[dict[str, Any]]:
    """The chat stream: a role chunk, a chunk per step, the finish chunk, the usage chunk."""
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk(delta_of(step)) for step in steps),
        chunk({}, finish_reason),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    ]


def completion_of(steps: list[Step], finish_reason: str) -> dict[str, Any]:
    """The same answer as one ``chat.completion``."""
    reply: dict[str, Any] = {"content": None}
    calls: dict[int, dict[str, Any]] = {}
    for step in steps:
        if step[0] == "call":
            calls[step[1]] = {
                "id": step[2],
                "type": "function",
                "function": {"name": step[3], "arguments": step[4]},
            }
        elif step[0] == "arguments":
            calls[step[1]]["function"]["arguments"] += step[2]
        else:
            reply[step[0]] = (reply.get(step[0]) or "") + step[1]
    if calls:
        reply["tool_calls"] = [calls[index] for index in sorted(calls)]
    return chat_completion(reply, finish_reason)


def translate(
    steps: list[Step], finish_reason: str
) -> tuple[ChatToResponsesStream, list[dict[str, Any]]]:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    events = stream.start()
    for piece in chunks_of(steps, finish_reason):
        events += stream.feed(
            piece, Usage.from_openai(piece.get("usage")) if piece.get("usage") else None
        )
    return stream, events + stream.finish()


def assert_grammar(events: list[dict[str, Any]]) -> None:
    """Sequence numbers 0..n-1; the response's start, end and output items in order, one open at a
    time; every event of an item names it; each item as done is the item in the final output."""
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event["type"] for event in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    final = events[-1]["response"]["output"]
    open_item: dict[str, Any] | None = None
    done = 0
    for event in events[2:-1]:
        if event["type"] == "response.output_item.added":
            assert open_item is None and event["output_index"] == done
            open_item = event["item"]
        elif event["type"] == "response.output_item.done":
            assert open_item is not None and event["output_index"] == done
            assert event["item"] == final[done]
            open_item, done = None, done + 1
        else:
            assert open_item is not None
            assert (event["item_id"], event["output_index"]) == (open_item["id"], done)
    assert open_item is None and done == len(final)


CASES: dict[str, tuple[list[Step], str, list[str]]] = {
    "text only": (
        [("content", "Hel"), ("content", "lo.")],
        "stop",
        [
            "output_item.added",
            "content_part.added",
            "output_text.delta",
            "output_text.delta",
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "completed",
        ],
    ),
    "text, then a tool call": (
        [
            ("content", "Checking."),
            ("call", 0, "call_1", "get_weather", '{"city"'),
            ("arguments", 0, ':"Oslo"}'),
        ],
        "tool_calls",
        [
            "output_item.added",
            "content_part.added",
            "output_text.delta",
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "output_item.added",
            "function_call_arguments.delta",
            "function_call_arguments.delta",
            "function_call_arguments.done",
            "output_item.done",
            "completed",
        ],
    ),
    "two parallel tool calls, one namespaced": (
        [
            ("call", 0, "call_1", "get_weather", ""),
            ("arguments", 0, '{"city":"Oslo"}'),
            ("call", 1, "call_2", "agents__spawn", ""),
            ("arguments", 1, "{}"),
        ],
        "tool_calls",
        [
            "output_item.added",
            "function_call_arguments.delta",
            "function_call_arguments.done",
            "output_item.done",
            "output_item.added",
            "function_call_arguments.delta",
            "function_call_arguments.done",
            "output_item.done",
            "completed",
        ],
    ),
    "reasoning, then text": (
        [("reasoning_content", "2+2"), ("reasoning_content", " is 4"), ("content", "4")],
        "stop",
        [
            "output_item.added",
            "reasoning_summary_part.added",
            "reasoning_summary_text.delta",
            "reasoning_summary_text.delta",
            "reasoning_summary_text.done",
            "reasoning_summary_part.done",
            "output_item.done",
            "output_item.added",
            "content_part.added",
            "output_text.delta",
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "completed",
        ],
    ),
    "cut off at the token limit": (
        [("content", "Once upon")],
        "length",
        [
            "output_item.added",
            "content_part.added",
            "output_text.delta",
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "incomplete",
        ],
    ),
    "a custom tool's input, sent whole": (
        [("call", 0, "call_1", "apply_patch", '{"input":"*** Begin'), ("arguments", 0, ' Patch"}')],
        "tool_calls",
        [
            "output_item.added",
            "custom_tool_call_input.delta",
            "custom_tool_call_input.done",
            "output_item.done",
            "completed",
        ],
    ),
    "a refusal": (
        [("refusal", "I can't "), ("refusal", "help.")],
        "stop",
        [
            "output_item.added",
            "content_part.added",
            "refusal.delta",
            "refusal.delta",
            "refusal.done",
            "content_part.done",
            "output_item.done",
            "completed",
        ],
    ),
    "nothing said: one empty message": (
        [],
        "stop",
        [
            "output_item.added",
            "content_part.added",
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "completed",
        ],
    ),
}


@pytest.mark.parametrize("steps, finish_reason, types", CASES.values(), ids=CASES.keys())
def test_chat_streams_become_response_streams(
    steps: list[Step], finish_reason: str, types: list[str]
) -> None:
    stream, events = translate(steps, finish_reason)
    for event in events:
        validate("ResponseStreamEvent", event)
    assert [event["type"].removeprefix("response.") for event in events[2:]] == types
    assert_grammar(events)
    final = events[-1]["response"]
    validate("Response", final)
    assert stream.response == final
    usage = Usage.from_openai(USAGE)
    expected = from_chat(
        completion_of(steps, finish_reason), REQUEST, TOOLS, usage, RESPONSE_ID, CREATED_AT
    )
    assert without_ids(final["output"]) == without_ids(expected["output"])
    assert {**final, "output": None} == {**expected, "output": None}


def test_each_event_says_where_its_text_goes() -> None:
    _, events = translate(
        [("content", "Hi"), ("call", 0, "call_1", "agents__spawn", "{}")], "tool_calls"
    )
    by_type = {event["type"]: event for event in events}
    text = by_type["response.output_text.delta"]
    assert (text["output_index"], text["content_index"], text["delta"], text["logprobs"]) == (
        0,
        0,
        "Hi",
        [],
    )
    added = by_type["response.output_item.added"]["item"]  # the last one added: the call
    assert added == {
        "id": added["id"],
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_1",
        "name": "spawn",
        "namespace": "agents",
        "arguments": "",
    }
    assert added["id"].startswith("fc_")
    arguments = by_type["response.function_call_arguments.done"]
    assert (arguments["output_index"], arguments["name"], arguments["arguments"]) == (
        1,
        "spawn",
        "{}",
    )
    assert by_type["response.output_item.done"]["item"]["status"] == "completed"


def test_the_last_item_of_an_incomplete_response_is_incomplete() -> None:
    _, events = translate([("content", "Once upon")], "length")
    final = events[-1]["response"]
    assert (final["status"], final["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert final["output"][0]["status"] == "incomplete"
    assert final["completed_at"] is None


def test_the_snapshots_before_the_end_are_in_progress_and_empty() -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    created, in_progress = stream.start()
    for event in (created, in_progress):
        assert (event["response"]["status"], event["response"]["output"]) == ("in_progress", [])
        assert "usage" not in event["response"]
        validate("ResponseStreamEvent", event)
    assert stream.start() == []
    stream.feed(chunk({"content": "Hi"}))
    assert stream.response["status"] == "in_progress"


def test_feeding_without_start_starts_and_nothing_follows_the_end() -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    events = stream.feed(chunk({"content": "Hi"}))
    assert [event["type"] for event in events][:2] == ["response.created", "response.in_progress"]
    assert stream.finish()[-1]["type"] == "response.completed"
    assert stream.feed(chunk({"content": "more"})) == []
    assert stream.finish() == [] and stream.fail("late", "server_error") == []


USAGES: dict[str, tuple[Usage | None, Usage | None, dict[str, Any] | None]] = {
    "the provider's reading wins over the chunk's": (
        Usage(prompt_tokens=20, completion_tokens=9, cache_read_tokens=4, cache_write_tokens=6),
        None,
        {
            "input_tokens": 20,
            "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 6},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 29,
        },
    ),
    "an estimate given at the end": (
        None,
        Usage(prompt_tokens=7, completion_tokens=2, estimated=True),
        {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 9,
        },
    ),
    "none reported, none given: no usage": (None, None, None),
}


@pytest.mark.parametrize("reported, given_at_end, expected", USAGES.values(), ids=USAGES.keys())
def test_usage(
    reported: Usage | None, given_at_end: Usage | None, expected: dict[str, Any] | None
) -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    stream.feed(chunk({"content": "Hi"}, "stop"))
    if reported is not None:
        stream.feed({"choices": [], "usage": USAGE}, reported)
    final = stream.finish(usage=given_at_end)[-1]["response"]
    assert final.get("usage") == expected
    validate("Response", final)


@pytest.mark.parametrize(
    "code, sent",
    [("rate_limit_exceeded", "rate_limit_exceeded"), ("upstream_timeout", "server_error")],
)
def test_a_broken_stream_ends_with_response_failed(code: str, sent: str) -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    events = [*stream.start(), *stream.feed(chunk({"content": "Hal"}))]
    events += stream.fail("The upstream provider failed mid-stream.", code)
    failed = events[-1]
    validate("ResponseStreamEvent", failed)
    assert failed["type"] == "response.failed"
    response = failed["response"]
    assert (response["status"], response["error"]) == (
        "failed",
        {"code": sent, "message": "The upstream provider failed mid-stream."},
    )
    assert [(item["type"], item["status"]) for item in response["output"]] == [
        ("message", "incomplete")
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert stream.response == response


def test_arguments_of_a_call_already_closed_cannot_be_streamed() -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    stream.feed(chunk(delta_of(("call", 0, "call_1", "get_weather", "{"))))
    stream.feed(chunk(delta_of(("call", 1, "call_2", "get_weather", "{}"))))
    with pytest.raises(UpstreamUnavailable):
        stream.feed(chunk(delta_of(("arguments", 0, "}"))))


@pytest.mark.parametrize("index", [True, -1, "1"])
def test_a_tool_call_index_that_is_not_one_is_the_first_calls(index: Any) -> None:
    """A boolean, a negative number or text is not an index (``True`` was the call of index 1):
    the call is the first call's, as one that gives no index."""
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    stream.feed(
        chunk(
            {"tool_calls": [{"index": index, "id": "call_1", "function": {"name": "get_weather"}}]}
        )
    )
    stream.feed(chunk(delta_of(("arguments", 0, '{"city": "Oslo"}'))))
    stream.finish()
    [call] = stream.response["output"]
    assert (call["call_id"], call["arguments"]) == ("call_1", '{"city": "Oslo"}')


CALLS = objects(
    index=one_of(0, 1),
    id=one_of("call_1", "call_2"),
    function=objects(
        name=one_of("get_weather", "apply_patch", "agents__spawn"),
        arguments=one_of('{"a"', ":1}", ""),
    ),
)
DELTAS = objects(content=TEXT, refusal=TEXT, reasoning_content=TEXT, tool_calls=lists(CALLS, 2))
CHOICES = objects(index=one_of(0, 1), delta=DELTAS, finish_reason=one_of(None, "stop", "length"))
CHUNKS = st.fixed_dictionaries(
    {},
    optional={
        "choices": lists(CHOICES, 2),
        "usage": objects(prompt_tokens=one_of(3), completion_tokens=one_of(2)),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(CHUNKS, max_size=6))
def test_any_chunks_give_valid_events(chunks: list[dict[str, Any]]) -> None:
    stream = ChatToResponsesStream(REQUEST, TOOLS, RESPONSE_ID, CREATED_AT)
    events = stream.start()
    try:
        for piece in chunks:
            events += stream.feed(piece)
        events += stream.finish()
    except UpstreamUnavailable:
        events += stream.fail("The upstream model broke the stream.", "server_error")
    for event in events:
        validate("ResponseStreamEvent", event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
