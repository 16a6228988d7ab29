"""OpenAI chat requests to Anthropic Messages requests, and Anthropic messages back to OpenAI
``chat.completion`` objects: how OpenAI-speaking tenants reach Claude (streams: ``stream.py``).

Decisions a caller may notice:

- ``temperature``: OpenAI allows 0-2, Anthropic 0-1. Values above 1 are capped at 1, as
  Anthropic's own OpenAI-compatible endpoint does; values outside 0-2 are a 400. Under
  ``anthropic-version`` 2026-10-21 or later, which rejects them, ``temperature`` and ``top_p`` are
  not sent at all.
- System and developer messages are hoisted into ``system``, joined by newlines.
- ``n`` other than 1 is a 400. Fields with no Anthropic counterpart (``seed``, ``logprobs``,
  penalties, ``response_format``...) are ignored. Whitespace-only stop sequences, which Anthropic
  rejects, are dropped.
"""

from __future__ import annotations

import time
from typing import Any

from providers.anthropic.ids import translated_id
from providers.anthropic.stream import (
    finish_reason_for,
    openai_usage,
    usage_from_anthropic,
)
from providers.anthropic.tools import tool_call_of, tool_input_of, tool_use_of
from providers.base import (
    ChatRequest,
)
from providers.config import ProviderConfig
from providers.errors import InvalidRequest

SAMPLING_REMOVED_IN = "2026-10-21"
"""The first ``anthropic-version`` that rejects ``temperature``, ``top_p`` and ``top_k``."""

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

_OUR_HEADERS = frozenset({"content-type", "x-api-key", "anthropic-version", "authorization"})


# --- OpenAI request -> Anthropic request -------------------------------------------------------


def to_anthropic(
    request: ChatRequest, upstream_model: str, config: ProviderConfig
) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request (without ``stream``)."""
    body = request.upstream_body(upstream_model)
    system, messages = _messages(body["messages"])
    max_tokens = request.max_completion_tokens or request.max_tokens or config.default_max_tokens
    result: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens}
    if system:
        result["system"] = system
    result["messages"] = messages
    if body.get("n") not in (None, 1):
        raise InvalidRequest("This model supports only n=1.", param="n", code="invalid_value")
    stop = _stop_sequences(body.get("stop"))
    if stop:
        result["stop_sequences"] = stop
    if config.anthropic_version < SAMPLING_REMOVED_IN:
        result.update(_sampling(body))
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str):
        result["metadata"] = {"user_id": user}
    result.update(_tools(body))
    return result


def invalid_request(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Hoist system/developer text; turn the rest into alternating turns of non-empty blocks."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where, role = f"messages[{i}]", message.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _blocks(message.get("content"), where, text_only=True))
            continue
        if role == "user":
            blocks = _blocks(message.get("content"), where)
        elif role == "assistant":
            blocks = _blocks(message.get("content"), where)
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise invalid_request("'tool_calls' must be an array.", f"{where}.tool_calls")
            blocks += [_tool_use(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise invalid_request(
                f"The role '{role}' is not supported by this model.", f"{where}.role"
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise invalid_request("The request needs at least one message with content.", "messages")
    return "\n".join(system), turns


def _blocks(content: Any, where: str, *, text_only: bool = False) -> list[dict[str, Any]]:
    """OpenAI message content (a string or content parts) as Anthropic blocks, none empty."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise invalid_request(
            "'content' must be a string or an array of parts.", f"{where}.content"
        )
    blocks = []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise invalid_request(f"'{kind}' must be a string.", f"{part_where}.{kind}")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url" and not text_only:
            blocks.append(_image(part.get("image_url"), f"{part_where}.image_url"))
        else:
            raise invalid_request(
                f"Content parts of type '{kind}' are not supported here.", part_where
            )
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type = header.split(";")[0].lower()
        if not comma or not header.endswith(";base64") or not data:
            raise invalid_request(
                "A data URL image must be base64: data:<type>;base64,<data>.", where
            )
        if media_type not in IMAGE_MEDIA_TYPES:
            supported = ", ".join(IMAGE_MEDIA_TYPES)
            raise invalid_request(
                f"Image type '{media_type}' is not supported ({supported}).", where
            )
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request("'image_url.url' must be an http(s) URL or a base64 data URL.", where)


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    """An OpenAI tool call as a ``tool_use`` block; its arguments JSON string becomes an object."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str):
        raise invalid_request("A tool call needs an 'id' and a 'function'.", where)
    if not isinstance(function.get("name"), str):
        raise invalid_request("A tool call's function needs a 'name'.", f"{where}.function.name")
    tool_input = tool_input_of(function.get("arguments"))
    if tool_input is None:
        raise invalid_request(
            "The tool call's arguments are not a valid JSON object.", f"{where}.function.arguments"
        )
    return tool_use_of(call["id"], function["name"], tool_input)


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise invalid_request("A tool message needs a 'tool_call_id'.", f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif blocks := _blocks(content, where):
        block["content"] = blocks
    return block


def _stop_sequences(stop: Any) -> list[str]:
    sequences = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise invalid_request("'stop' must be a string or an array of strings.", "stop")
    return [s for s in sequences if s.strip()]


def _number(body: dict[str, Any], name: str, highest: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= highest:
        raise invalid_request(f"'{name}' must be a number between 0 and {highest:g}.", name)
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    temperature = _number(body, "temperature", 2)
    if temperature is not None:
        result["temperature"] = min(temperature, 1)  # Anthropic's range is 0-1
    top_p = _number(body, "top_p", 1)
    if top_p is not None:
        result["top_p"] = top_p
    return result


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        return {}  # tool_choice and parallel_tool_calls mean nothing without tools
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be an array.", "tools")
    result: dict[str, Any] = {"tools": [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]}
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        result["tool_choice"] = choice
    return result


def _tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise invalid_request("Only tools of type 'function' are supported by this model.", where)
    if not isinstance(function.get("name"), str):
        raise invalid_request("A function tool needs a 'name'.", f"{where}.function.name")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    result = {"name": function["name"], "input_schema": schema}
    if isinstance(function.get("description"), str) and function["description"]:
        result["description"] = function["description"]
    return result


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise invalid_request(
        "'tool_choice' must be 'auto', 'none', 'required' or a named function.", "tool_choice"
    )


# --- Anthropic message -> OpenAI chat.completion ------------------------------------------------


def from_anthropic(message: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """An Anthropic message as an OpenAI ``chat.completion`` answering for ``requested_model``."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_calls.append(tool_call_of(block))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])  # as DeepSeek and vLLM give it: reasoning_content
        # redacted_thinking and server tool blocks have no OpenAI counterpart
    text = "".join(texts)
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if thoughts:
        reply["reasoning_content"] = "".join(thoughts)
    if tool_calls:
        reply["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": reply,
        "logprobs": None,
        "finish_reason": finish_reason_for(message.get("stop_reason")),
    }
    return {
        "id": translated_id(message.get("id"), "msg_", "chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": requested_model,
        "choices": [choice],
        "usage": openai_usage(usage_from_anthropic(message.get("usage"))),
    }


# --- the provider ------------------------------------------------------------------------------
