"""A ``chat.completion`` as a Responses API ``Response``, and what the stream (``stream.py``)
builds its events from: the output items, the usage, and the response object around them.

- ``output``: a ``reasoning`` item when the model reasoned (``reasoning_content``, or
  ``reasoning`` as some servers name it; its text as the item's summary), a ``message`` item
  (``output_text`` and ``refusal`` parts), one ``function_call`` or ``custom_tool_call`` item per
  tool call, under the names the client declared. A completion with none of these still answers
  with one empty message.
- ``status``: ``completed``, or ``incomplete`` when the model stopped at its token limit
  (``finish_reason`` length: ``max_output_tokens``) or a content filter; the last output item is
  then ``incomplete`` too.
- The request's settings are echoed as the API does, with its defaults where the client set
  none (``temperature`` and ``top_p`` 1, ``tool_choice`` auto, ``store`` true...).
"""

from __future__ import annotations

from typing import Any

import orjson

from providers import json_text
from providers.responses.ids import (
    CUSTOM_TOOL_CALL,
    FUNCTION_CALL,
    MESSAGE,
    REASONING,
    new_item_id,
)
from providers.responses.tools import ToolNames
from providers.types import Usage, as_dict, as_list, reasoning_of

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Chat ``finish_reason`` -> ``incomplete_details.reason``; any other reason is completed."""


def from_chat(
    chat: dict[str, Any],
    request: dict[str, Any],
    tools: ToolNames,
    usage: Usage,
    response_id: str,
    created_at: int,
    *,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The ``Response`` answering ``request`` with the ``chat.completion`` its bridged model
    gave. ``completed_at`` defaults to ``created_at``."""
    choices = as_list(as_dict(chat).get("choices"))
    choice = as_dict(choices[0] if choices else None)
    message = as_dict(choice.get("message"))
    output: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        output.append(reasoning_item(new_item_id(REASONING), reasoning))
    parts = []
    if _text(message.get("content")):
        parts.append(output_text_part(message["content"]))
    if _text(message.get("refusal")):
        parts.append(refusal_part(message["refusal"]))
    calls = [call for call in as_list(message.get("tool_calls")) if isinstance(call, dict)]
    if parts or not (calls or output):
        output.append(message_item(new_item_id(MESSAGE), parts or [output_text_part("")]))
    for call in calls:
        function = as_dict(call.get("function"))
        output.append(
            call_item(tools, call.get("id"), function.get("name"), function.get("arguments"))
        )
    reason = incomplete_reason(choice.get("finish_reason"))
    if reason:
        output[-1]["status"] = "incomplete"
    return response_object(
        request,
        response_id,
        created_at,
        output=output,
        status="incomplete" if reason else "completed",
        incomplete_reason=reason,
        usage=usage,
        completed_at=created_at if completed_at is None else completed_at,
    )


# --- output items ----------------------------------------------------------------------------


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": refusal}


def message_item(
    item_id: str, parts: list[dict[str, Any]], status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """A reasoning item; the chat model's reasoning text is its summary."""
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "status": status, "summary": summary}


def call_item(
    tools: ToolNames,
    call_id: Any,
    chat_function_name: Any,
    arguments: Any,
    status: str = "completed",
) -> dict[str, Any]:
    """A chat tool call as a ``function_call`` item, or a ``custom_tool_call`` one (its
    ``input`` read from the arguments) for a custom tool."""
    tool = tools.declared(chat_function_name if isinstance(chat_function_name, str) else "")
    if isinstance(arguments, dict | list):
        arguments = orjson.dumps(arguments).decode()
    kind, prefix = (
        ("custom_tool_call", CUSTOM_TOOL_CALL) if tool.custom else ("function_call", FUNCTION_CALL)
    )
    item: dict[str, Any] = {
        "id": new_item_id(prefix),
        "type": kind,
        "status": status,
        "call_id": call_id if isinstance(call_id, str) and call_id else new_item_id("call_"),
        "name": tool.name,
    }
    if tool.namespace:
        item["namespace"] = tool.namespace
    arguments = arguments if isinstance(arguments, str) else ""
    if tool.custom:
        item["input"] = custom_input(arguments)
    else:
        item["arguments"] = arguments
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's text from the chat call's arguments, ``{"input": "..."}``; arguments of
    another shape are taken as the text itself."""
    try:
        decoded = json_text.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    text = decoded.get("input") if isinstance(decoded, dict) else None
    return text if isinstance(text, str) else arguments


def incomplete_reason(finish_reason: Any) -> str | None:
    """Why a response is incomplete, by the chat ``finish_reason``; None when it is complete."""
    return INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None


# --- the response object ---------------------------------------------------------------------


def response_usage(usage: Usage) -> dict[str, Any]:
    """``ResponseUsage``: input tokens include the cached ones, output tokens the reasoning.
    A count the upstream did not give (or gave as something else than a number) is 0."""
    input_tokens, output_tokens = _count(usage.prompt_tokens), _count(usage.completion_tokens)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(usage.cache_read_tokens),
            "cache_write_tokens": _count(usage.cache_write_tokens),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": _count(usage.reasoning_tokens)},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    request: dict[str, Any],
    response_id: str,
    created_at: int,
    *,
    output: list[dict[str, Any]],
    status: str,
    usage: Usage | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, str] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The ``Response`` object: the answer and the request's settings as the API echoes them."""
    reasoning = as_dict(request.get("reasoning"))
    text = as_dict(request.get("text"))
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": request.get("background") is True,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "store": request.get("store") is not False,
        "temperature": _given(request.get("temperature"), 1.0),
        "text": {
            "format": text.get("format") or {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        },
        "tool_choice": _given(request.get("tool_choice"), "auto"),
        "tools": [_echoed_tool(tool) for tool in request.get("tools") or ()],
        "top_p": _given(request.get("top_p"), 1.0),
        "truncation": request.get("truncation") or "disabled",
        "metadata": request.get("metadata") or {},
    }
    if usage is not None:
        response["usage"] = response_usage(usage)
    if isinstance(request.get("user"), str):
        response["user"] = request["user"]
    return response


def _echoed_tool(tool: Any) -> Any:
    """A tool as the API echoes it: a function tool always with ``description``, ``parameters``
    and ``strict`` (null when the client left them out)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    defaults = {"description": None, "parameters": None, "strict": None}
    return {**defaults, **tool}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
