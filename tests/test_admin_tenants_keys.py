"""The admin's tenants and keys: spend and budget use from known ledger rows, the last call,
active keys, one query per page, the tenant's page, a new key shown once, and revoking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from support.rows import call

from conftest import TenantKey
from gateway.models import ApiKey, Tenant
from gateway.usage.ledger_rows import insert_rows
from gateway.usage.spend import budget_use, keys_with_figures, tenants_with_figures


@pytest.fixture
def admin_client(tenants: dict[str, TenantKey]) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))
    return client


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def spending(tenants: dict[str, TenantKey]) -> dict[str, Any]:
    """Known ledger rows: alice this month (one today), last month and long ago; bob today;
    charlie nothing. Returns the times used, for the expected figures."""
    now = datetime.now(UTC).replace(microsecond=0)
    first = month_start(now)
    last_month = first - timedelta(days=3)
    alice, bob = tenants["alice"], tenants["bob"]
    rows = [
        call(alice, first, cost_usd=Decimal("0.25")),
        call(alice, now - timedelta(seconds=5), cost_usd=Decimal("0.50")),  # today, the newest
        call(alice, last_month, cost_usd=Decimal("4")),
        call(alice, first - timedelta(days=400), cost_usd=Decimal("10")),
        call(bob, now - timedelta(seconds=60), model="image-test", cost_usd=Decimal("0.08")),
    ]
    insert_rows(rows)
    return {"now": now, "first": first}


def test_spend_and_budget_use_come_from_the_ledgers_rows(
    tenants: dict[str, TenantKey], spending: dict[str, Any]
) -> None:
    first, now = spending["first"], spending["now"]
    today_alice = Decimal("0.75") if first.date() == now.date() else Decimal("0.50")
    Tenant.objects.filter(name="alice").update(budget_usd=Decimal("2"), budget_period="monthly")
    Tenant.objects.filter(name="bob").update(budget_usd=Decimal("0.10"), budget_period="daily")
    Tenant.objects.filter(name="charlie").update(budget_usd=Decimal("5"), budget_period="total")
    figures = {t.name: t for t in tenants_with_figures(Tenant.objects.all(), timezone.now())}

    alice, bob, charlie = figures["alice"], figures["bob"], figures["charlie"]
    assert alice.month_spend == Decimal("0.75")
    assert alice.budget_spend == Decimal("0.75") and budget_use(alice) == pytest.approx(0.375)
    assert bob.month_spend == Decimal("0.08") and bob.budget_spend == Decimal("0.08")
    assert budget_use(bob) == pytest.approx(0.8)
    assert (charlie.month_spend, charlie.budget_spend, charlie.last_call) == (0, 0, None)
    assert alice.last_call == now - timedelta(seconds=5)
    assert bob.last_call == now - timedelta(seconds=60)

    # A daily budget counts today only; an all-time one every day there is.
    Tenant.objects.filter(name="alice").update(budget_period="daily")
    alice = tenants_with_figures(Tenant.objects.filter(name="alice"), timezone.now()).get()
    assert alice.budget_spend == today_alice
    Tenant.objects.filter(name="alice").update(budget_period="total", budget_usd=None)
    alice = tenants_with_figures(Tenant.objects.filter(name="alice"), timezone.now()).get()
    assert alice.budget_spend is None and budget_use(alice) is None
    Tenant.objects.filter(name="alice").update(budget_usd=Decimal("29.50"))
    alice = tenants_with_figures(Tenant.objects.filter(name="alice"), timezone.now()).get()
    assert alice.budget_spend == Decimal("14.75") and budget_use(alice) == pytest.approx(0.5)


def test_active_keys_leave_out_revoked_and_expired_ones(tenants: dict[str, TenantKey]) -> None:
    alice = tenants["alice"].tenant
    ApiKey.objects.issue(alice, name="spare")
    ApiKey.objects.issue(alice, name="old", expires_at=timezone.now() - timedelta(days=1))
    ApiKey.objects.issue(alice, name="later", expires_at=timezone.now() + timedelta(days=1))
    ApiKey.objects.issue(alice, name="gone")[0].revoke()
    counts = dict(
        tenants_with_figures(Tenant.objects.all(), timezone.now()).values_list(
            "name", "active_keys"
        )
    )
    assert counts == {"alice": 3, "bob": 1, "charlie": 1}


def test_a_keys_spend_is_its_own(tenants: dict[str, TenantKey], spending: dict[str, Any]) -> None:
    alice = tenants["alice"]
    other, _ = ApiKey.objects.issue(alice.tenant, name="other")
    insert_rows([call(TenantKey(alice.tenant, other, ""), spending["now"], cost_usd=Decimal("1"))])
    keys = {k.pk: k for k in keys_with_figures(ApiKey.objects.all(), timezone.now())}
    assert keys[alice.key.pk].month_spend == Decimal("0.75")
    assert keys[other.pk].month_spend == Decimal("1")
    assert keys[other.pk].last_call == spending["now"]
    assert keys[tenants["charlie"].key.pk].last_call is None


def test_the_tenant_list_shows_spend_budget_keys_and_last_call_in_one_query(
    admin_client: Client, tenants: dict[str, TenantKey], spending: dict[str, Any]
) -> None:
    Tenant.objects.filter(name="alice").update(budget_usd=Decimal("1"))
    html = admin_client.get("/admin/gateway/tenant/").content.decode()
    alice_row = html[html.index(">alice<") :].split("</tr>")[0]
    assert "$0.75" in alice_row and "$1.00 monthly" in alice_row
    assert "75%" in alice_row and 'style="width: 75%"' in alice_row
    assert "just now" in alice_row or "minute" in alice_row
    charlie_row = html[html.index(">charlie<") :].split("</tr>")[0]
    assert "$0<" in charlie_row and "no budget" in charlie_row and "never" in charlie_row

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get("/admin/gateway/tenant/").status_code == 200
        return len(captured)

    before = queries()
    for n in range(10):
        tenant = Tenant.objects.create(name=f"extra-{n}", budget_usd=Decimal(1))
        ApiKey.objects.issue(tenant)
    assert queries() == before, "the figures are part of the page's query, not one per row"


def test_the_key_list_shows_last_use_and_this_months_spend(
    admin_client: Client, tenants: dict[str, TenantKey], spending: dict[str, Any]
) -> None:
    html = admin_client.get("/admin/gateway/apikey/").content.decode()
    alice_row = html[html.index(tenants["alice"].key.prefix) :].split("</tr>")[0]
    assert "$0.75" in alice_row and "active" in alice_row
    charlie_row = html[html.index(tenants["charlie"].key.prefix) :].split("</tr>")[0]
    assert "never" in charlie_row


def test_the_tenant_page_shows_name_limits_keys_then_this_months_usage(
    admin_client: Client, tenants: dict[str, TenantKey], spending: dict[str, Any]
) -> None:
    alice = tenants["alice"]
    page = admin_client.get(f"/admin/gateway/tenant/{alice.tenant.pk}/change/")
    html = page.content.decode()
    order = [html.index(mark) for mark in ('id="id_name"', "Limits", "API keys", "month-usage")]
    assert order == sorted(order)
    usage = page.context["month"]
    assert usage["totals"]["calls"] == 2 and usage["totals"]["cost_usd"] == Decimal("0.75")
    assert f"tenant={alice.tenant.pk}" in usage["report_url"]
    report = admin_client.get(usage["report_url"])
    assert report.context["totals"]["calls"] == 2
    assert alice.key.prefix in html and f"?tenant={alice.tenant.pk}" in html  # issue a key


def test_a_new_key_is_shown_once_in_a_box_with_a_copy_button(admin_client: Client) -> None:
    tenant = Tenant.objects.create(name="erin")
    response = admin_client.post("/admin/gateway/apikey/add/", {"tenant": tenant.pk, "name": "ci"})
    assert response.status_code == 200, "answered on the spot: nothing kept to show it again"
    key = ApiKey.objects.get(tenant=tenant)
    raw = response.context["raw_key"]
    assert key.matches(raw)
    html = response.content.decode()
    assert f'id="new-key" value="{raw}"' in html and 'id="copy-key"' in html
    assert "no-store" in response["Cache-Control"]
    assert not list(response.context["messages"]), "the key is in no message (nor cookie)"
    for page in (f"/admin/gateway/apikey/{key.pk}/change/", "/admin/gateway/apikey/"):
        assert raw not in admin_client.get(page).content.decode()


def test_a_key_is_revoked_from_its_page_after_a_confirmation(
    admin_client: Client, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    page = admin_client.get(f"/admin/gateway/apikey/{alice.key.pk}/change/").content.decode()
    revoke_url = f"/admin/gateway/apikey/{alice.key.pk}/revoke/"
    assert f'href="{revoke_url}"' in page
    confirmation = admin_client.get(revoke_url)
    assert confirmation.status_code == 200 and "Yes, revoke it" in confirmation.content.decode()
    alice.key.refresh_from_db()
    assert alice.key.revoked_at is None, "the confirmation page revokes nothing"

    assert Client().get("/v1/models", headers=alice.headers).status_code == 200  # cached now
    done = admin_client.post(revoke_url, follow=True)
    assert done.redirect_chain[-1][0] == f"/admin/gateway/apikey/{alice.key.pk}/change/"
    alice.key.refresh_from_db()
    assert alice.key.revoked_at is not None
    assert Client().get("/v1/models", headers=alice.headers).status_code == 401  # at once
    assert f'href="{revoke_url}"' not in done.content.decode()
    assert f"revoked {alice.key.revoked_at:%Y-%m-%d}" in done.content.decode()
    listing = admin_client.get("/admin/gateway/apikey/?state=revoked").content.decode()
    assert alice.key.prefix in listing and f"revoked {alice.key.revoked_at:%Y-%m-%d}" in listing


def test_staff_who_may_only_view_keys_cannot_revoke(tenants: dict[str, TenantKey]) -> None:
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer", password="pw-123456", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client = Client()
    client.force_login(viewer)
    key = tenants["bob"].key
    assert client.post(f"/admin/gateway/apikey/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None
