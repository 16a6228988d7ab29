"""What the translation tests between OpenAI chat and Anthropic Messages build requests from:
a provider config, messages, content blocks, tool calls and one tool in both shapes."""

from __future__ import annotations

from typing import Any

from providers.config import ProviderConfig

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
