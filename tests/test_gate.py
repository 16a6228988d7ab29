"""The worker's gate (gateway.calls.gate): at most ``limit`` calls work at once; calls back from
their upstream go before new arrivals; arrivals keep their order; a cancelled waiter gives its
place away."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from support.inprocess import api_client

from conftest import TenantKey
from gateway.calls.gate import Gate

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_arrivals_wait_in_order_and_continuing_calls_go_first() -> None:
    gate = Gate(2)
    order: list[str] = []

    async def call(name: str, continuing: bool = False) -> None:
        await gate.enter(continuing)
        order.append(name)

    await gate.enter()
    await gate.enter()
    assert gate.active == 2
    tasks = [asyncio.create_task(call(f"new{i}")) for i in range(3)]
    await settle()
    tasks.append(asyncio.create_task(call("back", continuing=True)))
    await settle()
    assert order == [] and gate.waiting == 4
    for _ in range(4):
        gate.leave()
        await settle()
    assert order == ["back", "new0", "new1", "new2"]
    assert gate.active == 2 and gate.waiting == 0
    gate.leave()
    gate.leave()
    assert gate.active == 0
    await asyncio.gather(*tasks)


async def test_a_new_arrival_does_not_overtake_those_waiting() -> None:
    gate = Gate(1)
    await gate.enter()
    waiting = asyncio.create_task(gate.enter())
    await settle()
    gate.leave()  # the place passes to the waiter, not to whoever comes next
    late = asyncio.create_task(gate.enter())
    await settle()
    assert waiting.done() and not late.done()
    gate.leave()
    await settle()
    assert late.done() and gate.active == 1


async def test_a_cancelled_waiter_leaves_the_queue_and_never_holds_a_place() -> None:
    gate = Gate(1)
    await gate.enter()
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await settle()
    first.cancel()
    await settle()
    assert gate.waiting == 1
    gate.leave()
    await settle()
    assert second.done() and gate.active == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_waiter_cancelled_as_it_is_handed_the_place_passes_it_on() -> None:
    gate = Gate(1)
    await gate.enter()
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await settle()
    gate.leave()  # hands the place to ``first``...
    first.cancel()  # ...which is cancelled before it runs again
    await settle()
    assert second.done() and gate.active == 1 and gate.waiting == 0


async def test_limit_zero_is_no_gate() -> None:
    gate = Gate(0)
    for _ in range(100):
        await gate.enter()
    gate.leave()
    assert gate.active == 0 and gate.waiting == 0


# --- the gate in the pipeline ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_calls_give_their_place_up_while_their_upstream_works(
    gateway_runtime: Any, tenants: dict[str, TenantKey]
) -> None:
    """A gate of one place, and an upstream that answers only once two calls reached it: had a
    call kept its place while its upstream worked, the second would never get there."""
    arrived: list[str] = []
    both = asyncio.Event()

    async def upstream(request: httpx.Request) -> httpx.Response:
        arrived.append(request.url.path)
        if len(arrived) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)
        return httpx.Response(200, json=COMPLETION)

    current = gateway_runtime(upstream)
    current.gate = Gate(1)
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with api_client() as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=body, headers=tenants[name].headers)
                for name in ("alice", "bob")
            )
        )
    assert [answer.status_code for answer in answers] == [200, 200]
    assert len(arrived) == 2
    assert current.gate.active == 0 and current.gate.waiting == 0


@pytest.mark.django_db(transaction=True)
async def test_a_failed_upstream_call_gives_its_place_back(
    gateway_runtime: Any, tenants: dict[str, TenantKey]
) -> None:
    current = gateway_runtime(lambda request: httpx.Response(400, json={"error": {}}))
    current.gate = Gate(1)
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with api_client() as client:
        for _ in range(3):
            answer = await client.post(
                "/v1/chat/completions", json=body, headers=tenants["alice"].headers
            )
            assert answer.status_code == 400
    assert current.gate.active == 0
