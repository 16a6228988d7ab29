"""The /v1 API in process, with the upstream faked at the HTTP boundary."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import orjson
import pytest
from django.test import AsyncClient

from conftest import TenantKey, ledger_rows
from gateway.models import UsageRecord
from gateway.tenants import auth

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-gpt",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
}
HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(COMPLETION))


async def post(client: AsyncClient, who: TenantKey | None, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"authorization": f"Bearer {who.raw}"} if who else {}
    return await client.post(
        "/v1/chat/completions", content, content_type="application/json", headers=headers
    )


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


async def test_a_call_is_answered_and_recorded(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    current = gateway_runtime(ok)
    response = await post(client, tenants["bob"], HELLO)
    assert response.status_code == 200
    assert response.content == orjson.dumps(COMPLETION)  # the upstream's bytes, unchanged
    rows = await ledger_rows_async(current)
    assert len(rows) == 1
    row = rows[0]
    assert (row.tenant_id, row.api_key_id) == (tenants["bob"].tenant.pk, tenants["bob"].key.pk)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (10, 20, 30)
    assert row.cost_usd == Decimal("0.00005")  # 10 * 1 + 20 * 2 micro-USD
    assert row.request_id == response.headers["x-request-id"]
    # time-ordered (providers.ids), so that the ledger's unique index grows at one end
    assert abs(int(row.request_id.removeprefix("req_")[:12], 16) / 1000 - time.time()) < 60
    assert (row.provider, row.upstream_model, row.status_code) == ("fake", "fake-gpt", 200)


async def ledger_rows_async(current) -> list[UsageRecord]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(ledger_rows)(current)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
        ({"model": "gpt-test"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-test", "messages": []}, "messages", "invalid_value"),
        (
            {"model": "gpt-test", "messages": [{"content": "x"}]},
            "messages.0.role",
            "missing_required_parameter",
        ),
        ({"model": 5, "messages": [{"role": "user"}]}, "model", "invalid_value"),
        ({**HELLO, "stream": "yes"}, "stream", "invalid_value"),
        ({**HELLO, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ],
)
async def test_invalid_bodies_are_400_and_recorded(
    tenants: dict[str, TenantKey],
    client: AsyncClient,
    gateway_runtime,
    body: object,
    param: str | None,
    code: str,
) -> None:
    current = gateway_runtime(ok)
    response = await post(client, tenants["alice"], body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    rows = await ledger_rows_async(current)
    assert [(r.status_code, r.error_type) for r in rows] == [(400, code)]
    named = body.get("model") if isinstance(body, dict) else None
    assert rows[0].requested_model == (named if isinstance(named, str) else "")


async def test_unknown_model_is_404_and_never_reaches_the_upstream(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    calls: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return ok(request)

    current = gateway_runtime(upstream)
    response = await post(client, tenants["alice"], {**HELLO, "model": "gpt-9"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert calls == []
    rows = await ledger_rows_async(current)
    assert [(r.requested_model, r.status_code) for r in rows] == [("gpt-9", 404)]


async def test_bad_keys_are_401_and_write_nothing(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    current = gateway_runtime(ok)
    for headers in (
        {},
        {"authorization": "Bearer tg-nothing-like-a-key"},
        {"authorization": "Basic abc"},
        {"authorization": "Bearer " + tenants["alice"].raw + "x"},
    ):
        response = await client.post(
            "/v1/chat/completions",
            orjson.dumps(HELLO),
            content_type="application/json",
            headers=headers,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert await ledger_rows_async(current) == []


async def test_revocation_takes_effect_in_this_process_at_once(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    gateway_runtime(ok)
    alice = tenants["alice"]
    assert (await post(client, alice, HELLO)).status_code == 200
    await alice.key.__class__.objects.filter(pk=alice.key.pk).aupdate(
        revoked_at="2020-01-01T00:00:00Z"
    )
    # Another process only learns of it when its cache entry expires...
    assert (await post(client, alice, HELLO)).status_code == 200
    # ...this one forgets the key when the admin revokes it.
    auth.forget(alice.key.prefix)
    assert (await post(client, alice, HELLO)).status_code == 401


async def test_deactivated_tenant_is_refused(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    gateway_runtime(ok)
    charlie = tenants["charlie"]
    charlie.tenant.is_active = False
    await charlie.tenant.asave()
    auth.forget(charlie.key.prefix)
    assert (await post(client, charlie, HELLO)).status_code == 401


async def test_usage_chunk_is_hidden_unless_asked_for(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    def chunk(choices: list[object], usage: object = None) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": choices,
                    "usage": usage,
                }
            )
            + b"\n\n"
        )

    def upstream(request: httpx.Request) -> httpx.Response:
        body = (
            chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}])
            + chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            + chunk([], {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
            + b"data: [DONE]\n\n"
        )
        return httpx.Response(200, content=body)

    current = gateway_runtime(upstream)
    for include_usage in (False, True):
        body = {**HELLO, "stream": True, "stream_options": {"include_usage": include_usage}}
        response = await post(client, tenants["alice"], body)
        assert response["content-type"] == "text/event-stream"
        text = b"".join([part async for part in response.streaming_content]).decode()
        events = [line[6:] for line in text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        usage_events = [e for e in events[:-1] if orjson.loads(e)["choices"] == []]
        assert len(usage_events) == (1 if include_usage else 0)
    rows = await ledger_rows_async(current)
    assert [(r.prompt_tokens, r.completion_tokens, r.stream) for r in rows] == [(3, 1, True)] * 2


async def test_models_lists_the_configured_aliases(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime
) -> None:
    gateway_runtime(ok)
    response = await client.get("/v1/models", headers=tenants["alice"].headers)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert "gpt-test" in [m["id"] for m in body["data"]]
    assert all(
        set(m) == {"id", "object", "created", "owned_by", "operations"} for m in body["data"]
    )
    operations = {m["id"]: m["operations"] for m in body["data"]}
    assert operations["gpt-test"] == ["chat"]  # the default
    assert operations["embed-test"] == ["embeddings"]
    assert operations["echo"] == ["chat", "embeddings", "images", "speech", "transcription"]
    single = await client.get("/v1/models/gpt-test", headers=tenants["alice"].headers)
    assert single.json()["id"] == "gpt-test"
    assert single.json()["operations"] == ["chat"]
    by_upstream = await client.get("/v1/models/fake/fake-whisper", headers=tenants["alice"].headers)
    assert by_upstream.json()["operations"] == ["transcription"]
    unlisted = await client.get("/v1/models/fake/anything", headers=tenants["alice"].headers)
    assert len(unlisted.json()["operations"]) == 5, "passthrough models may try anything"
    missing = await client.get("/v1/models/nope", headers=tenants["alice"].headers)
    assert missing.status_code == 404
    assert (await client.get("/v1/models")).status_code == 401


async def test_a_provider_without_its_key_says_which_variable_to_set(
    tenants: dict[str, TenantKey], client: AsyncClient, gateway_runtime, monkeypatch
) -> None:
    """Regression: with no upstream key, the demo's curl got a bare 502 "could not be reached"."""
    calls: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return ok(request)

    current = gateway_runtime(upstream)  # providers are made on first use: after this
    monkeypatch.delenv("FAKE_UPSTREAM_KEY")
    response = await post(client, tenants["alice"], HELLO)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "upstream_key_missing"
    assert error["message"].startswith("FAKE_UPSTREAM_KEY is not set")
    assert response.headers["x-tollgate-attempts"] == "1"  # not retried: nothing would change
    assert not calls  # nothing was sent without a key
    rows = await ledger_rows_async(current)
    assert [(row.status_code, row.error_type) for row in rows] == [(503, "upstream_key_missing")]


async def test_the_root_of_the_site_leads_to_the_admin(client: AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 302 and response.headers["location"] == "/admin/"
