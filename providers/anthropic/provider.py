"""``AnthropicProvider``: the Messages API over HTTP, for OpenAI-shaped calls (translated by
``translate.py`` and ``stream.py``) and for the gateway's native ``/v1/messages`` pass-through."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from providers.anthropic.stream import (
    AnthropicToOpenAIStream,
    UsageReport,
    stream_error,
    usage_from_anthropic,
)
from providers.anthropic.translate import _OUR_HEADERS, from_anthropic, to_anthropic
from providers.base import (
    BaseProvider,
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.config import ProviderConfig
from providers.errors import UpstreamUnavailable
from providers.http import (
    UpstreamClient,
    ended_early,
    json_object,
    keeping_usage,
    post_for_json,
    post_json,
    upstream_errors,
)
from providers.sse import iter_sse
from providers.types import (
    AudioStream,
    ChatResponse,
    MediaResponse,
    NativeEvent,
    StreamChunk,
    Usage,
)


def _is_message(data: dict[str, Any]) -> bool:
    return data.get("type") == "message" and isinstance(data.get("content"), list)


class AnthropicProvider(BaseProvider):
    """Chat only: ``embed``, ``image_gen``, ``text_to_speech`` and ``transcribe`` raise
    ``NotImplementedError`` (the API answers 400 ``unsupported_operation``)."""

    operations = ("chat",)

    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(name, config, client)
        self.url = httpx.URL(config.base_url.rstrip("/") + "/messages")
        self.count_tokens_url = httpx.URL(config.base_url.rstrip("/") + "/messages/count_tokens")
        headers = {k: v for k, v in config.headers.items() if k.lower() not in _OUR_HEADERS}
        headers["content-type"] = "application/json"
        headers["anthropic-version"] = config.anthropic_version
        if config.api_key:
            headers["x-api-key"] = config.api_key
        self.headers = headers

    def _post(
        self,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        url: httpx.URL | None = None,
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return post_json(self.client, self.name, url or self.url, self._headers(headers), body)

    async def _post_for_json(
        self,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        is_answer: Callable[[dict[str, Any]], bool],
        what: str,
        url: httpx.URL | None = None,
    ) -> tuple[bytes, dict[str, Any]]:
        return await post_for_json(
            self.client, self.name, url or self.url, self._headers(headers), body, is_answer, what
        )

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        merged = {**self.headers, **self.accepted(headers)} if headers else self.headers
        return self.with_credential(merged)

    def accepted(self, headers: dict[str, str]) -> dict[str, str]:
        """A client's headers as this upstream takes them: its ``anthropic-beta`` values only
        those the provider's ``anthropic_betas`` allow and ``anthropic_betas_denied`` do not."""
        beta = headers.get("anthropic-beta")
        if beta is None:
            return headers
        allowed, denied = self.config.anthropic_betas, self.config.anthropic_betas_denied
        kept = [
            value
            for value in (part.strip() for part in beta.split(","))
            if value and ("*" in allowed or value in allowed) and value not in denied
        ]
        rest = {name: value for name, value in headers.items() if name != "anthropic-beta"}
        return {**rest, "anthropic-beta": ",".join(kept)} if kept else rest

    async def count_tokens(
        self, body: dict[str, Any], upstream_model: str, headers: dict[str, str] | None = None
    ) -> bytes:
        """Anthropic's own count of a Messages request's input tokens (its JSON answer)."""
        body = {**body, "model": upstream_model}
        for field in ("max_tokens", "stream", "stop_sequences", "temperature", "metadata"):
            body.pop(field, None)  # count_tokens refuses what only a generation takes
        raw, _ = await self._post_for_json(
            body,
            headers,
            lambda data: "input_tokens" in data,
            "a token count",
            self.count_tokens_url,
        )
        return raw

    def credential_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    async def chat(self, request: ChatRequest, upstream_model: str) -> ChatResponse:
        body = to_anthropic(request, upstream_model, self.config)
        _, message = await self._post_for_json(body, None, _is_message, "a message")
        usage = usage_from_anthropic(message.get("usage"))
        return ChatResponse(body=from_anthropic(message, request.model), usage=usage, raw=None)

    async def stream(
        self, request: ChatRequest, upstream_model: str
    ) -> AsyncGenerator[StreamChunk, None]:
        """Translate Anthropic's events as they come. Any failure after ``message_start``
        carries ``usage_so_far``: the input tokens are known from the start of the stream."""
        body = to_anthropic(request, upstream_model, self.config)
        body["stream"] = True
        translator = AnthropicToOpenAIStream(request.model, provider=self.name)
        with keeping_usage(lambda: translator.usage):
            async with self._post(body) as response:
                with upstream_errors(self.name):
                    async for event, data in iter_sse(response.aiter_bytes()):
                        for payload in translator.feed(event, self._parse_event(data)):
                            usage = None if payload["choices"] else translator.usage
                            yield StreamChunk(payload, None, usage)
                        if translator.finished:
                            return
            raise ended_early(self.name)

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> MediaResponse:
        raise NotImplementedError

    async def image_gen(self, request: ImageRequest, upstream_model: str) -> MediaResponse:
        raise NotImplementedError

    async def text_to_speech(self, request: SpeechRequest, upstream_model: str) -> AudioStream:
        raise NotImplementedError

    async def transcribe(self, request: TranscriptionRequest, upstream_model: str) -> MediaResponse:
        raise NotImplementedError

    def _parse_event(self, data: bytes) -> dict[str, Any]:
        event = json_object(data)
        if event is None:
            raise UpstreamUnavailable(f"The upstream provider '{self.name}' sent an invalid event.")
        return event

    # --- native pass-through, for Anthropic-speaking clients (POST /v1/messages) ---------------

    async def messages(
        self, body: dict[str, Any], upstream_model: str, headers: dict[str, str] | None = None
    ) -> tuple[bytes, Usage]:
        """Send an Anthropic Messages request as it is; return the answer's bytes and usage.
        ``headers`` (the client's anthropic-version and anthropic-beta) override ours."""
        body = {**body, "model": upstream_model, "stream": False}
        raw, message = await self._post_for_json(body, headers, _is_message, "a message")
        return raw, usage_from_anthropic(message.get("usage"))

    async def messages_stream(
        self, body: dict[str, Any], upstream_model: str, headers: dict[str, str] | None = None
    ) -> AsyncGenerator[NativeEvent, None]:
        """Stream an Anthropic Messages request as it is, event by event, with the usage reported
        so far. A failure carries ``usage_so_far`` like ``stream`` does."""
        report = UsageReport()
        with keeping_usage(lambda: report.usage):
            body = {**body, "model": upstream_model, "stream": True}
            async with self._post(body, headers) as response:
                with upstream_errors(self.name):
                    async for event, data in iter_sse(response.aiter_bytes()):
                        payload = self._parse_event(data)
                        kind = event or payload.get("type")
                        if kind == "error":
                            raise stream_error(payload.get("error"), self.name, report.usage)
                        report.observe(kind, payload)
                        name = f"event: {kind}\n".encode() if kind else b""
                        yield NativeEvent(
                            name + b"data: " + data + b"\n\n",
                            report.usage,
                            kind == "content_block_delta",
                        )
                        if kind == "message_stop":
                            return
            raise ended_early(self.name)
