"""What a client written for Anthropic finds, in process with the upstream faked: ``x-api-key``
on every endpoint, Anthropic's model list, ``/v1/messages/count_tokens`` for any model (rate
limited, not billed), ``anthropic-beta`` values filtered per provider, a bad ``anthropic-version``
refused in Anthropic's shape, and ``max_tokens`` capped to a model's output limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.test import AsyncClient

from conftest import TenantKey
from gateway import runtime
from gateway.limits.policy import Policy
from gateway.models import UsageRecord
from gateway.tenants import auth
from gateway.usage.ledger import LedgerWriter
from providers.config import load_config
from providers.factory import ProviderFactory

CONFIG = """
[providers.claude]
type = "anthropic"
base_url = "http://anthropic.test/v1"
anthropic_betas_denied = ["interleaved-thinking-2025-05-14"]

[providers.compatible]
type = "openai"
base_url = "http://compatible.test/v1"

[models."claude-capped"]
provider = "claude"
upstream_model = "claude-x"
max_output_tokens = 1000

[models."chat-model"]
provider = "compatible"
upstream_model = "gpt-x"

[models."mixed"]
deployments = [
  { provider = "claude", upstream_model = "claude-down" },
  { provider = "compatible", upstream_model = "gpt-x", priority = 1 },
]

[router]
backoff_base_seconds = 0
"""

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 7, "output_tokens": 2},
}


class Upstream:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/count_tokens"):
            if orjson.loads(request.content)["model"] == "claude-down":
                return httpx.Response(503, json={"type": "error", "error": {"type": "x"}})
            return httpx.Response(200, json={"input_tokens": 42})
        return httpx.Response(200, json=MESSAGE)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    handler = Upstream()
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    runtime.install(
        runtime.Runtime(
            config=config,
            factory=ProviderFactory(config, transport=lambda _: httpx.MockTransport(handler)),
            ledger=LedgerWriter(tmp_path / "ledger", autostart=False),
            policy=Policy(),
        )
    )
    yield handler
    runtime.install(None)


def anthropic_headers(who: TenantKey, **extra: str) -> dict[str, str]:
    return {"x-api-key": who.raw, "anthropic-version": "2023-06-01", **extra}


async def post(path: str, who: TenantKey, body: dict[str, Any], **headers: str) -> Any:
    return await AsyncClient().post(
        path,
        orjson.dumps(body),
        content_type="application/json",
        headers=anthropic_headers(who, **headers),
    )


def messages_body(model: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


async def test_x_api_key_works_everywhere_and_models_come_in_anthropics_shape(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    alice = tenants["alice"]
    listed = await AsyncClient().get("/v1/models", headers=anthropic_headers(alice))
    assert listed.status_code == 200
    body = listed.json()
    assert {entry["id"] for entry in body["data"]} == {"claude-capped", "chat-model", "mixed"}
    assert all(entry["type"] == "model" and entry["display_name"] for entry in body["data"])
    assert body["has_more"] is False and body["first_id"] == body["data"][0]["id"]
    openai_shape = await AsyncClient().get("/v1/models", headers={"x-api-key": alice.raw})
    assert openai_shape.json()["object"] == "list"  # no anthropic-version: OpenAI's shape


async def test_count_tokens_passes_through_to_anthropic_and_counts_locally_elsewhere(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    alice = tenants["alice"]
    native = await post("/v1/messages/count_tokens", alice, messages_body("claude-capped"))
    assert native.status_code == 200 and native.json() == {"input_tokens": 42}
    sent = orjson.loads(upstream.requests[-1].content)
    assert upstream.requests[-1].url.path == "/v1/messages/count_tokens"
    assert sent["model"] == "claude-x" and "max_tokens" not in sent
    text = "word " * 400
    body = messages_body("chat-model", messages=[{"role": "user", "content": text}])
    local = await post("/v1/messages/count_tokens", alice, body)
    assert local.status_code == 200
    assert 400 <= local.json()["input_tokens"] <= 700  # 2,000 characters: about 500 tokens
    assert len(upstream.requests) == 1  # the local count asks no upstream
    assert not await UsageRecord.objects.acount()  # not billed, no ledger row


async def test_count_tokens_is_rate_limited_like_any_call(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    alice = tenants["alice"]
    alice.key.rpm_limit = 2
    await alice.key.asave()
    auth._key_cache.clear()
    statuses = [
        (await post("/v1/messages/count_tokens", alice, messages_body("chat-model"))).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    refused = await post("/v1/messages/count_tokens", alice, messages_body("chat-model"))
    assert refused.json()["type"] == "error"  # Anthropic's error shape
    assert refused.json()["error"]["type"] == "rate_limit_error"


async def test_betas_reach_an_upstream_only_if_its_provider_accepts_them(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    betas = "interleaved-thinking-2025-05-14, context-management-2025-06-27"
    answer = await post(
        "/v1/messages",
        tenants["alice"],
        messages_body("claude-capped"),
        **{"anthropic-beta": betas},
    )
    assert answer.status_code == 200
    assert upstream.requests[-1].headers["anthropic-beta"] == "context-management-2025-06-27"


async def test_a_version_the_gateway_cannot_send_is_a_400_in_anthropics_shape(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    answer = await post(
        "/v1/messages",
        tenants["alice"],
        messages_body("claude-capped"),
        **{"anthropic-version": "latest"},
    )
    assert answer.status_code == 400
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]
    assert not upstream.requests


async def test_max_tokens_is_capped_to_the_models_output_limit(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    answer = await post(
        "/v1/messages", tenants["alice"], messages_body("claude-capped", max_tokens=32000)
    )
    assert answer.status_code == 200
    assert orjson.loads(upstream.requests[-1].content)["max_tokens"] == 1000


async def test_count_tokens_follows_the_route_an_alias_falls_to(
    tenants: dict[str, TenantKey], upstream: Upstream
) -> None:
    """Regression: an alias whose Anthropic deployment failed was retried on its OpenAI-shaped
    one by asking that provider for Anthropic's count, which it does not have: a 500."""
    answer = await post("/v1/messages/count_tokens", tenants["alice"], messages_body("mixed"))
    assert answer.status_code == 200 and answer.json()["input_tokens"] > 0
    assert answer.headers["x-tollgate-deployment"] == "compatible/gpt-x"
