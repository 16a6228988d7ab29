"""The admin's upstream health page: each deployment and upstream key, as the router sees it."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client

from gateway.models import ProviderKey
from gateway.routing.router import key_target
from gateway.upstream_keys.credentials import set_secret


def test_the_health_page_shows_what_the_router_sees(db: None, gateway_runtime, settings) -> None:
    settings.TOLLGATE_SECRET_KEY = "a-test-secret-key-for-the-health-page"
    current = gateway_runtime(lambda request: None)
    key = ProviderKey(provider="fake", label="primary", weight=1)
    set_secret(key, "sk-live-123456")
    key.save()
    health = current.router.health
    for _ in range(current.config.router.cooldown_failures):
        health.failed("fake/fake-gpt", "upstream_unavailable")
    health.failed(key_target("fake", "sk-live-123456"), "upstream_auth_failed", 30.0)

    client = Client()
    User.objects.create_user("viewer", password="pw-123456", is_staff=True)
    client.login(username="viewer", password="pw-123456")
    assert client.get("/admin/routing/health/").status_code == 403  # needs the keys' permission

    User.objects.create_superuser("root", "root@example.com", "pw-123456")
    client.login(username="root", password="pw-123456")
    page = client.get("/admin/routing/health/").content.decode()
    deployments = page[page.index('id="deployments"') : page.index('id="upstream-keys"')]
    assert "fake/fake-gpt" in deployments and "cooling" in deployments
    assert "upstream_unavailable" in deployments
    assert "fake/echo" in deployments  # never failed: healthy
    keys = page[page.index('id="upstream-keys"') :]
    assert "fake: primary" in keys and "…3456" in keys and "cooling" in keys
    assert "sk-live-123456" not in page
    assert "Upstream health" in client.get("/admin/").content.decode()
