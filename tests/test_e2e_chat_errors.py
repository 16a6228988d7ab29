"""End to end: errors on /v1/chat/completions, in OpenAI's shape, and how those calls are billed."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone
from support.chat_e2e import sdk_fixture  # noqa: F401 - a fixture: sdk
from support.e2e import HELLO, UNCHECKED, chat_url, check_error, rows_of, settle

from conftest import GatewayServer, TenantKey, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e


def _unknown_key(tenants: dict[str, TenantKey]) -> str:
    return "tg-" + "x" * 43


def _right_prefix_wrong_secret(tenants: dict[str, TenantKey]) -> str:
    raw = tenants["alice"].raw
    return raw[:12] + ("y" if raw[12] != "y" else "z") * (len(raw) - 12)


def _revoked(tenants: dict[str, TenantKey]) -> str:
    tenants["alice"].key.revoke()
    return tenants["alice"].raw


def _expired(tenants: dict[str, TenantKey]) -> str:
    key = tenants["alice"].key
    key.expires_at = timezone.now() - timedelta(minutes=1)
    key.save(update_fields=["expires_at"])
    return tenants["alice"].raw


def _inactive_tenant(tenants: dict[str, TenantKey]) -> str:
    tenant = tenants["alice"].tenant
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    return tenants["alice"].raw


@pytest.mark.parametrize(
    "make_key",
    [_unknown_key, _right_prefix_wrong_secret, _revoked, _expired, _inactive_tenant],
    ids=["unknown", "wrong-secret", "revoked", "expired", "inactive-tenant"],
)
def test_rejected_key_is_401_and_not_billed(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    make_key: Callable[[dict[str, TenantKey]], str],
) -> None:
    key = make_key(tenants)
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(key).chat.completions.create(model="gpt-test", messages=HELLO, stream=stream)
        check_error(
            caught.value.response, 401, type="invalid_request_error", code="invalid_api_key"
        )
        assert key not in caught.value.response.text

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_revoking_and_expiring_a_key_take_effect_on_the_next_call(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    sdk(alice).chat.completions.create(model="gpt-test", messages=HELLO)
    sdk(bob).chat.completions.create(model="gpt-test", messages=HELLO)
    alice.key.revoke()
    bob.key.expires_at = timezone.now() - timedelta(seconds=1)
    bob.key.save(update_fields=["expires_at"])
    for who in (alice, bob):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(who).chat.completions.create(model="gpt-test", messages=HELLO)
        check_error(caught.value.response, 401, code="invalid_api_key")

    settle(gateway_server, tenants["charlie"])
    assert [row.status_code for row in rows_of(alice)] == [200]
    assert [row.status_code for row in rows_of(bob)] == [200]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwdw==", "tg-notbearer"],
    ids=["absent", "empty", "bearer-only", "basic", "no-scheme"],
)
def test_missing_key_is_401_and_not_billed(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.post(
        chat_url(gateway_server),
        headers=headers,
        json={"model": "gpt-test", "messages": HELLO},
        timeout=10,
    )
    check_error(response, 401, type="invalid_request_error", code="invalid_api_key")

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_unknown_model_is_404_model_not_found(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    for model in ("no-such-model", "nope/gpt-4o"):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as caught:
                sdk(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
            error = check_error(
                caught.value.response,
                404,
                type="invalid_request_error",
                code="model_not_found",
                param="model",
            )
            assert model in error["message"]
            assert caught.value.code == "model_not_found" and caught.value.param == "model"

    settle(gateway_server, tenants["bob"])
    rows = rows_of(alice)
    assert len(rows) == 4
    for row, (model, stream) in zip(
        rows,
        [
            ("no-such-model", False),
            ("no-such-model", True),
            ("nope/gpt-4o", False),
            ("nope/gpt-4o", True),
        ],
        strict=True,
    ):
        assert (row.status_code, row.error_type) == (404, "model_not_found")
        assert row.requested_model == model and row.stream is stream
        assert row.api_key_id == alice.key.pk
        assert row.prompt_tokens is None and row.cost_usd == 0


INVALID_BODIES = [
    # (body bytes, code, param)
    (b'{"model": "gpt-test", "messages": [', "invalid_json", None),
    (b"", "invalid_json", None),
    (b"\xff\xfe not utf-8", "invalid_json", None),
    (b'[{"model": "gpt-test", "messages": []}]', "invalid_json", None),
    (b'"gpt-test"', "invalid_json", None),
    (b"null", "invalid_json", None),
    (b'{"model": "gpt-test"}', "missing_required_parameter", "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_required_parameter", "model"),
    (b'{"model": "gpt-test", "messages": []}', "invalid_value", "messages"),
    (b'{"model": "gpt-test", "messages": "hi"}', "invalid_value", "messages"),
    (
        b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        "invalid_value",
        "stream",
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    INVALID_BODIES,
    ids=[
        "truncated-json",
        "empty",
        "not-utf8",
        "array",
        "string",
        "null",
        "no-messages",
        "no-model",
        "empty-messages",
        "messages-string",
        "stream-not-bool",
    ],
)
def test_invalid_body_is_400_and_billed_as_an_error(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    body: bytes,
    code: str,
    param: str | None,
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        chat_url(gateway_server),
        content=body,
        timeout=10,
        headers={**alice.headers, "content-type": "application/json"},
    )
    check_error(response, 400, type="invalid_request_error", code=code, param=param)

    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    assert (rows[0].status_code, rows[0].error_type) == (400, code)
    assert (rows[0].tenant_id, rows[0].api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_empty_messages_from_the_sdk_is_400_with_param(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(tenants["alice"]).chat.completions.create(model="gpt-test", messages=[])
    check_error(caught.value.response, 400, type="invalid_request_error", param="messages")
    assert caught.value.param == "messages"
    wait_for_rows(1, tenant=tenants["alice"].tenant)
    settle(gateway_server, tenants["bob"])
    rows = rows_of(tenants["alice"])
    assert [(row.status_code, row.error_type) for row in rows] == [(400, "invalid_value")]


UPSTREAM_FAILURES = [
    # (model, stream, status, SDK exception, type, code)
    ("fail-500", False, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-500", True, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-429", False, 429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
    ("fail-429", True, 429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
    ("slow", False, 504, openai.InternalServerError, "upstream_error", "upstream_timeout"),
    ("slow", True, 504, openai.InternalServerError, "upstream_error", "upstream_timeout"),
    ("fail-401", False, 502, openai.InternalServerError, "upstream_error", "upstream_auth_failed"),
    ("fail-401", True, 502, openai.InternalServerError, "upstream_error", "upstream_auth_failed"),
    ("garbage", False, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("garbage", True, 502, openai.InternalServerError, "upstream_error", "upstream_unavailable"),
    ("fail-400", False, 400, openai.BadRequestError, "invalid_request_error", "upstream_rejected"),
    (
        "drop-mid-stream",
        False,
        502,
        openai.InternalServerError,
        "upstream_error",
        "upstream_unavailable",
    ),
]


@pytest.mark.parametrize(
    ("model", "stream", "status", "exception", "type_", "code"),
    UPSTREAM_FAILURES,
    ids=[f"{f[0]}-{'stream' if f[1] else 'plain'}" for f in UPSTREAM_FAILURES],
)
def test_upstream_failure_is_mapped_and_billed_as_an_error(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    model: str,
    stream: bool,
    status: int,
    exception: type[openai.APIStatusError],
    type_: str,
    code: str,
) -> None:
    alice = tenants["alice"]
    started = time.monotonic()
    with pytest.raises(exception) as caught:
        sdk(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started
    response = caught.value.response
    error = check_error(
        response, status, type=type_, code=code, param=None if model != "fail-400" else UNCHECKED
    )
    assert caught.value.status_code == status
    assert "sk-fake" not in response.text and "sk-upstream-secret" not in response.text
    assert alice.raw not in response.text
    if model == "fail-429":
        assert response.headers.get("retry-after") is not None
        assert "Rate limit reached" in error["message"]
    if model == "slow":  # three attempts (the router retries a timeout twice), 1 s each
        assert elapsed < 4.5, "the 1 s upstream timeout must cut each attempt short"
    if model == "fail-400":
        assert "fake bad request" in error["message"], "an upstream 4xx explains itself"

    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_code, row.error_type) == (status, code)
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    assert (row.requested_model, row.provider, row.upstream_model) == (model, "fake", model)
    assert row.stream is stream
    assert row.cost_usd == 0
    # Retried (max_retries = 2) unless the upstream's answer was the caller's or our key's fault.
    assert row.attempts == (1 if code in ("upstream_auth_failed", "upstream_rejected") else 3)
    assert response.headers["x-tollgate-attempts"] == str(row.attempts)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "with-key"])
def test_unknown_url_and_wrong_method_are_json_errors(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey], authenticated: bool
) -> None:
    headers = tenants["alice"].headers if authenticated else {}
    with httpx.Client(base_url=gateway_server.base_url, headers=headers, timeout=10) as client:
        for method, path in (
            ("GET", "/v1/nope"),
            ("POST", "/v1/nope"),
            ("POST", "/v1/chat/completion"),
        ):
            error = check_error(
                client.request(method, path, json={}),
                404,
                type="invalid_request_error",
                code="unknown_url",
            )
            assert path in error["message"]
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(method, "/v1/chat/completions")
            check_error(response, 405, type="invalid_request_error", code="method_not_allowed")

    settle(gateway_server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_wrong_method_405_keeps_the_allow_header(gateway_server: GatewayServer) -> None:
    response = httpx.get(chat_url(gateway_server), timeout=10)
    check_error(response, 405, type="invalid_request_error", code="method_not_allowed")
    assert response.headers.get("allow") == "POST"


def test_sdk_does_not_retry_what_the_gateway_calls_not_retryable(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    with pytest.raises(openai.InternalServerError) as caught:  # SDK defaults: max_retries=2
        sdk(alice, max_retries=2).chat.completions.create(model="fail-401", messages=HELLO)
    check_error(caught.value.response, 502, code="upstream_auth_failed")
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1, "the SDK retried a call that cannot succeed"
    assert caught.value.response.headers.get("x-should-retry") == "false"
