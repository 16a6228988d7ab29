"""Responses requests to chat requests (``to_chat``) and chat completions back to Responses
(``from_chat``), for bridged models: every case asserted on the translated body or items, every
``Response`` validated against the official schema. Tools: ``test_responses_tools.py``; malformed
requests: ``test_responses_malformed.py``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.e2e import validate
from support.responses_shapes import (
    CODEX_FIRST_TURN,
    CREATED_AT,
    PNG_URL,
    RESPONSE_ID,
    call_output,
    chat_call,
    chat_completion,
    function_call,
    function_tool,
    message,
    namespace_tool,
    without_ids,
)

from providers.responses import from_chat, to_chat
from providers.responses.tools import ToolNames
from providers.types import Usage

PDF_DATA = "data:application/pdf;base64,JVBERi0x"


def chat_of(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return to_chat({"model": "bridged", **body}, history).chat


# --- input items -> messages --------------------------------------------------------------------

MESSAGES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "string input is one user message": (
        {"input": "hi"},
        [{"role": "user", "content": "hi"}],
    ),
    "instructions come first, as a system message": (
        {"instructions": "Be brief.", "input": [message("user", "hi")]},
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    ),
    "developer and system messages stay where they occur": (
        {
            "input": [
                message("user", "a"),
                message("developer", "d"),
                {"role": "system", "content": "s"},
                message("user", "b"),
            ]
        },
        [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "d"},
            {"role": "system", "content": "s"},
            {"role": "user", "content": "b"},
        ],
    ),
    "several text parts stay parts": (
        {"input": [message("developer", "one", "two")]},
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
            }
        ],
    ),
    "images with their detail; 'original' is left to the model": (
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": PNG_URL, "detail": "high"},
                        {
                            "type": "input_image",
                            "image_url": "https://x.test/a.png",
                            "detail": "original",
                        },
                    ],
                }
            ]
        },
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            }
        ],
    ),
    "files by data or by id": (
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_file", "filename": "a.pdf", "file_data": PDF_DATA},
                        {"type": "input_file", "file_id": "file-1"},
                    ],
                }
            ]
        },
        [
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": {"file_data": PDF_DATA, "filename": "a.pdf"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            }
        ],
    ),
    "assistant text and refusal": (
        {
            "input": [
                message("user", "x"),
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "Sorry,", "annotations": []},
                        {"type": "refusal", "refusal": "I cannot."},
                    ],
                },
            ]
        },
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "Sorry,", "refusal": "I cannot."},
        ],
    ),
    "a call and its output; consecutive calls and the text before them are one message": (
        {
            "input": [
                message("user", "weather?"),
                message("assistant", "Looking."),
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "hm"}],
                },
                function_call("call_1", "get_weather", '{"city":"Oslo"}'),
                function_call("call_2", "get_weather", '{"city":"Rome"}'),
                call_output("call_1", "cold"),
                call_output("call_2", [{"type": "input_text", "text": "warm"}]),
            ]
        },
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    chat_call("call_1", "get_weather", '{"city":"Oslo"}'),
                    chat_call("call_2", "get_weather", '{"city":"Rome"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
            {"role": "tool", "tool_call_id": "call_2", "content": "warm"},
        ],
    ),
    "images a tool returned follow its run of tool messages": (
        {
            "input": [
                function_call("call_1", "view_image", '{"path":"a.png"}'),
                function_call("call_2", "view_image", '{"path":"b.png"}'),
                call_output("call_1", [{"type": "input_image", "image_url": PNG_URL}]),
                call_output("call_2", "no such file"),
                message("user", "and?"),
            ]
        },
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    chat_call("call_1", "view_image", '{"path":"a.png"}'),
                    chat_call("call_2", "view_image", '{"path":"b.png"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": ""},
            {"role": "tool", "tool_call_id": "call_2", "content": "no such file"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]},
            {"role": "user", "content": "and?"},
        ],
    ),
    "namespaced and custom tool calls by their chat names": (
        {
            "input": [
                function_call("call_1", "spawn", "{}", namespace="agents"),
                {
                    "type": "custom_tool_call",
                    "call_id": "call_2",
                    "name": "apply_patch",
                    "input": "*** Begin",
                },
                call_output("call_1", "ok"),
                {"type": "custom_tool_call_output", "call_id": "call_2", "output": "done"},
            ]
        },
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    chat_call("call_1", "agents__spawn", "{}"),
                    chat_call("call_2", "apply_patch", '{"input":"*** Begin"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            {"role": "tool", "tool_call_id": "call_2", "content": "done"},
        ],
    ),
}


@pytest.mark.parametrize("body, messages", MESSAGES.values(), ids=MESSAGES.keys())
def test_input_items_become_chat_messages(
    body: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    chat = chat_of(body)
    assert chat["messages"] == messages
    validate("CreateChatCompletionRequest", chat)


def test_history_goes_between_the_instructions_and_the_input() -> None:
    history = [message("user", "weather?"), function_call("call_1", "get_weather", "{}", id="fc_1")]
    body = {"instructions": "Be brief.", "input": [call_output("call_1", "cold")]}
    assert chat_of(body, history)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [chat_call("call_1", "get_weather", "{}")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]


def test_item_references_resolve_against_the_history() -> None:
    history = [{**message("user", "remember me"), "id": "msg_old"}]
    body = {"input": [{"type": "item_reference", "id": "msg_old"}, {"id": "msg_old"}]}
    assert chat_of(body, history)["messages"][-2:] == [
        {"role": "user", "content": "remember me"},
        {"role": "user", "content": "remember me"},
    ]


# --- the other settings -----------------------------------------------------------------------

JSON_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}

OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text.format json_schema": (
        {
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": JSON_SCHEMA,
                    "strict": True,
                }
            }
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": JSON_SCHEMA, "strict": True},
            }
        },
    ),
    "text.format json_object": (
        {"text": {"format": {"type": "json_object"}, "verbosity": "low"}},
        {"response_format": {"type": "json_object"}, "verbosity": "low"},
    ),
    "text.format text is chat's default": ({"text": {"format": {"type": "text"}}}, {}),
    "reasoning effort; the summary setting has no chat counterpart": (
        {"reasoning": {"effort": "high", "summary": "auto"}},
        {"reasoning_effort": "high"},
    ),
    "max_output_tokens and sampling": (
        {"max_output_tokens": 300, "temperature": 0.5, "top_p": 0.9},
        {"max_completion_tokens": 300, "temperature": 0.5, "top_p": 0.9},
    ),
    "user, safety and cache keys go as they are": (
        {"user": "u1", "safety_identifier": "s1", "prompt_cache_key": "k1"},
        {"user": "u1", "safety_identifier": "s1", "prompt_cache_key": "k1"},
    ),
    "storage and Responses-only settings are not sent": (
        {
            "store": False,
            "include": ["reasoning.encrypted_content"],
            "client_metadata": {"a": "b"},
            "metadata": {"team": "x"},
            "background": False,
            "truncation": "auto",
            "service_tier": "priority",
            "previous_response_id": "resp_1",
            "max_tool_calls": 3,
        },
        {},
    ),
    "streaming asks for the usage chunk": (
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
    ),
}


@pytest.mark.parametrize("body, expected", OPTIONS.values(), ids=OPTIONS.keys())
def test_settings(body: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = chat_of({"input": "hi", **body})
    assert {k: v for k, v in chat.items() if k not in ("model", "messages")} == expected
    validate("CreateChatCompletionRequest", chat)


# --- a real client's request -------------------------------------------------------------------


def test_codex_first_turn_translates() -> None:
    body = copy.deepcopy(CODEX_FIRST_TURN)
    bridged = to_chat(body)
    chat = bridged.chat
    validate("CreateChatCompletionRequest", chat)
    assert body == CODEX_FIRST_TURN, "the client's request is left as it was"
    assert bridged.dropped_tools == ["web_search"]
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert [n for n in names if n.startswith("multi_agent_v1__")] == [
        "multi_agent_v1__close_agent",
        "multi_agent_v1__resume_agent",
        "multi_agent_v1__send_input",
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__wait_agent",
    ]
    assert len(names) == 12 and "exec_command" in names
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "user"]
    assert chat["messages"][-1] == {"role": "user", "content": "say hi"}
    assert chat["prompt_cache_key"] == CODEX_FIRST_TURN["prompt_cache_key"]
    assert chat["stream_options"] == {"include_usage": True}
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("auto", True)
    for unsent in ("store", "include", "client_metadata", "reasoning_effort", "input", "reasoning"):
        assert unsent not in chat


# --- chat completion -> Response ----------------------------------------------------------------

TOOLS = to_chat(
    {
        "model": "m",
        "input": "x",
        "tools": [
            function_tool("get_weather"),
            namespace_tool("agents", function_tool("spawn")),
            {"type": "custom", "name": "apply_patch"},
        ],
    }
).tools
REQUEST = {"model": "bridged-model", "input": "x"}
USAGE = Usage(prompt_tokens=20, completion_tokens=9, cache_read_tokens=4, reasoning_tokens=3)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def assistant(*parts: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": list(parts),
    }


OUTPUTS: dict[str, tuple[dict[str, Any], str, str | None, list[dict[str, Any]]]] = {
    # reply, finish_reason, incomplete_details.reason, output
    "text": ({"content": "Hello."}, "stop", None, [assistant(text_part("Hello."))]),
    "refusal": (
        {"content": None, "refusal": "I can't help with that."},
        "stop",
        None,
        [assistant({"type": "refusal", "refusal": "I can't help with that."})],
    ),
    "cut off at the token limit": (
        {"content": "Once upon"},
        "length",
        "max_output_tokens",
        [assistant(text_part("Once upon"), status="incomplete")],
    ),
    "reasoning, then text": (
        {"content": "4", "reasoning_content": "2+2 is 4"},
        "stop",
        None,
        [
            {
                "id": "",
                "type": "reasoning",
                "status": "completed",
                "summary": [{"type": "summary_text", "text": "2+2 is 4"}],
            },
            assistant(text_part("4")),
        ],
    ),
    "tool calls, named as declared": (
        {
            "content": "Checking.",
            "tool_calls": [
                chat_call("call_1", "get_weather", '{"city":"Oslo"}'),
                chat_call("call_2", "agents__spawn", "{}"),
                chat_call("call_3", "apply_patch", '{"input":"*** Begin Patch"}'),
                chat_call("call_4", "made_up", "{}"),
            ],
        },
        "tool_calls",
        None,
        [
            assistant(text_part("Checking.")),
            {
                "id": "",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
            },
            {
                "id": "",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_2",
                "name": "spawn",
                "namespace": "agents",
                "arguments": "{}",
            },
            {
                "id": "",
                "type": "custom_tool_call",
                "status": "completed",
                "call_id": "call_3",
                "name": "apply_patch",
                "input": "*** Begin Patch",
            },
            {
                "id": "",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_4",
                "name": "made_up",
                "arguments": "{}",
            },
        ],
    ),
    "stopped by a content filter": (
        {"content": "Partial"},
        "content_filter",
        "content_filter",
        [assistant(text_part("Partial"), status="incomplete")],
    ),
    "nothing said: one empty message": (
        {"content": ""},
        "stop",
        None,
        [assistant(text_part(""))],
    ),
}


@pytest.mark.parametrize(
    "reply, finish_reason, incomplete, output", OUTPUTS.values(), ids=OUTPUTS.keys()
)
def test_chat_completions_become_responses(
    reply: dict[str, Any], finish_reason: str, incomplete: str | None, output: list[dict[str, Any]]
) -> None:
    response = from_chat(
        chat_completion(reply, finish_reason), REQUEST, TOOLS, USAGE, RESPONSE_ID, CREATED_AT
    )
    validate("Response", response)
    assert response["status"] == ("incomplete" if incomplete else "completed")
    assert response["incomplete_details"] == ({"reason": incomplete} if incomplete else None)
    assert response["completed_at"] == (None if incomplete else CREATED_AT)
    assert without_ids(response["output"]) == without_ids(output)
    prefixes = {
        "message": "msg_",
        "reasoning": "rs_",
        "function_call": "fc_",
        "custom_tool_call": "ctc_",
    }
    assert all(item["id"].startswith(prefixes[item["type"]]) for item in response["output"])


def test_usage_counts_cached_input_and_reasoning_output() -> None:
    usage = Usage(
        prompt_tokens=20,
        completion_tokens=9,
        cache_read_tokens=4,
        cache_write_tokens=2,
        reasoning_tokens=3,
    )
    response = from_chat(
        chat_completion({"content": "x"}), REQUEST, ToolNames(), usage, RESPONSE_ID, CREATED_AT
    )
    assert response["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 29,
    }


def test_the_request_is_echoed_as_the_api_does() -> None:
    request = {
        "model": "bridged-model",
        "instructions": "Be brief.",
        "input": "x",
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "max_output_tokens": 100,
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
        "metadata": {"team": "x"},
        "store": False,
        "previous_response_id": "resp_before",
        "user": "u1",
    }
    response = from_chat(
        chat_completion({"content": "{}"}), request, ToolNames(), USAGE, RESPONSE_ID, CREATED_AT
    )
    validate("Response", response)
    assert (response["id"], response["object"], response["created_at"], response["model"]) == (
        RESPONSE_ID,
        "response",
        CREATED_AT,
        "bridged-model",
    )
    assert response["tools"] == [
        {"type": "function", "name": "f", "description": None, "parameters": None, "strict": None},
        {"type": "web_search"},
    ]
    for name in (
        "instructions",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "max_output_tokens",
        "metadata",
        "store",
        "previous_response_id",
        "user",
    ):
        assert response[name] == request[name], name
    assert response["text"] == {"format": {"type": "json_object"}, "verbosity": "medium"}
    assert response["reasoning"] == {"effort": "low", "summary": None}
    assert (response["top_p"], response["truncation"], response["error"]) == (1.0, "disabled", None)
    defaults = from_chat(
        chat_completion({"content": "x"}), REQUEST, ToolNames(), USAGE, RESPONSE_ID, CREATED_AT
    )
    assert (
        defaults["tool_choice"],
        defaults["tools"],
        defaults["store"],
        defaults["metadata"],
    ) == ("auto", [], True, {})
    assert "user" not in defaults
