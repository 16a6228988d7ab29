"""Embeddings, images, speech and transcriptions in process, the upstream faked at the HTTP
boundary: what reaches the upstream, what the client gets, and the one ledger row of each call
with its units and cost."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conftest import TenantKey, ledger_rows
from fake_media import parse_form
from gateway.api.errors import ResponseAborted
from gateway.models import UsageRecord
from gateway.runtime import Runtime

MILLION = Decimal(1_000_000)
Handler = Callable[[httpx.Request], Any]


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


class Upstream:
    """A fake upstream at the HTTP boundary: answers by path, remembers what it was sent."""

    def __init__(self, answers: dict[str, Handler]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[request.url.path](request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer

    def json(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


def json_answer(body: object, status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, content=orjson.dumps(body))


async def rows(current: Runtime) -> list[UsageRecord]:
    return await sync_to_async(ledger_rows)(current)


async def post(
    client: AsyncClient, path: str, who: TenantKey, body: object
) -> Any:  # django.test's response
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(
        "/v1/" + path, content, content_type="application/json", headers=who.headers
    )


async def post_form(
    client: AsyncClient, who: TenantKey, fields: dict[str, Any], file: bytes | None = None
) -> Any:
    data = dict(fields)
    if file is not None:
        data["file"] = _Upload("speech.wav", file)
    return await client.post("/v1/audio/transcriptions", data, headers=who.headers)


class _Upload:
    """A file for django.test's multipart encoder (it reads ``name`` and ``read()``)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data

    def read(self) -> bytes:
        return self.data


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent 16-bit mono PCM WAV of ``seconds``."""
    data = b"\0\0" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


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


# --- what every endpoint shares ------------------------------------------------------------------

CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "embeddings": ("embeddings", {"input": "hello"}),
    "images": ("images/generations", {"prompt": "a cat"}),
    "speech": ("audio/speech", {"input": "hello", "voice": "alloy"}),
    "transcription": ("audio/transcriptions", {}),
}
ENDPOINTS = {
    "embeddings": "embeddings",
    "images": "images.generations",
    "speech": "audio.speech",
    "transcription": "audio.transcriptions",
}


async def call(
    client: AsyncClient, who: TenantKey, operation: str, model: str, **fields: Any
) -> Any:
    path, body = CALLS[operation]
    if operation == "transcription":
        return await post_form(client, who, {"model": model, **fields}, wav(1))
    return await post(client, path, who, {"model": model, **body, **fields})


@pytest.mark.parametrize("operation", list(CALLS))
@pytest.mark.parametrize("model", ["gpt-test", "claude-media"], ids=["undeclared", "anthropic"])
async def test_a_model_that_cannot_do_it_is_400_and_nothing_is_sent(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime, operation: str, model: str
) -> None:
    """gpt-test declares chat only; claude-media declares everything, but its provider
    (Anthropic) raises NotImplementedError: both are the same 400, never a 500."""
    upstream = Upstream({})
    current = gateway_runtime(upstream)
    response = await call(client, tenants["alice"], operation, model)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error == {
        "message": f"The model `{model}` does not support {operation}.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "unsupported_operation",
    }
    assert upstream.requests == []
    [row] = await rows(current)
    assert (row.endpoint, row.requested_model, row.status_code, row.error_type) == (
        ENDPOINTS[operation],
        model,
        400,
        "unsupported_operation",
    )
    assert row.cost_usd == 0


async def test_chat_with_a_model_that_does_not_declare_chat_is_400(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    upstream = Upstream({})
    current = gateway_runtime(upstream)
    body = {"model": "embed-test", "messages": [{"role": "user", "content": "hi"}]}
    response = await post(client, "chat/completions", tenants["alice"], body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The model `embed-test` does not support chat."
    assert upstream.requests == []
    [row] = await rows(current)
    assert (row.endpoint, row.error_type) == ("chat.completions", "unsupported_operation")


@pytest.mark.parametrize("operation", list(CALLS))
@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        (500, 502, "upstream_unavailable"),
        (503, 503, "upstream_overloaded"),
        (429, 429, "rate_limit_exceeded"),
        (400, 400, "upstream_rejected"),
    ],
)
async def test_upstream_failures_are_classified_and_recorded(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    operation: str,
    status: int,
    expected: int,
    code: str,
) -> None:
    body = {"error": {"message": "bad voice", "type": "x", "param": "voice", "code": None}}
    path = "/v1/" + CALLS[operation][0]
    current = gateway_runtime(Upstream({path: json_answer(body, status)}))
    response = await call(client, tenants["alice"], operation, "echo")

    assert response.status_code == expected
    assert not response.streaming
    error = response.json()["error"]
    assert error["code"] == code
    if status < 500:  # the upstream's explanation of what is wrong with the request
        assert (error["message"], error["param"]) == ("bad voice", "voice")
    else:  # a 5xx body is not passed on
        assert "bad voice" not in error["message"]
    [row] = await rows(current)
    assert (row.endpoint, row.status_code, row.error_type) == (ENDPOINTS[operation], expected, code)
    assert row.cost_usd == 0
    assert (row.image_count, row.input_characters, row.audio_seconds) == (None, None, None)


@pytest.mark.parametrize("operation", ["embeddings", "images", "transcription"])
async def test_an_answer_that_is_not_json_is_502(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime, operation: str
) -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=b"{no")

    current = gateway_runtime(Upstream({"/v1/" + CALLS[operation][0]: garbage}))
    response = await call(client, tenants["alice"], operation, "echo")
    assert response.status_code == 502
    [row] = await rows(current)
    assert (row.status_code, row.cost_usd) == (502, 0)


@pytest.mark.parametrize(
    ("operation", "body", "param", "code"),
    [
        ("embeddings", b"{not json", None, "invalid_json"),
        ("embeddings", b"[]", None, "invalid_json"),
        ("embeddings", {"input": "x"}, "model", "missing_required_parameter"),
        ("embeddings", {"model": "echo"}, "input", "missing_required_parameter"),
        ("embeddings", {"model": "echo", "input": 5}, "input", "invalid_value"),
        ("embeddings", {"model": "echo", "input": []}, "input", "invalid_value"),
        ("embeddings", {"model": "echo", "input": "x", "encoding_format": "hex"}, None, None),
        ("embeddings", {"model": "echo", "input": "x", "dimensions": 0}, "dimensions", None),
        ("images", {"model": "echo"}, "prompt", "missing_required_parameter"),
        ("images", {"model": "echo", "prompt": ["a"]}, "prompt", "invalid_value"),
        ("images", {"model": "echo", "prompt": "a", "n": 0}, "n", "invalid_value"),
        ("images", {"model": 7, "prompt": "a"}, "model", "invalid_value"),
        ("speech", {"model": "echo", "voice": "alloy"}, "input", "missing_required_parameter"),
        ("speech", {"model": "echo", "input": ""}, "input", "invalid_value"),
        ("speech", b"", None, "invalid_json"),
    ],
)
async def test_invalid_json_bodies_are_400_with_param_and_recorded(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    operation: str,
    body: Any,
    param: str | None,
    code: str | None,
) -> None:
    if param is None and code is None:  # a wrong enum value: the param is the field
        param, code = "encoding_format", "invalid_value"
    if code is None:
        code = "invalid_value"
    upstream = Upstream({})
    current = gateway_runtime(upstream)
    response = await post(client, CALLS[operation][0], tenants["alice"], body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert upstream.requests == []
    [row] = await rows(current)
    assert (row.endpoint, row.status_code, row.error_type) == (ENDPOINTS[operation], 400, code)


@pytest.mark.parametrize(
    ("fields", "file", "param", "code"),
    [
        ({}, b"RIFF", "model", "missing_required_parameter"),
        ({"model": ""}, b"RIFF", "model", "missing_required_parameter"),
        ({"model": "stt-test"}, None, "file", "missing_required_parameter"),
        ({"model": "stt-test"}, b"", "file", "invalid_value"),
    ],
)
async def test_invalid_transcription_forms_are_400_with_param(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    fields: dict[str, str],
    file: bytes | None,
    param: str,
    code: str,
) -> None:
    upstream = Upstream({})
    current = gateway_runtime(upstream)
    response = await post_form(client, tenants["alice"], fields, file)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert upstream.requests == []
    [row] = await rows(current)
    assert (row.status_code, row.error_type) == (400, code)


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/json", b'{"model": "stt-test"}', "invalid_content_type"),
        ("multipart/form-data", b"--x\r\n", "invalid_multipart"),  # no boundary
        ("multipart/form-data; boundary=x", b"garbage", "missing_required_parameter"),
    ],
)
async def test_a_transcription_that_is_not_a_form_is_400(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    content_type: str,
    body: bytes,
    code: str,
) -> None:
    current = gateway_runtime(Upstream({}))
    response = await client.post(
        "/v1/audio/transcriptions", body, content_type=content_type, headers=tenants["bob"].headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    [row] = await rows(current)
    assert (row.endpoint, row.status_code) == ("audio.transcriptions", 400)


@pytest.mark.parametrize(
    ("operation", "fields", "units"),
    [
        ("images", {"n": 3, "size": "1024x1024", "quality": "hd"}, {"image_count": 3}),
        ("speech", {"input": "twelve chars"}, {"input_characters": 12}),
        ("embeddings", {"input": "x" * 40}, {"prompt_tokens": 10}),
        ("transcription", {}, {"audio_seconds": Decimal("1.000")}),
    ],
)
async def test_a_call_abandoned_before_the_answer_records_what_the_upstream_will_bill(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    operation: str,
    fields: dict[str, Any],
    units: dict[str, Any],
) -> None:
    reached = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        reached.set()
        await asyncio.sleep(60)
        raise AssertionError("cancelled before")

    current = gateway_runtime(Upstream({"/v1/" + CALLS[operation][0]: never}))
    task = asyncio.create_task(call(client, tenants["alice"], operation, "echo", **fields))
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await rows(current)
    assert (row.status_code, row.error_type, row.usage_estimated) == (
        499,
        "client_disconnected",
        True,
    )
    for field, value in units.items():
        assert getattr(row, field) == value
    assert row.cost_usd > 0
