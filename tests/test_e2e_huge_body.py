"""A 30 MB body of a million tiny messages, against the real gateway process: refused with a 400
naming the limit, while everyone else's small calls keep being answered promptly (it used to
hold the event loop for 3.6 s)."""

from __future__ import annotations

import pytest

from conftest import GatewayServer, TenantKey
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
