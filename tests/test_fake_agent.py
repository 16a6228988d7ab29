"""The fake upstream's ``agent`` model (tests/fake_agent.py): a tool round trip in both wire
formats, streamed and not, over HTTP to the fake as a real subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fake_upstream import run_fake_upstream

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
OA_USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 5,
    "total_tokens": 16,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
AN_USAGE = {
    "input_tokens": 11,
    "output_tokens": 5,
    "cache_creation_input_tokens": 4,
    "cache_read_input_tokens": 3,
}
EXEC_SCHEMA = {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}
OA_TOOLS = [
    {"type": "function", "function": {"name": "exec_command_x", "parameters": EXEC_SCHEMA}},
    {"type": "function", "function": {"name": "exec_command", "parameters": EXEC_SCHEMA}},
]
AN_TOOLS = [{"name": "exec_command", "input_schema": EXEC_SCHEMA}]
ASK = {"role": "user", "content": "list the files here"}
CODEX_RESULT = (  # what Codex's exec_command returns for ``ls``: a header, then the output
    "Chunk ID: 4eed9b\nWall time: 0.0000 seconds\nProcess exited with code 0\n"
    "Original token count: 5\nOutput:\nhello-tollgate.txt\n"
)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with run_fake_upstream() as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def openai_call(client: httpx.Client, messages: list[Any], **extra: Any) -> dict[str, Any]:
    """A non-streamed chat completion's only choice, its usage beside it under "usage"."""
    response = client.post(OPENAI, json={"model": "agent", "messages": messages, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    return {**body["choices"][0], "usage": body["usage"]}


def openai_stream(client: httpx.Client, messages: list[Any], **extra: Any) -> list[Any]:
    body = {"model": "agent", "messages": messages, "stream": True, **extra}
    response = client.post(OPENAI, json=body)
    assert response.status_code == 200, response.text
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def anthropic_events(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(ANTHROPIC, json={"model": "agent", "max_tokens": 50, **body})
    assert response.status_code == 200, response.text
    events = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        events.append(event)
    return events


def test_openai_first_turn_calls_exec_command(client: httpx.Client) -> None:
    choice = openai_call(client, [ASK], tools=OA_TOOLS)
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "exec_command"
    assert json.loads(call["function"]["arguments"]) == {"cmd": "ls"}
    assert choice["usage"] == OA_USAGE


def test_openai_first_turn_streamed(client: httpx.Client) -> None:
    chunks = openai_stream(client, [ASK], tools=OA_TOOLS, stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    [opening] = deltas[0]["tool_calls"]
    assert deltas[0]["role"] == "assistant"
    assert (opening["index"], opening["type"], opening["function"]) == (
        0,
        "function",
        {"name": "exec_command", "arguments": ""},
    )
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert len(fragments) == 2 and json.loads("".join(fragments)) == {"cmd": "ls"}
    assert all(d["tool_calls"][0]["index"] == 0 for d in deltas[1:-1])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"] == OA_USAGE


def test_openai_second_turn_quotes_the_tool_output(client: httpx.Client) -> None:
    first = openai_call(client, [ASK], tools=OA_TOOLS)["message"]
    [call] = first["tool_calls"]
    result = {"role": "tool", "tool_call_id": call["id"], "content": CODEX_RESULT}
    messages = [ASK, first, result]
    choice = openai_call(client, messages, tools=OA_TOOLS)
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Done: hello-tollgate.txt"
    assert "tool_calls" not in choice["message"]
    chunks = openai_stream(client, messages, tools=OA_TOOLS)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Done: hello-tollgate.txt"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_tool_output_as_parts_and_without_codex_header(client: httpx.Client) -> None:
    long = "x" * 50
    parts = [{"type": "text", "text": long[:30]}, {"type": "text", "text": long[30:]}]
    for content in (parts, long):
        result = {"role": "tool", "tool_call_id": "call_1", "content": content}
        choice = openai_call(client, [ASK, result], tools=OA_TOOLS)
        assert choice["message"]["content"] == "Done: " + "x" * 40


def test_openai_without_exec_command_says_hi(client: httpx.Client) -> None:
    lookalike = [OA_TOOLS[0], {"type": "function", "name": "exec_command"}]  # not chat's shape
    for extra in ({}, {"tools": lookalike}):
        choice = openai_call(client, [ASK], **extra)
        assert (choice["message"]["content"], choice["finish_reason"]) == ("hi", "stop")


def test_anthropic_first_turn_calls_exec_command(client: httpx.Client) -> None:
    response = client.post(
        ANTHROPIC, json={"model": "agent", "max_tokens": 50, "messages": [ASK], "tools": AN_TOOLS}
    )
    message = response.json()
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert (block["type"], block["name"], block["input"]) == (
        "tool_use",
        "exec_command",
        {"cmd": "ls"},
    )
    assert block["id"]
    assert message["usage"] == AN_USAGE


def test_anthropic_first_turn_streamed(client: httpx.Client) -> None:
    events = anthropic_events(client, {"messages": [ASK], "tools": AN_TOOLS, "stream": True})
    kinds = [e["type"] for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    block = events[1]["content_block"]
    assert (events[1]["index"], block["type"], block["name"], block["input"]) == (
        0,
        "tool_use",
        "exec_command",
        {},
    )
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert json.loads("".join(fragments)) == {"cmd": "ls"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"] == {"output_tokens": 5}


def test_anthropic_second_turn_quotes_the_tool_output(client: httpx.Client) -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "exec_command", "input": {"cmd": "ls"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": CODEX_RESULT}
    as_blocks = {**result, "content": [{"type": "text", "text": CODEX_RESULT}]}
    for block in (result, as_blocks):
        messages = [
            ASK,
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [block]},
        ]
        message = client.post(
            ANTHROPIC,
            json={"model": "agent", "max_tokens": 50, "messages": messages, "tools": AN_TOOLS},
        ).json()
        assert message["stop_reason"] == "end_turn"
        assert message["content"] == [{"type": "text", "text": "Done: hello-tollgate.txt"}]
        events = anthropic_events(client, {"messages": messages, "tools": AN_TOOLS, "stream": True})
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == "Done: hello-tollgate.txt"
        assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_anthropic_without_exec_command_says_hi(client: httpx.Client) -> None:
    other = [{"name": "get_weather", "input_schema": EXEC_SCHEMA}]
    for extra in ({}, {"tools": other}):
        message = client.post(
            ANTHROPIC, json={"model": "agent", "max_tokens": 50, "messages": [ASK], **extra}
        ).json()
        assert message["content"] == [{"type": "text", "text": "hi"}]
        assert message["stop_reason"] == "end_turn"


def test_the_answer_follows_each_request_under_a_script(client: httpx.Client) -> None:
    """A scripted instance answers from the request too: no plan cached across turns."""
    assert client.post("/_fake/script", json={"cache": True}).status_code == 200
    try:
        first = openai_call(client, [ASK], tools=OA_TOOLS)
        result = {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}
        second = openai_call(client, [ASK, result], tools=OA_TOOLS)
    finally:
        client.post("/_fake/reset")
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "Done: a.txt"
    assert second["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 8
    }  # the same first message


# --- claude-agent: Claude Code's shapes ----------------------------------------------------------

CLAUDE = {"model": "claude-agent"}
BASH_SCHEMA = {
    "type": "object",
    "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
    "required": ["command"],
}
BASH_CALL = {"command": "ls", "description": "List files"}
CC_TOOLS = [
    {"name": "Agent", "input_schema": EXEC_SCHEMA},
    {"name": "Bash", "input_schema": BASH_SCHEMA},
]
CC_OA_TOOLS = [
    {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
    for t in CC_TOOLS
]
# Claude Code's first turn: the prompt after a reminder, then a mid-conversation system message.
CC_ASK = {
    "role": "user",
    "content": [
        {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>\n"},
        {"type": "text", "text": "list the files here"},
    ],
}
CC_AGENTS = {"role": "system", "content": "Available agent types for the Agent tool: ..."}
LISTING = "hello.txt\n" + "".join(f"file-{i:02}.txt\n" for i in range(10))


def test_claude_agent_calls_bash_after_a_system_message(client: httpx.Client) -> None:
    events = anthropic_events(
        client, {**CLAUDE, "messages": [CC_ASK, CC_AGENTS], "tools": CC_TOOLS, "stream": True}
    )
    block = events[1]["content_block"]
    assert (block["type"], block["name"], block["id"]) == ("tool_use", "Bash", "toolu_fake_bash")
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert json.loads("".join(fragments)) == BASH_CALL
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    translated = [{"role": "system", "content": "You are..."}, ASK, CC_AGENTS]
    choice = openai_call(client, translated, tools=CC_OA_TOOLS, **CLAUDE)
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call_fake_bash", "Bash")
    assert json.loads(call["function"]["arguments"]) == BASH_CALL
    chunks = openai_stream(client, translated, tools=CC_OA_TOOLS, **CLAUDE)
    arguments = "".join(
        d["tool_calls"][0]["function"]["arguments"]
        for c in chunks
        if c["choices"] and (d := c["choices"][0]["delta"]).get("tool_calls")
    )
    assert json.loads(arguments) == BASH_CALL


def test_claude_agent_quotes_60_characters_of_the_last_tool_result(client: httpx.Client) -> None:
    call = {"type": "tool_use", "id": "toolu_fake_bash", "name": "Bash", "input": BASH_CALL}
    result = {"type": "tool_result", "tool_use_id": "toolu_fake_bash", "content": LISTING}
    messages = [CC_ASK, CC_AGENTS, {"role": "assistant", "content": [call]}]
    messages.append({"role": "user", "content": [result]})
    body = {**CLAUDE, "messages": messages, "tools": CC_TOOLS, "stream": True}
    events = anthropic_events(client, body)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "Done: " + LISTING.strip()[:60]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"

    tool_call = {"id": "call_1", "type": "function", "function": {"name": "Bash"}}
    openai = [ASK, {"role": "assistant", "content": None, "tool_calls": [tool_call]}]
    openai.append({"role": "tool", "tool_call_id": "call_1", "content": "hello.txt\n"})
    choice = openai_call(client, openai, tools=CC_OA_TOOLS, **CLAUDE)
    assert choice["message"]["content"] == "Done: hello.txt"


def test_agents_call_again_once_they_have_spoken_after_a_tool_result(
    client: httpx.Client,
) -> None:
    """A tool result the model already answered is history: a new prompt gets a new call."""
    result = {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}
    history = [ASK, result, {"role": "assistant", "content": "Done: a.txt"}, ASK]
    choice = openai_call(client, history, tools=CC_OA_TOOLS, **CLAUDE)
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "Bash"
    choice = openai_call(client, history, tools=OA_TOOLS)
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "exec_command"


def test_claude_agent_without_bash_says_ok(client: httpx.Client) -> None:
    """Claude Code's side requests (a session title) come without tools."""
    for extra in ({}, {"tools": OA_TOOLS}):
        choice = openai_call(client, [ASK], **CLAUDE, **extra)
        assert (choice["message"]["content"], choice["finish_reason"]) == ("ok", "stop")
    message = client.post(
        ANTHROPIC, json={**CLAUDE, "max_tokens": 50, "messages": [CC_ASK], "tools": AN_TOOLS}
    ).json()
    assert message["content"] == [{"type": "text", "text": "ok"}]
