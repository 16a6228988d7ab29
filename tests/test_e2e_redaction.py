"""Secrets never travel back: an upstream that quotes the request's credentials in its errors
(the fake upstream's ``echo-auth-*`` models) leaks no upstream key to the tenant, on any
endpoint, status or stream, from an OpenAI upstream (config.toml's key) or an Anthropic one (a
key stored in the admin). Real processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from conftest import GatewayServer, TenantKey, start_gateway_with_config
from gateway.models import ProviderKey
from gateway.upstream_keys.credentials import set_secret

pytestmark = pytest.mark.e2e

ENV_KEY = "sk-upstream-secret"
ADMIN_KEY = "sk-ant-admin-stored-0123456789"
SECRET_KEY = "redaction-test-secret-key-0123456789"
STATUSES = (400, 401, 403, 404, 422, 429, 500)
PASSED_ON = (400, 404, 422, 429)
"""Statuses whose upstream message the gateway passes on (redacted); the others it replaces."""
WAV = b"RIFF" + b"\0" * 40


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None,
    django_db_blocker: Any,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("redaction")
    config = Path(tmp / "redaction.toml")
    config.write_text(f"""
[providers.fake]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
passthrough_models = true

[providers.claude]
type = "anthropic"
base_url = "{fake_upstream}/v1"
passthrough_models = true
""")
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    with django_db_blocker.unblock():
        key = ProviderKey(provider="claude", label="admin")
        set_secret(key, ADMIN_KEY)
        key.save()
    server = start_gateway_with_config(tmp, config, env={"TOLLGATE_SECRET_KEY": SECRET_KEY})
    yield server
    server.stop()
    with django_db_blocker.unblock():
        ProviderKey.objects.filter(label="admin").delete()
    settings.TOLLGATE_SECRET_KEY = ""


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 5,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


def calls(provider: str, behaviour: str) -> list[tuple[str, dict[str, Any]]]:
    """Every endpoint, for one upstream behaviour of one provider."""
    model = f"{provider}/{behaviour}"
    result = [
        ("/v1/chat/completions", {"json": chat(model)}),
        ("/v1/messages", {"json": chat(model)}),
    ]
    if provider == "fake":
        result += [
            ("/v1/embeddings", {"json": {"model": model, "input": "hi"}}),
            ("/v1/images/generations", {"json": {"model": model, "prompt": "hi"}}),
            ("/v1/audio/speech", {"json": {"model": model, "input": "hi", "voice": "alloy"}}),
            (
                "/v1/audio/transcriptions",
                {"data": {"model": model}, "files": {"file": ("a.wav", WAV, "audio/wav")}},
            ),
        ]
    return result


def everything_received(response: httpx.Response) -> str:
    return str(response.headers) + response.text


@pytest.mark.parametrize("provider", ["fake", "claude"])
@pytest.mark.parametrize("status", STATUSES)
def test_an_upstream_error_quoting_the_key_never_shows_it(
    tenants: dict[str, TenantKey], gateway: GatewayServer, provider: str, status: int
) -> None:
    for path, options in calls(provider, f"echo-auth-{status}"):
        response = httpx.post(
            gateway.base_url + path, headers=tenants["alice"].headers, timeout=10, **options
        )
        seen = everything_received(response)
        assert response.status_code >= 400, (path, seen)
        assert ENV_KEY not in seen and ADMIN_KEY not in seen, (path, seen)
        if status in PASSED_ON:  # the message did come through, with the key taken out
            assert "You sent Authorization" in seen and "[redacted]" in seen, (path, seen)


@pytest.mark.parametrize("provider", ["fake", "claude"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_an_in_stream_error_quoting_the_key_never_shows_it(
    tenants: dict[str, TenantKey], gateway: GatewayServer, provider: str, path: str
) -> None:
    response = httpx.post(
        gateway.base_url + path,
        headers=tenants["alice"].headers,
        json=chat(f"{provider}/echo-auth-stream", stream=True),
        timeout=10,
    )
    seen = everything_received(response)
    assert response.status_code == 200 and "error" in seen, seen
    assert ENV_KEY not in seen and ADMIN_KEY not in seen, seen
    assert "You sent Authorization" in seen and "[redacted]" in seen, seen
