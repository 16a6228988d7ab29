"""The errors all media endpoints share, in process: in OpenAI's shape, each one recorded."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
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
