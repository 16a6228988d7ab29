"""OpenAI ``chat.completion.chunk`` dicts in, Responses API stream events out.

``ChatToResponsesStream`` is a pure translator, without I/O: ``start()``, then ``feed(chunk)``
per chunk, then ``finish()`` once the chat stream ended (or ``fail(...)`` if it broke). Each
returns the events to send, as dicts; the caller writes each as
``event: <type>\\ndata: <json>\\n\\n``. The grammar is the Responses API's:

- ``response.created`` and ``response.in_progress``, with the response as it starts;
- per output item, one at a time, with ``output_index`` 0, 1, ...: ``response.output_item.added``,
  its deltas, and the closing events up to ``response.output_item.done`` with the whole item.
  A ``message`` opens and closes each content part (``response.content_part.added``,
  ``response.output_text.delta``... ``.done``, ``response.content_part.done``); a ``reasoning``
  item its summary part (``response.reasoning_summary_part.added``,
  ``response.reasoning_summary_text.delta``...); a ``function_call`` streams its
  ``response.function_call_arguments.delta``; a ``custom_tool_call`` sends its whole input at
  the close (``response.custom_tool_call_input.delta`` and ``.done``), once it can be read out
  of the chat call's JSON arguments. An item closes when the next one starts, or at the end;
- ``response.completed`` (``response.incomplete`` when the model hit its token limit) with the
  final response, the same as ``from_chat`` builds for the same completion, or
  ``response.failed``.

Every event carries a ``sequence_number``, 0, 1, ... across the whole stream. ``response`` is the
response as it stands (the final one after ``finish`` or ``fail``), for storage. The usage comes
with the chat stream's usage chunk, so the chat request must ask for it
(``stream_options.include_usage``, as ``to_chat`` does).

Chat streams tool calls one after another. Arguments for a call whose item is already closed
cannot be sent any more and raise ``UpstreamUnavailable``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from providers.errors import UpstreamUnavailable
from providers.responses.ids import MESSAGE, REASONING, new_item_id
from providers.responses.response import (
    call_item,
    custom_input,
    incomplete_reason,
    message_item,
    output_text_part,
    reasoning_item,
    refusal_part,
    response_object,
)
from providers.responses.tools import ToolNames
from providers.types import Usage, as_dict, as_index, as_list, reasoning_of

Event = dict[str, Any]

ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})
"""The ``ResponseErrorCode`` values a failed bridged call can have; others are ``server_error``."""


@dataclass(slots=True)
class _OpenItem:
    """The output item being streamed, with what its closing events need."""

    index: int
    item: dict[str, Any]
    arguments: list[str] = field(default_factory=list)
    """A tool call's argument fragments so far."""


