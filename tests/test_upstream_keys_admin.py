"""The provider keys page: each key's last success and failure at a glance, and a test that lists
the upstream's models with the key (against the fake upstream; no internet)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client

from conftest import free_port, write_config
from gateway import runtime
from gateway.models import ProviderKey
from gateway.routing.router import key_target
from gateway.upstream_keys.credentials import set_secret
from gateway.upstream_keys.probe import probe
from gateway.usage.ledger import LedgerWriter
from providers.config import load_config
from providers.factory import ProviderFactory
from providers.redaction import REDACTED

SECRET = "sk-admin-test-key-5678"


@pytest.fixture
def on_fake_upstream(
    db: None, fake_upstream: str, tmp_path: Path, settings
) -> Iterator[runtime.Runtime]:
    """A runtime whose provider ``fake`` is the fake upstream, and ``dead`` a closed port."""
    settings.TOLLGATE_SECRET_KEY = "a-test-secret-key-for-the-key-tests"
    path = write_config(tmp_path / "config.toml", fake_upstream)
    dead = f'\n[providers.dead]\ntype = "openai"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
    path.write_text(path.read_text() + dead)
    config = load_config(path)
    current = runtime.Runtime(
        config=config,
        factory=ProviderFactory(config),
        ledger=LedgerWriter(tmp_path / "ledger", autostart=False),
    )
    runtime.install(current)
    yield current
    runtime.install(None)


def stored_key(provider: str, label: str) -> ProviderKey:
    key = ProviderKey(provider=provider, label=label)
    set_secret(key, SECRET)
    key.save()
    return key


@pytest.fixture
def admin_client(on_fake_upstream: runtime.Runtime) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))
    return client


def shown(response: object) -> list[str]:
    return [str(message) for message in response.context["messages"]]  # type: ignore[attr-defined]


def test_the_test_action_lists_the_models_of_each_selected_key(admin_client: Client) -> None:
    good, dead = stored_key("fake", "primary"), stored_key("dead", "gone")
    response = admin_client.post(
        "/admin/gateway/providerkey/",
        {"action": "test_keys", "_selected_action": [good.pk, dead.pk]},
        follow=True,
    )
    said = shown(response)
    assert "Test of fake: primary (…5678): OK, 3 models listed." in said
    failure = next(message for message in said if message.startswith("Test of dead: gone"))
    assert "could not be reached (ConnectError)" in failure
    good.refresh_from_db()
    dead.refresh_from_db()
    assert good.test_passed_at is not None and good.test_failed_at is None
    assert dead.test_failed_at is not None and "could not be reached" in dead.test_error
    listing = response.content.decode()
    good_row = listing[listing.index(">primary<") :].split("</tr>")[0]
    assert "(test)" in good_row and "none seen" in good_row
    dead_row = listing[listing.index(">gone<") :].split("</tr>")[0]
    assert "none seen" in dead_row and "could not be reached" in dead_row
    assert SECRET not in listing


def test_the_key_pages_test_button_posts_and_reports(admin_client: Client) -> None:
    key = stored_key("fake", "primary")
    page = admin_client.get(f"/admin/gateway/providerkey/{key.pk}/change/").content.decode()
    assert f'action="/admin/gateway/providerkey/{key.pk}/test/"' in page
    assert admin_client.get(f"/admin/gateway/providerkey/{key.pk}/test/").status_code == 403
    response = admin_client.post(f"/admin/gateway/providerkey/{key.pk}/test/", follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/gateway/providerkey/{key.pk}/change/"
    assert shown(response) == ["Test of fake: primary (…5678): OK, 3 models listed."]


def test_an_upstreams_refusal_is_reported_with_its_message_redacted(
    on_fake_upstream: runtime.Runtime,
) -> None:
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        sent = request.headers.get("authorization") or request.headers["x-api-key"]
        said = f"Incorrect API key provided: {sent}"
        return httpx.Response(401, json={"error": {"message": said}})

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        result = probe("fake", SECRET, client)
        anthropic = probe("fake-anthropic", SECRET, client)
    assert not result.passed
    assert result.summary == f"HTTP 401: Incorrect API key provided: Bearer {REDACTED}"
    assert seen[0].url.path == "/v1/models" and seen[0].method == "GET"
    assert seen[1].headers["x-api-key"] == SECRET and "anthropic-version" in seen[1].headers
    assert anthropic.summary == f"HTTP 401: Incorrect API key provided: {REDACTED}"


def test_the_last_failure_is_the_later_of_a_test_and_the_routers(
    admin_client: Client, on_fake_upstream: runtime.Runtime
) -> None:
    key = stored_key("fake", "primary")
    health = on_fake_upstream.router.health
    health.failed(key_target("fake", SECRET), "upstream_auth_failed", 60.0)
    listing = admin_client.get("/admin/gateway/providerkey/").content.decode()
    row = listing[listing.index(">primary<") :].split("</tr>")[0]
    assert "(live)" in row and "upstream_auth_failed" in row and "cooling down until" in row
    ProviderKey.objects.filter(pk=key.pk).update(test_failed_at="2000-01-01T00:00:00Z")
    row = admin_client.get("/admin/gateway/providerkey/").content.decode()
    row = row[row.index(">primary<") :].split("</tr>")[0]
    assert "(live)" in row, "an older failed test does not hide the router's newer failure"
    assert "Upstream health" in listing and "/admin/routing/health/" in listing


def test_the_last_success_is_the_later_of_a_test_and_a_calls(
    admin_client: Client, on_fake_upstream: runtime.Runtime
) -> None:
    key = stored_key("fake", "primary")

    def row() -> str:
        listing = admin_client.get("/admin/gateway/providerkey/").content.decode()
        return listing[listing.index(">primary<") :].split("</tr>")[0]

    assert "none seen" in row()
    ProviderKey.objects.filter(pk=key.pk).update(test_passed_at="2000-01-01T00:00:00Z")
    assert "(test)" in row()
    on_fake_upstream.router.key_answered_at[SECRET] = time.time()  # a call got an answer
    assert "(live)" in row(), "a call's newer answer is the last success"


def test_the_key_list_decrypts_each_key_once_for_its_three_health_columns(
    admin_client: Client, on_fake_upstream: runtime.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.routing import views

    stored_key("fake", "primary")
    stored_key("fake", "secondary")
    decrypted: list[str] = []
    decrypt = views.secrets.decrypt

    def counting(secret: bytes, label: str) -> str:
        decrypted.append(label)
        return decrypt(secret, label)

    monkeypatch.setattr(views.secrets, "decrypt", counting)
    listing = admin_client.get("/admin/gateway/providerkey/").content.decode()
    assert ">primary<" in listing and ">secondary<" in listing
    assert sorted(decrypted) == ["primary", "secondary"]
