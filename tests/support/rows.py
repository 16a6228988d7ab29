"""Ledger rows built by hand, for tests that fill the ledger without calling the gateway."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from conftest import TenantKey


def call(who: TenantKey, when: datetime, model: str = "gpt-test", **fields: Any) -> dict[str, Any]:
    """One successful call of ``who`` at ``when`` (its request id made of both, and the model)."""
    row: dict[str, Any] = {
        "created_at": when,
        "request_id": f"req_{who.tenant.name}_{when.timestamp()}_{model}",
        "tenant_id": who.tenant.pk,
        "api_key_id": who.key.pk,
        "requested_model": model,
        "provider": "fake",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "cost_usd": Decimal("0.0001400000"),
        "status_code": 200,
        "latency_ms": 5,
    }
    row.update(fields)
    return row
