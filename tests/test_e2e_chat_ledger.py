"""End to end: every chat call is written to the ledger exactly once, under load and at shutdown."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from support.chat_e2e import assert_exact_usage
from support.e2e import GPT_TEST_COST, HELLO, STREAM_TEXT, settle

from conftest import TEST_SERVER, GatewayServer, TenantKey, start_gateway, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

# --- concurrency: every call billed exactly once -------------------------------------------------


def test_concurrent_calls_are_each_billed_exactly_once(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    total = 50

    async def one(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO, stream=stream
        )
        if stream:
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse()])
        else:
            text = raw.parse().choices[0].message.content or ""
        return raw.headers["x-request-id"], text

    async def run() -> list[tuple[str, str]]:
        clients = [
            openai.AsyncOpenAI(
                base_url=gateway_server.base_url + "/v1", api_key=who.raw, max_retries=0, timeout=20
            )
            for who in (alice, bob)
        ]
        try:
            return await asyncio.gather(
                *(one(clients[i % 2], stream=i % 3 == 0) for i in range(total))
            )
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(run())
    request_ids = [request_id for request_id, _ in results]
    assert all(text == STREAM_TEXT for _, text in results)
    assert len(set(request_ids)) == total

    rows = wait_for_rows(total, request_id__in=request_ids)
    assert len(rows) == total
    settle(gateway_server, tenants["charlie"])
    rows = list(UsageRecord.objects.exclude(tenant=tenants["charlie"].tenant))
    assert len(rows) == total, "exactly one row per call"
    assert sorted(row.request_id for row in rows) == sorted(request_ids)
    assert all(row.status_code == 200 for row in rows)
    assert sum(row.stream for row in rows) == len([i for i in range(total) if i % 3 == 0])
    assert sum(row.tenant_id == alice.tenant.pk for row in rows) == total // 2
    assert sum((row.cost_usd for row in rows), Decimal(0)) == GPT_TEST_COST * total


# --- shutdown writes what is queued --------------------------------------------------------------


def test_shutdown_flushes_queued_ledger_rows(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    server = start_gateway(tmp_path, fake_upstream, env={"TOLLGATE_LEDGER_FLUSH_SECONDS": "30"})
    try:
        request_ids = []
        with openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=alice.raw, max_retries=0, timeout=15
        ) as client:
            for stream in (False, True, False):
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=HELLO, stream=stream
                )
                if stream:
                    list(raw.parse())
                request_ids.append(raw.headers["x-request-id"])
        # The batch window is 30 s: the rows are still in the gateway's memory.
        assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 0
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -SIGTERM).
        assert server.stop() in (0, -signal.SIGTERM)
        if TEST_SERVER == "uvicorn":
            assert "Application shutdown complete" in server.log_path.read_text()
    finally:
        if server.process.poll() is None:
            server.kill()
            server.process.wait()

    rows = list(UsageRecord.objects.filter(request_id__in=request_ids).order_by("id"))
    assert sorted(row.request_id for row in rows) == sorted(request_ids)
    for row in rows:
        assert (row.tenant_id, row.status_code) == (alice.tenant.pk, 200)
        assert_exact_usage(row)
    assert not list((tmp_path / "ledger").glob("*.jsonl")), "rows were written, not spooled"


def test_a_stream_cut_at_shutdown_still_has_its_row(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    """Regression: a stream still running when uvicorn's --timeout-graceful-shutdown ran out (the
    systemd unit allows 30 s) was cancelled with its request, and left no ledger row."""
    if TEST_SERVER != "uvicorn":
        pytest.skip("uvicorn's --timeout-graceful-shutdown")
    alice = tenants["alice"]
    server = start_gateway(
        tmp_path, fake_upstream, server_args=("--timeout-graceful-shutdown", "1")
    )
    received: list[str] = []

    def read_stream() -> None:  # slow-stream: 100 events, 100 ms apart
        body = {"model": "slow-stream", "messages": HELLO, "stream": True}
        url = server.base_url + "/v1/chat/completions"
        with (
            pytest.raises(httpx.RemoteProtocolError),  # cut off: the chunked body never ends
            httpx.stream("POST", url, json=body, headers=alice.headers, timeout=15) as answer,
        ):
            received.extend(answer.iter_lines())

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while len(received) < 10 and time.monotonic() < deadline:  # the stream is under way
            time.sleep(0.05)
        assert server.stop() in (0, -signal.SIGTERM)
    finally:
        reader.join(timeout=15)
        if server.process.poll() is None:
            server.kill()
            server.process.wait()
    rows = wait_for_rows(1, tenant=alice.tenant)
    assert [(row.status_code, row.error_type, row.stream) for row in rows] == [
        (499, "client_disconnected", True)
    ]
    assert 0 < rows[0].completion_tokens < 100  # what was streamed before the cut
