"""Counters behind rate limits and budgets: in process memory, or in Redis (``REDIS_URL``) so that
every gateway process shares them.

Both stores do the same thing, atomically: ``admit`` checks every scope of a call (its tenant, its
key) and either records the call in all of them or in none; ``settle`` corrects the counts once
the call's real tokens and cost are known.

- Rate limits: a sliding window of 60 one-second buckets per scope, one for requests and one for
  tokens. A call is admitted when the buckets of the current second and the 59 before, plus the
  call, stay within the limit: at most ``rpm`` requests (and ``tpm`` tokens) in any 60 whole
  seconds. ``Retry-After`` is the number of seconds until enough buckets age out.
- Budgets: per scope and period, ``spent`` (settled calls) and ``reserved`` (calls in flight), in
  integer units of 1e-8 USD. A call is admitted when ``spent + reserved < cap`` and
  ``spent + reserved + its reservation <= cap``. ``spent`` starts from the ledger: a scope whose
  counter does not exist yet asks to be loaded (``Verdict.refusal == "load"``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.limits.redis_pipe import Pipe

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Check:
    """One scope's share of a call's admission: its limits and what the call asks of them."""

    scope: str  # "tenant:3", "key:17"
    rpm: int | None
    tpm: int | None
    tokens: int  # estimated at admission
    cap: int | None  # budget, in units of 1e-8 USD
    reserve: int  # the call's worst-case cost, same units
    period: str  # "d20261124", "m202611", "total"
    ttl: int  # seconds the budget counter lives unused (then is reloaded from the ledger)

    @property
    def budget_key(self) -> str:
        return f"tg:budget:{self.scope}:{self.period}"

    def given_back(self) -> Check:
        """The check of a call whose tokens and reservation were given back (for its
        fallback): it holds nothing more, and its settlement releases nothing."""
        return replace(self, tokens=0, reserve=0)


@dataclass(frozen=True, slots=True)
class Window:
    """A scope's rate window after an admission: used so far, and seconds until it frees."""

    requests: int
    requests_reset: int
    tokens: int
    tokens_reset: int


@dataclass(slots=True)
class Verdict:
    refusal: str | None = None  # None: admitted; else "load", "budget", "rpm" or "tpm"
    index: int = 0  # the check that refused
    retry_after: int = 0
    spent: int = 0
    reserved: int = 0
    windows: list[Window] = field(default_factory=list)  # one per check, when admitted
    hold: int = 0  # the admitted call's handle, for a store that tracks its calls in flight
    epoch: str = ""  # Redis: the epoch of the budget counters that counted the call


class CounterStore(Protocol):
    counts_at_once: bool
    """True for ``MemoryCounters``, which count with nothing to await: the policy calls their
    ``admit_now`` and ``settle_now`` directly, without a task (and a shield) per call. A
    subclass that awaits in ``admit`` says False."""

    async def admit(self, checks: list[Check], now: int) -> Verdict: ...

    async def load_spent(self, check: Check, spent: int) -> None:
        """Start the budget counter at ``spent`` unless another caller did meanwhile."""

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        """The call admitted at ``second`` used ``tokens`` (vs ``check.tokens``) and cost
        ``cost``: release its reservation and count what it really used. ``hold`` is the
        verdict's (a store that tracks its calls in flight uses it)."""

    async def give_back(self, checks: list[Check], second: int, hold: int = 0) -> None:
        """Release the tokens and the reservation of a call admitted at ``second`` before it
        is admitted again (for its fallback): ``settle`` with nothing used, but the call stays
        in flight, holding nothing, to be settled where it was counted should it not be."""

    async def aclose(self) -> None: ...


def _retry_after(buckets: dict[int, int], total: int, limit: int, need: int, now: int) -> int:
    excess = total + need - limit
    for second in sorted(buckets):
        excess -= buckets[second]
        if excess <= 0:
            return max(second + WINDOW_SECONDS - now, 1)
    return WINDOW_SECONDS


