"""Stored responses of the Responses API: the retention purge, and input items as a list."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from support.e2e import validate

from conftest import TenantKey
from gateway.calls.responses import input_item_list, purge_expired
from gateway.models import StoredResponse


def test_the_purge_deletes_only_what_is_past_its_retention(
    tenants: dict[str, TenantKey], settings
) -> None:
    settings.TOLLGATE_RESPONSES_RETENTION_DAYS = 30
    tenant = tenants["alice"].tenant
    now = timezone.now()
    for name, age in (("resp_old", 31), ("resp_edge", 29), ("resp_new", 0)):
        StoredResponse.objects.create(
            id=name, tenant=tenant, model="m", created_at=now - timedelta(days=age)
        )
    assert purge_expired() == 1
    assert sorted(StoredResponse.objects.values_list("id", flat=True)) == ["resp_edge", "resp_new"]


def test_input_items_are_listed_with_ids(tenants: dict[str, TenantKey]) -> None:
    stored = StoredResponse(
        id="resp_x",
        tenant=tenants["alice"].tenant,
        input_items=[
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok", "id": "fco_1"},
        ],
    )
    listed = input_item_list(stored)
    validate("ResponseItemList", listed)
    assert [item["id"] for item in listed["data"]] == ["resp_x_input_0", "fco_1"]
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
        "resp_x_input_0",
        "fco_1",
        False,
    )
