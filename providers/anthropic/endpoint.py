"""Anthropic-speaking clients, any model: the translations behind ``POST /v1/messages``.

An Anthropic Messages request routed to an OpenAI-compatible model is translated to an OpenAI chat
request (``anthropic_request_to_openai``) and the answer back (``openai_response_to_anthropic``;
streams: ``providers.anthropic.stream.OpenAIToAnthropicStream``). Requests routed to Anthropic
itself are not translated at all: ``AnthropicProvider.messages`` passes them through.

The request, field by field (anything not listed is dropped, never an error: ``top_k``,
``context_management``, ``container``, ``mcp_servers``, ``service_tier``, ``betas``,
``cache_control`` wherever it is, citations and titles of text documents...):

- ``system`` (a string or text blocks) -> the first message, ``system``, its blocks joined by
  newlines. A ``system`` message inside ``messages`` (the mid-conversation system messages of
  Claude Code, beta ``mid-conversation-system-2026-04-07``) -> a ``system`` message in its place.
- ``max_tokens``, ``temperature``, ``top_p`` -> as they are; ``stop_sequences`` -> ``stop``;
  ``stream`` -> ``stream`` with ``stream_options.include_usage``.
- ``metadata.user_id`` -> ``user``: as it is up to 64 characters (backends cap its length: 64 is
  the cap gateways apply for OpenAI, OpenRouter takes 128); a longer one (Claude Code's is a JSON
  object of ~150) -> its SHA-256 in hex, 64 characters, as stable and as distinct as the original.
- ``thinking`` and ``output_config.effort`` -> ``reasoning_effort`` (``reasoning_effort_of``).
- Content blocks: ``text`` -> text parts; ``image`` (base64 or url source) -> ``image_url``
  parts; ``document`` with a base64 PDF -> a ``file`` part (``file_data`` a data URL), with a
  plain-text source -> a text part, any other source a 400; ``tool_use`` -> ``tool_calls``;
  ``tool_result`` -> a ``tool`` message (its text; its images and documents, which a tool message
  cannot carry, go in the user message that follows the tool messages); ``thinking`` and
  ``redacted_thinking`` sent back in assistant turns -> dropped. Any other block is a 400 naming
  it.
- ``tools``: client tools (no ``type``, or ``custom``) -> functions (``input_schema`` ->
  ``parameters``; ``cache_control``, ``defer_loading``, ``strict``... dropped); server and
  Anthropic-defined tools (``web_search_*``, ``bash_*``, ``text_editor_*``, ``code_execution_*``,
  ``mcp_toolset``...) -> dropped, since no OpenAI backend runs them.
- ``tool_choice``: ``auto`` -> "auto", ``any`` -> "required", ``none`` -> "none", ``{type: tool,
  name}`` -> ``{type: function, function: {name}}`` (a 400 when ``name`` is a dropped server
  tool); ``disable_parallel_tool_use: true`` -> ``parallel_tool_calls: false``. Without any
  function left, neither is sent (OpenAI rejects a ``tool_choice`` without ``tools``).

The answer: a chat message's reasoning (``reasoning_content`` of DeepSeek, vLLM and Ollama, or
``reasoning`` of OpenRouter) -> a ``thinking`` block first, signed ``TRANSLATED_SIGNATURE``; its
text and refusal -> text blocks; its tool calls -> ``tool_use`` blocks.
"""

from __future__ import annotations

import hashlib
from typing import Any

from providers.anthropic.ids import translated_id
from providers.anthropic.stream import (
    TRANSLATED_SIGNATURE,
    anthropic_usage,
    stop_reason_for,
)
from providers.anthropic.tools import tool_call_of, tool_input_of, tool_use_of
from providers.anthropic.translate import invalid_request
from providers.errors import InvalidRequest, UpstreamUnavailable
from providers.types import Usage, as_dict, as_list, reasoning_of

USER_MAX_CHARS = 64
"""The longest ``user`` sent as it is; a longer one is sent hashed."""

REASONING_EFFORTS = ("low", "medium", "high")
"""The ``output_config.effort`` values passed on as ``reasoning_effort``; others are ignored."""

BUDGET_EFFORTS = ((4096, "low"), (16384, "medium"))
"""``thinking.budget_tokens`` below each bound -> that ``reasoning_effort``; above all: high."""

DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
"""Blocks a client sends back that no OpenAI model can read: the signed reasoning of a turn."""