class _Window:
    """A rate window in memory: a count per second of the last ``WINDOW_SECONDS``, oldest first,
    and their total, kept as counts come and go: a call looks at its window without a pass over
    its sixty seconds (three each call, when the total was summed and the old seconds sought)."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}  # second -> count, in order of second
        self.total = 0

    def at(self, now: int) -> _Window:
        """The window as of ``now``: the seconds before it dropped."""
        buckets, oldest = self.buckets, now - WINDOW_SECONDS + 1
        while buckets:
            first = next(iter(buckets))
            if first >= oldest:
                break
            self.total -= buckets.pop(first)
        return self

    def add(self, second: int, count: int) -> None:
        buckets = self.buckets
        if second in buckets:
            buckets[second] += count
        else:
            if buckets and second < next(reversed(buckets)):  # the clock went back: re-order
                self.buckets = buckets = dict(sorted({**buckets, second: 0}.items()))
            buckets[second] = count
        self.total += count

    def reset(self, now: int) -> int:
        """Seconds until the oldest count leaves the window (0: empty)."""
        return next(iter(self.buckets)) + WINDOW_SECONDS - now if self.buckets else 0


class MemoryCounters:
    """Counters of one process: the default, when REDIS_URL is not set."""

    counts_at_once = True

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._budgets: dict[str, list[int]] = {}  # key -> [spent, reserved]

    def _window(self, key: str, now: int) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        return window.at(now)

    async def admit(self, checks: list[Check], now: int) -> Verdict:
        return self.admit_now(checks, now)

    def admit_now(self, checks: list[Check], now: int) -> Verdict:
        """All checks pass, then all are counted: no await in between, so this is atomic."""
        for index, check in enumerate(checks):
            if check.cap is not None:
                budget = self._budgets.get(check.budget_key)
                if budget is None:
                    return Verdict("load", index)
                spent, reserved = budget
                if spent + reserved >= check.cap or spent + reserved + check.reserve > check.cap:
                    return Verdict("budget", index, 0, spent, reserved)
            for kind, limit, need in (("rpm", check.rpm, 1), ("tpm", check.tpm, check.tokens)):
                if limit is None:
                    continue
                window = self._window(f"{check.scope}:{kind}", now)
                if window.total + need > limit:
                    retry = _retry_after(window.buckets, window.total, limit, need, now)
                    return Verdict(kind, index, retry)
        verdict = Verdict()
        for check in checks:
            if check.cap is not None:
                self._budgets[check.budget_key][1] += check.reserve
            counts = []
            for kind, limit, need in (("rpm", check.rpm, 1), ("tpm", check.tpm, check.tokens)):
                if limit is None:
                    counts += [0, 0]
                    continue
                window = self._windows[f"{check.scope}:{kind}"]
                window.add(now, need)
                counts += [window.total, window.reset(now)]
            verdict.windows.append(Window(*counts))
        return verdict

    async def load_spent(self, check: Check, spent: int) -> None:
        prefix = f"tg:budget:{check.scope}:"
        for key in [k for k in self._budgets if k.startswith(prefix) and k != check.budget_key]:
            del self._budgets[key]  # an earlier period's
        self._budgets.setdefault(check.budget_key, [spent, 0])

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        self.settle_now(checks, second, tokens, cost)

    async def give_back(self, checks: list[Check], second: int, hold: int = 0) -> None:
        await self.settle(checks, second, 0, 0, hold)

    def settle_now(self, checks: list[Check], second: int, tokens: int, cost: int) -> None:
        for check in checks:
            if check.tpm is not None and tokens != check.tokens:
                window = self._windows.get(f"{check.scope}:tpm")
                if window is not None and second in window.buckets:
                    window.add(second, tokens - check.tokens)
            if check.cap is not None and (budget := self._budgets.get(check.budget_key)):
                budget[0] += cost
                budget[1] -= check.reserve

    def recent_counts(self, now: int) -> list[tuple[str, int, int]]:
        """(window, second, count) of the rate windows' last 60 seconds."""
        oldest = now - WINDOW_SECONDS + 1
        return [
            (name, second, count)
            for name, window in self._windows.items()
            for second, count in window.buckets.items()
            if second >= oldest and count
        ]

    async def aclose(self) -> None:
        pass


