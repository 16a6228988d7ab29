"""Each media endpoint in process: what reaches the upstream, what the client gets, the bill."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from django.test import AsyncClient
from support.media_api import (
    Upstream,
    client_fixture,  # noqa: F401 - a fixture: client
    json_answer,
    post,
    post_form,
    rows,
    wav,
)

from conftest import TenantKey
from fake_media import parse_form
from gateway.api.errors import ResponseAborted

MILLION = Decimal(1_000_000)

EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": "AACAPwAAAEA="}],
    "model": "fake-embed",
    "usage": {"prompt_tokens": 12, "total_tokens": 12},
}
IMAGES = {"created": 1, "data": [{"b64_json": "aW1n"}, {"b64_json": "aW1n"}]}
TRANSCRIPTION = {"text": "hello", "usage": {"type": "duration", "seconds": 7}}

# --- embeddings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding_format", [None, "base64", "float"])
async def test_embeddings_pass_through_and_bill_the_upstream_tokens(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime, encoding_format: str
) -> None:
    upstream = Upstream({"/v1/embeddings": json_answer(EMBEDDING)})
    current = gateway_runtime(upstream)
    body: dict[str, Any] = {"model": "embed-test", "input": ["a", "b"], "user": "u-1"}
    if encoding_format:
        body["encoding_format"] = encoding_format
    response = await post(client, "embeddings", tenants["bob"], body)

    assert response.status_code == 200
    assert response.content == orjson.dumps(EMBEDDING)  # the upstream's bytes, unchanged
    assert upstream.json() == {**body, "model": "fake-embed"}
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-upstream-secret"
    [row] = await rows(current)
    assert (row.tenant_id, row.endpoint, row.requested_model, row.upstream_model) == (
        tenants["bob"].tenant.pk,
        "embeddings",
        "embed-test",
        "fake-embed",
    )
    assert (row.prompt_tokens, row.total_tokens, row.completion_tokens) == (12, 12, None)
    assert (row.image_count, row.input_characters, row.audio_seconds) == (None, None, None)
    assert row.cost_usd == 12 * Decimal("0.02") / MILLION
    assert (row.status_code, row.usage_estimated, row.stream) == (200, False, False)
    assert row.request_id == response.headers["x-request-id"]


async def test_embeddings_without_upstream_usage_are_billed_by_an_estimate(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    answer = {key: value for key, value in EMBEDDING.items() if key != "usage"}
    current = gateway_runtime(Upstream({"/v1/embeddings": json_answer(answer)}))
    body = {"model": "embed-test", "input": ["12345678", "abcd"]}
    assert (await post(client, "embeddings", tenants["alice"], body)).status_code == 200
    [row] = await rows(current)
    assert (row.prompt_tokens, row.usage_estimated) == (3, True)  # 4 characters a token
    assert row.cost_usd == 3 * Decimal("0.02") / MILLION


# --- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "quality", "price"),
    [
        ("1024x1024", "hd", Decimal("0.08")),  # image_prices["1024x1024/hd"]
        ("1792x1024", "hd", Decimal("0.12")),
        ("1024x1024", "standard", Decimal("0.04")),  # not in image_prices: per_image
        (None, None, Decimal("0.04")),
    ],
)
async def test_images_are_billed_per_image_by_size_and_quality(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    size: str | None,
    quality: str | None,
    price: Decimal,
) -> None:
    upstream = Upstream({"/v1/images/generations": json_answer(IMAGES)})
    current = gateway_runtime(upstream)
    body: dict[str, Any] = {"model": "image-test", "prompt": "a lighthouse", "n": 2}
    body.update({key: value for key, value in (("size", size), ("quality", quality)) if value})
    response = await post(client, "images/generations", tenants["alice"], body)

    assert response.status_code == 200
    assert response.content == orjson.dumps(IMAGES)
    assert upstream.json() == {**body, "model": "fake-dall-e"}
    [row] = await rows(current)
    assert (row.endpoint, row.image_count, row.prompt_tokens) == ("images.generations", 2, None)
    assert row.cost_usd == 2 * price


async def test_gpt_image_tokens_are_billed_by_token_not_per_image(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    answer = {
        **IMAGES,
        "size": "1024x1536",
        "quality": "high",
        "usage": {
            "input_tokens": 50,
            "output_tokens": 8320,
            "total_tokens": 8370,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
        },
    }
    current = gateway_runtime(Upstream({"/v1/images/generations": json_answer(answer)}))
    body = {"model": "gpt-image-test", "prompt": "a lighthouse", "n": 2, "quality": "auto"}
    assert (await post(client, "images/generations", tenants["alice"], body)).status_code == 200
    [row] = await rows(current)
    assert (row.image_count, row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        2,
        50,
        8320,
        8370,
    )
    assert row.cost_usd == (50 * Decimal(5) + 8320 * Decimal(40)) / MILLION


# --- speech --------------------------------------------------------------------------------------

AUDIO = [b"ID3" + bytes(1021), bytes(range(256)) * 4, b"\xff" * 100]


def audio_answer(request: httpx.Request) -> httpx.Response:
    async def chunks() -> AsyncIterator[bytes]:
        for part in AUDIO:
            yield part

    return httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=chunks())


async def test_speech_streams_the_audio_and_bills_characters(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    upstream = Upstream({"/v1/audio/speech": audio_answer})
    current = gateway_runtime(upstream)
    body = {"model": "tts-test", "input": "Grüß dich, wörld!", "voice": "alloy", "speed": 1.5}
    response = await post(client, "audio/speech", tenants["alice"], body)

    assert response.status_code == 200
    assert response.streaming
    assert response["content-type"] == "audio/mpeg"
    assert b"".join([part async for part in response.streaming_content]) == b"".join(AUDIO)
    assert upstream.json() == {**body, "model": "fake-tts"}
    [row] = await rows(current)
    assert (row.endpoint, row.stream, row.status_code) == ("audio.speech", True, 200)
    assert row.input_characters == 17  # characters, not UTF-8 bytes
    assert row.cost_usd == 17 * Decimal(15) / MILLION
    assert row.prompt_tokens is None and row.request_id == response["x-request-id"]


async def test_speech_cut_off_by_the_upstream_aborts_the_response_and_is_recorded(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield AUDIO[0]
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=chunks())

    current = gateway_runtime(Upstream({"/v1/audio/speech": broken}))
    body = {"model": "tts-test", "input": "Hello", "voice": "alloy"}
    response = await post(client, "audio/speech", tenants["alice"], body)
    received = []
    with pytest.raises(ResponseAborted):
        async for part in response.streaming_content:
            received.append(part)
    assert received == [AUDIO[0]]
    [row] = await rows(current)
    assert (row.status_code, row.error_type) == (502, "upstream_unavailable")
    assert (row.input_characters, row.cost_usd) == (5, 5 * Decimal(15) / MILLION)


# --- transcriptions ------------------------------------------------------------------------------


async def test_transcription_is_forwarded_as_multipart_and_billed_by_the_minute(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    upstream = Upstream({"/v1/audio/transcriptions": json_answer(TRANSCRIPTION)})
    current = gateway_runtime(upstream)
    audio = wav(2.5)
    fields = {
        "model": "stt-test",
        "language": "de",
        "prompt": "Grüße",
        "timestamp_granularities[]": ["word", "segment"],
    }
    response = await post_form(client, tenants["alice"], fields, audio)

    assert response.status_code == 200, response.content
    assert response.content == orjson.dumps(TRANSCRIPTION)
    sent = upstream.requests[0]
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    form = parse_form(sent.headers["content-type"], sent.content)
    assert form == {
        "model": "fake-whisper",
        "language": "de",
        "prompt": "Grüße",
        "timestamp_granularities[]": ["word", "segment"],
        "file": {"filename": "speech.wav", "content_type": "audio/x-wav", "size": len(audio)},
    }
    assert audio in sent.content  # the file's bytes, unchanged
    [row] = await rows(current)
    assert (row.endpoint, row.requested_model, row.upstream_model) == (
        "audio.transcriptions",
        "stt-test",
        "fake-whisper",
    )
    assert (row.audio_seconds, row.usage_estimated) == (Decimal("7.000"), False)
    assert row.cost_usd == 7 * Decimal("0.006") / 60  # 0.0007


@pytest.mark.parametrize(
    ("answer", "content_type", "seconds", "estimated"),
    [
        ({"text": "hi", "duration": 7.5, "segments": []}, "application/json", "7.5", False),
        (b"hello\n", "text/plain; charset=utf-8", "2.5", True),  # from the WAV header
        ({"text": "hi"}, "application/json", "2.5", True),
    ],
    ids=["verbose_json", "text", "json-without-usage"],
)
async def test_transcription_seconds_come_from_the_answer_else_from_the_upload(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    answer: Any,
    content_type: str,
    seconds: str,
    estimated: bool,
) -> None:
    raw = answer if isinstance(answer, bytes) else orjson.dumps(answer)

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=raw)

    current = gateway_runtime(Upstream({"/v1/audio/transcriptions": upstream}))
    response = await post_form(client, tenants["alice"], {"model": "stt-test"}, wav(2.5))
    assert response.status_code == 200
    assert (response.content, response["content-type"]) == (raw, content_type)
    [row] = await rows(current)
    assert (row.audio_seconds, row.usage_estimated) == (Decimal(seconds), estimated)
    assert row.cost_usd == Decimal(seconds) * Decimal("0.006") / 60


async def test_transcription_tokens_are_billed_by_token_when_the_model_prices_them(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    usage = {"type": "tokens", "input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
    answer = json_answer({"text": "hi", "usage": usage})
    current = gateway_runtime(Upstream({"/v1/audio/transcriptions": answer}))
    # echo: 1.0 / 2.0 USD per Mtok and 0.006 per minute
    response = await post_form(client, tenants["alice"], {"model": "echo"}, wav(1))
    assert response.status_code == 200
    [row] = await rows(current)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (100, 20, 120)
    assert row.audio_seconds == Decimal("1.000")  # estimated: the answer has no duration
    assert row.cost_usd == Decimal(100 * 1 + 20 * 2) / MILLION


async def test_oversized_upload_is_413_and_recorded(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime, settings
) -> None:
    settings.TOLLGATE_MAX_UPLOAD_BYTES = 1000
    upstream = Upstream({"/v1/audio/transcriptions": json_answer(TRANSCRIPTION)})
    current = gateway_runtime(upstream)
    response = await post_form(client, tenants["alice"], {"model": "stt-test"}, b"x" * 1001)
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("payload_too_large", "file")
    assert "1000 bytes" in error["message"]
    ok = await post_form(client, tenants["alice"], {"model": "stt-test"}, b"x" * 1000)
    assert ok.status_code == 200
    assert len(upstream.requests) == 1
    assert [(r.status_code, r.error_type) for r in await rows(current)] == [
        (413, "payload_too_large"),
        (200, ""),
    ]
