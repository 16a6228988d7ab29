"""Anthropic-speaking clients, any model: the translations behind ``POST /v1/messages``.

An Anthropic Messages request routed to an OpenAI-compatible model is translated to an OpenAI chat
request (``anthropic_request_to_openai``) and the answer back (``openai_response_to_anthropic``;
streams: ``providers.anthropic.stream.OpenAIToAnthropicStream``). Requests routed to Anthropic
itself are not translated at all: ``AnthropicProvider.messages`` passes them through.
"""

from __future__ import annotations

from typing import Any

from providers.anthropic.ids import translated_id
from providers.anthropic.stream import anthropic_usage, as_dict, stop_reason_for
from providers.anthropic.tools import tool_call_of, tool_input_of, tool_use_of
from providers.anthropic.translate import invalid_request
from providers.errors import UpstreamUnavailable
from providers.types import Usage

# --- Anthropic request -> OpenAI request (POST /v1/messages to any model) -----------------------


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request body.

    Raises ``InvalidRequest`` (``param`` in Anthropic's dotted style) for what has no OpenAI
    counterpart: documents, server tools, images in tool results. ``top_k`` and ``thinking`` are
    dropped. A streaming request always asks for the usage chunk.
    """
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid_request("model: a model name is required", "model")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise invalid_request("messages: at least one message is required", "messages")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _joined_text(body["system"], "system")})
    for i, turn in enumerate(turns):
        messages += _openai_messages(turn, f"messages.{i}")
    result: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name in ("max_tokens", "temperature", "top_p"):
        if body.get(name) is not None:
            result[name] = body[name]
    if body.get("stop_sequences"):
        result["stop"] = body["stop_sequences"]
    user_id = as_dict(body.get("metadata")).get("user_id")
    if isinstance(user_id, str):
        result["user"] = user_id
    if body.get("stream") is True:
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    result.update(_openai_tools(body))
    return result


def _joined_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content if isinstance(content, list) else [None]):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid_request(
                f"{where}.{j}: only text blocks are supported here", f"{where}.{j}"
            )
        texts.append(str(block.get("text") or ""))
    return "\n".join(texts)


def _openai_messages(turn: Any, where: str) -> list[dict[str, Any]]:
    role = turn.get("role") if isinstance(turn, dict) else None
    if role not in ("user", "assistant"):
        raise invalid_request(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
    content = turn.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid_request(f"{where}.content: must be a string or an array", f"{where}.content")
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        block_where = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image" and role == "user":
            parts.append(
                {"type": "image_url", "image_url": {"url": _image_url(block, block_where)}}
            )
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append(tool_call_of(block))
        elif kind == "tool_result" and role == "user":
            tool_messages.append(_tool_message(block, block_where))
        elif kind not in ("thinking", "redacted_thinking"):
            raise invalid_request(
                f"{block_where}: '{kind}' blocks are not supported for this model", block_where
            )
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        reply = {"role": "assistant", "content": text or (None if tool_calls else "")}
        return [{**reply, "tool_calls": tool_calls} if tool_calls else reply]
    if not parts:
        return tool_messages
    single_text = len(parts) == 1 and parts[0]["type"] == "text"
    return [*tool_messages, {"role": "user", "content": parts[0]["text"] if single_text else parts}]


def _image_url(block: dict[str, Any], where: str) -> str:
    source = as_dict(block.get("source"))
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise invalid_request(
        f"{where}.source: must be a base64 or url image source", f"{where}.source"
    )


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid_request(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content")
    text = _joined_text(content, f"{where}.content") if content else ""
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _openai_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        return {}
    converted = []
    for i, tool in enumerate(tools if isinstance(tools, list) else [None]):
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or tool.get("type") not in (None, "custom"):
            raise invalid_request(
                f"tools.{i}: only client tools with an input_schema are supported", f"tools.{i}"
            )
        function = {"name": tool.get("name"), "parameters": schema}
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    result: dict[str, Any] = {"tools": converted}
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        named = {"auto": "auto", "any": "required", "none": "none"}
        if kind in named:
            result["tool_choice"] = named[kind]
        elif kind == "tool" and isinstance(choice.get("name"), str):
            result["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise invalid_request("tool_choice: must be auto, any, tool or none", "tool_choice")
        if choice.get("disable_parallel_tool_use") is True:
            result["parallel_tool_calls"] = False
    return result


# --- OpenAI chat.completion -> Anthropic message ------------------------------------------------


def openai_response_to_anthropic(
    body: dict[str, Any], requested_model: str, usage: Usage | None = None
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic message answering for ``requested_model``.

    ``usage``, when given, is the provider's reading of the usage (``ChatResponse.usage``), which
    knows cache writes that OpenAI's shape cannot carry.
    """
    choice = as_dict((body.get("choices") or [{}])[0])
    reply = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    for key in ("content", "refusal"):
        if isinstance(reply.get(key), str) and reply[key]:
            content.append({"type": "text", "text": reply[key]})
    for call in reply.get("tool_calls") or ():
        function = as_dict(as_dict(call).get("function"))
        tool_input = tool_input_of(function.get("arguments"))
        if tool_input is None:
            raise UpstreamUnavailable("The model returned tool call arguments that are not JSON.")
        content.append(tool_use_of(as_dict(call).get("id"), function.get("name"), tool_input))
    stop_reason = (
        "refusal" if reply.get("refusal") else stop_reason_for(choice.get("finish_reason"))
    )
    return {
        "id": translated_id(body.get("id"), "chatcmpl-", "msg_"),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(usage or Usage.from_openai(body.get("usage"))),
    }
