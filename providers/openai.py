"""OpenAI Chat Completions, and every backend that speaks it (Ollama, DeepSeek, vLLM, Groq...).

Which backend is chosen by ``base_url`` in config.toml; there is no per-backend code. Request
fields the gateway does not read pass through untouched, and the upstream's JSON goes back to the
client as the upstream's own bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson

from providers.base import BaseProvider, ChatRequest, ChatResponse, StreamChunk, Usage
from providers.config import ProviderConfig
from providers.errors import (
    ProviderError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from providers.sse import iter_sse

_ERROR_BODY_LIMIT = 64 * 1024


@contextlib.contextmanager
def upstream_errors(provider: str) -> Any:
    """Turn transport failures into the error tree.

    The aiohttp transport reports a refused or dropped connection as ``httpx.ConnectTimeout``;
    that is an unreachable upstream (502), not a timeout. A read that waits too long is a 504.
    """
    try:
        yield
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
        raise UpstreamTimeout(f"The upstream provider '{provider}' timed out.") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(
            f"The upstream provider '{provider}' could not be reached or closed the connection."
        ) from exc


def upstream_error_detail(body: bytes) -> tuple[str | None, str | None]:
    """The ``message`` and ``param`` of an OpenAI- or Anthropic-shaped error body, if any."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            param = error.get("param")
            return str(error["message"]), param if isinstance(param, str) else None
    return None, None


async def raise_for_upstream_status(provider: str, response: httpx.Response) -> None:
    """Raise the classified error for a non-2xx upstream answer.

    4xx messages are the upstream's explanation of what is wrong with the caller's request and
    are passed on; 5xx bodies and anything about the gateway's own credential are not.
    """
    if response.status_code < 400:
        return
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > _ERROR_BODY_LIMIT:
            break
    status = response.status_code
    detail, param = upstream_error_detail(body) if 400 <= status < 500 else (None, None)
    if status in (401, 403) or not detail:
        detail, param = f"The upstream provider '{provider}' answered with HTTP {status}.", None
    error = error_for_upstream_status(status, detail)
    error.param = param
    raise error


class OpenAIProvider(BaseProvider):
    def __init__(self, name: str, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        super().__init__(name, config, client)
        self.url = httpx.URL(config.base_url.rstrip("/") + "/chat/completions")  # parsed once
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.headers = headers

    @contextlib.asynccontextmanager
    async def _post(self, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        request = self.client.build_request(
            "POST", self.url, content=orjson.dumps(body), headers=self.headers
        )
        with upstream_errors(self.name):
            response = await self.client.send(request, stream=True)
        try:
            with upstream_errors(self.name):
                await raise_for_upstream_status(self.name, response)
            yield response
        finally:
            await response.aclose()

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
