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


IMAGE_TOKENS = 1600
"""An image at the most detail a model reads: Anthropic scales one to about 1.15 megapixels,
at a token per 750 pixels; OpenAI's high detail tops out near 1,100 tokens (its tiles)."""
LOW_DETAIL_TOKENS = 85
"""An image sent with ``detail: low``: OpenAI's fixed cost for one."""
AUDIO_TOKENS_A_SECOND = 10
AUDIO_BYTES_A_SECOND = {"wav": 32_000, "mp3": 16_000}
"""How many bytes a second of audio takes: wav at 16 kHz, 16-bit mono; mp3 at 128 kbit/s."""
TEXT_PARTS = frozenset(("text", "input_text", "output_text"))
"""The parts that are text: counted by their text, not their JSON (most of a long history)."""
MEDIA_PARTS = frozenset(("image_url", "input_image", "image", "input_audio"))


def estimate_prompt_tokens(pieces: Any) -> int:
    """A rough count of what a call sends upstream, for admitting it and for calls whose
    upstream never reported usage: 4 characters a token over text, and JSON for the rest (the
    tools a call offers, a chat message's tool calls). A message, a tool's result or a Responses
    item counts its parts one by one, and media by what a model reads of them, not by their
    bytes: an image at ``IMAGE_TOKENS`` (its base64 would be hundreds of thousands), audio by its
    estimated seconds. A file or document is counted by its length: a page of PDF is a few
    kilobytes and a few thousand tokens (its text and its picture), the same order."""
    return math.ceil(sum(map(_chars, pieces or ())) / 4)


def tools_of(body: dict[str, Any], *names: str) -> list[bytes]:
    """The tool definitions a request offers under ``names``, as pieces of its prompt: the
    upstream is sent them with every call (a coding agent's are thousands of tokens). They are
    counted as their JSON, encoded once here (Claude Code's: 82 kB, in 24 definitions)."""
    return [orjson.dumps(body[name], default=str) for name in names if body.get(name)]


def _chars(piece: Any) -> int:
    """The characters ``piece`` counts for, at 4 a token (media as what a model reads)."""
    if isinstance(piece, str | bytes):
        return len(piece)
    if isinstance(piece, list):
        total = 0
        for item in piece:  # a history of hundreds of messages: a call less for each
            total += _part_chars(item) if isinstance(item, dict) else _chars(item)
        return total
    if isinstance(piece, dict):
        return _part_chars(piece)
    return 0 if piece is None else _length(piece)


def _part_chars(part: dict[str, Any]) -> int:
    """A message (its content and calls), a Responses item (its content or output), a part."""
    kind = part.get("type")
    if isinstance(kind, str):  # a body's "type" may be anything: a list in a set lookup raises
        if kind in TEXT_PARTS and isinstance(text := part.get("text"), str):
            return len(text)
        if kind in MEDIA_PARTS:
            return 4 * _media_tokens(part, kind)
    nested = part.get("content", part.get("output"))
    if not isinstance(nested, (str, list)):
        return _length(part)
    chars = _chars(nested)
    for name in CALLED:
        if name in part:
            chars += _length(part[name])
    return chars


def _media_tokens(part: dict[str, Any], kind: str) -> int:
    """What a model reads of an image or audio part, chat's, Anthropic's or Responses'."""
    if kind == "image_url":  # chat: {"image_url": {"url": ..., "detail": ...}}
        image = part.get("image_url")
        return _image_tokens(image.get("detail") if isinstance(image, dict) else None)
    if kind != "input_audio":  # Responses' input_image (with its detail), Anthropic's image
        return _image_tokens(part.get("detail"))
    audio = part.get("input_audio")  # chat: {"input_audio": {"data": base64, "format": "wav"}}
    if isinstance(audio, dict) and isinstance(data := audio.get("data"), str):
        rate = AUDIO_BYTES_A_SECOND.get(str(audio.get("format")), AUDIO_BYTES_A_SECOND["mp3"])
        return math.ceil(len(data) * 3 / 4 / rate * AUDIO_TOKENS_A_SECOND)
    return math.ceil(_length(part) / 4)


def _image_tokens(detail: Any) -> int:
    return LOW_DETAIL_TOKENS if detail == "low" else IMAGE_TOKENS


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
