"""The OpenAI provider against an upstream faked at the HTTP boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import httpx
import orjson
import pytest

from fake_media import parse_form
from providers.base import (
    ChatRequest,
    EmbeddingRequest,
    FormFile,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.config import ProviderConfig
from providers.errors import (
    ProviderError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.http import UpstreamClient
from providers.openai import OpenAIProvider
from providers.types import Units

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m-upstream",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 4,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    },
}


def provider(
    handler: Callable[[httpx.Request], httpx.Response], monkeypatch: pytest.MonkeyPatch
) -> OpenAIProvider:
    monkeypatch.setenv("UP_KEY", "sk-up")
    config = ProviderConfig(
        type="openai",
        base_url="http://up.test/v1/",
        api_key_env="UP_KEY",
        headers={"OpenAI-Organization": "org-1"},
    )
    client = UpstreamClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider("up", config, client)


def request(**fields: object) -> ChatRequest:
    body = {"model": "alias", "messages": [{"role": "user", "content": "hello"}], **fields}
    return ChatRequest.from_body(body)


def sse(*events: object) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events
    )


def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}


async def test_chat_passes_fields_through_and_returns_the_upstream_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []
    raw = orjson.dumps(COMPLETION)

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=raw)

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    result = await provider(handler, monkeypatch).chat(
        request(tools=tools, seed=7, response_format={"type": "json_object"}, logprobs=True),
        "m-upstream",
    )
    sent = orjson.loads(seen[0].content)
    assert str(seen[0].url) == "http://up.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-up"
    assert seen[0].headers["openai-organization"] == "org-1"
    assert sent["model"] == "m-upstream" and sent["tools"] == tools and sent["seed"] == 7
    assert sent["response_format"] == {"type": "json_object"} and sent["logprobs"] is True
    assert result.raw == raw
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (9, 4, 13)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (2, 1)
    assert usage.cache_write_tokens is None


async def test_stream_always_asks_for_usage_and_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[dict[str, object]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(req.content))
        body = sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "a"}),
            chunk({"content": "b"}),
            chunk({}, "stop"),
            USAGE_CHUNK,
            b"[DONE]",
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    stream = provider(handler, monkeypatch).stream(request(stream=True), "m")
    chunks = [c async for c in stream]
    assert sent[0]["stream"] is True
    assert sent[0]["stream_options"] == {"include_usage": True}
    assert [c.is_usage_only for c in chunks] == [False, False, False, False, True]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert chunks[1].raw == orjson.dumps(chunk({"content": "a"}))


async def test_stream_reads_crlf_and_split_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    body = sse(chunk({"content": "x"}), chunk({}, "stop"), b"[DONE]").replace(b"\n", b"\r\n")

    async def split() -> object:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=split())  # type: ignore[arg-type]

    chunks = [c async for c in provider(handler, monkeypatch).stream(request(), "m")]
    assert [c.payload["choices"][0]["delta"] for c in chunks] == [{"content": "x"}, {}]


async def test_stream_cut_before_the_finish_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk({"content": "x"})))

    received = []
    with pytest.raises(UpstreamUnavailable):
        async for c in provider(handler, monkeypatch).stream(request(), "m"):
            received.append(c)
    assert len(received) == 1


async def test_stream_error_event_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=sse(chunk({"content": "x"}), {"error": {"message": "overloaded"}})
        )

    with pytest.raises(UpstreamUnavailable, match="overloaded"):
        async for _ in provider(handler, monkeypatch).stream(request(), "m"):
            pass


@pytest.mark.parametrize(
    ("status", "error_class", "client_status", "code"),
    [
        (400, UpstreamRejected, 400, "upstream_rejected"),
        (404, UpstreamRejected, 404, "model_not_found"),
        (429, UpstreamRejected, 429, "rate_limit_exceeded"),
        (401, UpstreamUnavailable, 502, "upstream_auth_failed"),
        (500, UpstreamUnavailable, 502, "upstream_unavailable"),
        (503, UpstreamUnavailable, 503, "upstream_overloaded"),
        (408, UpstreamTimeout, 504, "upstream_timeout"),
    ],
)
async def test_upstream_statuses_are_classified(
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    error_class: type[ProviderError],
    client_status: int,
    code: str,
) -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-up***", "type": "x"}}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    with pytest.raises(error_class) as info:
        await provider(handler, monkeypatch).chat(request(), "m")
    assert (info.value.status, info.value.code) == (client_status, code)
    if status >= 500 or status in (401, 403):
        assert "sk-up" not in info.value.message  # never the upstream's body or our credential


async def test_upstream_4xx_message_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": {"message": "temperature is too high", "param": "temperature"}}
        )

    with pytest.raises(UpstreamRejected, match="temperature is too high") as info:
        await provider(handler, monkeypatch).chat(request(), "m")
    assert info.value.param == "temperature"


@pytest.mark.parametrize(
    ("exception", "error_class"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable),
        (httpx.ConnectTimeout("aiohttp says so for a dropped connection"), UpstreamUnavailable),
        (httpx.RemoteProtocolError("closed"), UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
        (httpx.PoolTimeout("busy"), UpstreamTimeout),
    ],
)
async def test_transport_failures(
    monkeypatch: pytest.MonkeyPatch, exception: Exception, error_class: type[ProviderError]
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise exception

    with pytest.raises(error_class):
        await provider(handler, monkeypatch).chat(request(), "m")


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"id": "x"}'])
async def test_a_response_that_is_not_a_completion_is_a_502(
    monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content)

    with pytest.raises(UpstreamUnavailable):
        await provider(handler, monkeypatch).chat(request(), "m")


async def test_keyless_backend_sends_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=COMPLETION)

    config = ProviderConfig(type="openai", base_url="http://127.0.0.1:11434/v1")
    client = UpstreamClient(transport=httpx.MockTransport(handler))
    await OpenAIProvider("ollama", config, client).chat(request(), "llama3.2")
    assert "authorization" not in seen[0].headers


# --- embeddings, images, speech, transcriptions --------------------------------------------------


def recording(
    answer: httpx.Response, seen: list[httpx.Request]
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answer

    return handler


async def test_embed_posts_to_embeddings_and_reads_the_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []
    raw = orjson.dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 5}})
    up = provider(recording(httpx.Response(200, content=raw), seen), monkeypatch)
    body = {"model": "alias", "input": ["a"], "encoding_format": "base64", "dimensions": 8}
    result = await up.embed(EmbeddingRequest.from_body(body), "m-upstream")

    assert str(seen[0].url) == "http://up.test/v1/embeddings"
    assert seen[0].headers["authorization"] == "Bearer sk-up"
    assert seen[0].headers["openai-organization"] == "org-1"
    assert orjson.loads(seen[0].content) == {**body, "model": "m-upstream"}
    assert (result.raw, result.content_type, result.usage.prompt_tokens) == (
        raw,
        "application/json",
        5,
    )


@pytest.mark.parametrize(
    ("answer", "units"),
    [
        ({"created": 1, "data": [{"url": "u"}]}, Units(1, "1792x1024", "hd")),
        (
            {"created": 1, "data": [{}, {}], "size": "1024x1536", "quality": "medium"},
            Units(2, "1024x1536", "medium"),  # what "auto" turned out to be
        ),
    ],
)
async def test_image_gen_counts_images_and_says_their_size_and_quality(
    monkeypatch: pytest.MonkeyPatch, answer: dict[str, object], units: Units
) -> None:
    seen: list[httpx.Request] = []
    up = provider(recording(httpx.Response(200, json=answer), seen), monkeypatch)
    body = {"model": "alias", "prompt": "a cat", "size": "1792x1024", "quality": "hd"}
    if "size" in answer:
        body.update(size="auto", quality="auto")
    result = await up.image_gen(ImageRequest.from_body(body), "m-upstream")
    assert str(seen[0].url) == "http://up.test/v1/images/generations"
    assert result.units == units


async def test_speech_streams_and_closes_even_when_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []

    class Audio(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"ab"
            yield b"cd"

        async def aclose(self) -> None:
            closed.append(True)

    def handler(req: httpx.Request) -> httpx.Response:
        assert str(req.url) == "http://up.test/v1/audio/speech"
        return httpx.Response(200, headers={"content-type": "audio/ogg"}, stream=Audio())

    up = provider(handler, monkeypatch)
    request = SpeechRequest.from_body({"model": "alias", "input": "hi", "voice": "alloy"})
    audio = await up.text_to_speech(request, "tts-up")
    assert audio.content_type == "audio/ogg"
    assert [part async for part in audio.chunks] == [b"ab", b"cd"]
    await audio.aclose()
    unread = await up.text_to_speech(request, "tts-up")
    await unread.aclose()
    assert closed == [True, True], "each response closed once, the unread one too"


async def test_speech_failure_before_the_audio_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    error = {"error": {"message": "bad voice", "type": "x", "param": "voice", "code": None}}
    up = provider(lambda req: httpx.Response(400, json=error), monkeypatch)
    request = SpeechRequest.from_body({"model": "alias", "input": "hi", "voice": "nope"})
    with pytest.raises(UpstreamRejected) as info:
        await up.text_to_speech(request, "tts-up")
    assert (info.value.status, info.value.param) == (400, "voice")


async def test_transcribe_sends_multipart_and_reads_seconds_or_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []
    usage = {"type": "tokens", "input_tokens": 30, "output_tokens": 4, "total_tokens": 34}
    answer = httpx.Response(200, json={"text": "hi", "usage": usage, "duration": 2.25})
    up = provider(recording(answer, seen), monkeypatch)
    audio = FormFile("file", "a.mp3", "audio/mpeg", b"\xff\xfbaudio")
    fields = [("model", "alias"), ("timestamp_granularities[]", "word"), ("language", "en")]
    fields.append(("timestamp_granularities[]", "segment"))
    result = await up.transcribe(TranscriptionRequest("alias", fields, [audio]), "stt-up")

    sent = seen[0]
    assert str(sent.url) == "http://up.test/v1/audio/transcriptions"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.headers["authorization"] == "Bearer sk-up"
    assert int(sent.headers["content-length"]) == len(sent.content)
    assert parse_form(sent.headers["content-type"], sent.content) == {
        "model": "stt-up",
        "timestamp_granularities[]": ["word", "segment"],
        "language": "en",
        "file": {"filename": "a.mp3", "content_type": "audio/mpeg", "size": 7},
    }
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (30, 4)
    assert result.units == Units(audio_seconds=Decimal("2.25"))


@pytest.mark.parametrize(
    ("content_type", "body", "seconds"),
    [
        ("text/plain", b"hi\n", None),
        ("application/json", b'{"text": "hi", "usage": {"type": "duration", "seconds": 3}}', 3),
        ("application/json", b'{"text": "hi", "duration": "nan"}', None),
    ],
)
async def test_transcribe_answers(
    monkeypatch: pytest.MonkeyPatch, content_type: str, body: bytes, seconds: int | None
) -> None:
    answer = httpx.Response(200, headers={"content-type": content_type}, content=body)
    up = provider(lambda req: answer, monkeypatch)
    audio = FormFile("file", "a.wav", "audio/wav", b"RIFF")
    result = await up.transcribe(TranscriptionRequest("a", [("model", "a")], [audio]), "s")
    assert (result.raw, result.content_type) == (body, content_type)
    found = result.units.audio_seconds if result.units else None
    assert found == (Decimal(seconds) if seconds is not None else None)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"data": 5}'])
async def test_embed_and_image_gen_reject_answers_of_the_wrong_shape(
    monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    up = provider(lambda req: httpx.Response(200, content=body), monkeypatch)
    with pytest.raises(UpstreamUnavailable, match="not embeddings"):
        await up.embed(EmbeddingRequest.from_body({"model": "a", "input": "x"}), "m")
    with pytest.raises(UpstreamUnavailable, match="not a list of images"):
        await up.image_gen(ImageRequest.from_body({"model": "a", "prompt": "x"}), "m")
