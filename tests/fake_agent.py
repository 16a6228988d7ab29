"""The fake upstream's ``agent`` model (tests/fake_upstream.py serves it): a coding agent's tool
round trip, in OpenAI's chat format and in Anthropic's, for end-to-end tests that run a real agent
(Codex CLI, tests/test_e2e_codex.py) through the gateway.

What it answers depends on the request (so its answers are never cached):

- the last message is a tool result (OpenAI: role ``tool``; Anthropic: a user message with a
  ``tool_result`` block): the text ``Done: `` and the first ``QUOTED`` characters of the tool's
  output, stripped. Codex's ``exec_command`` result opens with a header (chunk id, wall time, exit
  code, token count) and an ``Output:`` line: the command's own output follows it, and is what
  is quoted.
- else, the last message is the user's and the request offers a tool named exactly
  ``exec_command`` (OpenAI: ``tools[].function.name``; Anthropic: ``tools[].name``): one call of
  it, with the arguments ``{"cmd": "ls"}`` (``cmd`` is the one parameter Codex's tool requires).
- anything else: the text ``hi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AGENT = "agent"
TOOL_NAME = "exec_command"
TOOL_ARGUMENTS = {"cmd": "ls"}
QUOTED = 40
OUTPUT_LINE = "Output:\n"  # in Codex's exec_command results, the command's output follows it


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class AgentTurn:
    """What the agent says: a text, or one tool call (and no text)."""

    text: str = ""
    tool_call: ToolCall | None = None


def agent_turn(body: dict[str, Any], anthropic: bool) -> AgentTurn:
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict):
        return AgentTurn("hi")
    output = _anthropic_tool_output(last) if anthropic else _openai_tool_output(last)
    if output is not None:
        return AgentTurn("Done: " + quoted(output))
    if last.get("role") == "user" and _offers_tool(body.get("tools"), anthropic):
        call_id = "toolu_fake_exec" if anthropic else "call_fake_exec"
        return AgentTurn(tool_call=ToolCall(call_id, TOOL_NAME, TOOL_ARGUMENTS))
    return AgentTurn("hi")


def _offers_tool(tools: Any, anthropic: bool) -> bool:
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool if anthropic else tool.get("function")
        if isinstance(function, dict) and function.get("name") == TOOL_NAME:
            return True
    return False


def _openai_tool_output(message: dict[str, Any]) -> str | None:
    if message.get("role") != "tool":
        return None
    return text_of(message.get("content"))


def _anthropic_tool_output(message: dict[str, Any]) -> str | None:
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return None
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return text_of(results[-1].get("content")) if results else None


def text_of(content: Any) -> str:
    """A string, or the text parts of a list of content blocks, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def quoted(output: str) -> str:
    """What the agent quotes of a tool's output: its first ``QUOTED`` characters, stripped (of a
    Codex exec_command result, of the command's output)."""
    _, marker, command_output = output.partition(OUTPUT_LINE)
    return (command_output if marker else output).strip()[:QUOTED]
