"""The two counter stores agree: Redis's Lua scripts give, call for call, the verdicts and rate
windows the in-process counters give (admissions, refusals and their Retry-After, what each
window has used and when it frees, budgets loaded, reserved and settled)."""

from __future__ import annotations

import random
from dataclasses import astuple, replace

import pytest
from support.redis_db import redis_url  # noqa: F401 - a fixture

from gateway.limits.counters import Check, MemoryCounters, RedisCounters, Verdict

START = 1_800_000_000  # the counters' clock, in seconds: the test sets it


def check(scope: str, **limits: int | None) -> Check:
    fields: dict[str, int | None] = {"rpm": None, "tpm": None, "cap": None, **limits}
    return Check(
        scope=scope,
        tokens=0,
        reserve=0,
        period="total",
        ttl=3600,
        **fields,  # type: ignore[arg-type]
    )


def outcome(verdict: Verdict) -> tuple[object, ...]:
    """What a caller learns of a verdict (not the store's own handle and epoch)."""
    windows = tuple(astuple(window) for window in verdict.windows)
    return (verdict.refusal, verdict.index, verdict.retry_after, verdict.spent,
            verdict.reserved, windows)  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_redis_gives_the_verdicts_and_windows_of_the_counters_in_memory(
    redis_url: str,  # noqa: F811 - the fixture
    seed: int,
) -> None:
    draw = random.Random(seed)
    scopes = [
        check("tenant:1", rpm=14, tpm=3_000, cap=150_000),
        check("key:1", rpm=8),
        check("key:2", tpm=1_500, cap=90_000),
    ]
    memory, redis = MemoryCounters(), RedisCounters(redis_url)
    admitted: list[tuple[list[Check], int]] = []
    outcomes = {"admitted": 0, "refused": set()}
    now = START
    try:
        for _ in range(600):
            now += draw.choice([0, 0, 0, 0, 1, 1, 1, 2, 5, 61])
            tokens = draw.randrange(0, 400)
            checks = [
                replace(c, tokens=tokens, reserve=draw.choice([0, *[draw.randrange(1, 900)] * 3]))
                for c in draw.sample(scopes, draw.randint(1, 2))
            ]
            verdicts = [await memory.admit(checks, now), await redis.admit(checks, now)]
            if verdicts[0].refusal == "load":  # the ledger's spent, as the policy loads it
                loading, spent = checks[verdicts[0].index], draw.randrange(0, 20_000)
                for store in (memory, redis):
                    await store.load_spent(loading, spent)
                continue
            assert outcome(verdicts[0]) == outcome(verdicts[1]), (now, checks)
            if verdicts[0].refusal is None:
                outcomes["admitted"] += 1
                admitted.append((checks, now))
            else:
                outcomes["refused"].add(verdicts[0].refusal)  # type: ignore[attr-defined]
            if admitted and draw.random() < 0.6:  # an earlier call ends
                ended, second = admitted.pop(draw.randrange(len(admitted)))
                used, cost = draw.randrange(0, 500), draw.randrange(0, 900)
                for store in (memory, redis):
                    await store.settle(ended, second, used, cost)
    finally:
        await redis.aclose()
    assert outcomes["admitted"] > 100
    assert outcomes["refused"] == {"rpm", "tpm", "budget"}, "every refusal was compared"


async def test_a_settlement_that_would_change_nothing_is_not_sent(
    redis_url: str,  # noqa: F811 - the fixture
) -> None:
    """A caller with a request rate only (no budget, no token rate) has nothing to settle: its
    call runs one script in Redis, not two. One with a budget settles."""
    redis = RedisCounters(redis_url)
    sent: list[str] = []
    run = redis._run

    async def counting(script: object, keys: list[str], args: list[object]) -> object:
        if script is redis._settle:
            sent.append(keys[1])  # the first check's token window
        return await run(script, keys, args)

    redis._run = counting  # type: ignore[method-assign]
    rate_only = [check("key:1", rpm=10)]
    with_budget = [check("tenant:1", cap=1_000, tpm=100)]
    try:
        assert (await redis.admit(rate_only, START)).refusal is None
        await redis.settle(rate_only, START, 0, 5)
        await redis.load_spent(with_budget[0], 0)
        assert (await redis.admit(with_budget, START)).refusal is None
        await redis.settle(with_budget, START, 0, 5)
    finally:
        await redis.aclose()
    assert sent == ["tg:rl:tenant:1:tpm"]  # the budget's settlement alone


def test_a_window_in_memory_keeps_what_a_count_of_its_seconds_gives_the_clock_going_back_too() -> (
    None
):
    """``_Window`` keeps its total and its oldest second as counts come (the clock sometimes
    stepping back, as a wall clock may) and go: at every step, what summing its seconds afresh
    gives, as the counters did before it kept them."""
    from gateway.limits.counters import WINDOW_SECONDS, _Window

    draw = random.Random(7)
    window, seconds = _Window(), {}  # the same counts, kept plainly
    now = START
    for _ in range(3000):
        now += draw.choice([0, 0, 1, 1, 2, 7, 61, -1, -3])  # a step back now and then
        window.at(now)
        seconds = {s: c for s, c in seconds.items() if s >= now - WINDOW_SECONDS + 1}
        assert list(window.buckets) == sorted(seconds) and window.buckets == seconds
        assert window.total == sum(seconds.values())
        assert window.reset(now) == (min(seconds) + WINDOW_SECONDS - now if seconds else 0)
        count = draw.randrange(1, 50)
        window.add(now, count)
        seconds[now] = seconds.get(now, 0) + count
        if draw.random() < 0.3:  # a settlement: a second still kept gets more or fewer
            second = draw.choice(list(seconds))
            delta = draw.randrange(-seconds[second], 20)
            window.add(second, delta)
            seconds[second] += delta
    assert window.total == sum(seconds.values())
