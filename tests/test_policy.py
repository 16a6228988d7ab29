"""Allow-lists, budgets and rate limits, in process: the upstream faked at the HTTP boundary,
the counters in memory and (with REDIS_URL) in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import orjson
import pytest
from django.test import AsyncClient
from support.calls import ChatCalls
from support.inprocess import api_client
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import TenantKey, ledger_rows
from gateway.limits.counters import Check, MemoryCounters, RedisCounters, Verdict
from gateway.limits.policy import Policy
from gateway.models import UsageRecord
from gateway.runtime import Runtime
from gateway.tenants import auth

USAGE = {"prompt_tokens": 100, "completion_tokens": 500, "total_tokens": 600}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-gpt",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": USAGE,
}


def body(model: str = "gpt-test", max_tokens: int | None = 1000, chars: int = 400) -> bytes:
    data: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "x" * chars}],
    }
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    return orjson.dumps(data)


class Upstream:
    """Counts the calls that reached it; answers with COMPLETION (600 tokens, $0.0011)."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.release is not None:
            await self.release.wait()
        return httpx.Response(200, content=orjson.dumps(COMPLETION))


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Callable[[], Policy]:
    if request.param == "memory":
        return lambda: Policy(MemoryCounters())
    url = request.getfixturevalue("redis_url")
    return lambda: Policy(RedisCounters(url))


def install(
    gateway_runtime, backend: Callable[[], Policy] | None = None
) -> tuple[Runtime, Upstream]:
    upstream = Upstream()
    current: Runtime = gateway_runtime(upstream)
    if backend is not None:
        current.policy = backend()
    return current, upstream


async def call(current: Runtime, who: TenantKey, data: bytes) -> tuple[int, dict, dict]:
    caller = await auth.authenticate(who.raw)
    response = await ChatCalls(current).chat(caller, data)
    await current.policy.drain()  # Redis settles in the background; a client may not wait
    content = b"".join([response.content]) if hasattr(response, "content") else b""
    return response.status_code, orjson.loads(content), dict(response.headers)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - polling the state of other tasks
        await asyncio.sleep(0.01)


def set_limits(who: TenantKey, on: str = "tenant", **fields: object) -> None:
    target = who.tenant if on == "tenant" else who.key
    for name, value in fields.items():
        setattr(target, name, value)
    target.save()
    auth._key_cache.clear()


# --- budgets -----------------------------------------------------------------------------------

RESERVATION = Decimal("0.0021")  # 100 prompt tokens at $1/Mtok + 1000 max_tokens at $2/Mtok
REAL_COST = Decimal("0.0011")  # 100 + 500 tokens


