"""End to end: each call is billed to its own tenant and key, on chat completions and messages."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import anthropic
import openai
import pytest
from support.anthropic_e2e import (
    CLAUDE_COST,
    claude_fixture,  # noqa: F401 - a fixture: claude
    server_fixture,  # noqa: F401 - a fixture: server
)
from support.chat_e2e import sdk_fixture  # noqa: F401 - a fixture: sdk
from support.e2e import GPT_TEST_COST, HELLO, rows_of, settle

from conftest import GatewayServer, TenantKey, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

# --- /v1/chat/completions, through the openai SDK ------------------------------------------------


def test_each_call_is_billed_to_its_own_tenant_and_key(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    from gateway.models import ApiKey

    second_key, second_raw = ApiKey.objects.issue(alice.tenant, name="alice-second")
    calls = [
        (alice.raw, alice.key.pk, alice.tenant.pk, False),
        (bob.raw, bob.key.pk, bob.tenant.pk, True),
        (second_raw, second_key.pk, alice.tenant.pk, True),
        (alice.raw, alice.key.pk, alice.tenant.pk, True),
        (bob.raw, bob.key.pk, bob.tenant.pk, False),
    ]
    expected: dict[str, tuple[int, int, bool]] = {}
    for raw_key, key_id, tenant_id, stream in calls:
        raw = sdk(raw_key).chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO, stream=stream
        )
        if stream:
            list(raw.parse())
        expected[raw.headers["x-request-id"]] = (tenant_id, key_id, stream)

    rows = wait_for_rows(len(calls), request_id__in=list(expected))
    assert len(rows) == len(calls)
    for row in rows:
        assert (row.tenant_id, row.api_key_id, row.stream) == expected[row.request_id]
    assert UsageRecord.objects.filter(tenant=charlie.tenant).count() == 0
    assert UsageRecord.objects.filter(api_key=charlie.key).count() == 0
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 3
    assert UsageRecord.objects.filter(api_key=second_key).count() == 1
    assert UsageRecord.objects.filter(tenant=bob.tenant).count() == 2
    assert UsageRecord.objects.count() == len(calls)


# --- /v1/messages, through the anthropic SDK -----------------------------------------------------


def test_messages_calls_are_billed_to_their_own_tenant(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    expected: dict[str, tuple[TenantKey, str, bool]] = {}
    calls = [
        (bob, "claude-test", False),
        (bob, "claude-test", True),
        (bob, "gpt-test", False),
        (bob, "gpt-test", True),
        (alice, "claude-test", False),
    ]
    for who, model, stream in calls:
        client = claude(who)
        if stream:
            with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as events:
                request_id = events.request_id
                events.get_final_message()
        else:
            raw = client.messages.with_raw_response.create(
                model=model, max_tokens=64, messages=HELLO
            )
            request_id = raw.headers["request-id"]
        assert request_id is not None
        expected[request_id] = (who, model, stream)

    rows = wait_for_rows(len(calls), request_id__in=list(expected))
    assert len(rows) == len(calls)
    for row in rows:
        who, model, stream = expected[row.request_id]
        assert (row.tenant_id, row.api_key_id) == (who.tenant.pk, who.key.pk)
        assert (row.requested_model, row.stream, row.endpoint) == (model, stream, "messages")
    settle(server, charlie)
    assert UsageRecord.objects.filter(tenant=bob.tenant, endpoint="messages").count() == 4
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 1
    assert UsageRecord.objects.filter(tenant=charlie.tenant, endpoint="messages").count() == 0
    bob_cost = sum((row.cost_usd for row in rows_of(bob)), Decimal(0))
    assert bob_cost == 2 * CLAUDE_COST + 2 * GPT_TEST_COST
    assert [row.cost_usd for row in rows_of(alice)] == [CLAUDE_COST]