# --- Redis ---------------------------------------------------------------------------------------

_LUA_WINDOW = """
-- A window's buckets younger than ``oldest`` (older ones are deleted): their total and the
-- earliest one's second (nil: none). No sort: only a refusal needs the buckets in order.
local function window(key, oldest)
  local flat = redis.call('HGETALL', key)
  local total, first = 0, nil
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second < oldest then
      redis.call('HDEL', key, flat[i])
    else
      total = total + tonumber(flat[i + 1])
      if first == nil or second < first then first = second end
    end
  end
  return total, first
end
-- Seconds until enough of the window's buckets (pruned by ``window``) age out for ``need``.
local function retry_after(key, total, limit, need, now)
  local flat = redis.call('HGETALL', key)
  local buckets = {}
  for i = 1, #flat, 2 do buckets[#buckets + 1] = {tonumber(flat[i]), tonumber(flat[i + 1])} end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  local excess = total + need - limit
  for _, bucket in ipairs(buckets) do
    excess = excess - bucket[2]
    if excess <= 0 then return math.max(bucket[1] + 60 - now, 1) end
  end
  return 60
end
"""

ADMIT_LUA = (
    _LUA_WINDOW
    + """
-- KEYS: the epoch marker, then per check its request window, token window and budget hash.
-- ARGV: now, epoch, then per check: rpm, tpm, tokens, cap, reserve, ttl (-1: no such limit).
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return {'epoch', 0} end
local now = tonumber(ARGV[1])
local oldest = now - 59
local n = (#KEYS - 1) / 3
local windows = {}  -- window key -> {total, earliest second}, as the checks found them
for i = 0, n - 1 do
  local k, a = 1 + i * 3, 3 + i * 6
  local rpm, tpm, tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cap, reserve = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if cap >= 0 then
    local budget = redis.call('HMGET', KEYS[k + 3], 'spent', 'reserved')
    if not budget[1] then return {'load', i} end
    local spent, reserved = tonumber(budget[1]), tonumber(budget[2] or '0')
    if spent + reserved >= cap or spent + reserved + reserve > cap then
      return {'budget', i, 0, spent, reserved}
    end
  end
  for j, spec in ipairs({{'rpm', rpm, 1}, {'tpm', tpm, tokens}}) do
    if spec[2] >= 0 then
      local key = KEYS[k + j]
      local total, first = window(key, oldest)
      if total + spec[3] > spec[2] then
        return {spec[1], i, retry_after(key, total, spec[2], spec[3], now)}
      end
      windows[key] = {total, first}
    end
  end
end
local result = {'ok'}
for i = 0, n - 1 do
  local k, a = 1 + i * 3, 3 + i * 6
  local rpm, tpm, tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cap, reserve, ttl = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if cap >= 0 then
    redis.call('HINCRBY', KEYS[k + 3], 'reserved', reserve)
    redis.call('EXPIRE', KEYS[k + 3], ttl)
  end
  for j, spec in ipairs({{rpm, 1}, {tpm, tokens}}) do
    if spec[1] >= 0 then
      local key = KEYS[k + j]
      redis.call('HINCRBY', key, tostring(now), spec[2])
      redis.call('EXPIRE', key, 61)
      local seen = windows[key]
      local total, first = seen[1] + spec[2], seen[2]
      if first == nil or now < first then first = now end
      windows[key] = {total, first}
      result[#result + 1] = total
      result[#result + 1] = first + 60 - now
    else
      result[#result + 1] = 0
      result[#result + 1] = 0
    end
  end
end
return result
"""
)

