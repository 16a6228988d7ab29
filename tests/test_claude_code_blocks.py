"""Claude Code's tools and content blocks on ``POST /v1/messages``, translated for a model behind
an OpenAI upstream (``providers.anthropic.endpoint``), without I/O: client tools with
Anthropic-only fields, server tools, ``tool_choice``, images, documents, tool results carrying
them, thinking blocks sent back, and what stays a 400.

The other fields it sends are in test_claude_code_translate.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.anthropic_shapes import (
    EPHEMERAL,
    HI,
    PNG,
    SERVER_TOOLS,
    WEATHER_ANTHROPIC,
    anthropic_body,
    text,
    user,
)

from providers.anthropic.endpoint import anthropic_request_to_openai
from providers.anthropic.stream import TRANSLATED_SIGNATURE
from providers.errors import InvalidRequest

WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": WEATHER_ANTHROPIC["input_schema"],
        "description": "Weather in a city",
    },
}
PDF = "JVBERi0xLjQK"


def translated(**fields: Any) -> dict[str, Any]:
    return anthropic_request_to_openai(anthropic_body(**fields))


# --- tools and tool_choice -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool",
    [
        pytest.param({**WEATHER_ANTHROPIC, "cache_control": EPHEMERAL}, id="cache_control"),
        pytest.param({**WEATHER_ANTHROPIC, "type": "custom"}, id="type-custom"),
        pytest.param({**WEATHER_ANTHROPIC, "defer_loading": True}, id="defer_loading"),
        pytest.param({**WEATHER_ANTHROPIC, "strict": True}, id="strict"),
        pytest.param(
            {**WEATHER_ANTHROPIC, "input_examples": [{"city": "Oslo"}]}, id="input_examples"
        ),
        pytest.param(
            {
                **WEATHER_ANTHROPIC,
                "type": "custom",
                "cache_control": EPHEMERAL,
                "defer_loading": False,
                "eager_input_streaming": True,
            },
            id="all-at-once",
        ),
    ],
)
def test_client_tools_with_anthropic_only_fields_become_plain_functions(
    tool: dict[str, Any],
) -> None:
    assert translated(tools=[tool])["tools"] == [WEATHER_FUNCTION]


@pytest.mark.parametrize("server_tool", SERVER_TOOLS, ids=lambda tool: tool["type"])
def test_server_tools_are_dropped(server_tool: dict[str, Any]) -> None:
    result = translated(tools=[server_tool, WEATHER_ANTHROPIC], tool_choice={"type": "any"})
    assert result["tools"] == [WEATHER_FUNCTION]
    assert result["tool_choice"] == "required"


def test_only_server_tools_send_no_tools_and_no_tool_choice() -> None:
    result = translated(tools=SERVER_TOOLS, tool_choice={"type": "auto"})
    assert "tools" not in result and "tool_choice" not in result


@pytest.mark.parametrize(
    ("choice", "openai_choice"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
    ids=["auto", "any", "none", "tool"],
)
@pytest.mark.parametrize("parallel", [None, False, True], ids=["-", "parallel", "not-parallel"])
def test_tool_choice_and_parallel_tool_calls(
    choice: dict[str, Any], openai_choice: Any, parallel: bool | None
) -> None:
    if parallel is not None:
        choice = {**choice, "disable_parallel_tool_use": parallel}
    result = translated(tools=[WEATHER_ANTHROPIC], tool_choice=choice)
    assert result["tool_choice"] == openai_choice
    if parallel is True:
        assert result["parallel_tool_calls"] is False
    else:
        assert "parallel_tool_calls" not in result


# --- content blocks ------------------------------------------------------------------------------


def image(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": source, "cache_control": EPHEMERAL}


def pdf(**fields: Any) -> dict[str, Any]:
    source = {"type": "base64", "media_type": "application/pdf", "data": PDF}
    return {"type": "document", "source": source, **fields}


PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": PNG}
PNG_PART = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
URL_PART = {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}
PDF_FILE = f"data:application/pdf;base64,{PDF}"


@pytest.mark.parametrize(
    ("block", "part"),
    [
        pytest.param(image(PNG_SOURCE), PNG_PART, id="image-base64"),
        pytest.param(image({"type": "url", "url": "https://x.test/a.jpg"}), URL_PART, id="url"),
        pytest.param(
            pdf(),
            {"type": "file", "file": {"filename": "document.pdf", "file_data": PDF_FILE}},
            id="pdf",
        ),
        pytest.param(
            pdf(title="report.pdf", context="Q3", citations={"enabled": True}),
            {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF_FILE}},
            id="pdf-titled",
        ),
        pytest.param(
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."},
                "title": "notes",
            },
            {"type": "text", "text": "Plain notes."},
            id="plain-text-document",
        ),
    ],
)
def test_images_and_documents_become_content_parts(
    block: dict[str, Any], part: dict[str, Any]
) -> None:
    result = translated(messages=[user(text("Look:"), block)])
    assert result["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, part]}
    ]


def test_images_and_documents_in_tool_results_follow_the_tool_message() -> None:
    messages = [
        HI,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}],
        },
        user(
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [text("a.png and b.pdf"), image(PNG_SOURCE), pdf()],
            },
            text("What do they show?"),
        ),
    ]
    assert translated(messages=messages)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.png and b.pdf"},
        {
            "role": "user",
            "content": [
                PNG_PART,
                {"type": "file", "file": {"filename": "document.pdf", "file_data": PDF_FILE}},
                {"type": "text", "text": "What do they show?"},
            ],
        },
    ]


def test_thinking_blocks_sent_back_are_dropped() -> None:
    messages = [
        HI,
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Hmm.",
                    "signature": TRANSLATED_SIGNATURE,
                },
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
                {**text("Checking."), "cache_control": EPHEMERAL},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        user({"type": "tool_result", "tool_use_id": "t1", "content": "2C"}),
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "", "signature": ""}]},
    ]
    call = {
        "id": "t1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    assert translated(messages=messages)["messages"] == [
        HI,
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "2C"},
        {"role": "assistant", "content": ""},
    ]


# --- what stays a 400 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param(
            {
                "tools": [*SERVER_TOOLS, WEATHER_ANTHROPIC],
                "tool_choice": {"type": "tool", "name": "web_search"},
            },
            "tool_choice.name",
            id="tool_choice-names-a-server-tool",
        ),
        pytest.param(
            {"messages": [user({"type": "document", "source": {"type": "url", "url": "u"}})]},
            "messages.0.content.0",
            id="document-url",
        ),
        pytest.param(
            {"messages": [user({"type": "document", "source": {"type": "file", "file_id": "f"}})]},
            "messages.0.content.0",
            id="document-file",
        ),
        pytest.param(
            {
                "messages": [
                    user(
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "text/csv", "data": "x"},
                        }
                    )
                ]
            },
            "messages.0.content.0",
            id="document-base64-not-pdf",
        ),
        pytest.param(
            {"messages": [user({"type": "search_result", "source": "s", "content": []})]},
            "messages.0.content.0",
            id="search_result",
        ),
        pytest.param(
            {"messages": [HI, {"role": "system", "content": [image(PNG_SOURCE)]}]},
            "messages.1.content.0",
            id="system-message-with-an-image",
        ),
        pytest.param(
            {"messages": [HI, {"role": "system"}]},
            "messages.1.content",
            id="system-message-without-content",
        ),
        pytest.param(
            {"messages": [{"role": "developer", "content": "x"}]},
            "messages.0.role",
            id="developer-role",
        ),
        pytest.param({"tools": [{"input_schema": {}}]}, "tools.0.name", id="tool-without-name"),
        pytest.param(
            {"tools": [{"name": "f", "type": "custom"}]},
            "tools.0.input_schema",
            id="tool-without-schema",
        ),
        pytest.param({"tools": [{"name": "f", "type": 7}]}, "tools.0.type", id="tool-type-7"),
        pytest.param({"tools": ["f"]}, "tools.0", id="tool-a-string"),
        pytest.param({"tools": {"name": "f"}}, "tools", id="tools-an-object"),
        pytest.param(
            {"tools": [WEATHER_ANTHROPIC], "tool_choice": "auto"},
            "tool_choice",
            id="tool_choice-a-string",
        ),
    ],
)
def test_what_has_no_openai_counterpart_is_a_400_naming_it(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        translated(**fields)
    assert (info.value.status, info.value.param) == (400, param)
    assert param in info.value.message
