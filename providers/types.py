"""The plain types of the provider layer: what a model can be called for, what a call used and is
billed by, what a provider answers. This module imports nothing else of ``providers/``, so every
other module can import it without a circle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

Operation = Literal["chat", "embeddings", "images", "speech", "transcription"]
"""What a model can be called for; config.toml's ``operations`` lists a model's."""
OPERATIONS: tuple[Operation, ...] = get_args(Operation)


@dataclass(slots=True)
class Usage:
    """Token usage of one call; ``None`` where the upstream did not say.

    ``prompt_tokens`` counts all input tokens, cached ones included; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of them were read from or written to a prompt cache.
    ``reasoning_tokens`` are part of ``completion_tokens``.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    estimated: bool = False
    """True when the gateway counted the usage itself: a stream cut off before its usage, a call
    abandoned before its answer, a transcription whose upstream did not say how long it was."""

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Read OpenAI's ``usage`` object (CompletionUsage)."""
        return cls._read(usage, "prompt_tokens", "completion_tokens")

    @classmethod
    def from_responses(cls, usage: Any) -> Usage:
        """Read the Responses API's ``usage`` object (ResponseUsage)."""
        return cls._read(usage, "input_tokens", "output_tokens")

    @classmethod
    def _read(cls, usage: Any, prompt: str, completion: str) -> Usage:
        """The two APIs' usage objects differ only in names: ``<prompt>``, ``<completion>``,
        their ``_details`` (cached and reasoning tokens) and ``total_tokens``. What is not a
        count where one belongs (an upstream's text, a fraction, an object) is not said: the
        call is answered and billed on what is, never failed over its usage."""
        if not isinstance(usage, dict):
            return cls()
        prompt_details = usage.get(prompt + "_details")
        completion_details = usage.get(completion + "_details")
        return cls(
            prompt_tokens=token_count(usage.get(prompt)),
            completion_tokens=token_count(usage.get(completion)),
            total_tokens=token_count(usage.get("total_tokens")),
            cache_read_tokens=token_count(prompt_details.get("cached_tokens"))
            if isinstance(prompt_details, dict)
            else None,
            reasoning_tokens=token_count(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else None,
        )


def token_count(value: Any) -> int | None:
    """``value`` when an upstream's JSON gave a count there (an integer, not a boolean), else
    None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class ChatResponse:
    """A complete (non-streamed) answer.

    ``body`` is the ``chat.completion`` object the client receives. ``raw`` holds the upstream's
    own bytes when they can go to the client unchanged, so the gateway does not re-encode them.
    """

    body: dict[str, Any]
    usage: Usage
    raw: bytes | None = None


def reasoning_of(message: dict[str, Any]) -> str:
    """The reasoning text of a chat message or stream delta: ``reasoning_content`` (DeepSeek,
    vLLM, Ollama), else ``reasoning`` (OpenRouter, newer vLLM); "" when it has none."""
    for key in ("reasoning_content", "reasoning"):
        text = message.get(key)
        if isinstance(text, str) and text:
            return text
    return ""


@dataclass(slots=True)
class NativeEvent:
    """One event of a stream passed through in the upstream's own dialect (Anthropic's
    Messages, OpenAI's Responses): its SSE bytes, the usage reported so far, and whether it
    carried output (a content delta), for counting if the stream is cut off."""

    raw: bytes
    usage: Usage | None
    is_delta: bool


@dataclass(slots=True)
class StreamChunk:
    """One ``chat.completion.chunk`` of a stream.

    ``raw`` is the chunk's JSON as the upstream sent it, when it can be forwarded unchanged.
    ``usage`` is set on the chunk that carries the totals (OpenAI's final ``choices: []`` chunk).
    """

    payload: dict[str, Any]
    raw: bytes | None = None
    usage: Usage | None = None

    @property
    def choices(self) -> list[dict[str, Any]]:
        """The chunk's choices that are objects (``choices_of``)."""
        return choices_of(self.payload)

    @property
    def is_usage_only(self) -> bool:
        return self.usage is not None and not self.choices


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is an object, else an empty one: for reading what an upstream sent."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is an array, else an empty one: for reading what an upstream sent."""
    return value if isinstance(value, list) else []


def as_index(value: Any) -> int | None:
    """``value`` if it is an index (an integer, not a boolean, never below 0), else None."""
    return value if type(value) is int and value >= 0 else None


def choices_of(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The choices of a ``chat.completion.chunk`` an upstream sent, those that are objects:
    none when its ``choices`` is not a list."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [choice for choice in choices if isinstance(choice, dict)]


@dataclass(frozen=True, slots=True)
class Units:
    """What a call is billed by besides tokens; ``None`` where a unit does not apply.

    ``image_size`` and ``image_quality`` pick the price of an image (config.toml's
    ``image_prices``)."""

    images: int | None = None
    image_size: str | None = None
    image_quality: str | None = None
    characters: int | None = None
    audio_seconds: Decimal | None = None


@dataclass(slots=True)
class MediaResponse:
    """A complete answer of ``embed``, ``image_gen`` or ``transcribe``: the upstream's bytes
    and content type, which go to the client unchanged, and what the call is billed by."""

    raw: bytes
    content_type: str = "application/json"
    usage: Usage = field(default_factory=Usage)
    units: Units | None = None


@dataclass(slots=True)
class AudioStream:
    """Speech as it arrives: iterate ``chunks`` once, then ``aclose`` (always, even unread)."""

    content_type: str
    chunks: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]


CredentialSource = Callable[[str], str | None]
"""Gives the upstream key for a provider name, per call, or ``None``: use config.toml's
``api_key_env`` (already in the provider's headers). The gateway's comes from ProviderKey rows."""
