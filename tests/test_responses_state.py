"""Stored responses of the Responses API: the retention purge, input items as a list, and ids
no response is kept under."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from support.e2e import validate
from support.inprocess import answer_everything, api_client, assert_error_shape

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


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/responses/resp_%00", None, 404),
        ("DELETE", "/v1/responses/resp_%00", None, 404),
        ("GET", "/v1/responses/resp_%00/input_items", None, 404),
        ("POST", "/v1/responses", {"input": "hi", "previous_response_id": "resp_\x00"}, 400),
    ],
    ids=["get", "delete", "input-items", "previous"],
)
async def test_a_response_id_with_a_nul_is_not_found_not_a_500(
    tenants: dict[str, TenantKey],
    gateway_runtime: Any,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    """A caller's response id with a NUL was looked up as it came: on PostgreSQL, whose text
    refuses a NUL, a DataError (a 500, logged with its traceback). No response is kept under
    such an id (``keepable_id``): it is not found, without a query."""
    gateway_runtime(answer_everything)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    json = {"model": "gpt-test", **body} if body is not None else None
    async with api_client() as client:
        answer = await client.request(method, path, headers=headers, json=json)
    assert answer.status_code == status, answer.text
    assert_error_shape(path, answer)
