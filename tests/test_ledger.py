"""The ledger writer: batched, off the request path, never dropping a row."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import DatabaseError

from conftest import TenantKey
from gateway.ledger import LedgerWriter
from gateway.models import UsageRecord


def row(who: TenantKey, n: int) -> dict[str, object]:
    return {
        "created_at": datetime.now(UTC),
        "request_id": f"req_{n}",
        "tenant_id": who.tenant.pk,
        "api_key_id": who.key.pk,
        "requested_model": "m",
        "prompt_tokens": n,
        "completion_tokens": 1,
        "total_tokens": n + 1,
        "cost_usd": Decimal("0.000001") * n,
        "status_code": 200,
        "latency_ms": 3,
    }


def test_rows_are_written_by_the_thread_in_batches(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    writer = LedgerWriter(tmp_path / "spool", flush_seconds=0.05, batch_size=100)
    for n in range(250):
        writer.record(row(tenants["alice"], n))
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 250 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.stop()
    assert UsageRecord.objects.count() == 250
    assert UsageRecord.objects.get(request_id="req_7").cost_usd == Decimal("0.000007")


def test_stop_flushes_what_is_queued(tenants: dict[str, TenantKey], tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "spool", flush_seconds=60)
    writer.start()
    for n in range(5):
        writer.record(row(tenants["bob"], n))
    writer.stop()
    assert UsageRecord.objects.filter(tenant=tenants["bob"].tenant).count() == 5


def test_a_failing_database_spools_rows_and_they_are_replayed(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    writer = LedgerWriter(spool, retries=2, autostart=False)
    writer._backoff.set()  # no waiting between retries in this test

    def broken(*args: object, **kwargs: object) -> None:
        raise DatabaseError("database is down")

    with monkeypatch.context() as patch:
        patch.setattr("gateway.ledger.insert_rows", broken)
        for n in range(3):
            writer.record(row(tenants["charlie"], n))
        writer.flush()
    assert UsageRecord.objects.count() == 0
    assert len(spool.read_bytes().splitlines()) == 3

    assert LedgerWriter(spool).replay_spool() == 3
    assert not spool.exists()
    replayed = UsageRecord.objects.order_by("request_id")
    assert [r.request_id for r in replayed] == ["req_0", "req_1", "req_2"]
    assert replayed[2].cost_usd == Decimal("0.000002")
