"""A 30 MB body of a million tiny messages, against the real gateway process: refused with a 400
naming the limit, while everyone else's small calls keep being answered promptly (it used to
hold the event loop for 3.6 s)."""

from __future__ import annotations

import pytest

from conftest import GatewayServer, TenantKey, wait_for_rows
from huge_probe import probe

pytestmark = pytest.mark.e2e


def test_a_million_messages_stall_no_one(
    tenants: dict[str, TenantKey], gateway_server: GatewayServer
) -> None:
    result = probe(gateway_server.base_url, tenants["alice"].raw, "gpt-test")
    assert result.status == 400
    error = result.answer["error"]
    assert isinstance(error, dict) and error["param"] == "messages"
    assert "10000 items" in str(error["message"])
    assert result.small_statuses == {200} and len(result.latencies) >= 5
    assert result.max_ms < 500, f"a small call waited {result.max_ms:.0f} ms"  # was 3,600 ms
    print(f"small calls: {len(result.latencies)}, max {result.max_ms:.1f} ms")
    # Every call has its row, the refused one too; waiting for them also keeps the gateway from
    # writing while the test database is emptied after the test.
    calls = len(result.latencies) + 1
    rows = wait_for_rows(calls, tenant=tenants["alice"].tenant)
    assert len(rows) == calls and sorted(r.status_code for r in rows)[-1] == 400
