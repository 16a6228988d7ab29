"""The provider contract: one request/response vocabulary for every upstream.

Requests and responses are OpenAI-shaped, because that is what tenants speak. A provider for an
upstream that speaks something else (Anthropic) translates inside its own module; the gateway never
sees another shape. Nothing here imports Django.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from providers.errors import (  # noqa: F401 - re-exported: the error tree is part of the contract
    AuthenticationFailed,
    CallerError,
    GatewayError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    PolicyError,
    ProviderError,
    UnsupportedOperation,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from providers.config import ProviderConfig


class ChatMessage(BaseModel):
    """One message. Only ``role`` is checked: content shapes vary and pass through untouched."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class ChatRequest(BaseModel):
    """An OpenAI Chat Completions request.

    The fields the gateway reads are typed; every other field (tools, response_format, seed,
    logprobs, ...) is kept as an extra and sent upstream unchanged.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    _body: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChatRequest:
        """Validate a decoded request body, keeping the body itself to send upstream."""
        request = cls.model_validate(body)
        request._body = body
        return request

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_is_bool(cls, value: Any) -> Any:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError("must be a boolean")
        return value

    @property
    def wants_usage_chunk(self) -> bool:
        """Whether the client asked for the final usage chunk of a stream."""
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The request as a plain dict, with the model renamed for the upstream."""
        body = dict(self._body) if self._body is not None else self.model_dump(exclude_unset=True)
        body["model"] = upstream_model
        return body


class Usage(BaseModel):
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
    """True when the gateway counted the tokens itself (a stream cut off before its usage)."""

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """Read OpenAI's ``usage`` object (CompletionUsage)."""
        if not usage:
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls.model_construct(
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"),
            cache_read_tokens=prompt_details.get("cached_tokens"),
            cache_write_tokens=None,
            reasoning_tokens=completion_details.get("reasoning_tokens"),
            estimated=False,
        )


class ChatResponse(BaseModel):
    """A complete (non-streamed) answer.

    ``body`` is the ``chat.completion`` object the client receives. ``raw`` holds the upstream's
    own bytes when they can go to the client unchanged, so the gateway does not re-encode them.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    body: dict[str, Any]
    usage: Usage
    raw: bytes | None = None


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
    def is_usage_only(self) -> bool:
        return self.usage is not None and not self.payload.get("choices")


class BaseProvider(abc.ABC):
    """An upstream. One instance per configured provider, created and owned by the factory."""

    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config
        self.client = client

    @abc.abstractmethod
    async def chat(self, request: ChatRequest, upstream_model: str) -> ChatResponse:
        """Send a chat request and return the whole answer."""

    @abc.abstractmethod
    def stream(
        self, request: ChatRequest, upstream_model: str
    ) -> AsyncGenerator[StreamChunk, None]:
        """Send a chat request and yield OpenAI chunks as they arrive.

        The provider always asks the upstream for usage; the gateway decides whether the client
        sees the usage chunk. A failure after the first chunk raises a ``ProviderError``.
        """

    async def image_gen(self, body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
        raise NotImplementedError

    async def text_to_speech(
        self, body: dict[str, Any], upstream_model: str
    ) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release pooled connections."""
        await self.client.aclose()
