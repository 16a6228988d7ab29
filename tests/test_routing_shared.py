"""The routers' health shared between processes through Redis (``gateway.routing.shared``): a
cooldown seen by one process is honoured by the others; a probe that passed anywhere clears it."""

from __future__ import annotations

import pytest
from support.redis_db import redis_url  # noqa: F401 - a fixture

from gateway.limits.resilient_counters import REDIS_DOWN_ERRORS
from gateway.routing.health import Health
from gateway.routing.shared import KEY, SharedHealth
from providers.config import RouterConfig


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def two_processes(**config: object) -> tuple[Health, Health, Clock]:
    clock = Clock()
    settings = RouterConfig(**config)  # type: ignore[arg-type]
    return Health(settings, clock), Health(settings, clock), clock


def test_failures_add_up_across_processes_and_cool_the_target_down() -> None:
    first, second, clock = two_processes(cooldown_failures=3)
    first.failed("p/m", "upstream_unavailable")
    first.failed("p/m", "upstream_unavailable")
    clock.now += 1
    second.failed("p/m", "upstream_unavailable")
    assert first.usable("p/m") and second.usable("p/m")  # two and one: neither alone is at three
    second.merge("p/m", first.export("p/m"))
    first.merge("p/m", second.export("p/m"))
    assert not first.usable("p/m") and not second.usable("p/m")
    first.merge("p/m", second.export("p/m"))  # merging again counts nothing twice
    assert len(first.breakers["p/m"].failures) == 3


def test_the_latest_change_wins_and_a_passed_probe_clears_older_failures() -> None:
    first, second, clock = two_processes(cooldown_failures=1, cooldown_seconds=10)
    first.failed("p/m", "x")
    second.merge("p/m", first.export("p/m"))
    assert not second.usable("p/m")
    clock.now += 11
    assert first.claim("p/m")
    first.succeeded("p/m")  # the probe passed here
    second.merge("p/m", first.export("p/m"))
    assert second.usable("p/m") and second.snapshot()[0]["state"] == "healthy"
    first.merge("p/m", second.export("p/m"))  # the other's stale failure does not come back
    assert first.usable("p/m") and not first.breakers["p/m"].failures


async def test_a_cooldown_reaches_another_process_through_redis(redis_url: str) -> None:  # noqa: F811
    first, second, _ = two_processes(cooldown_failures=2)
    one, other = SharedHealth(first, redis_url), SharedHealth(second, redis_url)
    try:
        first.failed("p/m", "upstream_unavailable")
        first.failed("p/m", "upstream_unavailable")
        assert not first.usable("p/m") and second.usable("p/m")
        await one.sync()
        await other.sync()
        assert not second.usable("p/m")
        assert await other.redis.exists(KEY)
    finally:
        await one.stop()
        await other.stop()


async def test_redis_down_keeps_each_process_on_its_own_view() -> None:
    health = Health(RouterConfig(cooldown_failures=1))
    shared = SharedHealth(health, "redis://127.0.0.1:1/0", timeout=0.2)  # nothing listens there
    health.failed("p/m", "x")
    with pytest.raises(REDIS_DOWN_ERRORS):
        await shared.sync()
    assert "p/m" in health.changed  # kept, to publish once Redis answers
    assert not health.usable("p/m")
    await shared.redis.aclose()


async def test_stopping_is_bounded_whatever_redis_does(redis_url: str) -> None:  # noqa: F811
    """Regression: a gateway once hung at shutdown, its sync loop outliving its cancellation.
    Stopping asks the loop to end and bounds every wait, with Redis answering or not."""
    import asyncio
    import time

    health = Health(RouterConfig())
    shared = SharedHealth(health, redis_url)
    shared.start()
    await asyncio.sleep(0.7)  # a sync or two
    started = time.monotonic()
    await shared.stop()
    assert time.monotonic() - started < 1.0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        health.failed("p/m", "x")
        stuck = SharedHealth(health, f"redis://127.0.0.1:{port}/0", timeout=5.0)
        stuck.start()
        await asyncio.sleep(0.7)  # the loop is now waiting on a command
        started = time.monotonic()
        await stuck.stop()
        assert time.monotonic() - started < 7.0  # 2 s per step at most
    finally:
        server.close()
