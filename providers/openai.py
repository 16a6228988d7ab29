"""OpenAI's API, and every backend that speaks it (Ollama, DeepSeek, vLLM, Groq...).

Which backend is chosen by ``base_url`` in config.toml; there is no per-backend code. Request
fields the gateway does not read pass through untouched, and the upstream's answer goes back to
the client as the upstream's own bytes: chat completions (JSON or SSE), embeddings, images,
speech (streamed audio) and transcriptions (multipart upload).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from providers.base import (
    BaseProvider,
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.config import ProviderConfig
from providers.errors import ProviderError, UpstreamUnavailable, error_for_upstream_status
from providers.http import (
    READ_WHOLE,
    UpstreamClient,
    ended_early,
    json_object,
    post_for_json,
    post_json,
    read_json_object,
    send_checked,
    upstream_errors,
)
from providers.sse import iter_sse
from providers.types import (
    OPERATIONS,
    AudioStream,
    ChatResponse,
    MediaResponse,
    NativeEvent,
    StreamChunk,
    Units,
    Usage,
    token_count,
)

_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIProvider(BaseProvider):
    """OpenAI and every OpenAI-compatible backend: every operation, passed through."""

    operations = OPERATIONS

    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(name, config, client)
        root = config.base_url.rstrip("/")
        self.url = httpx.URL(root + "/chat/completions")  # URLs parsed once
        self.embeddings_url = httpx.URL(root + "/embeddings")
        self.images_url = httpx.URL(root + "/images/generations")
        self.speech_url = httpx.URL(root + "/audio/speech")
        self.transcriptions_url = httpx.URL(root + "/audio/transcriptions")
        self.responses_url = httpx.URL(root + "/responses")
        headers = {**config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.form_headers = headers  # httpx sets the multipart content type and its boundary
        self.headers = {"content-type": "application/json", **headers}

    def _post(
        self, body: dict[str, Any], url: httpx.URL | None = None
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return post_json(
            self.client, self.name, url or self.url, self.with_credential(self.headers), body
        )

    async def _post_for_json(
        self, url: httpx.URL, body: dict[str, Any], list_key: str, what: str
    ) -> tuple[bytes, dict[str, Any]]:
        """POST and read a JSON object whose ``list_key`` is a list; else the upstream broke."""
        return await post_for_json(
            self.client,
            self.name,
            url,
            self.with_credential(self.headers),
            body,
            lambda data: isinstance(data.get(list_key), list),
            what,
        )

    # --- chat ------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, upstream_model: str) -> ChatResponse:
        body = request.upstream_body(upstream_model)
        body["stream"] = False
        body.pop("stream_options", None)
        raw, data = await self._post_for_json(self.url, body, "choices", "a chat completion")
        usage = Usage.from_openai(data.get("usage"))
        return ChatResponse(body=data, usage=usage, raw=raw)

    async def stream(
        self, request: ChatRequest, upstream_model: str
    ) -> AsyncGenerator[StreamChunk, None]:
        body = request.upstream_body(upstream_model)
        body["stream"] = True
        body["stream_options"] = {**(request.stream_options or {}), "include_usage": True}
        finished = False
        async with self._post(body) as response:
            with upstream_errors(self.name):
                async for _event, data in iter_sse(response.aiter_bytes()):
                    if data == b"[DONE]":
                        return
                    chunk = self._parse_chunk(data)
                    finished = finished or any(
                        choice.get("finish_reason") for choice in chunk.choices
                    )
                    yield chunk
        if not finished:
            raise ended_early(self.name)

    # --- the Responses API, for upstreams that serve it (ProviderConfig.responses) ------------

    async def responses(self, body: dict[str, Any], upstream_model: str) -> tuple[bytes, Usage]:
        """Send a Responses request as it is (but for ``model``); its answer's bytes and usage."""
        body = {**body, "model": upstream_model, "stream": False}
        raw, data = await self._post_for_json(self.responses_url, body, "output", "a response")
        return raw, Usage.from_responses(data.get("usage"))

    async def responses_stream(
        self, body: dict[str, Any], upstream_model: str
    ) -> AsyncGenerator[NativeEvent, None]:
        """Stream a Responses request as it is; each event as the upstream sent it, with the
        usage once ``response.completed`` (or ``.incomplete``, ``.failed``) carries it. That
        event ends the stream: whatever an upstream sends after it is not passed on."""
        body = {**body, "model": upstream_model, "stream": True}
        async with self._post(body, self.responses_url) as response:
            with upstream_errors(self.name):
                async for event, data in iter_sse(response.aiter_bytes()):
                    payload = json_object(data)
                    if payload is None:
                        raise UpstreamUnavailable(
                            f"The upstream provider '{self.name}' sent an invalid event."
                        )
                    kind = payload.get("type")
                    if not isinstance(kind, str) or not kind:
                        kind = event or ""
                    usage = None
                    if kind in _RESPONSE_ENDS:
                        ended = payload.get("response")
                        usage = Usage.from_responses(
                            ended.get("usage") if isinstance(ended, dict) else None
                        )
                    elif kind == "error":
                        raise self._stream_error(payload.get("error") or payload)
                    raw = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
                    yield NativeEvent(raw, usage, kind.endswith(".delta"))
                    if kind in _RESPONSE_ENDS:
                        return
        raise ended_early(self.name)

    async def stored_response(self, method: str, response_id: str, suffix: str = "") -> bytes:
        """``GET`` or ``DELETE`` of a response the upstream keeps, by its id (quoted: one path
        segment, whatever its characters), ``suffix`` after it (``/input_items``). The
        upstream's JSON object, or its error classified (anything else it answers: 502)."""
        url = httpx.URL(f"{self.responses_url}/{quote(response_id, safe='')}{suffix}")
        request = self.client.upstream(method, url, self.with_credential(self.headers), whole=True)
        response = await send_checked(self.client, self.name, request)
        try:
            raw, _ = await read_json_object(response, self.name, _any_object, "a JSON object")
        finally:
            await response.aclose()
        return raw

    def _parse_chunk(self, data: bytes) -> StreamChunk:
        payload = json_object(data)
        if payload is None:
            raise UpstreamUnavailable(f"The upstream provider '{self.name}' sent an invalid chunk.")
        if "error" in payload:
            raise self._stream_error(payload["error"])
        usage = payload.get("usage")
        return StreamChunk(payload, data, Usage.from_openai(usage) if usage else None)

    def _stream_error(self, error: Any) -> ProviderError:
        message = error.get("message") if isinstance(error, dict) else None
        return error_for_upstream_status(
            502,
            f"The upstream provider '{self.name}' failed mid-stream"
            + (f": {message}" if isinstance(message, str) else "."),
        )

    # --- embeddings, images ----------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> MediaResponse:
        body = request.upstream_body(upstream_model)
        raw, data = await self._post_for_json(self.embeddings_url, body, "data", "embeddings")
        return MediaResponse(raw, usage=Usage.from_openai(data.get("usage")))

    async def image_gen(self, request: ImageRequest, upstream_model: str) -> MediaResponse:
        body = request.upstream_body(upstream_model)
        raw, data = await self._post_for_json(self.images_url, body, "data", "a list of images")
        units = Units(
            images=len(data["data"]),
            # gpt-image models say which size and quality "auto" turned out to be
            image_size=_text(data.get("size")) or request.size,
            image_quality=_text(data.get("quality")) or request.quality,
        )
        return MediaResponse(raw, usage=image_usage(data.get("usage")), units=units)

    # --- audio -----------------------------------------------------------------------------------

    async def text_to_speech(self, request: SpeechRequest, upstream_model: str) -> AudioStream:
        body = orjson.dumps(request.upstream_body(upstream_model))
        http = self.client.upstream(
            "POST", self.speech_url, self.with_credential(self.headers), body
        )
        response = await send_checked(self.client, self.name, http)
        content_type = response.headers.get("content-type") or "application/octet-stream"
        chunks = self._audio_chunks(response)

        async def close() -> None:  # also when the chunks were never read
            await chunks.aclose()
            await response.aclose()

        return AudioStream(content_type, chunks, close)

    async def _audio_chunks(self, response: httpx.Response) -> AsyncGenerator[bytes, None]:
        try:
            with upstream_errors(self.name):
                async for chunk in response.aiter_bytes():
                    if chunk:
                        yield chunk
        finally:
            await response.aclose()

    async def transcribe(self, request: TranscriptionRequest, upstream_model: str) -> MediaResponse:
        fields: dict[str, list[str]] = {}
        for name, value in request.upstream_fields(upstream_model):
            fields.setdefault(name, []).append(value)
        files = [(f.field, (f.filename, f.data, f.content_type)) for f in request.files]
        http = self.client.build_request(
            "POST",
            self.transcriptions_url,
            data=fields,
            files=files,
            headers=self.with_credential(self.form_headers),
            extensions={READ_WHOLE: True},  # the transcript, read in one go
        )
        await http.aread()  # a sized body: one Content-Length for every transport
        response = await send_checked(self.client, self.name, http)
        try:
            with upstream_errors(self.name):
                raw = await response.aread()
        finally:
            await response.aclose()
        content_type = response.headers.get("content-type") or "application/json"
        if not content_type.startswith("application/json"):
            return MediaResponse(raw, content_type)  # text, srt, vtt: no usage in the answer
        data = json_object(raw)
        if data is None:
            raise UpstreamUnavailable(
                f"The upstream provider '{self.name}' returned a response that is not a "
                "transcription."
            )
        usage, seconds = transcription_usage(data)
        return MediaResponse(raw, content_type, usage, Units(audio_seconds=seconds))


