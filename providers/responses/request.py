"""A Responses API request (``POST /v1/responses``) as a Chat Completions request, for models
that speak only Chat Completions ("bridged" models). Tools: ``tools.py``.

Decisions a client may notice:

- ``instructions`` become the first system message; ``system`` and ``developer`` messages become
  system messages where they occur. ``previous_response_id`` works by the caller passing the
  earlier responses' input and output items as ``history``, which go before ``input``;
  ``item_reference`` items resolve against ``history`` only.
- ``reasoning`` items are dropped: a chat model cannot take its reasoning back, and a summary
  sent back as text would read as something the assistant said.
- Chat tool messages carry only text: images and files a tool returned (a
  ``function_call_output`` with ``input_image``) follow the run of tool messages in a user message.
- ``text.format`` becomes ``response_format``, ``text.verbosity`` ``verbosity``,
  ``reasoning.effort`` ``reasoning_effort``, ``max_output_tokens`` ``max_completion_tokens``;
  ``temperature``, ``top_p``, ``user``, ``safety_identifier`` and ``prompt_cache_key`` go as they
  are. ``metadata`` is only echoed in the response (OpenAI's chat endpoint rejects it unless it
  stores the completion itself); ``store``, ``include``, ``client_metadata``, ``background``,
  ``truncation``, ``service_tier``, ``max_tool_calls`` and ``reasoning.summary`` are not sent.
  Prompt templates (``prompt``) are a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from providers.responses.checks import (
    invalid,
    kind_of,
    list_of,
    name_of,
    object_of,
    optional_bool,
    optional_count,
    optional_number,
    optional_object,
    optional_text,
    text_of,
)
from providers.responses.tools import ToolNames, chat_name, chat_tools

TEXT = frozenset({"input_text", "output_text"})
USER_CONTENT = TEXT | {"input_image", "input_file"}
ASSISTANT_CONTENT = TEXT | {"refusal"}
IMAGE_DETAILS = ("auto", "low", "high")
"""The ``detail`` values chat knows; Responses' ``original`` is left to the model's default."""


@dataclass(slots=True)
class BridgedRequest:
    """What ``to_chat`` makes of a Responses request."""

    chat: dict[str, Any]
    """The Chat Completions request body (``model`` unchanged)."""
    dropped_tools: list[str]
    """The types of the hosted tools left out (``web_search``...), each once."""
    tools: ToolNames
    """What maps the model's tool calls back to the tools the client declared."""


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> BridgedRequest:
    """A Responses request as a Chat Completions request, ``history`` (the input and output
    items of the responses before it) going before ``input``. Raises ``InvalidRequest`` naming
    the offending value for anything malformed or that a chat model cannot do."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = name_of(body.get("model"), "model")
    if body.get("prompt") is not None:
        raise invalid("Prompt templates ('prompt') are not available for this model.", "prompt")
    tools = chat_tools(body)
    history = list_of(history, "previous_response_id") if history is not None else []
    conversation = _Conversation(history)
    instructions = body.get("instructions")
    if isinstance(instructions, list):
        conversation.add_items(instructions, "instructions")
    elif optional_text(instructions, "instructions"):
        conversation.add({"role": "system", "content": instructions})
    conversation.add_items(history, "previous_response_id")
    given = body.get("input")
    if isinstance(given, str):
        conversation.add({"role": "user", "content": given})
    elif given is not None:
        conversation.add_items(list_of(given, "input"), "input")
    chat: dict[str, Any] = {"model": model, "messages": conversation.finish()}
    chat.update(tools.fields)
    chat.update(_options(body))
    return BridgedRequest(chat, tools.dropped, tools.names)


class _Conversation:
    """Chat messages built item by item: consecutive calls become one assistant message, and
    the images tools returned wait for the end of the run of tool messages."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.messages: list[dict[str, Any]] = []
        self._history = {
            item["id"]: item
            for item in history
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        }
        self._call_ids: set[str] = set()
        self._attachments: list[dict[str, Any]] = []
        """Image and file parts of tool outputs, for a user message after the tool messages."""

    def add(self, message: dict[str, Any]) -> None:
        self._flush_attachments()
        self.messages.append(message)

    def finish(self) -> list[dict[str, Any]]:
        self._flush_attachments()
        if not self.messages:
            raise invalid("The request needs some 'input'.", "input")
        return self.messages

    def _flush_attachments(self) -> None:
        if self._attachments:
            self.messages.append({"role": "user", "content": self._attachments})
            self._attachments = []

    def add_items(self, items: list[Any], where: str) -> None:
        for i, item in enumerate(items):
            self._item(item, f"{where}[{i}]")

    def _item(self, item: Any, where: str, *, referenced: bool = False) -> None:
        item = object_of(item, where)
        kind = item.get("type")
        if kind is None:
            kind = "message" if "role" in item else "item_reference"
        kind = name_of(kind, f"{where}.type")
        if kind == "message":
            self._message(item, where)
        elif kind in ("function_call", "custom_tool_call"):
            self._call(item, where)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, where)
        elif kind == "item_reference" and not referenced:
            self._item(self._referenced(item, where), where, referenced=True)
        elif kind != "reasoning":
            raise invalid(
                f"Input items of type '{kind}' are not supported for this model.", f"{where}.type"
            )

    def _referenced(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        reference = name_of(item.get("id"), f"{where}.id")
        if reference not in self._history:
            raise invalid(
                f"The item '{reference}' is not available to 'item_reference' for this model: "
                "only items of the response named by 'previous_response_id' are.",
                where,
            )
        return self._history[reference]

    def _message(self, item: dict[str, Any], where: str) -> None:
        role, content = item.get("role"), item.get("content")
        if role in ("system", "developer"):
            parts = _parts(content, f"{where}.content", TEXT)
            if parts:
                self.add({"role": "system", "content": _text_content(parts)})
        elif role == "user":
            parts = _parts(content, f"{where}.content", USER_CONTENT)
            if parts:
                self.add({"role": "user", "content": _text_content(parts)})
        elif role == "assistant":
            parts = _parts(content, f"{where}.content", ASSISTANT_CONTENT)
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            refusal = "".join(p["refusal"] for p in parts if p["type"] == "refusal")
            if text or refusal:
                message = {"role": "assistant", "content": text or None}
                self.add({**message, "refusal": refusal} if refusal else message)
        else:
            raise invalid(
                "'role' must be 'user', 'assistant', 'system' or 'developer'.", f"{where}.role"
            )

    def _call(self, item: dict[str, Any], where: str) -> None:
        """A function or custom tool call as a chat tool call (a custom tool's text as the
        ``input`` argument), added to the assistant message before it if there is one."""
        call_id = name_of(item.get("call_id"), f"{where}.call_id")
        name = name_of(item.get("name"), f"{where}.name")
        namespace = optional_text(item.get("namespace"), f"{where}.namespace") or None
        if item["type"] == "custom_tool_call":
            text = text_of(item.get("input"), f"{where}.input")
            arguments = orjson.dumps({"input": text}).decode()
        else:
            arguments = text_of(item.get("arguments"), f"{where}.arguments")
        self._call_ids.add(call_id)
        function = {"name": chat_name(name, namespace), "arguments": arguments}
        call = {"id": call_id, "type": "function", "function": function}
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant" and not self._attachments:
            last.setdefault("tool_calls", []).append(call)
        else:
            self.add({"role": "assistant", "content": None, "tool_calls": [call]})

    def _output(self, item: dict[str, Any], where: str) -> None:
        call_id = name_of(item.get("call_id"), f"{where}.call_id")
        if call_id not in self._call_ids:
            raise invalid(
                f"No tool call with call_id '{call_id}' comes before this output.",
                f"{where}.call_id",
            )
        parts = _parts(item.get("output"), f"{where}.output", USER_CONTENT)
        texts = [part for part in parts if part["type"] == "text"]
        self._attachments += [part for part in parts if part["type"] != "text"]
        content = _text_content(texts) if texts else ""
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})


