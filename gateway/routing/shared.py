"""The routers' health shared through Redis, when REDIS_URL is set: every gateway process
skips a deployment (or upstream key) that another process saw failing.

Calls never wait on Redis: each process reads and writes its own ``Health`` in memory, and a
background task, every ``SYNC_SECONDS``, publishes the targets whose state changed here and
folds in every other process's (``Health.merge``). A cooldown seen by one process reaches the
others within that interval. While Redis is unreachable each process keeps its own view, and
says so in the log once per ``TOLLGATE_OUTAGE_LOG_SECONDS``. A half-open probe is one call per
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from redis.asyncio import Redis

from gateway.limits.resilient_counters import REDIS_DOWN_ERRORS
from gateway.outage import Outage
from gateway.routing.health import Health

log = logging.getLogger("tollgate.routing")

SYNC_SECONDS = 0.5
STOP_SECONDS = 2.0
KEY = "tg:health"
"""A Redis hash: target -> its breaker, as JSON. Entries expire with the hash when idle."""
IDLE_EXPIRY_SECONDS = 24 * 3600


class SharedHealth:
    def __init__(self, health: Health, redis_url: str, timeout: float = 0.5) -> None:
        self.health = health
        self.redis = Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.outage = Outage("Redis (shared routing health)")
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def stop(self) -> None:
        """Stop syncing, publish what changed last, close the connection: within a few seconds
        whatever Redis does. The loop is asked to stop, not cancelled: redis-py may turn a
        cancellation inside a command into a connection error, which the loop would survive."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_SECONDS)
        with contextlib.suppress(*REDIS_DOWN_ERRORS):
            await asyncio.wait_for(self.sync(), STOP_SECONDS)  # what changed since the last sync
        with contextlib.suppress(*REDIS_DOWN_ERRORS):
            await asyncio.wait_for(self.redis.aclose(), STOP_SECONDS)

    async def sync(self) -> None:
        """Publish what changed here, then fold in everyone's state."""
        health = self.health
        changed, health.changed = health.changed, set()
        try:
            if changed:
                mapping = {target: orjson.dumps(health.export(target)) for target in changed}
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(KEY, mapping=mapping)
                    pipe.expire(KEY, IDLE_EXPIRY_SECONDS)
                    await pipe.execute()
            remote = await self.redis.hgetall(KEY)
        except REDIS_DOWN_ERRORS:
            health.changed |= changed  # published at the next sync that reaches Redis
            raise
        for raw_target, raw_state in remote.items():
            target = raw_target.decode() if isinstance(raw_target, bytes) else raw_target
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
                health.merge(target, orjson.loads(raw_state))
        self.outage.recovered()

    async def _sync_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SYNC_SECONDS)
                return
            try:
                await self.sync()
            except REDIS_DOWN_ERRORS as exc:
                self.outage.failed(exc)