def _any_object(data: dict[str, Any]) -> bool:
    return True


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def image_usage(usage: Any) -> Usage:
    """gpt-image models report ``{input_tokens, output_tokens, total_tokens}``."""
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        prompt_tokens=token_count(usage.get("input_tokens")),
        completion_tokens=token_count(usage.get("output_tokens")),
        total_tokens=token_count(usage.get("total_tokens")),
    )


def transcription_usage(data: dict[str, Any]) -> tuple[Usage, Decimal | None]:
    """Tokens and seconds of audio from a JSON transcription: ``usage`` of type ``duration``
    (whisper-1) or ``tokens`` (gpt-4o-transcribe), or the ``duration`` of verbose_json."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    tokens = Usage()
    seconds = None
    if usage.get("type") == "duration":
        seconds = _seconds(usage.get("seconds"))
    elif usage.get("type") == "tokens":
        tokens = Usage(
            prompt_tokens=token_count(usage.get("input_tokens")),
            completion_tokens=token_count(usage.get("output_tokens")),
            total_tokens=token_count(usage.get("total_tokens")),
        )
    if seconds is None:
        seconds = _seconds(data.get("duration"))
    return tokens, seconds


def _seconds(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        return None
    return seconds if seconds.is_finite() and seconds >= 0 else None
