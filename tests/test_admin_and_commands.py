"""The admin pages and management commands."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from conftest import TenantKey
from gateway.models import ApiKey, Tenant, UsageRecord, hash_key


def test_create_api_key_prints_the_raw_key_last(db: None) -> None:
    out = StringIO()
    call_command("create_api_key", "--tenant", "dora", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    key = ApiKey.objects.get(tenant__name="dora")
    assert raw.startswith("tg-") and key.prefix == raw[:12]
    assert key.key_hash == hash_key(raw) and raw not in key.key_hash
    call_command("create_api_key", "--tenant", "dora", "--expires-in-days", "3", stdout=out)
    assert Tenant.objects.filter(name="dora").count() == 1
    assert ApiKey.objects.filter(tenant__name="dora", expires_at__isnull=False).count() == 1


@pytest.fixture
def admin_client(db: None) -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def test_admin_revokes_keys(admin_client: Client, tenants: dict[str, TenantKey]) -> None:
    alice = tenants["alice"].key
    admin_client.post(
        "/admin/gateway/apikey/", {"action": "revoke_keys", "_selected_action": [alice.pk]}
    )
    alice.refresh_from_db()
    assert alice.revoked_at is not None and not alice.is_usable()


def test_the_ledger_is_read_only_in_the_admin(
    admin_client: Client, tenants: dict[str, TenantKey]
) -> None:
    bob = tenants["bob"]
    record = UsageRecord.objects.create(
        tenant=bob.tenant,
        api_key=bob.key,
        request_id="req_1",
        requested_model="m",
        status_code=200,
        latency_ms=1,
    )
    assert admin_client.get("/admin/gateway/usagerecord/").status_code == 200
    assert admin_client.get("/admin/gateway/usagerecord/add/").status_code == 403
    change = admin_client.post(
        f"/admin/gateway/usagerecord/{record.pk}/change/", {"status_code": 500}
    )
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.status_code == 200
    assert admin_client.get("/admin/gateway/tenant/").status_code == 200