# --- Anthropic request -> OpenAI request (POST /v1/messages to any model) -----------------------


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request body (the module says how).

    Raises ``InvalidRequest`` (``param`` in Anthropic's dotted style) for what has no OpenAI
    counterpart: unknown roles and blocks, documents other than PDF and text, a ``tool_choice``
    naming a server tool.
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
    user = openai_user(as_dict(body.get("metadata")).get("user_id"))
    if user is not None:
        result["user"] = user
    effort = reasoning_effort_of(body.get("thinking"), body.get("output_config"))
    if effort is not None:
        result["reasoning_effort"] = effort
    if body.get("stream") is True:
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    result.update(_openai_tools(body))
    return result


def reasoning_effort_of(thinking: Any, output_config: Any) -> str | None:
    """The ``reasoning_effort`` for Anthropic's ``thinking`` and ``output_config``, if any.

    - ``thinking: {type: disabled}`` -> none, whatever the effort: the client turned reasoning
      off.
    - ``output_config.effort`` low, medium or high -> that effort: it wins when given. Any other
      value (``max``, junk) is ignored, as if not given.
    - ``thinking: {type: enabled, budget_tokens: N}`` -> by the budget: under 4096 low, under
      16384 medium, else high.
    - ``thinking: {type: adaptive}``, no ``thinking``, anything else -> none: the backend's own
      default.
    """
    thinking = as_dict(thinking)
    if thinking.get("type") == "disabled":
        return None
    effort = as_dict(output_config).get("effort")
    if isinstance(effort, str) and effort in REASONING_EFFORTS:
        return effort
    budget = thinking.get("budget_tokens")
    if thinking.get("type") != "enabled" or not _is_count(budget):
        return None
    return next((effort for bound, effort in BUDGET_EFFORTS if budget < bound), "high")


def openai_user(user_id: Any) -> str | None:
    """OpenAI's ``user`` for Anthropic's ``metadata.user_id``: itself up to 64 characters, else
    its SHA-256 in hex (64 characters); None for no id or an empty one."""
    if not isinstance(user_id, str) or not user_id:
        return None
    if len(user_id) <= USER_MAX_CHARS:
        return user_id
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _joined_text(content: Any, where: str) -> str:
    """A string, or text blocks joined by newlines (their ``cache_control`` dropped)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"{where}: must be a string or an array of text blocks", where)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid_request(
                f"{where}.{j}: only text blocks are supported here", f"{where}.{j}"
            )
        texts.append(str(block.get("text") or ""))
    return "\n".join(texts)


def _openai_messages(turn: Any, where: str) -> list[dict[str, Any]]:
    role = turn.get("role") if isinstance(turn, dict) else None
    if role == "system":
        return [
            {"role": "system", "content": _joined_text(turn.get("content"), f"{where}.content")}
        ]
    if role not in ("user", "assistant"):
        raise invalid_request(
            f"{where}.role: must be 'user', 'assistant' or 'system'", f"{where}.role"
        )
    content = turn.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid_request(f"{where}.content: must be a string or an array", f"{where}.content")
    if role == "assistant":
        return [_assistant_message(content, f"{where}.content")]
    return _user_messages(content, f"{where}.content")


def _assistant_message(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = _kind(block)
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            tool_calls.append(tool_call_of(block))
        elif kind not in DROPPED_BLOCKS:
            raise _unsupported(kind, f"{where}.{j}")
    text = "".join(texts)
    reply = {"role": "assistant", "content": text or (None if tool_calls else "")}
    return {**reply, "tool_calls": tool_calls} if tool_calls else reply


def _user_messages(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: one ``tool`` message per tool result, then a user message with the rest
    (and the images and documents of the tool results, which a tool message cannot carry)."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind, block_where = _kind(block), f"{where}.{j}"
        if kind == "tool_result":
            tool_message, attachments = _tool_result(block, block_where)
            tool_messages.append(tool_message)
            parts += attachments
        elif kind not in DROPPED_BLOCKS:
            parts.append(_user_part(block, block_where))
    if not parts:
        return tool_messages
    single_text = len(parts) == 1 and parts[0]["type"] == "text"
    return [*tool_messages, {"role": "user", "content": parts[0]["text"] if single_text else parts}]


def _kind(block: Any) -> Any:
    return block.get("type") if isinstance(block, dict) else None


def _unsupported(kind: Any, where: str) -> InvalidRequest:
    if not isinstance(kind, str):
        return invalid_request(f"{where}: must be a content block with a type", where)
    return invalid_request(f"{where}: '{kind}' blocks are not supported for this model", where)


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A text, image or document block of a user turn as an OpenAI content part."""
    kind = _kind(block)
    if kind == "text":
        return {"type": "text", "text": str(block.get("text") or "")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    if kind == "document":
        return _document_part(block, where)
    raise _unsupported(kind, where)


def _image_url(block: dict[str, Any], where: str) -> str:
    source = as_dict(block.get("source"))
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise invalid_request(
        f"{where}.source: must be a base64 or url image source", f"{where}.source"
    )


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A PDF (base64) as a ``file`` part named by the document's title; plain text as text."""
    source = as_dict(block.get("source"))
    data = source.get("data")
    if source.get("type") == "text" and isinstance(data, str):
        return {"type": "text", "text": data}
    if (
        source.get("type") == "base64"
        and source.get("media_type") == "application/pdf"
        and isinstance(data, str)
    ):
        title = block.get("title")
        filename = title if isinstance(title, str) and title else "document.pdf"
        file_data = f"data:application/pdf;base64,{data}"
        return {"type": "file", "file": {"filename": filename, "file_data": file_data}}
    raise invalid_request(
        f"{where}: only base64 PDF and plain-text documents are supported for this model", where
    )


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool_result`` as a ``tool`` message (its text) and the parts it carried besides."""
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid_request(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    attachments: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, item in enumerate(content):
            part = _user_part(item, f"{where}.content.{j}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                attachments.append(part)
    elif content is not None:
        raise invalid_request(f"{where}.content: must be a string or an array", f"{where}.content")
    message = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": "\n".join(texts)}
    return message, attachments


def _openai_tools(body: dict[str, Any]) -> dict[str, Any]:
    """``tools`` and ``tool_choice``: client tools as functions, server tools dropped."""
    tools = body.get("tools")
    if not tools:
        return {}
    if not isinstance(tools, list):
        raise invalid_request("tools: must be an array", "tools")
    functions: list[dict[str, Any]] = []
    server_tools: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise invalid_request(f"{where}: must be an object", where)
        kind = tool.get("type")
        if kind is not None and not isinstance(kind, str):
            raise invalid_request(f"{where}.type: must be a string", f"{where}.type")
        if kind not in (None, "custom"):
            if isinstance(tool.get("name"), str):
                server_tools.add(tool["name"])
            continue
        functions.append(_function(tool, where))
    result: dict[str, Any] = {"tools": functions} if functions else {}
    choice = body.get("tool_choice")
    if choice is None:
        return result
    if not isinstance(choice, dict):
        raise invalid_request("tool_choice: must be an object", "tool_choice")
    openai_choice = _tool_choice(choice, server_tools)
    if functions:
        result["tool_choice"] = openai_choice
        if choice.get("disable_parallel_tool_use") is True:
            result["parallel_tool_calls"] = False
    return result


def _function(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"{where}.name: a tool name is required", f"{where}.name")
    if not isinstance(schema, dict):
        raise invalid_request(
            f"{where}.input_schema: a client tool needs a JSON Schema object",
            f"{where}.input_schema",
        )
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any], server_tools: set[str]) -> Any:
    kind = choice.get("type")
    named = {"auto": "auto", "any": "required", "none": "none"}
    if isinstance(kind, str) and kind in named:
        return named[kind]
    name = choice.get("name")
    if kind != "tool" or not isinstance(name, str):
        raise invalid_request("tool_choice: must be auto, any, tool or none", "tool_choice")
    if name in server_tools:
        raise invalid_request(
            f"tool_choice.name: '{name}' is a server tool, which this model cannot run",
            "tool_choice.name",
        )
    return {"type": "function", "function": {"name": name}}


# --- OpenAI chat.completion -> Anthropic message ------------------------------------------------


def openai_response_to_anthropic(
    body: dict[str, Any], requested_model: str, usage: Usage | None = None
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic message answering for ``requested_model``:
    its reasoning as a ``thinking`` block first, then text, then tool calls.

    ``usage``, when given, is the provider's reading of the usage (``ChatResponse.usage``), which
    knows cache writes that OpenAI's shape cannot carry.
    """
    choice = as_dict((body.get("choices") or [{}])[0])
    reply = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    thought = reasoning_of(reply)
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": TRANSLATED_SIGNATURE})
    for key in ("content", "refusal"):
        if isinstance(reply.get(key), str) and reply[key]:
            content.append({"type": "text", "text": reply[key]})
    for call in as_list(reply.get("tool_calls")):
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