def _text_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what every chat server takes), else the parts."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _parts(content: Any, where: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    """Responses content (a string or content parts) as chat content parts, none empty text."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    parts = []
    for j, part in enumerate(list_of(content, where)):
        part_where = f"{where}[{j}]"
        kind = kind_of(part, part_where)
        if kind not in allowed:
            raise invalid(f"Content of type '{kind}' cannot go here.", part_where)
        if kind in TEXT:
            text = text_of(part.get("text"), f"{part_where}.text")
            parts += [{"type": "text", "text": text}] if text else []
        elif kind == "refusal":
            refusal = text_of(part.get("refusal"), f"{part_where}.refusal")
            parts.append({"type": "refusal", "refusal": refusal})
        elif kind == "input_image":
            parts.append(_image(part, part_where))
        else:
            parts.append(_file(part, part_where))
    return parts


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    if part.get("image_url") is None and part.get("file_id") is not None:
        raise invalid(
            "Images by 'file_id' are not available for this model: send 'image_url' "
            "(an http(s) URL or a data URL).",
            f"{where}.file_id",
        )
    image = {"url": name_of(part.get("image_url"), f"{where}.image_url")}
    detail = part.get("detail")
    if detail in IMAGE_DETAILS:
        image["detail"] = detail
    elif detail not in (None, "original"):
        raise invalid("'detail' must be 'auto', 'low', 'high' or 'original'.", f"{where}.detail")
    return {"type": "image_url", "image_url": image}


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = {}
    for key in ("file_data", "file_id", "filename"):
        value = optional_text(part.get(key), f"{where}.{key}")
        if value:
            file[key] = value
    if "file_data" in file or "file_id" in file:
        return {"type": "file", "file": file}
    if part.get("file_url") is not None:
        raise invalid(
            "Files by 'file_url' are not available for this model: send 'file_data' or 'file_id'.",
            f"{where}.file_url",
        )
    raise invalid("An 'input_file' needs 'file_data' or 'file_id'.", where)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """Everything but the messages and the tools."""
    options: dict[str, Any] = {
        "temperature": optional_number(body.get("temperature"), "temperature", 2),
        "top_p": optional_number(body.get("top_p"), "top_p", 1),
        "max_completion_tokens": optional_count(body.get("max_output_tokens"), "max_output_tokens"),
    }
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        options[name] = optional_text(body.get(name), name)
    _metadata(body.get("metadata"))
    reasoning = optional_object(body.get("reasoning"), "reasoning") or {}
    options["reasoning_effort"] = optional_text(reasoning.get("effort"), "reasoning.effort")
    text = optional_object(body.get("text"), "text") or {}
    options["verbosity"] = optional_text(text.get("verbosity"), "text.verbosity")
    options["response_format"] = _response_format(text.get("format"))
    if optional_bool(body.get("stream"), "stream"):
        options.update(stream=True, stream_options={"include_usage": True})
    return {name: value for name, value in options.items() if value is not None}


def _metadata(metadata: Any) -> None:
    """``metadata`` is not sent, but it is echoed: it must be an object of strings."""
    for key, value in (optional_object(metadata, "metadata") or {}).items():
        text_of(value, f"metadata.{key}")


def _response_format(text_format: Any) -> dict[str, Any] | None:
    where = "text.format"
    if text_format is None:
        return None
    kind = kind_of(text_format, where)
    if kind == "text":
        return None  # chat's default
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid(
            "'text.format.type' must be 'text', 'json_schema' or 'json_object'.", f"{where}.type"
        )
    json_schema: dict[str, Any] = {
        "name": name_of(text_format.get("name"), f"{where}.name"),
        "schema": object_of(text_format.get("schema"), f"{where}.schema"),
    }
    description = optional_text(text_format.get("description"), f"{where}.description")
    if description:
        json_schema["description"] = description
    strict = optional_bool(text_format.get("strict"), f"{where}.strict")
    if strict is not None:
        json_schema["strict"] = strict
    return {"type": "json_schema", "json_schema": json_schema}
