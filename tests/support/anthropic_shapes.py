"""What the translation tests between OpenAI chat and Anthropic Messages build requests from:
a provider config, messages, content blocks, tool calls and one tool in both shapes, and the first
request of a Claude Code session as captured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from providers.config import ProviderConfig

CLAUDE_CODE_CAPTURE = json.loads(
    (Path(__file__).parent.parent / "spec" / "claude-code-2.1.197-first-turn.json").read_text()
)
"""The first request of a Claude Code 2.1.197 session (``claude -p "say hi"``), as captured:
``headers`` (the tenant key is ``$TOLLGATE_KEY``), ``path`` and ``body`` (24 tools, a
mid-conversation system message, adaptive thinking, ``output_config.effort`` high...)."""
CLAUDE_CODE_FIRST_TURN: dict[str, Any] = CLAUDE_CODE_CAPTURE["body"]

CONFIG = ProviderConfig(type="anthropic", base_url="http://up.test/v1", default_max_tokens=1234)
HI = {"role": "user", "content": "hi"}
PNG = "iVBORw0KGgo="


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def anthropic_body(**fields: Any) -> dict[str, Any]:
    """A Messages request for ``gpt-alias`` saying hi, with ``fields``."""
    return {"model": "gpt-alias", "max_tokens": 100, "messages": [HI], **fields}


EPHEMERAL = {"type": "ephemeral"}
"""A ``cache_control``."""
SERVER_TOOLS = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    {"type": "web_fetch_20250910", "name": "web_fetch"},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "code_execution_20250825", "name": "code_execution"},
    {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
    {"type": "memory_20250818", "name": "memory"},
    {"type": "mcp_toolset", "mcp_server_name": "m"},
]
"""Tools Anthropic runs or defines, which no OpenAI model can be given."""
