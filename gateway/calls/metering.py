"""What a call used when its upstream did not say: the usage of streams, followed chunk by chunk
and estimated if the stream is cut off, and the gateway's own rough count of a prompt."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from providers.errors import GatewayError, ProviderError
from providers.types import StreamChunk, Usage, reasoning_of

CALLED = ("tool_calls", "function_call")
"""What a chat message holds beside its content that its upstream is sent: the calls an
assistant made, with their arguments."""


def estimate_prompt_tokens(pieces: Any) -> int:
    """A rough count (4 characters a token) of what a call sends upstream, for admitting it and
    for calls whose upstream never reported usage. Each piece is a message (its content, and a
    chat message's tool calls), or anything else counted whole: text as it is, the rest (the
    tools a call offers, a list of items) as JSON."""
    chars = 0
    for piece in pieces or ():
        if isinstance(piece, dict):
            chars += _length(piece.get("content"))
            for name in CALLED:
                if name in piece:
                    chars += _length(piece[name])
        else:
            chars += _length(piece)
    return math.ceil(chars / 4)


def tools_of(body: dict[str, Any], *names: str) -> list[Any]:
    """The tool definitions a request offers under ``names``, as pieces of its prompt: the
    upstream is sent them with every call (a coding agent's are thousands of tokens)."""
    return [body[name] for name in names if body.get(name)]


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(orjson.dumps(value, default=str))


class StreamMeter:
    """Follows a stream to know its usage, or to estimate it if the stream is cut off.
    ``estimate_prompt`` counts the prompt when the upstream never said."""

    __slots__ = ("content_chunks", "estimate_prompt", "failure", "partial", "usage")

    def __init__(self, estimate_prompt: Callable[[], int]) -> None:
        self.estimate_prompt = estimate_prompt
        self.usage: Usage | None = None
        self.partial: Usage | None = None
        self.content_chunks = 0
        self.failure: tuple[int, str, str] | None = None
        """A failure the stream carried in its own grammar and passed on as it was (a native
        ``response.failed``): the status, error code and message the ledger records."""

    def observe(self, chunk: StreamChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("content") or delta.get("tool_calls") or reasoning_of(delta):
                self.content_chunks += 1

    def failed(self, error: GatewayError) -> None:
        """Keep what a failed stream's upstream had reported (Anthropic reports input early)."""
        if isinstance(error, ProviderError) and error.usage_so_far is not None:
            self.partial = error.usage_so_far

    def final_usage(self) -> Usage:
        """The upstream's usage; else what it reported before failing, completed with our own
        count of the output; else an estimate: prompt at 4 characters, output one per chunk."""
        if self.usage is not None:
            return self.usage
        partial = self.partial
        if partial is not None and partial.prompt_tokens is not None:
            completion = max(partial.completion_tokens or 0, self.content_chunks)
            return Usage(
                prompt_tokens=partial.prompt_tokens,
                completion_tokens=completion,
                total_tokens=partial.prompt_tokens + completion,
                cache_read_tokens=partial.cache_read_tokens,
                cache_write_tokens=partial.cache_write_tokens,
                estimated=True,
            )
        return Usage(
            prompt_tokens=self.estimate_prompt(),
            completion_tokens=self.content_chunks,
            estimated=True,
        )


class Unmetered(StreamMeter):
    """A stream billed by its units, not tokens (speech: the characters of its input)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(lambda: 0)

    def final_usage(self) -> Usage:
        return Usage()
