"""Anthropic <-> OpenAI streams, and the vocabulary both directions share.

Two pure translators, without I/O, each fed one event at a time:

- ``AnthropicToOpenAIStream``: Anthropic Messages events (``message_start``,
  ``content_block_*``, ``message_delta``, ``message_stop``, ``ping``, ``error``) in,
  OpenAI ``chat.completion.chunk`` dicts out. Used by ``AnthropicProvider.stream``.
- ``OpenAIToAnthropicStream``: OpenAI chunk dicts in, ``(event name, data)`` pairs of Anthropic
  Messages events out. Used by the gateway's ``POST /v1/messages`` for OpenAI-routed models.

Also here, the vocabulary both directions share: stop reasons, usage, and error types
(``anthropic_error_body`` for the gateway's answers to Anthropic-speaking clients).
"""

from __future__ import annotations

import time
from typing import Any

from providers.anthropic.ids import new_id, translated_id
from providers.anthropic.tools import tool_use_of
from providers.errors import ProviderError, UpstreamUnavailable, error_for_upstream_status
from providers.types import Usage, as_dict, as_index, as_list, choices_of, reasoning_of

TRANSLATED_SIGNATURE = "tollgate-translated-unsigned"
"""The ``signature`` of a ``thinking`` block made from another model's reasoning. Anthropic's
schema requires a string, and a client may ignore a thinking block without one (Claude Code has
been seen to); this one is signed by no one. A client sends it back with the block, which the
gateway drops on the way to an OpenAI model (Anthropic itself would reject the signature)."""

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason``; anything else (new values) is "stop"."""

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` -> Anthropic ``stop_reason``; anything else is "end_turn"."""

ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""Anthropic ``error.type`` -> the HTTP status Anthropic gives it (an in-band error has none)."""


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape for the gateway's status, for ``POST /v1/messages``: the JSON
    body of an error response, or the data of an in-band ``error`` event in a stream. Other 4xx
    are ``invalid_request_error``, other 5xx ``api_error``."""
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def finish_reason_for(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason_for(finish_reason: Any) -> str:
    return (
        STOP_REASONS.get(finish_reason, "end_turn")
        if isinstance(finish_reason, str)
        else "end_turn"
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_anthropic(usage: Any) -> Usage:
    """Anthropic ``usage``: ``input_tokens`` excludes cached input, so prompt = the sum of all."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_read + cache_write
    completion = _count(usage.get("output_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``CompletionUsage`` for a usage."""
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens or 0},
    }


def anthropic_usage(usage: Usage | None) -> dict[str, int]:
    """Anthropic's ``usage`` for a usage: ``input_tokens`` without the cached part."""
    usage = usage or Usage()
    cache_read, cache_write = usage.cache_read_tokens or 0, usage.cache_write_tokens or 0
    return {
        "input_tokens": max((usage.prompt_tokens or 0) - cache_read - cache_write, 0),
        "output_tokens": usage.completion_tokens or 0,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
    }


def stream_error(error: Any, provider: str, usage: Usage | None) -> ProviderError:
    """Classify an in-band ``error`` event by the status its type stands for.

    As for HTTP errors, only a 4xx message about the caller's request is passed on.
    """
    error = error if isinstance(error, dict) else {}
    kind = error.get("type")
    status = ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    message = error.get("message")
    text = f"The upstream provider '{provider}' failed mid-stream"
    if 400 <= status < 500 and status not in (401, 403) and isinstance(message, str) and message:
        text += f": {message}"
    else:
        text += f" ({kind})." if status != 500 else "."
    failure = error_for_upstream_status(status, text)
    failure.usage_so_far = usage
    return failure


class UsageReport:
    """The usage an Anthropic stream has reported so far: input and cache counts come with
    ``message_start``, cumulative output counts with each ``message_delta``."""

    def __init__(self) -> None:
        self._reported: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage | None:
        return None if self._reported is None else usage_from_anthropic(self._reported)

    def observe(self, kind: str | None, data: dict[str, Any]) -> None:
        if kind == "message_start":
            self.report(as_dict(data.get("message")).get("usage"))
        elif kind == "message_delta":
            self.report(data.get("usage"))

    def report(self, usage: Any) -> None:
        """Keep the latest value of each count (``message_delta`` may leave out the input)."""
        if isinstance(usage, dict):
            reported = self._reported if self._reported is not None else {}
            reported.update((k, v) for k, v in usage.items() if v is not None)
            self._reported = reported


