"""Tenant controls from the admin and the command line: write-only upstream keys, limits."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import Client

from conftest import TenantKey
from gateway.models import ApiKey, ProviderKey, Tenant
from gateway.upstream_keys import secrets
from gateway.upstream_keys.credentials import CredentialPool

SECRET_KEY = "test-secret-key-for-tollgate"


@pytest.fixture
def admin_client(db: None, settings, gateway_runtime) -> Client:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    gateway_runtime(lambda request: None)  # config.toml's providers: fake, fake-anthropic
    user = User.objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_stores_a_key_encrypted_and_never_shows_it(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/gateway/providerkey/add/",
        {
            "provider": "fake",
            "label": "main",
            "secret": "sk-admin-secret-4321",
            "weight": 3,
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content
    key = ProviderKey.objects.get()
    assert key.last4 == "4321" and "sk-admin-secret" not in key.secret_encrypted
    assert secrets.decrypt(key.secret_encrypted) == "sk-admin-secret-4321"
    listing = admin_client.get("/admin/gateway/providerkey/").content.decode()
    page = admin_client.get(f"/admin/gateway/providerkey/{key.pk}/change/").content.decode()
    for html in (listing, page):
        assert "sk-admin-secret" not in html and "4321" in html
    # Blank on edit keeps the secret; a new weight is saved.
    admin_client.post(
        f"/admin/gateway/providerkey/{key.pk}/change/",
        {"provider": "fake", "label": "main", "secret": "", "weight": 5, "is_active": "on"},
    )
    key.refresh_from_db()
    assert key.weight == 5 and secrets.decrypt(key.secret_encrypted) == "sk-admin-secret-4321"


def test_the_admin_refuses_an_unknown_provider(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/gateway/providerkey/add/",
        {"provider": "nope", "label": "x", "secret": "sk-1", "weight": 1},
    )
    assert response.status_code == 200 and not ProviderKey.objects.exists()


def test_keys_are_spread_by_weight(db: None, settings) -> None:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    for label, secret, weight in (("a", "sk-a", 3), ("b", "sk-b", 1), ("c", "sk-c", 0)):
        key = ProviderKey(provider="fake", label=label, weight=weight)
        key.secret_encrypted, key.last4 = secrets.encrypt(secret), secret[-4:]
        key.save()
    ProviderKey.objects.create(
        provider="fake", label="off", secret_encrypted=secrets.encrypt("sk-off"), is_active=False
    )
    pool = CredentialPool()
    pool.load()
    picks = [pool.get("fake") for _ in range(4000)]
    assert set(picks) == {"sk-a", "sk-b"}
    assert 0.70 < picks.count("sk-a") / len(picks) < 0.80
    assert pool.get("fake-anthropic") is None  # no key: config.toml's api_key_env


def test_check_names_the_missing_or_wrong_secret_key(db: None, settings) -> None:
    settings.TOLLGATE_SECRET_KEY = SECRET_KEY
    ProviderKey.objects.create(
        provider="fake", label="main", secret_encrypted=secrets.encrypt("sk-1"), last4="sk-1"
    )
    call_command("check")
    settings.TOLLGATE_SECRET_KEY = ""
    with pytest.raises(SystemCheckError, match="TOLLGATE_SECRET_KEY is not set"):
        call_command("check")
    settings.TOLLGATE_SECRET_KEY = "another"
    with pytest.raises(SystemCheckError, match="TOLLGATE_SECRET_KEY does not decrypt"):
        call_command("check")


def test_add_provider_key_reads_the_secret_from_stdin(admin_client: Client) -> None:
    out = io.StringIO()
    call_command(
        "add_provider_key", "--provider", "fake", "--label", "ci", "--weight", "2",
        stdin=io.StringIO("sk-from-stdin-7777\n"), stdout=out,
    )  # fmt: skip
    key = ProviderKey.objects.get(label="ci")
    assert key.weight == 2 and key.last4 == "7777"
    assert secrets.decrypt(key.secret_encrypted) == "sk-from-stdin-7777"
    assert "sk-from-stdin" not in out.getvalue()
    with pytest.raises(CommandError, match="unknown provider 'nope'"):
        call_command(
            "add_provider_key", "--provider", "nope", "--label", "x", stdin=io.StringIO("sk")
        )


def test_set_limits_sets_and_clears(tenants: dict[str, TenantKey]) -> None:
    alice = tenants["alice"]
    call_command(
        "set_limits", "--tenant", "alice", "--models", "gpt-test, echo", "--rpm", "60",
        "--tpm", "1000", "--budget-usd", "12.5", "--period", "daily", stdout=io.StringIO(),
    )  # fmt: skip
    tenant = Tenant.objects.get(name="alice")
    assert tenant.allowed_models == "gpt-test,echo"
    assert (tenant.rpm_limit, tenant.tpm_limit) == (60, 1000)
    assert (tenant.budget_usd, tenant.budget_period) == (Decimal("12.5"), "daily")
    call_command(
        "set_limits", "--tenant", "alice", "--key-prefix", alice.key.prefix, "--rpm", "5",
        stdout=io.StringIO(),
    )  # fmt: skip
    assert ApiKey.objects.get(pk=alice.key.pk).rpm_limit == 5
    call_command(
        "set_limits", "--tenant", "alice", "--rpm", "", "--models", "", "--budget-usd", "",
        stdout=io.StringIO(),
    )  # fmt: skip
    tenant.refresh_from_db()
    assert (tenant.rpm_limit, tenant.allowed_models, tenant.budget_usd) == (None, "", None)
    assert tenant.tpm_limit == 1000  # untouched
    # No tenant can reach another's key by its prefix.
    with pytest.raises(CommandError, match="has no key"):
        call_command(
            "set_limits", "--tenant", "bob", "--key-prefix", alice.key.prefix, "--rpm", "1"
        )
    assert Tenant.objects.get(name="bob").rpm_limit is None


async def test_each_call_takes_its_key_from_the_credential_source(gateway_runtime) -> None:
    """Bearer for OpenAI-compatible upstreams, x-api-key for Anthropic; None: api_key_env."""
    import httpx
    import orjson

    from providers.base import ChatRequest
    from providers.factory import ProviderFactory

    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/messages"):
            return httpx.Response(
                200,
                content=orjson.dumps(
                    {
                        "id": "m",
                        "type": "message",
                        "role": "assistant",
                        "model": "c",
                        "content": [{"type": "text", "text": "hi"}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 1, "output_tokens": 1},
                    }
                ),
            )
        return httpx.Response(
            200, content=orjson.dumps({"choices": [], "usage": {"prompt_tokens": 1}})
        )

    config = gateway_runtime(upstream).config
    keys = {"fake": "sk-pool-openai", "fake-anthropic": "sk-pool-anthropic"}
    factory = ProviderFactory(
        config, transport=lambda _: httpx.MockTransport(upstream), credentials=keys.get
    )
    request = ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await factory.get("fake").chat(request, "m")
    await factory.get("fake-anthropic").chat(request, "c")
    keys.clear()
    await factory.get("fake").chat(request, "m")
    await factory.aclose()
    assert seen[0].headers["authorization"] == "Bearer sk-pool-openai"
    assert seen[1].headers["x-api-key"] == "sk-pool-anthropic"
    assert "authorization" not in seen[1].headers
    assert seen[2].headers["authorization"] == "Bearer sk-upstream-secret"