SETTLE_LUA = """
-- KEYS: the epoch marker, then per check its token window and budget hash.
-- ARGV: epoch, second, tokens, cost, then per check: tpm?, estimated tokens, cap?, reserve, ttl.
-- A budget of another epoch is left alone: it was rebuilt from the ledger, which has the call.
-- The reservation is released even before the counter is loaded, since a process re-adds the
-- reservations of its calls in flight to a new epoch's counters before loading them.
local same_epoch = redis.call('GET', KEYS[1]) == ARGV[1]
local second, tokens, cost = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, (#KEYS - 1) / 2 - 1 do
  local k, a = 1 + i * 2, 5 + i * 5
  if tonumber(ARGV[a]) >= 0 and tokens ~= tonumber(ARGV[a + 1])
     and redis.call('HEXISTS', KEYS[k + 1], second) == 1 then
    redis.call('HINCRBY', KEYS[k + 1], second, tokens - tonumber(ARGV[a + 1]))
  end
  if same_epoch and tonumber(ARGV[a + 2]) >= 0 then
    -- 0 - x, not -x: Lua makes -0 of a reservation of 0, which HINCRBY refuses as no integer
    redis.call('HINCRBY', KEYS[k + 2], 'reserved', 0 - tonumber(ARGV[a + 3]))
    if redis.call('HEXISTS', KEYS[k + 2], 'spent') == 1 then
      redis.call('HINCRBY', KEYS[k + 2], 'spent', cost)
    end
    redis.call('EXPIRE', KEYS[k + 2], tonumber(ARGV[a + 4]))
  end
end
return 1
"""

