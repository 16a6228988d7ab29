"""Malformed Responses requests: each is an ``InvalidRequest`` (400) naming the offending value
in dotted form, never another exception, whatever JSON a client sends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.jsonish import TEXT, lists, objects, one_of, or_junk
from support.responses_shapes import (
    PNG_URL,
    call_output,
    function_call,
    function_tool,
    namespace_tool,
)

from providers.errors import InvalidRequest
from providers.responses import to_chat

MALFORMED: dict[str, tuple[Any, str | None]] = {
    "a body that is no object": ([], None),
    "no model": ({"input": "hi"}, "model"),
    "input of the wrong type": ({"model": "m", "input": 5}, "input"),
    "no input at all": ({"model": "m", "input": []}, "input"),
    "an item that is no object": ({"model": "m", "input": [5]}, "input[0]"),
    "an unknown role": (
        {"model": "m", "input": [{"role": "robot", "content": "x"}]},
        "input[0].role",
    ),
    "an unknown content type": (
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "input[0].content[0]",
    ),
    "a text part without text": (
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
        "input[0].content[0].text",
    ),
    "an image in a system message": (
        {
            "model": "m",
            "input": [
                {"role": "system", "content": [{"type": "input_image", "image_url": PNG_URL}]}
            ],
        },
        "input[0].content[0]",
    ),
    "an image by file id": (
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
        },
        "input[0].content[0].file_id",
    ),
    "a file by url": (
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"}],
                }
            ],
        },
        "input[0].content[0].file_url",
    ),
    "a file with nothing in it": (
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_file", "filename": "a"}]}],
        },
        "input[0].content[0]",
    ),
    "an output for no call": (
        {"model": "m", "input": [call_output("call_9", "x")]},
        "input[0].call_id",
    ),
    "call arguments that are no string": (
        {"model": "m", "input": [function_call("c", "f", {"a": 1})]},  # type: ignore[arg-type]
        "input[0].arguments",
    ),
    "a hosted tool's call item": (
        {"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]},
        "input[0].type",
    ),
    "an item reference to nothing known": (
        {"model": "m", "input": [{"type": "item_reference", "id": "msg_gone"}]},
        "input[0]",
    ),
    "tools that are no array": ({"model": "m", "input": "x", "tools": {}}, "tools"),
    "a tool without a type": (
        {"model": "m", "input": "x", "tools": [{"name": "f"}]},
        "tools[0].type",
    ),
    "a function without a name": (
        {"model": "m", "input": "x", "tools": [{"type": "function"}]},
        "tools[0].name",
    ),
    "a hosted tool in a namespace": (
        {"model": "m", "input": "x", "tools": [namespace_tool("ns", {"type": "web_search"})]},
        "tools[0].tools[0].type",
    ),
    "a tool declared twice": (
        {"model": "m", "input": "x", "tools": [function_tool("f"), function_tool("f")]},
        "tools[1].name",
    ),
    "tool_choice naming no tool": (
        {
            "model": "m",
            "input": "x",
            "tools": [function_tool("f")],
            "tool_choice": {"type": "function", "name": "g"},
        },
        "tool_choice",
    ),
    "tool_choice of the wrong type": (
        {"model": "m", "input": "x", "tool_choice": 5},
        "tool_choice",
    ),
    "tool_choice required without tools": (
        {"model": "m", "input": "x", "tool_choice": "required"},
        "tool_choice",
    ),
    "temperature out of range": ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    "max_output_tokens of zero": (
        {"model": "m", "input": "x", "max_output_tokens": 0},
        "max_output_tokens",
    ),
    "max_output_tokens true": (
        {"model": "m", "input": "x", "max_output_tokens": True},
        "max_output_tokens",
    ),
    "a json_schema format without a schema": (
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
        "text.format.schema",
    ),
    "an unknown format": (
        {"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}},
        "text.format.type",
    ),
    "reasoning as a string": ({"model": "m", "input": "x", "reasoning": "high"}, "reasoning"),
    "metadata that is not all strings": (
        {"model": "m", "input": "x", "metadata": {"a": 1}},
        "metadata.a",
    ),
    "stream as a string": ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    "a prompt template": ({"model": "m", "prompt": {"id": "pmpt_1"}}, "prompt"),
}


@pytest.mark.parametrize("body, param", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_a_400_naming_the_value(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        to_chat(body)
    assert raised.value.param == param
    assert raised.value.status == 400


# Requests a client could send: mostly the shapes the API knows, with junk anywhere in them.
PARTS = objects(
    type=one_of("input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"),
    text=TEXT,
    refusal=TEXT,
    image_url=one_of("https://x.test/a.png", ""),
    file_id=TEXT,
    file_data=TEXT,
    file_url=TEXT,
    detail=one_of("auto", "low", "high", "original"),
)
CONTENT = TEXT | lists(PARTS, 3)
ITEM_TYPES = (
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "reasoning",
    "item_reference",
    "web_search_call",
)
ITEMS = objects(
    type=one_of(*ITEM_TYPES),
    role=one_of("user", "assistant", "system", "developer"),
    content=CONTENT,
    id=one_of("i1", "i2"),
    call_id=one_of("c1", "c2"),
    name=one_of("f", "g"),
    namespace=one_of("ns"),
    arguments=TEXT,
    input=TEXT,
    output=CONTENT,
)
FUNCTIONS = objects(
    type=one_of("function", "custom", "web_search"),
    name=one_of("f", "g", "x" * 70),
    description=TEXT,
    parameters=one_of({"type": "object"}),
    strict=one_of(True, False),
    format=objects(type=one_of("text", "grammar"), syntax=TEXT, definition=TEXT),
)
TOOLS = FUNCTIONS | objects(type=one_of("namespace"), name=one_of("ns"), tools=lists(FUNCTIONS, 2))
TOOL_CHOICES = one_of("auto", "none", "required") | objects(
    type=one_of("function", "custom", "allowed_tools", "file_search", "mcp"),
    name=one_of("f", "g"),
    mode=one_of("auto", "required"),
    tools=lists(
        objects(type=one_of("function", "namespace", "web_search"), name=one_of("f", "ns")), 2
    ),
)
TEXT_FORMATS = objects(
    type=one_of("text", "json_schema", "json_object"),
    name=TEXT,
    schema=one_of({}),
    strict=one_of(True, False),
)
BODIES = st.fixed_dictionaries(
    {"model": st.just("m")},
    optional={
        "input": TEXT | lists(ITEMS, 4),
        "instructions": TEXT | lists(ITEMS, 1),
        "tools": lists(TOOLS, 3),
        "tool_choice": TOOL_CHOICES,
        "parallel_tool_calls": one_of(True, False),
        "text": objects(format=TEXT_FORMATS, verbosity=TEXT),
        "reasoning": objects(effort=TEXT, summary=TEXT),
        "temperature": one_of(0, 0.5, 2),
        "max_output_tokens": one_of(1, 100),
        "metadata": or_junk(st.dictionaries(st.text(max_size=2), TEXT, max_size=2)),
        "stream": one_of(True, False),
        "user": TEXT,
    },
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, history=lists(ITEMS, 3))
def test_any_json_gives_a_chat_request_or_an_invalid_request(body: Any, history: list[Any]) -> None:
    try:
        bridged = to_chat(body, history)
    except InvalidRequest as error:
        assert error.status == 400
        assert error.param is None or isinstance(error.param, str)
    else:
        assert bridged.chat["messages"]
        assert all(isinstance(name, str) for name in bridged.dropped_tools)