class AnthropicToOpenAIStream:
    """Anthropic Messages stream events -> OpenAI ``chat.completion.chunk`` dicts.

    ``feed(event, data)`` returns the chunks that event produces (often none). The sequence is
    OpenAI's: a role chunk, content and tool-call chunks, one finish chunk, then a usage chunk
    (``choices: []``). The finish and usage chunks wait for ``message_stop``, so a stream that
    fails after ``message_delta`` never shows a clean finish. ``usage`` is the usage so far.
    An ``error`` event raises its ``ProviderError``, carrying ``usage_so_far``.
    """

    def __init__(self, model: str, *, provider: str = "anthropic", created: int | None = None):
        self.model = model
        self.provider = provider
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.finished = False
        """True once ``message_stop`` has been translated: nothing more is expected."""
        self._usage = UsageReport()
        self._stop_reason: Any = None
        self._tools: dict[int, int] = {}
        """Anthropic content block index -> OpenAI tool call index (0, 1, ... over tool_use)."""
        self._tools_with_arguments: set[int] = set()

    @property
    def usage(self) -> Usage | None:
        """Usage as reported so far (``message_start``, then each ``message_delta``)."""
        return self._usage.usage

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event or data.get("type")
        index = as_index(data.get("index"))  # None: not a block's index, no block of ours
        if kind == "message_start":
            return self._start(as_dict(data.get("message")))
        if kind == "content_block_start":
            return self._block_start(index, as_dict(data.get("content_block")))
        if kind == "content_block_delta":
            return self._block_delta(index, as_dict(data.get("delta")))
        if kind == "content_block_stop":
            return self._block_stop(index)
        if kind == "message_delta":
            self._report(data.get("usage"))
            self._stop_reason = as_dict(data.get("delta")).get("stop_reason") or self._stop_reason
            return []
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            raise stream_error(data.get("error"), self.provider, self.usage)
        return []  # ping, and event types added after this was written

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def _start(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        if self.id:
            return []
        self.id = translated_id(message.get("id"), "msg_", "chatcmpl-")
        self._report(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _report(self, usage: Any) -> None:
        self._usage.report(usage)

    def _block_start(self, index: int | None, block: dict[str, Any]) -> list[dict[str, Any]]:
        chunks = self._start({})
        if block.get("type") == "tool_use" and index is not None:
            call_index = self._tools[index] = len(self._tools)
            call = {
                "index": call_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            chunks.append(self._chunk({"tool_calls": [call]}))
        elif block.get("type") == "text" and block.get("text"):
            chunks.append(self._chunk({"content": block["text"]}))
        return chunks

    def _block_delta(self, index: int | None, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [*self._start({}), self._chunk({"content": text})] if text else []
        if kind == "thinking_delta":  # reasoning_content, as DeepSeek and vLLM stream it
            thought = delta.get("thinking")
            if not isinstance(thought, str) or not thought:
                return []
            return [*self._start({}), self._chunk({"reasoning_content": thought})]
        if kind == "input_json_delta" and index in self._tools:
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str) or not fragment:
                return []
            self._tools_with_arguments.add(index)
            return [self._arguments(index, fragment)]
        return []  # signature and citations deltas; server tools' input

    def _block_stop(self, index: int | None) -> list[dict[str, Any]]:
        if index in self._tools and index not in self._tools_with_arguments:
            # A tool without parameters streams no input; OpenAI clients expect "{}".
            self._tools_with_arguments.add(index)
            return [self._arguments(index, "{}")]
        return []

    def _arguments(self, index: int, fragment: str) -> dict[str, Any]:
        call = {"index": self._tools[index], "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]})

    def _stop(self) -> list[dict[str, Any]]:
        if self.finished:
            return []
        self.finished = True
        chunks = self._start({})
        chunks.append(self._chunk({}, finish_reason_for(self._stop_reason)))
        usage_chunk = {
            **self._chunk({}),
            "choices": [],
            "usage": openai_usage(self.usage or Usage()),
        }
        return [*chunks, usage_chunk]


Event = tuple[str, dict[str, Any]]


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` dicts -> Anthropic Messages stream events.

    ``feed(chunk)`` per chunk, then ``finish()`` once the OpenAI stream ended (``[DONE]``). The
    grammar is Anthropic's: ``message_start``; per content block ``content_block_start``, its
    deltas, ``content_block_stop`` (one block open at a time, indices 0, 1, ...; reasoning, then
    text, then each tool call in its own ``tool_use`` block); ``message_delta`` with the stop
    reason and usage; ``message_stop``. Usage comes from OpenAI's usage chunk, so the OpenAI
    request must set ``stream_options.include_usage``.

    Reasoning deltas (``reasoning_content``, or OpenRouter's ``reasoning``) make a ``thinking``
    block of ``thinking_delta`` events, which as Anthropic's ends with a ``signature_delta``
    (``TRANSLATED_SIGNATURE``) just before its ``content_block_stop``.

    OpenAI streams tool calls one after another. Arguments for a call whose block is already
    closed cannot be expressed in Anthropic's grammar and raise ``UpstreamUnavailable``.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = ""
        self._open: int | None = None
        """Index of the open content block, if one is open."""
        self._open_type = ""
        """The type of the open content block: thinking, text or tool_use."""
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}
        """OpenAI tool call index -> Anthropic content block index."""
        self._stop_reason: str | None = None
        self._usage: Usage | None = None
        self._stopped = False

    def feed(self, chunk: dict[str, Any], usage: Usage | None = None) -> list[Event]:
        """Translate one chunk. ``usage``, when given, is the chunk's usage as the provider read
        it (``StreamChunk.usage``), which knows cache writes that OpenAI's shape cannot carry."""
        events = self._start(chunk)
        if usage is not None or chunk.get("usage"):
            self._usage = usage or Usage.from_openai(chunk["usage"])
        for choice in choices_of(chunk):
            if choice.get("index", 0) != 0 or self._stop_reason:
                continue
            delta = as_dict(choice.get("delta"))
            thought = reasoning_of(delta)
            if thought:
                events += self._thinking(thought)
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    events += self._text(delta[key])
            for call in as_list(delta.get("tool_calls")):
                events += self._tool_call(as_dict(call))
            if choice.get("finish_reason"):
                self._stop_reason = stop_reason_for(choice["finish_reason"])
                events += self._close()
        return events

    def finish(self) -> list[Event]:
        """The closing events: ``message_delta`` (stop reason, usage) and ``message_stop``."""
        if self._stopped:
            return []
        events = [*self._start({}), *self._close()]
        self._stopped = True
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        usage = anthropic_usage(self._usage)
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _start(self, chunk: dict[str, Any]) -> list[Event]:
        if self.id:
            return []
        self.id = translated_id(chunk.get("id"), "chatcmpl-", "msg_")
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _open_block(self, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._open, self._next_index = self._next_index, self._next_index + 1
        self._open_type = block["type"]
        data = {"type": "content_block_start", "index": self._open, "content_block": block}
        return [*events, ("content_block_start", data)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events = []
        if self._open_type == "thinking":
            events.append(
                self._delta({"type": "signature_delta", "signature": TRANSLATED_SIGNATURE})
            )
        index, self._open = self._open, None
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, delta: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": self._open, "delta": delta},
        )

    def _thinking(self, thought: str) -> list[Event]:
        events = self._open_unless(
            "thinking", {"type": "thinking", "thinking": "", "signature": ""}
        )
        return [*events, self._delta({"type": "thinking_delta", "thinking": thought})]

    def _text(self, text: str) -> list[Event]:
        events = self._open_unless("text", {"type": "text", "text": ""})
        return [*events, self._delta({"type": "text_delta", "text": text})]

    def _open_unless(self, block_type: str, block: dict[str, Any]) -> list[Event]:
        """Open ``block`` unless a block of its type is the open one."""
        if self._open is not None and self._open_type == block_type:
            return []
        return self._open_block(block)

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        call_index = as_index(call.get("index")) or 0  # none: the first call's
        function = as_dict(call.get("function"))
        events: list[Event] = []
        block = self._tool_blocks.get(call_index)
        if block is None:
            tool_id = call.get("id") or new_id("toolu_")
            events = self._open_block(tool_use_of(tool_id, function.get("name") or "", {}))
            self._tool_blocks[call_index] = self._next_index - 1
        elif block != self._open:
            raise UpstreamUnavailable(
                "The upstream model interleaved the arguments of several tool calls, which an "
                "Anthropic stream cannot express."
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events
