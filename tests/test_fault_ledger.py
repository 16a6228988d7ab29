"""Fault injection on the ledger with real processes: a poisoned request among a thousand calls,
SIGKILL under load, SIGKILL in the middle of a replay, two workers replaying one directory.

Each test starts the gateway under uvicorn on the test database (SQLite or PostgreSQL, as the
suite runs) with the fake upstream, and counts what the clients saw against what the ledger holds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db.models import Sum

from conftest import GatewayServer, TenantKey, start_gateway
from gateway.models import ApiKey, LedgerDeadLetter, Tenant, UsageDaily, UsageRecord
from gateway.usage.ledger_files import encode

pytestmark = pytest.mark.e2e


@dataclass
class Load:
    """What the clients saw: the request ids of the calls whose answer they read to the end."""

    completed: list[str] = field(default_factory=list)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def _one(client: httpx.AsyncClient, key: str, model: str, stream: bool, load: Load) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    try:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            content = await response.aread()
    except httpx.HTTPError:
        load.failed += 1
        return
    load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
    whole = content.endswith(b"data: [DONE]\n\n") if stream else content.endswith(b"}")
    if response.status_code == 200 and whole:
        load.completed.append(response.headers["x-request-id"])


async def hammer(
    base_url: str,
    key: str,
    *,
    calls: int | None = None,
    seconds: float | None = None,
    concurrency: int = 16,
    models: list[str] | None = None,
    load: Load | None = None,
    stop: asyncio.Event | None = None,
) -> Load:
    """``calls`` calls (or as many as fit in ``seconds``, or until ``stop`` is set) from
    ``concurrency`` clients, every other one streamed, cycling through ``models``; ``load``
    (given) shows the progress meanwhile."""
    load = load if load is not None else Load()
    numbers = itertools.count()
    deadline = time.monotonic() + seconds if seconds is not None else None
    names = models or ["gpt-test"]

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            n = next(numbers)
            if (
                (calls is not None and n >= calls)
                or (deadline is not None and time.monotonic() > deadline)
                or (stop is not None and stop.is_set())
            ):
                return
            await _one(client, key, names[n % len(names)], n % 2 == 1, load)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return load


def wait_for(condition: Any, timeout: float = 30.0, message: str = "timed out") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def rollup_calls(tenant: Tenant) -> int:
    return UsageDaily.objects.filter(tenant=tenant).aggregate(calls=Sum("calls"))["calls"] or 0


def stop(server: GatewayServer) -> None:
    if server.process.poll() is None:
        server.stop()


def test_a_poisoned_request_among_a_thousand_calls_loses_no_row(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    """A NUL character in the model (PostgreSQL refuses it in text) used to take its whole batch,
    every tenant's rows, to a spool that never replayed. Now the row is mended and lands; a row
    no mending can save (its tenant deleted while its key was still cached) goes to the dead
    letter alone."""
    alice, bob = tenants["alice"], tenants["bob"]
    mallory = Tenant.objects.create(name="mallory")
    _, mallory_raw = ApiKey.objects.issue(mallory)
    server = start_gateway(
        tmp_path,
        fake_upstream,
        env={"TOLLGATE_AUTH_CACHE_SECONDS": "300", "TOLLGATE_LEDGER_FLUSH_SECONDS": "0.2"},
    )
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.get("/v1/models", headers=_bearer(mallory_raw)).status_code == 200
        mallory_id = mallory.pk
        mallory.delete()  # the gateway still knows the key for 300 s

        async def traffic() -> tuple[list[Load], list[str]]:
            poisoned = httpx.AsyncClient(base_url=server.base_url, timeout=10)
            async with poisoned:

                async def poison() -> tuple[list[int], list[str]]:
                    statuses, orphans = [], []
                    for _ in range(5):
                        await asyncio.sleep(0.1)
                        answer = await poisoned.post(
                            "/v1/chat/completions",
                            content=b'{"model":"x\\u0000y","messages":[{"role":"user","content":"hi"}]}',
                            headers={**_bearer(alice.raw), "content-type": "application/json"},
                        )
                        statuses.append(answer.status_code)
                        orphan = await poisoned.post(
                            "/v1/chat/completions",
                            json={
                                "model": "gpt-test",
                                "messages": [{"role": "user", "content": "x"}],
                            },
                            headers=_bearer(mallory_raw),
                        )
                        statuses.append(orphan.status_code)
                        orphans.append(orphan.headers["x-request-id"])
                    return statuses, orphans

                results = await asyncio.gather(
                    hammer(server.base_url, alice.raw, calls=500),
                    hammer(server.base_url, bob.raw, calls=500),
                    poison(),
                )
            statuses, orphans = results[2]
            assert all(status < 500 for status in statuses), statuses
            return [results[0], results[1]], orphans

        loads, orphans = asyncio.run(traffic())
    finally:
        stop(server)

    for who, load in zip((alice, bob), loads, strict=True):
        assert len(load.completed) == 500, load
        rows = set(
            UsageRecord.objects.filter(tenant=who.tenant, requested_model="gpt-test").values_list(
                "request_id", flat=True
            )
        )
        assert rows == set(load.completed), "every call of the others has its row"
    poisoned_rows = UsageRecord.objects.filter(requested_model="x\ufffdy")
    assert poisoned_rows.count() == 5 and {r.status_code for r in poisoned_rows} == {404}
    assert UsageRecord.objects.filter(tenant__in=[alice.tenant, bob.tenant]).count() == 1005
    assert rollup_calls(alice.tenant) == 505 and rollup_calls(bob.tenant) == 500
    # (Only mallory's: a gateway of an earlier test module may still be writing the rows of
    # tenants that the test database's flush removed; they land here too, as they should.)
    dead = list(LedgerDeadLetter.objects.filter(tenant_id=mallory_id))
    assert sorted(d.request_id for d in dead) == sorted(orphans)
    assert all("IntegrityError" in d.reason for d in dead)
    assert not list((tmp_path / "ledger").glob("*.jsonl")), "nothing left to replay"


def _bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def test_sigkill_under_load_loses_no_answered_call(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    """SIGKILL (what the OOM killer sends) while 24 clients call, streams and JSON: after a
    restart, every call whose answer a client read to the end has its row, none twice."""
    alice = tenants["alice"]
    env = {"TOLLGATE_LEDGER_FLUSH_SECONDS": "0.5"}  # the default: up to 0.5 s of rows queued
    server = start_gateway(tmp_path, fake_upstream, env=env)

    async def load_then_kill() -> Load:
        # The kill comes once 200 calls are answered (however long this machine takes), while
        # the clients are still calling: the calls in flight die, and for a second more the
        # ones after it are refused at once.
        load, enough = Load(), asyncio.Event()
        running = asyncio.create_task(
            hammer(server.base_url, alice.raw, seconds=60, concurrency=24, load=load, stop=enough)
        )
        while len(load.completed) < 200:
            assert not running.done(), load
            await asyncio.sleep(0.02)
        server.kill()
        await asyncio.sleep(1.0)
        enough.set()
        return await running

    try:
        load = asyncio.run(load_then_kill())
        server.process.wait(timeout=10)
        assert len(load.completed) >= 200, load
        assert load.failed > 0, "the kill cut calls in flight"
        journals = list((tmp_path / "ledger").glob("journal-*.jsonl"))
        assert journals, "the killed process left its journal"
        restarted = start_gateway(tmp_path, fake_upstream, env=env)
        try:
            wait_for(
                lambda: (
                    UsageRecord.objects.filter(request_id__in=load.completed).count()
                    == len(load.completed)
                ),
                message="answered calls are missing from the ledger",
            )
        finally:
            stop(restarted)
    finally:
        stop(server)

    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    ids = list(rows.values_list("request_id", flat=True))
    assert set(load.completed) <= set(ids)
    assert len(ids) - len(load.completed) <= 24, "at most the calls in flight at the kill"
    assert rollup_calls(alice.tenant) == len(ids), "the rollup counts each row once"


def spool_rows(who: TenantKey, count: int, start: int = 0) -> bytes:
    now = datetime.now(UTC)
    return b"".join(
        encode(
            {
                "created_at": now,
                "request_id": f"req_spooled_{n}",
                "tenant_id": who.tenant.pk,
                "api_key_id": who.key.pk,
                "requested_model": "gpt-test",
                "provider": "fake",
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "total_tokens": 12,
                "cost_usd": Decimal("0.000014"),
                "status_code": 200,
                "latency_ms": 5,
            }
        )
        for n in range(start, start + count)
    )


def test_a_process_killed_during_replay_strands_and_doubles_nothing(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    """60,000 spooled rows; SIGKILL one second into their replay; after a restart, exactly
    60,000 rows, and the rollup counts 60,000 calls."""
    alice = tenants["alice"]
    directory = tmp_path / "ledger"
    directory.mkdir()
    (directory / "spool-1-1-0.jsonl").write_bytes(spool_rows(alice, 60_000))
    server = start_gateway(tmp_path, fake_upstream)
    try:
        wait_for(lambda: UsageRecord.objects.exists(), message="the replay never started")
        server.kill()
        server.process.wait(timeout=10)
    finally:
        stop(server)
    done_before = UsageRecord.objects.count()
    assert done_before < 60_000, "the kill came after the replay: make the spool bigger"
    restarted = start_gateway(tmp_path, fake_upstream)
    try:
        wait_for(lambda: UsageRecord.objects.count() == 60_000, timeout=120)
        wait_for(lambda: not list(directory.glob("*.jsonl")), message="the spool is stranded")
    finally:
        stop(restarted)
    assert UsageRecord.objects.count() == 60_000
    assert rollup_calls(alice.tenant) == 60_000
    spent = UsageDaily.objects.aggregate(cost=Sum("cost_usd"))["cost"]
    assert abs(spent - Decimal("0.84")) < Decimal("1e-9"), spent  # SQLite sums in floats


def test_two_workers_share_one_ledger_directory_without_doubling_a_row(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    """Four spool files, two gateway processes started on them at once: each file is replayed
    by one of them, every row once."""
    bob = tenants["bob"]
    directory = tmp_path / "shared-ledger"
    directory.mkdir()
    for part in range(4):
        (directory / f"spool-1-{part}-0.jsonl").write_bytes(spool_rows(bob, 5_000, part * 5_000))
    env = {"TOLLGATE_LEDGER_DIR": str(directory)}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    servers = [start_gateway(tmp_path / name, fake_upstream, env=env) for name in ("a", "b")]
    try:
        wait_for(lambda: UsageRecord.objects.count() == 20_000, timeout=120)
        wait_for(lambda: not list(directory.glob("spool-*.jsonl")))
    finally:
        for server in servers:
            stop(server)
    assert rollup_calls(bob.tenant) == 20_000
    assert not list(directory.glob("*.jsonl")), "both stopped cleanly: no journal left"