async def test_budget_holds_under_200_concurrent_calls(
    tenants: dict[str, TenantKey], gateway_runtime, backend
) -> None:
    """Room for exactly 7 reservations: 7 calls go upstream, 193 get 429 insufficient_quota, and
    the spending ends within the cap. The upstream holds the 7 until all 200 are decided, so no
    settlement frees room meanwhile."""
    alice, bob = tenants["alice"], tenants["bob"]
    already = Decimal("0.5")
    await UsageRecord.objects.acreate(
        tenant=alice.tenant,
        api_key=alice.key,
        request_id="old",
        requested_model="gpt-test",
        cost_usd=already,
        status_code=200,
        latency_ms=1,
        created_at=datetime.now(UTC),
    )
    cap = already + 7 * RESERVATION
    await asyncio.to_thread(set_limits, alice, budget_usd=cap, budget_period="monthly")
    current, upstream = install(gateway_runtime, backend)
    upstream.release = asyncio.Event()
    caller = await auth.authenticate(alice.raw)
    service = ChatCalls(current)
    tasks = [asyncio.create_task(service.chat(caller, body())) for _ in range(200)]
    await until(lambda: len(upstream.calls) + sum(task.done() for task in tasks) == 200)
    assert len(upstream.calls) == 7
    upstream.release.set()
    responses = await asyncio.gather(*tasks)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 7 and statuses.count(429) == 193
    refused = orjson.loads(next(r.content for r in responses if r.status_code == 429))
    assert refused["error"]["type"] == "insufficient_quota"
    assert refused["error"]["code"] == "insufficient_quota"
    await current.policy.drain()

    rows = [row for row in await asyncio.to_thread(ledger_rows, current) if row.request_id != "old"]
    assert len(rows) == 200  # every call leaves its row, refused ones too
    spent = already + sum((row.cost_usd for row in rows), Decimal(0))
    assert spent == already + 7 * REAL_COST <= cap
    # The counter agrees with the ledger: $0.0070 left; one at a time, each settling at $0.0011,
    # calls are admitted while $0.0021 is left: 5 more, then the budget refuses.
    statuses = [(await call(current, alice, body()))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert already + 12 * REAL_COST <= cap
    # bob's calls are not alice's budget.
    assert (await call(current, bob, body()))[0] == 200


async def test_a_spent_daily_key_budget_refuses_before_the_upstream(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    alice = tenants["alice"]
    await UsageRecord.objects.acreate(
        tenant=alice.tenant,
        api_key=alice.key,
        request_id="old",
        requested_model="gpt-test",
        cost_usd=Decimal("1"),
        status_code=200,
        latency_ms=1,
    )
    await asyncio.to_thread(
        set_limits, alice, on="key", budget_usd=Decimal("1"), budget_period="daily"
    )
    current, upstream = install(gateway_runtime)
    status, data, _ = await call(current, alice, body(max_tokens=1))
    assert status == 429 and data["error"]["code"] == "insufficient_quota"
    assert "daily budget" in data["error"]["message"]
    assert upstream.calls == []
    rows = await asyncio.to_thread(ledger_rows, current)
    assert [(row.status_code, row.error_type) for row in rows[1:]] == [(429, "insufficient_quota")]


async def test_a_total_budget_without_max_tokens_reserves_the_default(
    tenants: dict[str, TenantKey], gateway_runtime, settings
) -> None:
    settings.TOLLGATE_DEFAULT_RESERVE_TOKENS = 1000
    alice = tenants["alice"]
    # Room for one default reservation ($0.0021), not two.
    await asyncio.to_thread(set_limits, alice, budget_usd=Decimal("0.004"), budget_period="total")
    current, upstream = install(gateway_runtime)
    upstream.release = asyncio.Event()
    caller = await auth.authenticate(alice.raw)
    first = asyncio.create_task(ChatCalls(current).chat(caller, body(max_tokens=None)))
    await until(lambda: len(upstream.calls) == 1)
    second = await ChatCalls(current).chat(caller, body(max_tokens=None))
    assert second.status_code == 429
    upstream.release.set()
    assert (await first).status_code == 200
    assert (await call(current, alice, body(max_tokens=None)))[0] == 200  # settled: room again


# --- rate limits ---------------------------------------------------------------------------------


async def test_requests_per_minute(tenants: dict[str, TenantKey], gateway_runtime, backend) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    await asyncio.to_thread(set_limits, alice, rpm_limit=3)
    current, upstream = install(gateway_runtime, backend)
    results = [await call(current, alice, body()) for _ in range(4)]
    assert [status for status, _, _ in results] == [200, 200, 200, 429]
    _, error, headers = results[3]
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert len(upstream.calls) == 3
    assert (await call(current, bob, body()))[0] == 200  # bob has no limit of alice's


async def test_a_key_limit_narrows_its_tenant_limit(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    alice = tenants["alice"]
    await asyncio.to_thread(set_limits, alice, rpm_limit=10)
    await asyncio.to_thread(set_limits, alice, on="key", rpm_limit=2)
    current, _ = install(gateway_runtime)
    statuses = [(await call(current, alice, body()))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_tokens_per_minute_count_the_estimate_then_the_real_tokens(
    tenants: dict[str, TenantKey], gateway_runtime, backend
) -> None:
    """Admission counts prompt (100) + max_tokens (1000) = 1100; the call really used 600."""
    alice = tenants["alice"]
    await asyncio.to_thread(set_limits, alice, on="key", tpm_limit=2500)
    current, upstream = install(gateway_runtime, backend)
    upstream.release = asyncio.Event()
    caller = await auth.authenticate(alice.raw)
    service = ChatCalls(current)
    held = [asyncio.create_task(service.chat(caller, body())) for _ in range(2)]
    await until(lambda: len(upstream.calls) == 2)
    refused = await service.chat(caller, body())  # 2200 + 1100 > 2500
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-tokens"] == "2500"
    assert "tokens per minute" in orjson.loads(refused.content)["error"]["message"]
    upstream.release.set()
    await asyncio.gather(*held)
    await current.policy.drain()
    # Settled at 600 each: 1200 + 1100 <= 2500.
    assert (await call(current, alice, body()))[0] == 200


# --- allow-lists ---------------------------------------------------------------------------------


async def test_a_model_off_the_allow_list_is_403_and_never_sent(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    await asyncio.to_thread(set_limits, alice, allowed_models="gpt-test,echo")
    current, upstream = install(gateway_runtime)
    status, data, _ = await call(current, alice, body("slow"))
    assert status == 403
    assert data["error"]["code"] == "model_not_allowed" and data["error"]["param"] == "model"
    assert upstream.calls == []
    assert (await call(current, alice, body("gpt-test")))[0] == 200
    assert (await call(current, alice, body("fake/fake-gpt")))[0] == 200  # the same model
    assert (await call(current, bob, body("slow")))[0] == 200  # bob's list is his own
    rows = await asyncio.to_thread(ledger_rows, current)
    assert (rows[0].status_code, rows[0].error_type) == (403, "model_not_allowed")


async def test_a_key_list_narrows_the_tenant_list_and_models_lists_only_those(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    await asyncio.to_thread(set_limits, alice, allowed_models="gpt-test,echo,embed-test")
    await asyncio.to_thread(set_limits, alice, on="key", allowed_models="echo,embed-test,slow")
    current, _ = install(gateway_runtime)
    assert (await call(current, alice, body("gpt-test")))[0] == 403  # not on the key's list
    assert (await call(current, alice, body("slow")))[0] == 403  # not on the tenant's
    assert (await call(current, alice, body("echo")))[0] == 200
    client = AsyncClient()
    listed = await client.get("/v1/models", headers={"authorization": f"Bearer {alice.raw}"})
    assert [model["id"] for model in listed.json()["data"]] == ["echo", "embed-test"]
    everything = await client.get("/v1/models", headers={"authorization": f"Bearer {bob.raw}"})
    assert len(everything.json()["data"]) > 10
    hidden = await client.get("/v1/models/slow", headers={"authorization": f"Bearer {alice.raw}"})
    assert hidden.status_code == 404
    shown = await client.get("/v1/models/echo", headers={"authorization": f"Bearer {alice.raw}"})
    assert shown.status_code == 200
    embed = await client.post(
        "/v1/embeddings",
        orjson.dumps({"model": "slow", "input": "hi"}),
        content_type="application/json",
        headers={"authorization": f"Bearer {alice.raw}"},
    )
    assert embed.status_code == 403


async def test_messages_refuses_in_anthropic_shape(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    alice = tenants["alice"]
    await asyncio.to_thread(set_limits, alice, allowed_models="gpt-test")
    _, upstream = install(gateway_runtime)
    response = await AsyncClient().post(
        "/v1/messages",
        orjson.dumps(
            {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        ),
        content_type="application/json",
        headers={"x-api-key": alice.raw},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "error"
    assert upstream.calls == []


async def test_a_call_cancelled_while_its_admission_is_counted_leaves_no_reservation() -> None:
    # Regression: a client gone during the counter store's round trip (Redis) left the call's
    # reservation behind, shrinking the budget until the counter expired.
    from gateway.limits.policy import CallerLimits, Estimate, ScopeLimits

    class SlowCounters(MemoryCounters):
        counts_at_once = False  # it awaits in admit, as Redis's round trip

        def __init__(self) -> None:
            super().__init__()
            self.counting = asyncio.Event()
            self.finish = asyncio.Event()

        async def admit(self, checks: list[Check], now: int) -> Verdict:
            verdict = self.admit_now(checks, now)  # counted by the server...
            self.counting.set()
            await self.finish.wait()  # ...while its reply is still on the way
            return verdict

    store = SlowCounters()
    policy = Policy(store)
    limits = CallerLimits(scopes=(ScopeLimits("key:1", None, None, Decimal("0.000001"), "total"),))
    estimate = Estimate(0, Decimal("0.0000006"))  # 60 of the budget's 100 units of 1e-8 USD
    check = policy._check(limits.scopes[0], estimate, datetime.now(UTC))
    await store.load_spent(check, 0)

    waiting = asyncio.ensure_future(policy.admit(limits, estimate))
    await store.counting.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store.finish.set()
    await asyncio.wait_for(until(lambda: store._budgets[check.budget_key] == [0, 0]), 5)
    store.counting.clear()
    assert await policy.admit(limits, estimate) is not None  # the whole budget is there again


FALLING_BACK = """
[models."gpt-falls-back"]
provider = "fake"
upstream_model = "broken"
fallbacks = ["gpt-test"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[router]
backoff_base_seconds = 0.0
"""


def install_falling_back(
    gateway_runtime, backend: Callable[[], Policy], config: str = FALLING_BACK
) -> tuple[Runtime, Upstream]:
    """A runtime of ``config`` whose upstream model ``broken`` answers 500 (its calls fall
    back); every other model is answered by the ``Upstream``."""
    upstream = Upstream()

    async def broken_first(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content)["model"] == "broken":
            return httpx.Response(500, json={"error": {"message": "down"}})
        return await upstream(request)

    current: Runtime = gateway_runtime(broken_first, extra_config=config)
    current.policy = backend()
    return current, upstream


async def test_a_call_that_falls_back_is_one_request_per_minute(
    tenants: dict[str, TenantKey], gateway_runtime, backend
) -> None:
    """A fallback is admitted again on its model's prices: that admission counted the call's
    request a second time, so a caller with an RPM of 2 was refused its second call (429) after
    one that fell back, and a caller with an RPM of 1 had a call that fell back refused. The
    request counts once; the tokens and the budget are the fallback's."""
    alice = tenants["alice"]
    await asyncio.to_thread(set_limits, alice, rpm_limit=2)
    current, upstream = install_falling_back(gateway_runtime, backend)
    headers = {"authorization": f"Bearer {alice.raw}", "content-type": "application/json"}
    async with api_client() as client:
        answers = [
            await client.post(
                "/v1/chat/completions", headers=headers, content=body("gpt-falls-back")
            )
            for _ in range(3)
        ]
    await current.policy.drain()
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert [answer.headers.get("x-ratelimit-remaining-requests") for answer in answers] == [
        "1",
        "0",
        "0",
    ]
    assert len(upstream.calls) == 2  # the fallback's; the broken model's were retried first
    rows = await asyncio.to_thread(ledger_rows, current)
    assert [(row.status_code, row.fallback) for row in rows] == [
        (200, True),
        (200, True),
        (429, False),
    ]


@pytest.mark.parametrize(
    "limit", [{"tpm_limit": 1500}, {"budget_usd": Decimal("0.003"), "budget_period": "total"}]
)
async def test_a_call_that_falls_back_is_admitted_on_its_fallbacks_tokens_and_cost_alone(
    tenants: dict[str, TenantKey], gateway_runtime, backend, limit: dict[str, object]
) -> None:
    """The fallback was admitted while the first model's admission still held the call's
    estimated tokens (1100) and its reservation ($0.0021): a caller with room for the call once
    (a TPM of 1500, a budget of $0.003) had its fallback refused, and got the first model's
    failure (502) instead of the fallback's answer. The first admission is released before the
    fallback's is counted."""
    await assert_the_fallback_serves(tenants["alice"], limit, gateway_runtime, backend)


async def assert_the_fallback_serves(
    alice: TenantKey,
    limit: dict[str, object],
    gateway_runtime,
    backend: Callable[[], Policy],
) -> None:
    """A call with room for itself once under ``limit`` falls back, and its fallback serves it:
    200, one upstream call (the fallback's), one row at the fallback's cost."""
    await asyncio.to_thread(set_limits, alice, **limit)
    current, upstream = install_falling_back(gateway_runtime, backend)
    headers = {"authorization": f"Bearer {alice.raw}", "content-type": "application/json"}
    async with api_client() as client:
        answer = await client.post(
            "/v1/chat/completions", headers=headers, content=body("gpt-falls-back")
        )
    await current.policy.drain()
    assert answer.status_code == 200, answer.text
    assert len(upstream.calls) == 1  # the fallback's
    rows = await asyncio.to_thread(ledger_rows, current)
    assert [(row.status_code, row.fallback, row.cost_usd) for row in rows] == [
        (200, True, REAL_COST)
    ]


class LaggingSettlements(MemoryCounters):
    """Counters whose settlements land late, as a Redis release sent on one connection may
    arrive after an admission sent afterwards on another."""

    counts_at_once = False

    async def admit(self, checks: list[Check], now: int) -> Verdict:
        return self.admit_now(checks, now)

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        await asyncio.sleep(0.05)
        self.settle_now(checks, second, tokens, cost)


@pytest.mark.parametrize(
    "limit", [{"tpm_limit": 1500}, {"budget_usd": Decimal("0.003"), "budget_period": "total"}]
)
async def test_a_fallback_is_admitted_only_once_its_first_admission_is_given_back(
    tenants: dict[str, TenantKey], gateway_runtime, limit: dict[str, object]
) -> None:
    """The first admission's release was sent, not awaited, before the fallback's admission:
    where the release arrived second (Redis, under load), the fallback was refused for room
    the call itself still held, and the caller got the first model's 502. The release is
    awaited."""
    await assert_the_fallback_serves(
        tenants["alice"], limit, gateway_runtime, lambda: Policy(LaggingSettlements())
    )


FALLING_BACK_TO_DEARER = (
    FALLING_BACK
    + """
[models."gpt-dear"]
provider = "fake"
upstream_model = "fake-gpt-dear"
input_per_mtok = 10.0
output_per_mtok = 20.0

[models."gpt-falls-back-dearly"]
provider = "fake"
upstream_model = "broken"
fallbacks = ["gpt-dear"]
input_per_mtok = 1.0
output_per_mtok = 2.0
"""
)


async def test_a_fallback_refused_by_the_budget_is_not_recorded_as_serving_the_call(
    tenants: dict[str, TenantKey], gateway_runtime, backend
) -> None:
    """A call moved to its fallback before the fallback was admitted: when the caller's budget
    refused it ($0.021 to reserve on its prices, over $0.01), the call failed with its first
    model's error, but its row and its answer said the fallback had served it (its model, its
    upstream model), an upstream it never reached. They name the model that failed."""
    alice = tenants["alice"]
    await asyncio.to_thread(set_limits, alice, budget_usd=Decimal("0.01"), budget_period="total")
    current, upstream = install_falling_back(gateway_runtime, backend, FALLING_BACK_TO_DEARER)
    headers = {"authorization": f"Bearer {alice.raw}", "content-type": "application/json"}
    async with api_client() as client:
        answer = await client.post(
            "/v1/chat/completions", headers=headers, content=body("gpt-falls-back-dearly")
        )
    await current.policy.drain()
    assert answer.status_code == 502
    assert answer.headers["x-tollgate-model"] == "gpt-falls-back-dearly"
    assert upstream.calls == []
    rows = await asyncio.to_thread(ledger_rows, current)
    assert [(row.served_model, row.upstream_model, row.fallback) for row in rows] == [
        ("gpt-falls-back-dearly", "broken", False)
    ]


async def test_a_token_count_is_not_refused_for_what_an_answer_would_cost(
    tenants: dict[str, TenantKey], gateway_runtime, backend
) -> None:
    """``/v1/messages/count_tokens`` costs nothing and is held to the caller's allow-lists and
    rate limits, but its admission reserved a call's default answer (4096 tokens, $0.0082 on
    gpt-test): a tenant with $0.005 of budget left had its token counts refused (429
    insufficient_quota, "less than this call may cost"). No budget holds a count; its rate
    limits still do."""
    alice = tenants["alice"]
    await asyncio.to_thread(
        set_limits, alice, rpm_limit=2, budget_usd=Decimal("0.005"), budget_period="total"
    )
    current, upstream = install(gateway_runtime, backend)
    count = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    async with api_client() as client:
        answers = [
            await client.post(
                "/v1/messages/count_tokens",
                headers={"x-api-key": alice.raw, "content-type": "application/json"},
                content=count,
            )
            for _ in range(3)
        ]
    await current.policy.drain()
    assert [answer.status_code for answer in answers] == [200, 200, 429], answers[0].text
    assert answers[0].json()["input_tokens"] > 0
    assert answers[2].json()["error"]["type"] == "rate_limit_error"
    assert upstream.calls == []  # counted by the gateway: gpt-test is no Anthropic model
    assert await asyncio.to_thread(ledger_rows, current) == []
