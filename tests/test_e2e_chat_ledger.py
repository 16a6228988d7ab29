"""End to end: every chat call is written to the ledger exactly once, under load and at shutdown."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

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


SERVER_STOP_LIMIT = {"uvicorn": "--timeout-graceful-shutdown", "granian": "--workers-kill-timeout"}
"""Each server's own limit on a stopping worker's requests: uvicorn cancels them (which records
them), granian SIGKILLs the worker (which would lose what is not recorded)."""


def start_with_grace(tmp_path: Path, fake_upstream: str, grace: str) -> GatewayServer:
    """A gateway whose own shutdown grace (``grace`` seconds) ends well before its server's limit
    (10 s)."""
    return start_gateway(
        tmp_path,
        fake_upstream,
        env={"TOLLGATE_SHUTDOWN_GRACE_SECONDS": grace},
        server_args=(SERVER_STOP_LIMIT[TEST_SERVER], "10"),
    )


def stop_during(server: GatewayServer, request: Any, started: Callable[[], bool]) -> None:
    """Run ``request`` (it takes no argument) in a thread, stop the server once ``started()``
    holds, and wait for both."""
    reader = threading.Thread(target=request)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while not started() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started(), "the request did not get under way"
        assert server.stop() in (0, -signal.SIGTERM)
    finally:
        reader.join(timeout=15)
        if server.process.poll() is None:
            server.kill()
            server.process.wait()


def read_slow_stream(server: GatewayServer, alice: TenantKey, received: list[str]) -> None:
    """slow-stream: 100 events, 100 ms apart; the answer must be cut off (its chunked body never
    ends), not ended early."""
    body = {"model": "slow-stream", "messages": HELLO, "stream": True}
    url = server.base_url + "/v1/chat/completions"
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, json=body, headers=alice.headers, timeout=15) as answer,
    ):
        received.extend(answer.iter_lines())


def test_a_stream_still_running_at_the_end_of_the_shutdown_grace_is_cut_and_recorded(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    """Regression: under granian a stream still running when --workers-kill-timeout ran out was
    SIGKILLed with its worker and left no row. The gateway's own grace (1 s here, shorter than the
    server's 10 s) cuts it first: a 503 server_shutdown row with the tokens streamed so far."""
    alice = tenants["alice"]
    server = start_with_grace(tmp_path, fake_upstream, grace="1")
    received: list[str] = []
    began = time.monotonic()
    stop_during(
        server, lambda: read_slow_stream(server, alice, received), lambda: len(received) > 10
    )
    assert time.monotonic() - began < 8, "stopped at the end of the grace, not of the stream"
    rows = wait_for_rows(1, tenant=alice.tenant)
    assert [(row.status_code, row.error_type, row.stream) for row in rows] == [
        (503, "server_shutdown", True)
    ]
    assert 0 < rows[0].completion_tokens < 100  # what was streamed before the cut
    assert "cutting 1 request(s) still running" in server.log_path.read_text()


def test_a_call_waiting_on_its_upstream_at_the_end_of_the_grace_gets_a_503_and_a_row(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    server = start_with_grace(tmp_path, fake_upstream, grace="0.5")
    outcome: list[object] = []
    sent_at: list[float] = []

    def call_slow() -> None:  # slow: the fake upstream answers after 5 s
        body = {"model": "slow", "messages": HELLO}
        url = server.base_url + "/v1/chat/completions"
        sent_at.append(time.monotonic())
        try:
            outcome.append(httpx.post(url, json=body, headers=alice.headers, timeout=15))
        except httpx.TransportError as exc:
            outcome.append(exc)

    def waiting_on_its_upstream() -> bool:  # half a second after it was sent
        return bool(sent_at) and time.monotonic() - sent_at[0] > 0.5

    stop_during(server, call_slow, waiting_on_its_upstream)
    answer = outcome[-1]
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "service_unavailable"
    assert "restarting" in answer.json()["error"]["message"]
    assert answer.headers["retry-after"]
    rows = wait_for_rows(1, tenant=alice.tenant)
    assert [(row.status_code, row.error_type, row.stream) for row in rows] == [
        (503, "server_shutdown", False)
    ]
    assert rows[0].prompt_tokens > 0  # estimated: the upstream may bill the request
    assert rows[0].request_id == answer.headers["x-request-id"]


def test_a_stream_cut_by_uvicorns_own_shutdown_timeout_still_has_its_row(
    tmp_path: Path, fake_upstream: str, tenants: dict[str, TenantKey]
) -> None:
    """Regression: a stream still running when uvicorn's --timeout-graceful-shutdown ran out
    (before the gateway's own grace) was cancelled with its request, and left no ledger row."""
    if TEST_SERVER != "uvicorn":
        pytest.skip("uvicorn's --timeout-graceful-shutdown")
    alice = tenants["alice"]
    server = start_gateway(
        tmp_path, fake_upstream, server_args=("--timeout-graceful-shutdown", "1")
    )
    received: list[str] = []
    stop_during(
        server, lambda: read_slow_stream(server, alice, received), lambda: len(received) > 10
    )
    rows = wait_for_rows(1, tenant=alice.tenant)
    assert [(row.status_code, row.error_type, row.stream) for row in rows] == [
        (499, "client_disconnected", True)
    ]
    assert 0 < rows[0].completion_tokens < 100  # what was streamed before the cut
