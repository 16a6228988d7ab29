"""Upstream credentials are redacted from every upstream text that reaches a tenant."""

from __future__ import annotations

import httpx
import orjson
import pytest

from providers.base import ChatRequest
from providers.errors import GatewayError, error_for_upstream_status
from providers.redaction import REDACTED, redact, remember_secret


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("You sent Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ('{"headers": {"authorization": "Bearer tok123456"}}', "tok123456"),
        ("x-api-key: sk-ant-api03-AbCdEf0123456789", "sk-ant-api03-AbCdEf0123456789"),
        ('"x-api-key": "plainkey42"', "plainkey42"),
        ("api_key=hunter2hunter2 is wrong", "hunter2hunter2"),
        ("Incorrect API key provided: sk-proj-abcdefgh1234.", "sk-proj-abcdefgh1234"),
        ("the key nospecialshape-998877 was refused", "nospecialshape-998877"),
    ],
)
def test_credentials_and_credential_shapes_are_redacted(text: str, gone: str) -> None:
    remember_secret("nospecialshape-998877")  # a key the gateway holds, shaped like nothing
    cleaned = redact(text)
    assert gone not in cleaned and REDACTED in cleaned


def test_ordinary_messages_are_left_alone() -> None:
    text = "messages.0.content: Input should be a valid string (max_tokens must be >= 1)"
    assert redact(text) == text


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 503])
def test_every_classified_upstream_error_is_redacted(status: int) -> None:
    remember_secret("sk-upstream-secret")
    error = error_for_upstream_status(status, "echo: sk-upstream-secret", "key sk-upstream-secret")
    assert isinstance(error, GatewayError)
    assert "sk-upstream-secret" not in orjson.dumps(error.to_openai()).decode()


async def test_an_upstream_that_echoes_the_key_leaks_nothing(gateway_runtime) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        said = f"bad request from {request.headers.get('authorization')}"
        return httpx.Response(400, json={"error": {"message": said, "param": said}})

    current = gateway_runtime(echo)
    provider = current.factory.get("fake")
    request = ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(GatewayError) as raised:
        await provider.chat(request, "m")
    shown = orjson.dumps(raised.value.to_openai()).decode()
    assert "sk-upstream-secret" not in shown and REDACTED in shown
