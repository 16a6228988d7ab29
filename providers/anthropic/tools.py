"""Tool calls both ways: Anthropic's ``tool_use`` blocks and OpenAI's ``tool_calls``, one helper
for each direction, used by the request, response and endpoint translations alike."""

from __future__ import annotations

from typing import Any

import orjson

from providers import json_text


def tool_call_of(block: dict[str, Any]) -> dict[str, Any]:
    """A ``tool_use`` block as an OpenAI tool call: its ``input`` object becomes the JSON string
    of ``arguments``."""
    arguments = orjson.dumps(block.get("input") or {}).decode()
    function = {"name": block.get("name"), "arguments": arguments}
    return {"id": block.get("id"), "type": "function", "function": function}


def tool_input_of(arguments: Any) -> dict[str, Any] | None:
    """An OpenAI tool call's ``arguments`` (a JSON string, or already an object) as the ``input``
    object of a ``tool_use`` block; none or blank is ``{}``; None when it is not a JSON object."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        tool_input = json_text.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return None
    return tool_input if isinstance(tool_input, dict) else None


def tool_use_of(call_id: Any, name: Any, tool_input: dict[str, Any]) -> dict[str, Any]:
    """A ``tool_use`` block."""
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}
