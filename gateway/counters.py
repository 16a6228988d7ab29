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

from dataclasses import dataclass, field
from typing import Any, Protocol

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


class CounterStore(Protocol):
    async def admit(self, checks: list[Check], now: int) -> Verdict: ...

    async def load_spent(self, check: Check, spent: int) -> None:
        """Start the budget counter at ``spent`` unless another caller did meanwhile."""

    async def settle(self, checks: list[Check], second: int, tokens: int, cost: int) -> None:
        """The call admitted at ``second`` used ``tokens`` (vs ``check.tokens``) and cost
        ``cost``: release its reservation and count what it really used."""

    async def aclose(self) -> None: ...


def _retry_after(buckets: dict[int, int], total: int, limit: int, need: int, now: int) -> int:
    excess = total + need - limit
    for second in sorted(buckets):
        excess -= buckets[second]
        if excess <= 0:
            return max(second + WINDOW_SECONDS - now, 1)
    return WINDOW_SECONDS


def _reset(buckets: dict[int, int], now: int) -> int:
    return min(buckets) + WINDOW_SECONDS - now if buckets else 0


class MemoryCounters:
    """Counters of one process: the default, when REDIS_URL is not set."""

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._budgets: dict[str, list[int]] = {}  # key -> [spent, reserved]

    def _window(self, key: str, now: int) -> tuple[dict[int, int], int]:
        buckets = self._windows.setdefault(key, {})
        oldest = now - WINDOW_SECONDS + 1
        for second in [s for s in buckets if s < oldest]:
            del buckets[second]
        return buckets, sum(buckets.values())

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
                buckets, total = self._window(f"{check.scope}:{kind}", now)
                if total + need > limit:
                    return Verdict(kind, index, _retry_after(buckets, total, limit, need, now))
        verdict = Verdict()
        for check in checks:
            if check.cap is not None:
                self._budgets[check.budget_key][1] += check.reserve
            counts = []
            for kind, limit, need in (("rpm", check.rpm, 1), ("tpm", check.tpm, check.tokens)):
                if limit is None:
                    counts += [0, 0]
                    continue
                buckets = self._windows[f"{check.scope}:{kind}"]
                buckets[now] = buckets.get(now, 0) + need
                counts += [sum(buckets.values()), _reset(buckets, now)]
            verdict.windows.append(Window(*counts))
        return verdict

    async def load_spent(self, check: Check, spent: int) -> None:
        prefix = f"tg:budget:{check.scope}:"
        for key in [k for k in self._budgets if k.startswith(prefix) and k != check.budget_key]:
            del self._budgets[key]  # an earlier period's
        self._budgets.setdefault(check.budget_key, [spent, 0])

    async def settle(self, checks: list[Check], second: int, tokens: int, cost: int) -> None:
        self.settle_now(checks, second, tokens, cost)

    def settle_now(self, checks: list[Check], second: int, tokens: int, cost: int) -> None:
        for check in checks:
            if check.tpm is not None and tokens != check.tokens:
                buckets = self._windows.get(f"{check.scope}:tpm", {})
                if second in buckets:
                    buckets[second] += tokens - check.tokens
            if check.cap is not None and (budget := self._budgets.get(check.budget_key)):
                budget[0] += cost
                budget[1] -= check.reserve

    async def aclose(self) -> None:
        pass


# --- Redis ---------------------------------------------------------------------------------------

