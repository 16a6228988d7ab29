"""Tenant controls end to end: gateway processes under uvicorn, the fake upstream, the SDK.

Two gateway processes sharing Redis share one rate limit and one budget; a key added or switched
off in the admin reaches a running gateway within TOLLGATE_CREDENTIALS_REFRESH_SECONDS; a gateway
refuses to start when upstream keys are stored and TOLLGATE_SECRET_KEY is missing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from django.db import connection
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import GatewayServer, TenantKey, start_gateway, wait_for_rows
from fake_upstream import run_fake_upstream
from gateway.models import ProviderKey
from gateway.upstream_keys import secrets
from gateway.upstream_keys.credentials import set_secret

pytestmark = pytest.mark.e2e
SECRET_KEY = "test-secret-key-for-tollgate"


@pytest.fixture
def two_gateways(
    redis_url: str,  # noqa: F811 - the fixture
    fake_upstream: str,
    tmp_path: Path,
) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    env = {"REDIS_URL": redis_url}
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(start_gateway(tmp_path / name, fake_upstream, env=env))
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def sdk(server: GatewayServer, who: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=who.raw, max_retries=0)


def chat(client: openai.OpenAI, model: str = "gpt-test", max_tokens: int = 100) -> int:
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x" * 40}], max_tokens=max_tokens
        )
    except openai.RateLimitError as exc:
        assert exc.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        return 429
    return 200


def test_two_processes_share_one_requests_per_minute_limit(
    tenants: dict[str, TenantKey], two_gateways: tuple[GatewayServer, GatewayServer]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    alice.tenant.rpm_limit = 5
    alice.tenant.save()
    clients = [sdk(server, alice) for server in two_gateways]
    statuses = [chat(clients[i % 2]) for i in range(12)]
    assert statuses.count(200) == 5 and statuses.count(429) == 7
    assert statuses[:5] == [200] * 5
    # The refusal carries OpenAI's headers.
    response = clients[0].chat.completions.with_raw_response
    with pytest.raises(openai.RateLimitError) as refused:
        response.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    headers = refused.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert refused.value.response.json()["error"]["type"] == "rate_limit_error"
    # bob, on the same gateways, is not held to alice's limit.
    assert [chat(sdk(two_gateways[i % 2], bob)) for i in range(6)] == [200] * 6


def test_two_processes_share_one_tokens_per_minute_limit(
    tenants: dict[str, TenantKey], two_gateways: tuple[GatewayServer, GatewayServer]
) -> None:
    """Each call is counted at 10 prompt tokens (40 characters) + max_tokens 990 = 1000 at
    admission. 8 concurrent calls to a slow model, spread over both processes: exactly 3 fit in
    3000 while they are in flight. Once they end, the fake upstream's real usage (a few dozen
    tokens) replaces the estimate, and there is room again."""
    alice = tenants["alice"]
    alice.key.tpm_limit = 3000
    alice.key.save()
    clients = [sdk(server, alice) for server in two_gateways]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda i: chat(clients[i % 2], model="slow", max_tokens=990), range(8))
        )
    assert statuses.count(200) == 3 and statuses.count(429) == 5
    raw = clients[1].chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "x" * 40}], max_tokens=990
    )
    assert raw.headers["x-ratelimit-limit-tokens"] == "3000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 2000


def echoed_key(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "who am I"}]
    )
    return str(json.loads(reply.choices[0].message.content or "{}")["headers"]["authorization"])


def test_a_key_rotated_in_the_admin_reaches_a_running_gateway(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path, settings
) -> None:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    server = start_gateway(
        tmp_path,
        fake_upstream,
        env={"TOLLGATE_SECRET_KEY": SECRET_KEY, "TOLLGATE_CREDENTIALS_REFRESH_SECONDS": "0.2"},
    )
    try:
        client = sdk(server, tenants["charlie"])
        assert echoed_key(client) == "Bearer sk-upstream-secret"  # api_key_env: the fallback
        key = ProviderKey(provider="fake", label="rotated")
        set_secret(key, "sk-rotated-key-0001")
        key.save()
        assert wait_for_key(client, "Bearer sk-rotated-key-0001")
        key.is_active = False
        key.save()
        assert wait_for_key(client, "Bearer sk-upstream-secret")
    finally:
        server.stop()


def wait_for_key(client: openai.OpenAI, expected: str, bound: float = 3.0) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if echoed_key(client) == expected:
            return True
        time.sleep(0.1)
    return False


def test_a_gateway_refuses_to_start_without_the_secret_key(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path, settings
) -> None:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    key = ProviderKey(provider="fake", label="main")
    set_secret(key, "sk-stored-0001")
    key.save()
    with pytest.raises(RuntimeError, match="TOLLGATE_SECRET_KEY is not set"):
        start_gateway(tmp_path, fake_upstream, env={"TOLLGATE_SECRET_KEY": ""})
    (tmp_path / "wrong").mkdir()
    with pytest.raises(RuntimeError, match="TOLLGATE_SECRET_KEY does not decrypt"):
        start_gateway(tmp_path / "wrong", fake_upstream, env={"TOLLGATE_SECRET_KEY": "other"})


def test_the_secret_is_not_readable_in_the_database(
    tenants: dict[str, TenantKey], settings
) -> None:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    key = ProviderKey(provider="fake", label="main")
    set_secret(key, "sk-plaintext-never-stored-9876")
    key.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM gateway_providerkey")
        rows = cursor.fetchall()
    dump = repr(rows)
    assert "sk-plaintext-never-stored" not in dump and "9876" in dump  # last4 only
    assert secrets.decrypt(key.secret_encrypted) == "sk-plaintext-never-stored-9876"


def test_two_processes_share_one_budget_under_200_concurrent_calls(
    tenants: dict[str, TenantKey],
    redis_url: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Each call reserves its worst case: 10 prompt tokens at $1/Mtok + max_tokens 990 at $2/Mtok
    = $0.00199. The budget leaves room for exactly 7 reservations (and less than an 8th). The
    upstream holds every admitted call for 8 s, so no reservation is settled (and no room freed)
    while the 200 calls, spread over two processes sharing Redis, are decided: exactly 7 go
    upstream, 193 are refused with insufficient_quota, and what is spent stays under the cap."""
    alice = tenants["alice"]
    cap = Decimal("0.00199") * 7 + Decimal("0.001")
    alice.tenant.budget_usd, alice.tenant.budget_period = cap, "total"
    alice.tenant.save()
    with run_fake_upstream(slow_seconds=8) as upstream:
        servers = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                servers.append(
                    start_gateway(tmp_path / name, upstream, env={"REDIS_URL": redis_url})
                )
            clients = [sdk(server, alice) for server in servers]

            def budgeted_chat(i: int) -> str:
                try:
                    clients[i % 2].chat.completions.create(
                        model="slow",
                        messages=[{"role": "user", "content": "x" * 40}],
                        max_tokens=990,
                    )
                except openai.RateLimitError as exc:
                    return str(exc.body["code"])  # type: ignore[index]
                return "ok"

            with ThreadPoolExecutor(200) as pool:
                outcomes = list(pool.map(budgeted_chat, range(200)))
        finally:
            for server in servers:
                server.stop()
    assert outcomes.count("ok") == 7
    assert outcomes.count("insufficient_quota") == 193
    rows = wait_for_rows(200, tenant=alice.tenant)
    assert len(rows) == 200
    assert sum(row.cost_usd for row in rows) <= cap
    assert sorted({row.status_code for row in rows}) == [200, 429]
