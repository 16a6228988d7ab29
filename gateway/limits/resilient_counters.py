"""Redis counters that degrade instead of failing when Redis is down or comes back empty.

Why: a Redis outage answered 500 to every caller with limits; Redis coming back empty reset the
rate windows (7,927 calls admitted in one 60 s window against RPM 6,000), and counters lost
mid-traffic let spending pass a budget (+6.6%).

- **Redis unreachable** (an error, or no answer within ``TOLLGATE_REDIS_TIMEOUT_SECONDS``): with
  ``TOLLGATE_REDIS_FAILURE=open`` (the default) calls are counted in this process's memory
  (``MemoryCounters``: budgets loaded from the ledger as usual, rate windows per process); with
  ``closed`` they get 503 with Retry-After. Redis is tried again by one call per second; the
  others do not wait on it. Settlements that fail are dropped: the rebuild below covers them.
- **Redis back** (after this process saw it fail): a new epoch of budget counters is started,
  so every process rebuilds its budgets from the ledger (``RedisCounters``); each process adds
  the reservations of its calls in flight (admitted in Redis or in memory) to the new counters,
  and this process adds what it counted in memory to the rate windows.
- **Redis lost its data** (no ``tg:epoch`` marker; seen by any process at its next call): the
  same rebuild, but the rate windows' earlier counts are gone.

The guarantees, then: a budget overshoots its cap after a rebuild by at most the cost of calls
settled whose ledger rows were not yet written when it was read (the ledger writer's flush
interval, ``TOLLGATE_LEDGER_FLUSH_SECONDS``), besides a call's cost over its reservation. While
Redis is down (fail open), each process holds each budget and rate limit on its own: N processes
may together admit up to N times a rate limit, and spend a budget's remainder N times at most.
After Redis lost its data, a rate window may admit up to twice its limit within the next 60 s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.limits.counters import Check, MemoryCounters, RedisCounters, Verdict
from gateway.outage import Outage
from providers.errors import ServiceUnavailable

log = logging.getLogger("tollgate.counters")

REDIS_DOWN_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
IN_MEMORY = "memory"
"""The epoch of a call counted in process memory."""


@dataclass(slots=True)
class Hold:
    """A call admitted and not yet settled: where its counts are (a Redis epoch, or memory)."""

    checks: list[Check]
    epoch: str


class ResilientCounters:
    """The ``CounterStore`` over Redis when REDIS_URL is set (see the module's docstring)."""

    counts_at_once = False

    def __init__(self, redis: RedisCounters, fail_open: bool = True) -> None:
        self.redis = redis
        self.fail_open = fail_open
        self.memory = MemoryCounters()
        self.outage = Outage("Redis")
        self._holds: dict[int, Hold] = {}
        self._next_hold = itertools.count(1)
        self._rebuild = False  # this process saw Redis fail: start a new epoch on its return
        self._failed_epoch = ""  # the epoch it knew then
        self._holds_epoch = ""  # the epoch all calls in flight counted in Redis are known to be in

    async def admit(self, checks: list[Check], now: int) -> Verdict:
        if self.outage.should_try():
            try:
                verdict = await self._admit_in_redis(checks, now)
            except REDIS_DOWN_ERRORS as exc:
                self._failed(exc)
            else:
                self.outage.recovered()
                return verdict
        if not self.fail_open:
            raise ServiceUnavailable(
                "The gateway cannot count this call against its limits now: its counter "
                "store is unavailable. Try again shortly.",
                retry_after=self.outage.retry_after(),
            )
        return self._held(self.memory.admit_now(checks, now), checks, IN_MEMORY)

    async def _admit_in_redis(self, checks: list[Check], now: int) -> Verdict:
        if self._rebuild:
            await self._start_new_epoch(now)
        verdict = await self.redis.admit(checks, now)
        self._held(verdict, checks, verdict.epoch)
        current = self.redis.epoch
        if verdict.epoch != current or self._holds_epoch != current:
            # Redis lost its data, or another process started a new epoch
            try:
                await self._reserve_holds()
            except REDIS_DOWN_ERRORS as exc:
                self._failed(exc)  # the call stays admitted; the next rebuild moves it
        return verdict

    async def _start_new_epoch(self, now: int) -> None:
        """Back from an outage: new budget counters (rebuilt from the ledger by every process),
        this process's calls in flight reserved in them, its memory counts added to the rate
        windows, and its memory counters dropped (a later outage starts from the ledger). The
        state is taken before the first await, so that concurrent calls rebuild once."""
        self._rebuild = False
        counts = self.memory.recent_counts(now)
        self.memory = MemoryCounters()
        await self.redis.renew_epoch(self._failed_epoch)
        if counts:
            await self.redis.add_to_windows(counts)
        in_flight = await self._reserve_holds()
        log.warning(
            "Redis counters rebuilt: budgets reload from the ledger (epoch %s); %d calls in "
            "flight reserved again; %d rate-window counts carried over from memory",
            self.redis.epoch,
            in_flight,
            sum(count for *_, count in counts),
        )

    async def _reserve_holds(self) -> int:
        """Add the reservations of this process's calls in flight that the current epoch does
        not have. Each is marked before the await, so that a settlement meanwhile releases
        what is being added (the two commute in Redis)."""
        self._holds_epoch = self.redis.epoch
        moved = [hold for hold in self._holds.values() if hold.epoch != self.redis.epoch]
        for hold in moved:
            hold.epoch = self.redis.epoch
        for hold in moved:
            await self.redis.reserve(hold.checks)
        return len(moved)

    def _held(self, verdict: Verdict, checks: list[Check], epoch: str) -> Verdict:
        """Track an admitted call until it settles, with where it was counted."""
        if verdict.refusal is None:
            verdict.hold = next(self._next_hold)
            self._holds[verdict.hold] = Hold(checks, epoch)
        return verdict

    def _failed(self, exc: BaseException) -> None:
        self.outage.failed(exc)
        if not self._rebuild:
            self._rebuild = True
            self._failed_epoch = self.redis.epoch

    async def load_spent(self, check: Check, spent: int) -> None:
        if self.outage.down:
            await self.memory.load_spent(check, spent)
            return
        try:
            await self.redis.load_spent(check, spent)
        except REDIS_DOWN_ERRORS as exc:
            self._failed(exc)  # the policy asks again, and then memory answers (fail open)

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        await self._settle(self._holds.pop(hold, None), checks, second, tokens, cost)

    async def give_back(self, checks: list[Check], second: int, hold: int = 0) -> None:
        """The call stays held, holding nothing (a rebuild reserves nothing for it), so that
        its settlement, should its fallback not be admitted, goes where it was counted: to
        memory, if it was admitted during an outage."""
        held = self._holds.get(hold)
        if held is not None:
            held.checks = [check.given_back() for check in checks]
        await self._settle(held, checks, second, 0, 0)

    async def _settle(
        self, held: Hold | None, checks: list[Check], second: int, tokens: int, cost: int
    ) -> None:
        epoch = held.epoch if held is not None else self.redis.epoch
        if epoch == IN_MEMORY:
            self.memory.settle_now(checks, second, tokens, cost)
            return
        if self._rebuild:
            return  # Redis failed: its budgets are rebuilt from the ledger, which has the call
        try:
            await self.redis.settle_in(epoch, checks, second, tokens, cost)
        except REDIS_DOWN_ERRORS as exc:
            self._failed(exc)

    @property
    def in_flight(self) -> int:
        return len(self._holds)

    async def aclose(self) -> None:
        await self.redis.aclose()
