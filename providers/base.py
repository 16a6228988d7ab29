"""The provider contract: one request/response vocabulary for every upstream.

Requests and responses are OpenAI-shaped, because that is what tenants speak. A provider for an
upstream that speaks something else (Anthropic) translates inside its own module; the gateway never
sees another shape. Nothing here imports Django.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic_core import PydanticCustomError

from providers.errors import UpstreamKeyMissing
from providers.http import UpstreamClient
from providers.redaction import remember_secret
from providers.types import (
    AudioStream,
    ChatResponse,
    CredentialSource,
    MediaResponse,
    Operation,
    StreamChunk,
)

if TYPE_CHECKING:
    from providers.config import ProviderConfig


class PassThroughRequest(BaseModel):
    """A JSON request body: the fields the gateway reads are typed and validated, every other
    field is kept as an extra, and the body itself goes upstream unchanged but for ``model``."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)

    _body: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Self:
        """Validate a decoded request body, keeping the body itself to send upstream."""
        request = cls.model_validate(body)
        request._body = body
        return request

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The request as a plain dict, with the model renamed for the upstream."""
        body = dict(self._body) if self._body is not None else self.model_dump(exclude_unset=True)
        body["model"] = upstream_model
        return body


class ChatMessage(BaseModel):
    """One message. Only ``role`` is checked: content shapes vary and pass through untouched."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class ChatRequest(PassThroughRequest):
    """An OpenAI Chat Completions request. Fields the gateway does not read (tools,
    response_format, seed, logprobs, ...) go upstream unchanged."""

    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

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


class EmbeddingRequest(PassThroughRequest):
    """``POST /embeddings``. ``encoding_format`` passes through: the openai SDK asks for base64
    by default and decodes the vectors itself."""

    input: Any
    """A string, an array of strings, an array of token ids, or an array of arrays of them."""
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(_is_input_item(item) for item in value):
            return value
        raise PydanticCustomError(
            "invalid_input",
            "must be a non-empty string, array of strings, array of token ids or array of "
            "arrays of token ids",
        )


def _is_input_item(item: Any) -> bool:
    if isinstance(item, list):
        return bool(item) and all(_is_token(token) for token in item)
    return (isinstance(item, str) and bool(item)) or _is_token(item)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ImageRequest(PassThroughRequest):
    """``POST /images/generations``. ``size`` and ``quality`` pick the price of an image."""

    prompt: str = Field(min_length=1)
    n: int | None = Field(default=None, ge=1)
    size: str | None = None
    quality: str | None = None


class SpeechRequest(PassThroughRequest):
    """``POST /audio/speech``: billed by the characters of ``input``."""

    input: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class FormFile:
    """One file of a multipart form."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """``POST /audio/transcriptions``, a multipart form: its text fields in order (``model``
    among them) and its files (``file``, the audio). Forwarded as multipart, ``model`` renamed."""

    model: str
    fields: list[tuple[str, str]]
    files: list[FormFile]

    def upstream_fields(self, upstream_model: str) -> list[tuple[str, str]]:
        return [(name, upstream_model if name == "model" else value) for name, value in self.fields]


CREDENTIAL_USED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tollgate_credential_used", default=None
)
"""The upstream key the current attempt was sent with, for the router to cool a bad key down."""


class BaseProvider(abc.ABC):
    """An upstream. One instance per configured provider, created and owned by the factory."""

    operations: ClassVar[tuple[Operation, ...]]
    """What the upstream can be called for; the others raise ``NotImplementedError``."""

    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient) -> None:
        remember_secret(config.api_key)  # config.toml's key, redacted from upstream errors
        self.name = name
        self.config = config
        self.client = client
        self.credentials: CredentialSource | None = None
        self.key_missing = bool(config.api_key_env) and not config.api_key
        """config.toml names the key's variable, and the environment has none."""

    def credential_headers(self, key: str) -> dict[str, str]:
        """How this upstream takes its key: a Bearer token unless a provider says otherwise."""
        return {"authorization": f"Bearer {key}"}

    def with_credential(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` for one call, with the key the credential source picks for it (if any).
        With no key at all (none in the admin, and config.toml's ``api_key_env`` not set) the
        call is not sent: ``UpstreamKeyMissing`` names the variable to set."""
        key = self.credentials(self.name) if self.credentials is not None else None
        if key is None:
            if self.key_missing:
                raise UpstreamKeyMissing(
                    f"{self.config.api_key_env} is not set: the gateway has no key for the "
                    f"upstream provider '{self.name}'. Export it (or add a key for "
                    f"'{self.name}' in the admin) and try again."
                )
            return headers
        CREDENTIAL_USED.set(key)
        remember_secret(key)  # an upstream that echoes it in an error: redacted
        return {**headers, **self.credential_headers(key)}

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

    # The other operations: every provider implements each one itself, if only to raise
    # NotImplementedError (the API answers it with a 400 naming the model and the operation), so
    # that a provider type which forgets one cannot even be created.

    @abc.abstractmethod
    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> MediaResponse:
        """Embeddings; ``usage`` holds the upstream's prompt tokens."""

    @abc.abstractmethod
    async def image_gen(self, request: ImageRequest, upstream_model: str) -> MediaResponse:
        """Generated images; ``units`` holds their count, size and quality, ``usage`` the tokens
        the upstream reports for token-priced image models."""

    @abc.abstractmethod
    async def text_to_speech(self, request: SpeechRequest, upstream_model: str) -> AudioStream:
        """Speech, streamed: the upstream's status is checked before this returns, so a
        failure that comes before any audio raises here."""

    @abc.abstractmethod
    async def transcribe(self, request: TranscriptionRequest, upstream_model: str) -> MediaResponse:
        """A transcription; ``units.audio_seconds`` holds the duration when the upstream says."""

    async def aclose(self) -> None:
        """Release pooled connections."""
        await self.client.aclose()
