"""A Responses request's tools for bridged models: function, namespace and custom tools as chat
functions and their calls mapped back, hosted tools dropped, ``tool_choice``."""

from __future__ import annotations

from typing import Any

import pytest
from support.e2e import validate
from support.responses_shapes import (
    chat_call,
    chat_completion,
    function_tool,
    namespace_tool,
)

from providers.errors import InvalidRequest
from providers.responses import from_chat, to_chat
from providers.responses.tools import chat_name
from providers.types import Usage


def test_function_namespace_and_custom_tools_become_chat_functions() -> None:
    grammar = {"type": "grammar", "syntax": "lark", "definition": 'start: "x"'}
    bridged = to_chat(
        {
            "model": "bridged",
            "input": "hi",
            "tools": [
                function_tool("get_weather", description="Weather", strict=True),
                namespace_tool(
                    "agents", function_tool("spawn"), {"type": "custom", "name": "note"}
                ),
                {
                    "type": "custom",
                    "name": "apply_patch",
                    "description": "Patch",
                    "format": grammar,
                },
                {"type": "web_search", "external_web_access": False},
            ],
            "parallel_tool_calls": False,
        }
    )
    functions = [tool["function"] for tool in bridged.chat["tools"]]
    assert functions[0] == {
        "name": "get_weather",
        "description": "Weather",
        "parameters": function_tool("x")["parameters"],
        "strict": True,
    }
    assert functions[1] == {"name": "agents__spawn", "parameters": function_tool("x")["parameters"]}
    assert functions[2]["name"] == "agents__note"
    assert functions[3]["name"] == "apply_patch"
    assert functions[3]["description"] == "Patch"
    assert functions[3]["parameters"]["required"] == ["input"]
    assert 'start: "x"' in functions[3]["parameters"]["properties"]["input"]["description"]
    assert bridged.chat["parallel_tool_calls"] is False
    assert bridged.dropped_tools == ["web_search"]
    validate("CreateChatCompletionRequest", bridged.chat)


def test_long_namespaced_names_fit_chat_and_map_back() -> None:
    namespace, name = "n" * 40, "tool.with.dots" + "x" * 30
    bridged = to_chat(
        {"model": "m", "input": "hi", "tools": [namespace_tool(namespace, function_tool(name))]}
    )
    sent = bridged.chat["tools"][0]["function"]["name"]
    assert len(sent) <= 64 and sent.replace("_", "").replace("-", "").isalnum()
    assert sent == chat_name(name, namespace)
    reply = {"content": None, "tool_calls": [chat_call("call_1", sent, "{}")]}
    item = from_chat(
        chat_completion(reply, "tool_calls"), {"model": "m"}, bridged.tools, Usage(), "r", 1
    )["output"][0]
    assert (item["name"], item["namespace"]) == (name, namespace)


HOSTED = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "mcp", "server_label": "a"},
    {"type": "mcp", "server_label": "b"},
]

TOOL_CHOICES: dict[str, tuple[list[dict[str, Any]], Any, Any, list[str]]] = {
    "auto": ([function_tool("f")], "auto", "auto", ["f"]),
    "a function by name": (
        [function_tool("f")],
        {"type": "function", "name": "f"},
        {"type": "function", "function": {"name": "f"}},
        ["f"],
    ),
    "a namespaced function by its own name": (
        [namespace_tool("ns", function_tool("f"))],
        {"type": "function", "name": "f"},
        {"type": "function", "function": {"name": "ns__f"}},
        ["ns__f"],
    ),
    "a custom tool": (
        [{"type": "custom", "name": "c"}],
        {"type": "custom", "name": "c"},
        {"type": "function", "function": {"name": "c"}},
        ["c"],
    ),
    "allowed tools narrow the tools sent": (
        [function_tool("f"), function_tool("g"), namespace_tool("ns", function_tool("h")), *HOSTED],
        {
            "type": "allowed_tools",
            "mode": "required",
            "tools": [
                {"type": "function", "name": "g"},
                {"type": "namespace", "name": "ns"},
                {"type": "web_search"},
            ],
        },
        "required",
        ["g", "ns__h"],
    ),
    "only hosted tools: no tools, no tool_choice": (HOSTED, "auto", None, []),
}


@pytest.mark.parametrize(
    "tools, choice, sent_choice, sent_tools", TOOL_CHOICES.values(), ids=TOOL_CHOICES.keys()
)
def test_tool_choice(
    tools: list[dict[str, Any]], choice: Any, sent_choice: Any, sent_tools: list[str]
) -> None:
    body = {"model": "m", "input": "hi", "tools": tools, "tool_choice": choice}
    chat = to_chat({**body, "parallel_tool_calls": False}).chat
    assert chat.get("tool_choice") == sent_choice
    assert [tool["function"]["name"] for tool in chat.get("tools", [])] == sent_tools
    assert chat.get("parallel_tool_calls") is (False if sent_tools else None)


@pytest.mark.parametrize(
    "tools, choice, named",
    [
        (HOSTED, {"type": "web_search_preview"}, "web_search_preview"),
        ([function_tool("f"), *HOSTED], {"type": "file_search"}, "file_search"),
        ([function_tool("f")], {"type": "mcp", "server_label": "a"}, "mcp"),
        (HOSTED, "required", "web_search"),
        (HOSTED, {"type": "allowed_tools", "mode": "required", "tools": [{"type": "mcp"}]}, "mcp"),
    ],
)
def test_a_tool_choice_that_requires_a_hosted_tool_is_a_400_naming_it(
    tools: list[dict[str, Any]], choice: Any, named: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        to_chat({"model": "m", "input": "hi", "tools": tools, "tool_choice": choice})
    assert raised.value.status == 400
    assert raised.value.param == "tool_choice"
    assert f"'{named}'" in raised.value.message


def test_hosted_tools_are_dropped_and_listed_once() -> None:
    bridged = to_chat({"model": "m", "input": "hi", "tools": [function_tool("f"), *HOSTED]})
    assert bridged.dropped_tools == ["web_search", "file_search", "mcp"]
    assert [t["function"]["name"] for t in bridged.chat["tools"]] == ["f"]