_LUA_WINDOW = """
local function window(key, oldest)
  local flat = redis.call('HGETALL', key)
  local total, buckets = 0, {}
  for i = 1, #flat, 2 do
    local second, count = tonumber(flat[i]), tonumber(flat[i + 1])
    if second < oldest then
      redis.call('HDEL', key, flat[i])
    else
      total = total + count
      buckets[#buckets + 1] = {second, count}
    end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return total, buckets
end
local function retry_after(buckets, total, limit, need, now)
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
-- KEYS: per check, its request window, token window and budget hash.
-- ARGV: now, then per check: rpm, tpm, tokens, cap, reserve, ttl (-1: no such limit).
local now = tonumber(ARGV[1])
local oldest = now - 59
local n = #KEYS / 3
for i = 0, n - 1 do
  local a = 2 + i * 6
  local rpm, tpm, tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cap, reserve = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if cap >= 0 then
    local spent = redis.call('HGET', KEYS[i * 3 + 3], 'spent')
    if not spent then return {'load', i} end
    spent = tonumber(spent)
    local reserved = tonumber(redis.call('HGET', KEYS[i * 3 + 3], 'reserved') or '0')
    if spent + reserved >= cap or spent + reserved + reserve > cap then
      return {'budget', i, 0, spent, reserved}
    end
  end
  if rpm >= 0 then
    local total, buckets = window(KEYS[i * 3 + 1], oldest)
    if total + 1 > rpm then return {'rpm', i, retry_after(buckets, total, rpm, 1, now)} end
  end
  if tpm >= 0 then
    local total, buckets = window(KEYS[i * 3 + 2], oldest)
    if total + tokens > tpm then
      return {'tpm', i, retry_after(buckets, total, tpm, tokens, now)}
    end
  end
end
local result = {'ok'}
for i = 0, n - 1 do
  local a = 2 + i * 6
  local rpm, tpm, tokens = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cap, reserve, ttl = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if cap >= 0 then
    redis.call('HINCRBY', KEYS[i * 3 + 3], 'reserved', reserve)
    redis.call('EXPIRE', KEYS[i * 3 + 3], ttl)
  end
  for k, spec in ipairs({{rpm, 1}, {tpm, tokens}}) do
    if spec[1] >= 0 then
      local key = KEYS[i * 3 + k]
      redis.call('HINCRBY', key, tostring(now), spec[2])
      redis.call('EXPIRE', key, 61)
      local total, buckets = window(key, oldest)
      result[#result + 1] = total
      result[#result + 1] = buckets[1][1] + 60 - now
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
-- KEYS: per check, its token window and budget hash.
-- ARGV: second, tokens, cost, then per check: tpm?, estimated tokens, cap?, reserve, ttl.
local second, tokens, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, #KEYS / 2 - 1 do
  local a = 4 + i * 5
  if tonumber(ARGV[a]) >= 0 and tokens ~= tonumber(ARGV[a + 1])
     and redis.call('HEXISTS', KEYS[i * 2 + 1], second) == 1 then
    redis.call('HINCRBY', KEYS[i * 2 + 1], second, tokens - tonumber(ARGV[a + 1]))
  end
  if tonumber(ARGV[a + 2]) >= 0 and redis.call('EXISTS', KEYS[i * 2 + 2]) == 1 then
    redis.call('HINCRBY', KEYS[i * 2 + 2], 'spent', cost)
    redis.call('HINCRBY', KEYS[i * 2 + 2], 'reserved', -tonumber(ARGV[a + 3]))
    redis.call('EXPIRE', KEYS[i * 2 + 2], tonumber(ARGV[a + 4]))
  end
end
return 1
"""

LOAD_LUA = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'reserved', 0)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def _opt(value: int | None) -> int:
    return -1 if value is None else value


class RedisCounters:
    """Counters in Redis, shared by every gateway process; each operation is one Lua script."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # only when REDIS_URL is set

        self.client: Any = redis.from_url(url)
        self._admit = self.client.register_script(ADMIT_LUA)
        self._settle = self.client.register_script(SETTLE_LUA)
        self._load = self.client.register_script(LOAD_LUA)

    async def admit(self, checks: list[Check], now: int) -> Verdict:
        keys: list[str] = []
        args: list[int] = [now]
        for check in checks:
            keys += [f"tg:rl:{check.scope}:rpm", f"tg:rl:{check.scope}:tpm", check.budget_key]
            args += [
                _opt(check.rpm),
                _opt(check.tpm),
                check.tokens,
                _opt(check.cap),
                check.reserve,
                check.ttl,
            ]
        reply = await self._admit(keys=keys, args=args)
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        numbers = [int(value) for value in reply[1:]]
        if kind != "ok":
            index, retry_after, spent, reserved = [*numbers, 0, 0, 0][:4]
            return Verdict(kind, index, retry_after, spent, reserved)
        windows = [Window(*numbers[i : i + 4]) for i in range(0, len(numbers), 4)]
        return Verdict(windows=windows)

    async def load_spent(self, check: Check, spent: int) -> None:
        await self._load(keys=[check.budget_key], args=[spent, check.ttl])

    async def settle(self, checks: list[Check], second: int, tokens: int, cost: int) -> None:
        keys: list[str] = []
        args: list[int] = [second, tokens, cost]
        for check in checks:
            keys += [f"tg:rl:{check.scope}:tpm", check.budget_key]
            args += [_opt(check.tpm), check.tokens, _opt(check.cap), check.reserve, check.ttl]
        await self._settle(keys=keys, args=args)

    async def aclose(self) -> None:
        await self.client.aclose()