class ChatToResponsesStream:
    """One Responses stream, built from one chat stream (see the module's docstring)."""

    def __init__(
        self, request: dict[str, Any], tools: ToolNames, response_id: str, created_at: int
    ) -> None:
        self.request = request
        self.tools = tools
        self.response_id = response_id
        self.created_at = created_at
        self.response = self._response("in_progress")
        self._sequence = 0
        self._started = False
        self._ended = False
        self._output: list[dict[str, Any]] = []
        self._open: _OpenItem | None = None
        self._calls: dict[int, int] = {}
        """Chat tool call index -> output index of its item."""
        self._finish_reason: Any = None
        self._usage: Usage | None = None

    # --- the caller's side -------------------------------------------------------------------

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress`` (once)."""
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=copy.deepcopy(self.response)),
            self._event("response.in_progress", response=copy.deepcopy(self.response)),
        ]

    def feed(self, chunk: dict[str, Any], usage: Usage | None = None) -> list[Event]:
        """The events for one chat chunk. ``usage``, when given, is the chunk's usage as the
        provider read it (``StreamChunk.usage``)."""
        events = self.start()
        if self._ended:
            return events
        if usage is not None or isinstance(chunk.get("usage"), dict):
            self._usage = usage or Usage.from_openai(chunk["usage"])
        for choice in as_list(chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = as_dict(choice.get("delta"))
            if reasoning := reasoning_of(delta):
                events += self._reasoning(reasoning)
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    events += self._text(key, delta[key])
            for call in as_list(delta.get("tool_calls")):
                if isinstance(call, dict):
                    events += self._tool_call(call)
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
        return events

    def finish(self, usage: Usage | None = None, completed_at: int | None = None) -> list[Event]:
        """Close the open item, then ``response.completed`` (or ``response.incomplete``).
        ``usage`` replaces the usage the stream reported (an estimate, when it reported none);
        ``completed_at`` defaults to ``created_at``."""
        events = self.start()
        if self._ended:
            return events
        reason = incomplete_reason(self._finish_reason)
        if not self._output:  # nothing said at all: one empty message, as from_chat answers
            events += self._open_item(message_item(new_item_id(MESSAGE), [], "in_progress"))
            events += self._open_part(output_text_part(""))
        events += self._close("incomplete" if reason else "completed")
        self._ended = True
        self.response = self._response(
            "incomplete" if reason else "completed",
            usage=usage or self._usage,
            incomplete_reason=reason,
            completed_at=self.created_at if completed_at is None else completed_at,
        )
        kind = "response.incomplete" if reason else "response.completed"
        return [*events, self._event(kind, response=copy.deepcopy(self.response))]

    def fail(self, error_message: str, code: str = "server_error") -> list[Event]:
        """``response.failed``, the items so far in its output (the open one incomplete)."""
        events = self.start()
        if self._ended:
            return events
        self._ended = True
        if self._open is not None:
            self._open.item["status"] = "incomplete"
        error = {
            "code": code if code in ERROR_CODES else "server_error",
            "message": error_message,
        }
        self.response = self._response("failed", usage=self._usage, error=error)
        return [*events, self._event("response.failed", response=copy.deepcopy(self.response))]

    # --- building blocks ---------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, status: str, **details: Any) -> dict[str, Any]:
        return response_object(
            self.request,
            self.response_id,
            self.created_at,
            output=self._output if status != "in_progress" else [],
            status=status,
            **details,
        )

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open.item["id"], "output_index": self._open.index}

    def _open_item(self, item: dict[str, Any]) -> list[Event]:
        events = self._close("completed")
        self._open = _OpenItem(len(self._output), item)
        self._output.append(item)
        added = self._event(
            "response.output_item.added", output_index=self._open.index, item=copy.deepcopy(item)
        )
        return [*events, added]

    def _close(self, status: str) -> list[Event]:
        """The closing events of the open item, if one is open."""
        if self._open is None:
            return []
        item = self._open.item
        events = []
        if item["type"] == "message":
            events = self._close_part()
        elif item["type"] == "reasoning" and item["summary"]:
            text = item["summary"][0]["text"]
            summary = {**self._where(), "summary_index": 0}
            events = [
                self._event("response.reasoning_summary_text.done", **summary, text=text),
                self._event(
                    "response.reasoning_summary_part.done",
                    **summary,
                    part={"type": "summary_text", "text": text},
                ),
            ]
        elif item["type"] == "function_call":
            events = [
                self._event(
                    "response.function_call_arguments.done",
                    **self._where(),
                    name=item["name"],
                    arguments=item["arguments"],
                )
            ]
        elif item["type"] == "custom_tool_call":
            item["input"] = custom_input("".join(self._open.arguments))
            if item["input"]:
                events.append(
                    self._event(
                        "response.custom_tool_call_input.delta",
                        **self._where(),
                        delta=item["input"],
                    )
                )
            events.append(
                self._event(
                    "response.custom_tool_call_input.done", **self._where(), input=item["input"]
                )
            )
        item["status"] = status
        done = self._event(
            "response.output_item.done", output_index=self._open.index, item=copy.deepcopy(item)
        )
        self._open = None
        return [*events, done]

    # --- messages ----------------------------------------------------------------------------

    def _text(self, key: str, delta: str) -> list[Event]:
        """A ``content`` or ``refusal`` delta, in the open message's part of that kind."""
        kind = "output_text" if key == "content" else "refusal"
        events: list[Event] = []
        if self._open is None or self._open.item["type"] != "message":
            events += self._open_item(message_item(new_item_id(MESSAGE), [], "in_progress"))
        assert self._open is not None
        parts = self._open.item["content"]
        if not parts or parts[-1]["type"] != kind:
            events += self._close_part()
            events += self._open_part(
                output_text_part("") if key == "content" else refusal_part("")
            )
        parts[-1]["text" if key == "content" else "refusal"] += delta
        where = {**self._where(), "content_index": len(parts) - 1}
        if key == "content":
            return [
                *events,
                self._event("response.output_text.delta", **where, delta=delta, logprobs=[]),
            ]
        return [*events, self._event("response.refusal.delta", **where, delta=delta)]

    def _open_part(self, part: dict[str, Any]) -> list[Event]:
        assert self._open is not None
        parts = self._open.item["content"]
        parts.append(part)
        where = {**self._where(), "content_index": len(parts) - 1}
        return [self._event("response.content_part.added", **where, part=copy.deepcopy(part))]

    def _close_part(self) -> list[Event]:
        """The closing events of the open message's last part, if it has one."""
        assert self._open is not None
        parts = self._open.item["content"]
        if not parts:
            return []
        part = parts[-1]
        where = {**self._where(), "content_index": len(parts) - 1}
        if part["type"] == "output_text":
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        return [done, self._event("response.content_part.done", **where, part=copy.deepcopy(part))]

    # --- reasoning ---------------------------------------------------------------------------

    def _reasoning(self, delta: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open.item["type"] != "reasoning":
            events += self._open_item(reasoning_item(new_item_id(REASONING), "", "in_progress"))
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    **self._where(),
                    summary_index=0,
                    part=dict(part),
                )
            )
            assert self._open is not None
            self._open.item["summary"].append(part)
        assert self._open is not None
        self._open.item["summary"][0]["text"] += delta
        return [
            *events,
            self._event(
                "response.reasoning_summary_text.delta",
                **self._where(),
                summary_index=0,
                delta=delta,
            ),
        ]

    # --- tool calls --------------------------------------------------------------------------

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        index = as_index(call.get("index")) or 0  # none: the first call's
        function = as_dict(call.get("function"))
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        events: list[Event] = []
        if index not in self._calls:
            item = call_item(self.tools, call.get("id"), function.get("name"), "", "in_progress")
            events += self._open_item(item)
            self._calls[index] = len(self._output) - 1
        elif self._open is None or self._open.index != self._calls[index]:
            if not arguments:
                return []
            raise UpstreamUnavailable(
                "The upstream model interleaved the arguments of several tool calls, which a "
                "Responses stream cannot express."
            )
        assert self._open is not None
        if not arguments:
            return events
        self._open.arguments.append(arguments)
        if self._open.item["type"] != "function_call":
            return events  # a custom tool's input is sent whole at its close
        self._open.item["arguments"] += arguments
        delta = self._event(
            "response.function_call_arguments.delta", **self._where(), delta=arguments
        )
        return [*events, delta]
