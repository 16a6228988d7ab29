"""The fake upstream's agent models (tests/fake_upstream.py serves them): a coding agent's tool
round trip, in OpenAI's chat format and in Anthropic's, for end-to-end tests that run a real agent
through the gateway. Each model plays for one client, whose tool it calls:

- ``agent``, for Codex CLI (tests/test_e2e_codex.py): calls ``exec_command`` with ``{"cmd":
  "ls"}`` (``cmd`` is the one parameter Codex's tool requires); quotes ``QUOTED`` (40) characters;
  says ``hi`` otherwise.
- ``claude-agent``, for Claude Code (tests/test_e2e_claude_code.py): calls ``Bash`` with
  ``{"command": "ls", "description": "List files"}`` (``command`` is required, ``description`` is
  what Claude Code shows); quotes 60 characters; says ``ok`` otherwise (Claude Code's side
  requests: a session title, say, which it asks for without tools).

What it answers depends on the request (so its answers are never cached):

- the request holds tool results since the model last spoke (after the last assistant message,
  or anywhere when there is none; OpenAI: messages of role ``tool``; Anthropic: ``tool_result``
  blocks in user messages): the text ``Done: `` and the first characters of the last result's
  text, stripped. Codex's ``exec_command`` result opens with a header (chunk id, wall time, exit
  code, token count) and an ``Output:`` line: the command's own output follows it, and is what
  is quoted.
- else, the request offers the model's tool by its exact name (OpenAI: ``tools[].function.name``;
  Anthropic: ``tools[].name``): one call of it. The last message need not be the user's: Claude
  Code's first request ends with a message of role ``system``.
- anything else: the model's fallback text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Agent:
    """One agent model: the tool it calls and with what, how much of the result it quotes, and
    what it says when it has no tool to call."""

    tool: str
    arguments: dict[str, Any]
    quoted: int
    fallback: str

    def call(self, anthropic: bool) -> ToolCall:
        call_id = ("toolu_fake_" if anthropic else "call_fake_") + self.tool.lower()
        return ToolCall(call_id, self.tool, self.arguments)


AGENT = "agent"
CLAUDE_AGENT = "claude-agent"
AGENTS = {
    AGENT: Agent(TOOL_NAME, TOOL_ARGUMENTS, QUOTED, "hi"),
    CLAUDE_AGENT: Agent("Bash", {"command": "ls", "description": "List files"}, 60, "ok"),
}
"""The agent models by name."""


def agent_turn(model: str, body: dict[str, Any], anthropic: bool) -> AgentTurn:
    """What the agent model ``model`` answers to the request ``body``."""
    agent = AGENTS[model]
    messages = body.get("messages")
    if not isinstance(messages, list):
        return AgentTurn(agent.fallback)
    results = _anthropic_tool_outputs(messages) if anthropic else _openai_tool_outputs(messages)
    if results:
        return AgentTurn("Done: " + quoted(results[-1], agent.quoted))
    if _offers_tool(body.get("tools"), agent.tool, anthropic):
        return AgentTurn(tool_call=agent.call(anthropic))
    return AgentTurn(agent.fallback)


def _since_the_model_spoke(messages: list[Any]) -> list[dict[str, Any]]:
    """The messages after the last assistant message (all of them if there is none)."""
    start = 0
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            start = i + 1
    return [m for m in messages[start:] if isinstance(m, dict)]


def _offers_tool(tools: Any, name: str, anthropic: bool) -> bool:
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool if anthropic else tool.get("function")
        if isinstance(function, dict) and function.get("name") == name:
            return True
    return False


def _openai_tool_outputs(messages: list[Any]) -> list[str]:
    return [
        text_of(m.get("content"))
        for m in _since_the_model_spoke(messages)
        if m.get("role") == "tool"
    ]


def _anthropic_tool_outputs(messages: list[Any]) -> list[str]:
    outputs = []
    for message in _since_the_model_spoke(messages):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        outputs += [
            text_of(block.get("content"))
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
    return outputs


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


def quoted(output: str, length: int = QUOTED) -> str:
    """What the agent quotes of a tool's output: its first ``length`` characters, stripped (of a
    Codex exec_command result, of the command's output)."""
    _, marker, command_output = output.partition(OUTPUT_LINE)
    return (command_output if marker else output).strip()[:length]
