"""Outages and key guessing, in process: the key cache while the database is down, the throttle
on failed authentications, Redis counters that fall back to memory, and the rebuild of budgets
after Redis lost its data (issue #10)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import OperationalError
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import TenantKey, free_port
from gateway import outage
from gateway.calls import responses
from gateway.limits.counters import Check, RedisCounters
from gateway.limits.policy import CallerLimits, Estimate, Policy
from gateway.limits.resilient_counters import IN_MEMORY, ResilientCounters
from gateway.models import StoredResponse, UsageRecord
from gateway.tenants import auth, auth_throttle
from providers.errors import AuthenticationFailed, ServiceUnavailable


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A database seen as up, an empty throttle and summary, for every test."""
    monkeypatch.setattr(outage, "database_outage", outage.Outage("database"))
    monkeypatch.setattr(auth_throttle, "failure_throttle", auth_throttle.FailureThrottle(20, 1.0))
    monkeypatch.setattr(auth_throttle, "failure_summary", auth_throttle.FailureSummary())
    yield


def database_down(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every key lookup fail as with PostgreSQL stopped; returns the prefixes tried."""
    tried: list[str] = []

    def refuse(prefix: str) -> None:
        tried.append(prefix)
        raise OperationalError('connection to server at "127.0.0.1" failed: Connection refused')

    monkeypatch.setattr(auth, "_fetch", refuse)
    return tried


def random_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)


# --- the key cache while the database is down -----------------------------------------------


async def test_known_keys_keep_working_from_the_cache_while_the_database_is_down(
    tenants: dict[str, TenantKey],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.TOLLGATE_AUTH_CACHE_SECONDS = 0.01
    alice = tenants["alice"]
    assert (await auth.authenticate(alice.raw, "10.0.0.1")).tenant_name == "alice"
    tried = database_down(monkeypatch)
    await asyncio.sleep(0.02)  # the entry is stale now
    with caplog.at_level(logging.WARNING, logger="tollgate"):
        for _ in range(200):
            assert (await auth.authenticate(alice.raw, "10.0.0.1")).tenant_name == "alice"
        with pytest.raises(ServiceUnavailable) as refused:
            await auth.authenticate(random_key(), "10.0.0.2")
    assert refused.value.status == 503 and refused.value.headers["retry-after"] == "1"
    # One probe, then the back-off: the other calls did not try the database.
    assert len(tried) == 1
    outage_lines = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(outage_lines) == 1 and outage_lines[0].exc_info is None


async def test_the_database_is_probed_at_most_once_a_second_and_its_return_is_logged(
    tenants: dict[str, TenantKey],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetch = auth._fetch
    tried = database_down(monkeypatch)
    for _ in range(50):
        with pytest.raises(ServiceUnavailable):
            await auth.authenticate(random_key(), "10.0.0.3")
    assert len(tried) == 1
    monkeypatch.setattr(auth, "_fetch", fetch)  # the database is back
    monkeypatch.setattr(outage.database_outage, "_retry_at", time.monotonic())
    with caplog.at_level(logging.WARNING, logger="tollgate"):
        assert (await auth.authenticate(tenants["bob"].raw, "10.0.0.3")).tenant_name == "bob"
    assert not outage.database_outage.down
    assert any("database available again" in r.getMessage() for r in caplog.records)


async def test_responses_not_stored_in_an_outage_log_one_line_not_a_traceback_each(
    tenants: dict[str, TenantKey],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Responses API stores each response: with the database down, that was a traceback
    per call."""

    def refuse(self: StoredResponse, **kwargs: Any) -> None:
        raise OperationalError('connection to server at "127.0.0.1" failed: Connection refused')

    monkeypatch.setattr(StoredResponse, "save", refuse)
    with caplog.at_level(logging.INFO, logger="tollgate"):
        for n in range(20):
            await responses._save(StoredResponse(id=f"resp_{n}", tenant_id=1, model="m"))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["database unavailable"]
    assert all(r.exc_info is None for r in caplog.records)


# --- key guessing ---------------------------------------------------------------------------


async def test_3000_random_keys_from_one_address_are_throttled_without_reaching_the_database(
    tenants: dict[str, TenantKey],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The finding: 3,000 random keys, all 401, each a database lookup and a WARNING line."""
    settings.TOLLGATE_OUTAGE_LOG_SECONDS = 1.0
    alice = tenants["alice"]
    await auth.authenticate(alice.raw, "10.0.0.9")  # cached
    lookups = auth._key_cache.lookups
    statuses: list[int] = []
    with caplog.at_level(logging.INFO, logger="tollgate"):
        for _ in range(3000):
            try:
                await auth.authenticate(random_key(), "10.0.0.9")
            except (AuthenticationFailed, auth_throttle.TooManyAuthenticationFailures) as exc:
                statuses.append(exc.status)
        # A valid cached key from the same address is not slowed down.
        assert (await auth.authenticate(alice.raw, "10.0.0.9")).tenant_name == "alice"
        # Another address is not affected.
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(random_key(), "10.0.0.10")
        await asyncio.sleep(1.2)  # the summary's interval
    assert statuses[:20] == [401] * 20
    assert statuses.count(429) >= 2975  # the bucket refills at 1 a second
    assert auth._key_cache.lookups - lookups <= 20 + 5
    lines = [r.getMessage() for r in caplog.records]
    summaries = [line for line in lines if line.startswith("authentication failures:")]
    assert len(summaries) == 1, lines
    assert "3,001 in the last 1 s from 2 address(es)" in summaries[0]
    assert len(lines) == 1


async def test_concurrent_guesses_from_one_address_share_one_allowance(
    tenants: dict[str, TenantKey],
) -> None:
    """A failure is charged before its lookup: 200 random keys at once from one address cost
    at most the burst in database lookups, not one each."""
    lookups = auth._key_cache.lookups

    async def guess() -> int:
        try:
            await auth.authenticate(random_key(), "10.0.0.7")
        except (AuthenticationFailed, auth_throttle.TooManyAuthenticationFailures) as exc:
            return exc.status
        return 200

    statuses = await asyncio.gather(*(guess() for _ in range(200)))
    assert statuses.count(401) == 20 and statuses.count(429) == 180
    assert auth._key_cache.lookups - lookups == 20


async def test_a_cold_key_called_200_times_at_once_is_looked_up_once_and_never_throttled(
    tenants: dict[str, TenantKey],
) -> None:
    """A gateway started under load: every concurrent call of a key not cached yet shares one
    lookup, and the address is charged (then refunded) once, so no good call gets a 429."""
    alice = tenants["alice"]
    lookups = auth._key_cache.lookups
    callers = await asyncio.gather(*(auth.authenticate(alice.raw, "10.0.0.8") for _ in range(200)))
    assert {caller.tenant_name for caller in callers} == {"alice"}
    assert auth._key_cache.lookups - lookups == 1
    assert auth_throttle.failure_throttle.wait("10.0.0.8") == 0


def test_the_throttle_refills_and_its_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(auth_throttle.time, "monotonic", lambda: clock[0])
    throttle = auth_throttle.FailureThrottle(burst=3, rate=0.5, max_addresses=100)
    assert [throttle.fail("a") for _ in range(4)] == [0, 0, 0, 2]
    clock[0] += 2
    assert throttle.wait("a") == 0 and throttle.fail("a") == 0 and throttle.wait("a") == 2
    for n in range(1000):
        throttle.fail(f"10.1.{n // 256}.{n % 256}")
    assert len(throttle._buckets) == 100


def test_a_flood_of_unknown_prefixes_never_evicts_the_known_keys() -> None:
    cache = auth.KeyCache(known_max=10, unknown_max=50)
    known = auth._CachedKey(
        auth.Caller(1, "alice", 1, "tg-known0000"), "hash", True, None, time.monotonic()
    )
    cache.store("tg-known0000", known, time.monotonic())
    for n in range(10_000):
        cache.store(f"tg-{n:09d}", None, time.monotonic())
    assert cache.known == {"tg-known0000": known}
    assert len(cache.unknown) == 50 and cache.is_unknown("tg-000009999", time.monotonic())


# --- Redis down -----------------------------------------------------------------------------

RPM_CHECK = Check(
    "tenant:1", rpm=5, tpm=None, tokens=0, cap=None, reserve=0, period="total", ttl=60
)


def closed_port_counters(fail_open: bool) -> ResilientCounters:
    return ResilientCounters(
        RedisCounters(f"redis://127.0.0.1:{free_port()}/0", timeout=0.25), fail_open=fail_open
    )


async def test_redis_down_fail_open_counts_in_memory_without_waiting_on_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = closed_port_counters(fail_open=True)
    now = int(time.time())
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tollgate"):
        verdicts = [await counters.admit([RPM_CHECK], now) for _ in range(7)]
    assert time.monotonic() - started < 1
    assert [v.refusal for v in verdicts] == [None] * 5 + ["rpm", "rpm"]  # held in memory
    assert counters.outage.down
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["Redis unavailable"]
    hold = verdicts[0].hold
    assert counters._holds[hold].epoch == IN_MEMORY
    await counters.settle([RPM_CHECK], now, 0, 0, hold)  # in memory: never raises
    await counters.aclose()


async def test_redis_down_fail_closed_answers_503_with_retry_after() -> None:
    counters = closed_port_counters(fail_open=False)
    for _ in range(3):
        with pytest.raises(ServiceUnavailable) as refused:
            await counters.admit([RPM_CHECK], int(time.time()))
        assert refused.value.status == 503 and refused.value.headers["retry-after"] == "1"
    await counters.aclose()


# --- Redis back, or back empty ----------------------------------------------------------------


def budget(who: TenantKey, usd: str) -> CallerLimits:
    who.tenant.budget_usd, who.tenant.budget_period = Decimal(usd), "total"
    who.tenant.save()
    return CallerLimits.of(type(who.key).objects.select_related("tenant").get(pk=who.key.pk))


def spend(who: TenantKey, usd: str) -> None:
    UsageRecord.objects.create(
        request_id=secrets.token_hex(8),
        tenant=who.tenant,
        api_key=who.key,
        requested_model="gpt-test",
        cost_usd=Decimal(usd),
        status_code=200,
        latency_ms=1,
    )


async def redis_budget(counters: ResilientCounters, who: TenantKey) -> dict[str, int]:
    key = f"tg:budget:{counters.redis.epoch}:tenant:{who.tenant.pk}:total"
    raw = await counters.redis.client.hgetall(key)
    return {name.decode(): int(value) for name, value in raw.items()}


async def test_redis_back_empty_rebuilds_budgets_from_the_ledger_and_keeps_calls_in_flight(
    tenants: dict[str, TenantKey],
    redis_url: str,  # noqa: F811 - the fixture
) -> None:
    alice = tenants["alice"]
    limits = await asyncio.to_thread(budget, alice, "1.00")
    await asyncio.to_thread(spend, alice, "0.25")
    counters = ResilientCounters(RedisCounters(redis_url, timeout=0.5))
    policy = Policy(counters)
    in_flight = await policy.admit(limits, Estimate(tokens=10, cost=Decimal("0.10")))
    assert in_flight is not None
    assert await redis_budget(counters, alice) == {"spent": 25_000_000, "reserved": 10_000_000}
    await asyncio.to_thread(spend, alice, "0.05")  # a call settled meanwhile, in the ledger
    await counters.redis.client.flushdb()  # Redis restarted empty
    second = await policy.admit(limits, Estimate(tokens=10, cost=Decimal("0.20")))
    assert second is not None
    # Spent from the ledger (0.30), and both reservations: the one in flight was not forgotten.
    assert await redis_budget(counters, alice) == {"spent": 30_000_000, "reserved": 30_000_000}
    in_flight.settle(10, Decimal("0.08"))
    second.settle(10, Decimal("0.10"))
    await policy.drain()
    assert await redis_budget(counters, alice) == {"spent": 48_000_000, "reserved": 0}
    await policy.aclose()


async def test_redis_back_after_an_outage_starts_a_new_epoch_with_what_memory_counted(
    tenants: dict[str, TenantKey],
    redis_url: str,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = tenants["alice"]
    alice.tenant.rpm_limit = 100
    limits = await asyncio.to_thread(budget, alice, "1.00")
    counters = ResilientCounters(RedisCounters(redis_url, timeout=0.5))
    policy = Policy(counters)
    first = await policy.admit(limits, Estimate(tokens=10, cost=Decimal("0.10")))
    epoch = counters.redis.epoch
    real_admit = counters.redis.admit

    async def unreachable(*args: object) -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(counters.redis, "admit", unreachable)
    during = [await policy.admit(limits, Estimate(10, Decimal("0.10"))) for _ in range(3)]
    assert counters.outage.down
    assert all(a is not None and counters._holds[a.hold].epoch == IN_MEMORY for a in during)
    assert first is not None
    first.settle(10, Decimal("0.10"))  # dropped while Redis is down: the rebuild covers it
    await asyncio.to_thread(spend, alice, "0.10")  # its ledger row
    await policy.drain()
    monkeypatch.setattr(counters.redis, "admit", real_admit)
    monkeypatch.setattr(counters.outage, "_retry_at", 0.0)
    after = await policy.admit(limits, Estimate(10, Decimal("0.10")))
    assert after is not None and counters.redis.epoch != epoch
    # Spent from the ledger; reserved: the three calls admitted in memory and this one.
    assert await redis_budget(counters, alice) == {"spent": 10_000_000, "reserved": 40_000_000}
    window = await counters.redis.client.hgetall(f"tg:rl:tenant:{alice.tenant.pk}:rpm")
    assert sum(int(count) for count in window.values()) == 5  # 1 + 3 from memory + 1
    for admission in [*during, after]:
        assert admission is not None
        admission.settle(10, Decimal("0.05"))
    await policy.drain()
    assert await redis_budget(counters, alice) == {"spent": 30_000_000, "reserved": 0}
    await policy.aclose()


async def test_a_call_admitted_in_memory_and_refused_its_fallback_is_settled_in_memory(
    tenants: dict[str, TenantKey],
    redis_url: str,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call admitted in memory while Redis was down, released for its fallback and refused
    it, was settled into Redis's epoch instead, which an outage drops: memory's budget never
    counted what the call cost, and let the tenant spend it again until Redis came back. The
    release keeps the call held where it was counted."""
    alice = tenants["alice"]
    limits = await asyncio.to_thread(budget, alice, "1.00")
    counters = ResilientCounters(RedisCounters(redis_url, timeout=0.5))
    policy = Policy(counters)

    async def unreachable(*args: object) -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(counters.redis, "admit", unreachable)
    admission = await policy.admit(limits, Estimate(tokens=10, cost=Decimal("0.10")))
    assert admission is not None and counters._holds[admission.hold].epoch == IN_MEMORY
    await admission.release()  # for its fallback, which its limits then refuse
    admission.settle(10, Decimal("0.08"))
    await policy.drain()
    key = f"tg:budget:tenant:{alice.tenant.pk}:total"
    assert counters.memory._budgets[key] == [8_000_000, 0]
    assert counters.in_flight == 0
    await policy.aclose()
