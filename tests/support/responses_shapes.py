"""What the Responses translation tests build from: Responses items and tools, the chat
completion a bridged model answers with, and the same answer as a chat stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CODEX_FIRST_TURN = json.loads(
    (Path(__file__).parent.parent / "spec" / "codex-0.171.0-first-turn.json").read_text()
)["body"]
"""The first request of a Codex CLI 0.171.0 session (``codex exec "say hi"``), as captured."""

RESPONSE_ID, CREATED_AT = "resp_test", 1_800_000_000
PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def message(role: str, *texts: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": t} for t in texts]}


def function_call(call_id: str, name: str, arguments: str = "{}", **extra: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        **extra,
    }


def call_output(call_id: str, output: Any) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def function_tool(name: str, **extra: Any) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    return {"type": "function", "name": name, "parameters": parameters, **extra}


def namespace_tool(name: str, *tools: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "namespace",
        "name": name,
        "description": f"The {name} tools.",
        "tools": list(tools),
    }


def chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_completion(reply: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED_AT,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **reply},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items with their random ids replaced by their positions, to compare them."""
    return [{**item, "id": f"item{i}"} for i, item in enumerate(items)]
