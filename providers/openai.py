"""OpenAI Chat Completions, and every backend that speaks it (Ollama, DeepSeek, vLLM, Groq...).

Which backend is chosen by ``base_url`` in config.toml; there is no per-backend code. Request
fields the gateway does not read pass through untouched, and the upstream's JSON goes back to the
client as the upstream's own bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from providers.base import BaseProvider, ChatRequest, ChatResponse, StreamChunk, Usage
from providers.config import ProviderConfig
from providers.errors import ProviderError, UpstreamUnavailable
from providers.http import post_json, upstream_errors
from providers.sse import iter_sse


class OpenAIProvider(BaseProvider):
    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(name, config, client)
        self.url = httpx.URL(config.base_url.rstrip("/") + "/chat/completions")  # parsed once
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.headers = headers

    def _post(self, body: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return post_json(self.client, self.name, self.url, self.headers, body)

    async def chat(self, request: ChatRequest, upstream_model: str) -> ChatResponse:
        body = request.upstream_body(upstream_model)
        body["stream"] = False
        body.pop("stream_options", None)
        async with self._post(body) as response:
            with upstream_errors(self.name):
                raw = await response.aread()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamUnavailable(
                f"The upstream provider '{self.name}' returned a response that is not a chat "
                "completion."
            )
        usage = Usage.from_openai(data.get("usage"))
        return ChatResponse.model_construct(body=data, usage=usage, raw=raw)

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
                        choice.get("finish_reason") for choice in chunk.payload.get("choices") or ()
                    )
                    yield chunk
        if not finished:
            raise UpstreamUnavailable(
                f"The upstream provider '{self.name}' ended the stream before it finished."
            )

    def _parse_chunk(self, data: bytes) -> StreamChunk:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise UpstreamUnavailable(f"The upstream provider '{self.name}' sent an invalid chunk.")
        if "error" in payload:
            raise self._stream_error(payload["error"])
        usage = payload.get("usage")
        return StreamChunk(payload, data, Usage.from_openai(usage) if usage else None)

    def _stream_error(self, error: Any) -> ProviderError:
        message = error.get("message") if isinstance(error, dict) else None
        return UpstreamUnavailable(
            f"The upstream provider '{self.name}' failed mid-stream"
            + (f": {message}" if isinstance(message, str) else ".")
        )