LOAD_LUA = """
-- KEYS: the epoch marker, the budget hash. ARGV: epoch, spent, ttl.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSETNX', KEYS[2], 'spent', ARGV[2])
redis.call('HSETNX', KEYS[2], 'reserved', 0)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

RESERVE_LUA = """
-- KEYS: the epoch marker, then budget hashes. ARGV: epoch, then per hash: reserve, ttl.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[i * 2 - 2])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[i * 2 - 1]))
end
return 1
"""

RENEW_EPOCH_LUA = """
-- KEYS: the epoch marker. ARGV: the epoch the caller knew, a new one.
-- No marker (Redis lost its data) or still the one the caller knew: the new one. Else, another
-- process renewed it already: that one.
local current = redis.call('GET', KEYS[1])
if not current or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
"""

EPOCH_KEY = "tg:epoch"


def _opt(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCounters:
    """Counters in Redis, shared by every gateway process; each operation is one Lua script.

    Budget counters are named after an epoch kept in ``tg:epoch``. A Redis that lost its data
    has no marker: the first process to notice starts a new epoch, and every process then
    loads the budgets of the new epoch from the ledger, as for a scope seen the first time.
    A process back from a Redis outage starts one too (``gateway.limits.resilient_counters``).
    ``timeout`` bounds each operation (connect and reply), with no retry."""

    counts_at_once = False

    def __init__(self, url: str, timeout: float | None = None) -> None:
        import redis.asyncio as redis  # only when REDIS_URL is set
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client: Any = redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self.epoch = ""
        self._pipe = Pipe.for_url(url, timeout)  # a call's two scripts (None: redis-py's)
        self._admit = self.client.register_script(ADMIT_LUA)
        self._settle = self.client.register_script(SETTLE_LUA)
        self._load = self.client.register_script(LOAD_LUA)
        self._reserve = self.client.register_script(RESERVE_LUA)
        self._renew = self.client.register_script(RENEW_EPOCH_LUA)

    def budget_key(self, check: Check, epoch: str) -> str:
        return f"tg:budget:{epoch}:{check.scope}:{check.period}"

    async def renew_epoch(self, known: str) -> str:
        """Start a new epoch if Redis has none or still has ``known``; else adopt the current
        one (another call or process renewed it already)."""
        self.epoch = _text(await self._renew(keys=[EPOCH_KEY], args=[known, uuid.uuid4().hex]))
        return self.epoch

    async def admit(self, checks: list[Check], now: int) -> Verdict:
        for _ in range(3):  # another process may renew the epoch meanwhile: follow it
            epoch = self.epoch
            keys, args = self._admit_args(checks, now, epoch)
            reply = await self._run(self._admit, keys, args)
            kind = _text(reply[0])
            if kind == "epoch":
                await self.renew_epoch(epoch)
                continue
            numbers = [int(value) for value in reply[1:]]
            if kind != "ok":
                index, retry_after, spent, reserved = [*numbers, 0, 0, 0][:4]
                return Verdict(kind, index, retry_after, spent, reserved, epoch=epoch)
            windows = [Window(*numbers[i : i + 4]) for i in range(0, len(numbers), 4)]
            return Verdict(windows=windows, epoch=epoch)
        raise RedisError("the counters' epoch kept changing")

    def _admit_args(
        self, checks: list[Check], now: int, epoch: str
    ) -> tuple[list[str], list[int | str]]:
        keys = [EPOCH_KEY]
        args: list[int | str] = [now, epoch]
        for check in checks:
            keys += [
                f"tg:rl:{check.scope}:rpm",
                f"tg:rl:{check.scope}:tpm",
                self.budget_key(check, epoch),
            ]
            args += [
                _opt(check.rpm),
                _opt(check.tpm),
                check.tokens,
                _opt(check.cap),
                check.reserve,
                check.ttl,
            ]
        return keys, args

    async def load_spent(self, check: Check, spent: int) -> None:
        await self._load(
            keys=[EPOCH_KEY, self.budget_key(check, self.epoch)],
            args=[self.epoch, spent, check.ttl],
        )

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        await self.settle_in(self.epoch, checks, second, tokens, cost)

    async def give_back(self, checks: list[Check], second: int, hold: int = 0) -> None:
        await self.settle(checks, second, 0, 0, hold)

    async def settle_in(
        self, epoch: str, checks: list[Check], second: int, tokens: int, cost: int
    ) -> None:
        """``settle`` for a call admitted in ``epoch`` (its budgets are left alone if Redis has
        moved on to another). Nothing to send when no check has a budget and the call used the
        tokens it was counted for (or no check counts tokens), and no budget has a cost to count
        or a reservation to release: the script would change nothing."""
        if all(
            (c.cap is None or (cost == 0 and c.reserve == 0))
            and (c.tpm is None or c.tokens == tokens)
            for c in checks
        ):
            return
        keys = [EPOCH_KEY]
        args: list[int | str] = [epoch, second, tokens, cost]
        for check in checks:
            keys += [f"tg:rl:{check.scope}:tpm", self.budget_key(check, epoch)]
            args += [_opt(check.tpm), check.tokens, _opt(check.cap), check.reserve, check.ttl]
        await self._run(self._settle, keys, args)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """A script of every call: down the pipe, where there is one."""
        if self._pipe is None:
            return await script(keys=keys, args=args)
        return await self._pipe.script(script.sha, script.script, keys, args)

    async def reserve(self, checks: list[Check]) -> None:
        """Add the reservations of a call in flight to the current epoch's budgets."""
        budgets = [check for check in checks if check.cap is not None]
        if budgets:
            await self._reserve(
                keys=[EPOCH_KEY, *(self.budget_key(check, self.epoch) for check in budgets)],
                args=[self.epoch, *(n for c in budgets for n in (c.reserve, c.ttl))],
            )

    async def add_to_windows(self, counts: list[tuple[str, int, int]]) -> None:
        """Add (window, second, count) to the rate windows (named as MemoryCounters names them)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for window, second, count in counts:
                pipe.hincrby(f"tg:rl:{window}", str(second), count)
                pipe.expire(f"tg:rl:{window}", 61)
            await pipe.execute()

    async def aclose(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        await self.client.aclose()
