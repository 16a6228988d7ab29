"""What the tests that hold the limits to the ledger share (tests/test_limits_accounting.py,
tests/test_limits_concurrency.py, tests/test_limits_endpoints.py): upstreams that answer each
attempt of a call as planned (``Upstreams``; of many calls at once, ``MarkedUpstreams``), the
models chat and /v1/messages calls are made to and what such a call asks of the counters
(``PlannedCall``), a model of what the counters should hold (``Accounts``), the limits given to a
tenant and its key, new counters on each backend (``backend``), and what the counters do hold
(``counted``)."""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

import httpx
import orjson
import pytest

from conftest import TenantKey
from gateway.calls.metering import estimate_prompt_tokens
from gateway.limits.counters import WINDOW_SECONDS, Check, MemoryCounters, RedisCounters
from gateway.limits.policy import Policy, to_units
from gateway.limits.resilient_counters import ResilientCounters
from gateway.models import UsageRecord
from gateway.runtime import Runtime
from gateway.tenants import auth
from providers.config import ModelConfig
from providers.pricing import cost_of
from providers.types import Usage
from support.inprocess import ANTHROPIC_PATH
from support.redis_db import flush
from support.upstream_answers import (
    CHUNKS,
    COMPLETION,
    MESSAGE,
    MESSAGE_EVENTS,
    SECOND_HOST,
    SECOND_PROVIDERS,
    encoded,
)

# --- what the upstreams answer --------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What an upstream answers one attempt: ``status`` (200: an answer that used ``prompt``
    and ``completion`` tokens); a stream ``cut`` off by a broken connection after ``events`` of
    its events; an answer that ``hangs`` after ``events`` events (0: before its headers)
    until the client goes away; or a connection ``refused``."""

    status: int = 200
    prompt: int = 0
    completion: int = 0
    cut: bool = False
    hangs: bool = False
    events: int = 0
    refused: bool = False

    @property
    def retried(self) -> bool:
        """Whether the router retries the attempt, and falls back once every one failed so:
        its connection ``refused``, or a status it retries."""
        return self.refused or self.status in RETRIED


Answer = Callable[[httpx.Request, Attempt], httpx.Response]
"""An attempt's answer, whole, for the request (its path says the dialect)."""


def answer(path: str, stream: bool, attempt: Attempt) -> httpx.Response:
    """``attempt``'s answer, whole, in the dialect of the upstream's ``path``."""
    anthropic = "/messages" in path
    if attempt.status != 200:
        error = {"type": "api_error", "message": "no"}
        body = {"type": "error", "error": error} if anthropic else {"error": error}
        return httpx.Response(attempt.status, json=body)
    if path.endswith("/count_tokens"):
        return httpx.Response(200, json={"input_tokens": attempt.prompt})
    prompt, completion = attempt.prompt, attempt.completion
    usage = {"input_tokens": prompt, "output_tokens": completion}
    if not anthropic:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = prompt + completion
    if not stream:
        return httpx.Response(200, json={**(MESSAGE if anthropic else COMPLETION), "usage": usage})
    return httpx.Response(200, content=b"".join(streamed(anthropic, usage)))


def streamed(anthropic: bool, usage: dict[str, int]) -> list[bytes]:
    """A valid stream of the dialect, with ``usage``: Anthropic's input tokens at its start and
    its output tokens near its end, OpenAI's in the chunk before ``[DONE]``."""
    if anthropic:
        (_, start), *middle, (_, delta), stop = MESSAGE_EVENTS
        message = {**start["message"], "usage": {"input_tokens": usage["input_tokens"]}}
        ending = {**delta, "usage": {"output_tokens": usage["output_tokens"]}}
        events = [("message_start", {**start, "message": message}), *middle]
        events += [("message_delta", ending), stop]
    else:
        *chunks, (_, last), done = CHUNKS
        events = [*chunks, (None, {**last, "usage": usage}), done]
    return [encoded(event) for event in events]


def answer_attempt(request: httpx.Request, attempt: Attempt) -> httpx.Response:
    """``answer`` for the upstreams (``Upstreams``)."""
    stream = orjson.loads(request.content).get("stream") is True
    return answer(request.url.path, stream, attempt)


@dataclass
class Upstreams:
    """The upstreams of ``hosts``. Each answers the attempts it gets of a call with the call's
    ``Attempt``s for it, in order (the last one again for any more), through ``answer``, and
    counts them; one that hangs sets ``leave``: its client goes away."""

    answer: Answer
    hosts: tuple[str, ...]
    plans: dict[str, list[Attempt]] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    hung: bool = False

    def start(self, *plans: list[Attempt]) -> asyncio.Event:
        """A new call: the attempts of each host, in the order of ``hosts``."""
        self.plans = dict(zip(self.hosts, plans, strict=True))
        self.asked, self.hung = {}, False
        self.leave = asyncio.Event()
        return self.leave

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        plan = self.plans.get(host)
        assert plan, request.url
        asked = self.asked[host] = self.asked.get(host, 0) + 1
        attempt = plan[min(asked, len(plan)) - 1]
        if attempt.refused:
            raise httpx.ConnectError("connection refused", request=request)
        if attempt.hangs and attempt.events == 0:
            await self._hang()
        whole = self.answer(request, attempt)
        if not (attempt.cut or attempt.hangs):
            return whole
        sent = whole.content.split(b"\n\n")[: attempt.events]

        async def part_of_it() -> AsyncIterator[bytes]:
            for event in sent:
                yield event + b"\n\n"
            if attempt.hangs:
                await self._hang()
            raise httpx.ReadError("cut off")

        kind = {"content-type": whole.headers.get("content-type", "text/event-stream")}
        return httpx.Response(200, headers=kind, content=part_of_it())

    async def _hang(self) -> None:
        self.hung = True
        self.leave.set()
        await asyncio.sleep(3600)  # until the gateway lets go of the call


MARK = re.compile(rb"call#[0-9]+")
"""A call's mark, in its prompt (``mark``)."""


def mark(call: int) -> str:
    """The mark that starts the prompt of a batch's ``call``: its upstream attempts, in either
    dialect, carry it."""
    return f"call#{call} "


@dataclass
class MarkedUpstreams:
    """The upstreams of ``hosts`` for calls made at the same time: each call, found by the mark
    its prompt carries (``mark``), is answered by an ``Upstreams`` of its own, as planned for
    it, with its own count of attempts and its own client that leaves. A call's mark is the last
    one its upstream is sent: a continued response's is sent the conversation it continues
    first, the marks of the calls that made it included."""

    answer: Answer
    hosts: tuple[str, ...]
    calls: dict[str, Upstreams] = field(default_factory=dict)

    def start(self, plans: list[tuple[list[Attempt], ...]]) -> list[Upstreams]:
        """New calls, the n-th marked ``mark(n)``: the attempts of each host, in the order of
        ``hosts``, of each call; each call's upstreams, in the same order."""
        self.calls = {}
        for n, plan in enumerate(plans):
            upstreams = Upstreams(self.answer, self.hosts)
            upstreams.start(*plan)
            self.calls[mark(n).strip()] = upstreams
        return list(self.calls.values())

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        found = MARK.findall(request.content)
        assert found, request.content[:300]
        return await self.calls[found[-1].decode()](request)


# --- chat and /v1/messages calls, and the models they call ----------------------------------------

CONFIG = (
    SECOND_PROVIDERS
    + """
[models."gpt-alone"]
provider = "fake"
upstream_model = "gpt-first"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."claude-alone"]
provider = "fake-anthropic"
upstream_model = "claude-first"
input_per_mtok = 3.0
output_per_mtok = 15.0

[models."gpt-then-claude"]
provider = "fake"
upstream_model = "gpt-first"
fallbacks = ["claude-second"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."claude-then-gpt"]
provider = "fake-anthropic"
upstream_model = "claude-first"
fallbacks = ["gpt-second"]
input_per_mtok = 3.0
output_per_mtok = 15.0

[models."claude-second"]
provider = "second-anthropic"
upstream_model = "claude-second"
input_per_mtok = 2.0
output_per_mtok = 4.0

[models."gpt-second"]
provider = "second-openai"
upstream_model = "gpt-second"
input_per_mtok = 1.5
output_per_mtok = 7.5

[models."gpt-or-claude"]
deployments = [
  { provider = "fake", upstream_model = "gpt-first" },
  { provider = "second-anthropic", upstream_model = "claude-second", priority = 1 },
]
input_per_mtok = 2.0
output_per_mtok = 4.0

[router]
backoff_base_seconds = 0.0
"""
)
"""Models of each dialect on the first upstream (``FIRST``), alone or falling back to one of the
other dialect on the second (``SECOND``) at twice or half their prices, and one with a
deployment on each; retries without backoff. Prices are whole multiples of 5e-7 USD a token:
every cost is a whole number of the budget counters' units (1e-8 USD), so the counters are held
to the ledger exactly."""
PRICES = {
    name: ModelConfig.model_validate(model)
    for name, model in tomllib.loads(CONFIG)["models"].items()
}
FIRST, SECOND = "upstream.test", SECOND_HOST
FALLBACKS = {"gpt-then-claude": "claude-second", "claude-then-gpt": "gpt-second"}
MODELS = ["gpt-alone", "claude-alone", *FALLBACKS, "gpt-or-claude"]
CHAT, COUNT = "/v1/chat/completions", ANTHROPIC_PATH + "/count_tokens"
RETRIED = (500, 429, 529)
"""Statuses the router retries, and falls back after."""
ATTEMPTS_PER_ALIAS = 3
"""The router's default: the first attempt and two retries (``RouterConfig.max_retries``)."""
GONE = (499, "client_disconnected")


@dataclass(frozen=True)
class PlannedCall:
    """A call, and what each upstream answers its attempts there; its prompt starts with its
    ``mark`` (``MarkedUpstreams``), if it has one."""

    path: str
    stream: bool
    model: str
    chars: int
    max_tokens: int
    first: list[Attempt]
    second: list[Attempt]
    mark: str = ""

    def body(self) -> dict[str, Any]:
        turn = {"role": "user", "content": self.mark + "x" * self.chars}
        body: dict[str, Any] = {"model": self.model, "messages": [turn]}
        if self.path != COUNT:
            body |= {"max_tokens": self.max_tokens, "stream": self.stream}
        return body

    @property
    def prompt(self) -> int:
        """The prompt's tokens as the gateway estimates them (the endpoint's ``call.prompt``)."""
        [turn] = self.body()["messages"]
        return estimate_prompt_tokens([turn["content"]] if self.path == CHAT else [None, turn])

    def asks(self, model: str) -> tuple[int, int]:
        """The tokens and the reservation (units of 1e-8 USD) the call asks of the counters on
        ``model``'s prices: its prompt as the gateway estimates it, and its max_tokens (a token
        count: none, and no reservation)."""
        if self.path == COUNT:
            return self.prompt, 0
        worst = Usage(prompt_tokens=self.prompt, completion_tokens=self.max_tokens)
        return self.prompt + self.max_tokens, to_units(cost_of(worst, PRICES[model]), ROUND_CEILING)

    @property
    def falls_back(self) -> bool:
        """Whether the router moves the call to its model's fallback: every attempt on its first
        upstream failed with a status it retries (a token count asks an upstream only of
        Anthropic's dialect: the gateway counts for the others)."""
        if self.path == COUNT and not self.model.startswith("claude"):
            return False
        tried = [self.first[min(n, len(self.first) - 1)] for n in range(ATTEMPTS_PER_ALIAS)]
        return self.model in FALLBACKS and all(attempt.retried for attempt in tried)

    @property
    def fallback_model(self) -> str | None:
        """The alias the call falls back to, if its model has one."""
        return FALLBACKS.get(self.model)

    def options(self) -> dict[str, Any]:
        """The request's httpx options (``support.asgi_replies.send``)."""
        return {"json": self.body()}

    def plans(self, hosts: tuple[str, ...]) -> tuple[list[Attempt], ...]:
        """What each of ``hosts`` answers the call's attempts (``MarkedUpstreams.start``)."""
        return tuple({FIRST: self.first, SECOND: self.second}.get(host, []) for host in hosts)


# --- the limits, and what the counters should hold ------------------------------------------------


@dataclass(frozen=True)
class ScopeLimit:
    """A scope's limits as the counters see them: the budget in units of 1e-8 USD."""

    scope: str
    rpm: int | None
    tpm: int | None
    budget: int | None


@dataclass
class Accounts:
    """What the counters of every scope should hold: from the calls they admitted, a request
    each, the tokens their rows record, what they cost."""

    requests: int = 0
    tokens: int = 0
    spent: int = 0
    rows: int = 0  # the ledger's, refused calls' included

    def refusal(
        self,
        scopes: list[ScopeLimit],
        tokens: int,
        reserve: int,
        request: bool = True,
        spends: bool = True,
    ) -> str | None:
        """The error code the counters refuse a call asking ``tokens`` and a reservation of
        ``reserve`` units with (with its request, unless it is counted already; held to the
        budgets unless it ``spends`` nothing), in the order they check: each scope's budget,
        requests, then tokens. None: admitted."""
        for scope in scopes:
            cap = scope.budget if spends else None
            if cap is not None and (self.spent >= cap or self.spent + reserve > cap):
                return "insufficient_quota"
            if request and scope.rpm is not None and self.requests + 1 > scope.rpm:
                return "rate_limit_exceeded"
            if scope.tpm is not None and self.tokens + tokens > scope.tpm:
                return "rate_limit_exceeded"
        return None

    def settled_in(self, scope: ScopeLimit) -> Counted:
        """What ``scope``'s counters should hold once every call is settled: what it counts of
        the calls' requests, tokens and cost, nothing reserved, no call in flight."""
        return Counted(
            self.requests if scope.rpm is not None else 0,
            self.tokens if scope.tpm is not None else 0,
            self.spent if scope.budget is not None else 0,
            reserved=0,
            in_flight=0,
        )

    def count(self, row: UsageRecord | None) -> None:
        """An admitted call, its row (None: a token count, which uses nothing)."""
        self.requests += 1
        if row is not None:
            self.tokens += row.total_tokens or row.prompt_tokens or 0  # as its settlement counts
            self.spent += to_units(row.cost_usd)


Limits = dict[str, int | None]
"""``rpm``, ``tpm``, ``budget`` (the tenant's; the budgets in 0.0001 USD), ``key_rpm`` and
``key_budget``."""


def set_limits(who: TenantKey, limits: Limits, period: str = "total") -> list[ScopeLimit]:
    """Give ``who``'s tenant and key ``limits``, their budgets of ``period``; the scopes they
    count in, as the counters see them."""
    tenant, key = who.tenant, who.key
    tenant.rpm_limit, tenant.tpm_limit = limits["rpm"], limits["tpm"]
    key.rpm_limit = limits["key_rpm"]
    scopes = []
    for holder, scope, budget in (
        (tenant, f"tenant:{tenant.pk}", limits["budget"]),
        (key, f"key:{key.pk}", limits["key_budget"]),
    ):
        holder.budget_usd = None if budget is None else Decimal(budget) / 10_000
        holder.budget_period = period
        holder.save()
        cap = None if holder.budget_usd is None else to_units(holder.budget_usd)
        if (holder.rpm_limit, holder.tpm_limit, cap) != (None, None, None):
            scopes.append(ScopeLimit(scope, holder.rpm_limit, holder.tpm_limit, cap))
    auth._key_cache.clear()
    return scopes


def start_over(
    who: TenantKey,
    limits: Limits,
    gateway_runtime: Callable[..., Runtime],
    upstreams: Callable[[httpx.Request], Awaitable[httpx.Response]],
    backend: Callable[[], Policy],
    config: str = CONFIG,
) -> tuple[Runtime, list[ScopeLimit]]:
    """A clean slate for the next example of a limits test: no ledger rows, ``who`` given
    ``limits``, a runtime of ``config`` (the chat and /v1/messages tests' models, unless told)
    on ``upstreams`` counting in new counters of ``backend``; and the scopes they count in."""
    UsageRecord.objects.all().delete()
    scopes = set_limits(who, limits)
    current = gateway_runtime(upstreams, config)
    current.policy = backend()
    return current, scopes


# --- the counters, and what they hold -------------------------------------------------------------


class LateSettlements(ResilientCounters):
    """Counters in Redis whose settlements land late: after the admissions sent just after
    them, as they may over a pool of connections (redis-py's, which the gateway keeps for a
    Redis URL whose options its own pipe does not know). The gateway's one pipelined
    connection sends a process's commands in the order it makes them, which would hide a
    settlement the gateway relies on without waiting for it."""

    async def settle(
        self, checks: list[Check], second: int, tokens: int, cost: int, hold: int = 0
    ) -> None:
        await asyncio.sleep(0.005)
        await super().settle(checks, second, tokens, cost, hold)

    async def give_back(self, checks: list[Check], second: int, hold: int = 0) -> None:
        await asyncio.sleep(0.005)
        await super().give_back(checks, second, hold)


BACKENDS = ["memory", "redis"]
"""The counter backends every limits test runs on; ``"redis, settled late"``
(``LateSettlements``) is one more."""


def policies_on(backend: str, request: pytest.FixtureRequest) -> Callable[[], Policy]:
    """New policies on new counters of ``backend``: in memory, or in an emptied Redis as
    production has them (the ``redis_url`` fixture's)."""
    if backend == "memory":
        return lambda: Policy(MemoryCounters())
    url = request.getfixturevalue("redis_url")
    counters = LateSettlements if backend == "redis, settled late" else ResilientCounters

    def on_redis() -> Policy:
        flush(url)
        return Policy(counters(RedisCounters(url)))

    return on_redis


@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest) -> Callable[[], Policy]:
    """``backend()``: a policy on new counters of each of ``BACKENDS``. A test module imports
    ``backend_fixture`` and ``support.redis_db.redis_url`` for pytest to find them."""
    return policies_on(request.param, request)


@dataclass(frozen=True)
class Counted:
    """What a scope's counters hold (``counted``)."""

    requests: int
    tokens: int
    spent: int
    reserved: int
    in_flight: int


async def counted(policy: Policy, scope: str, period: str = "total") -> Counted:
    """What ``policy``'s store holds for ``scope``: its rate windows' counts of the last minute,
    the spent and reserved units of its budget counter of ``period`` (``"total"``, or a counter
    name of ``period_of``: ``"d20261124"``, ``"m202611"``), and the calls it holds in flight
    (Redis).

    The stores have no way to read a budget (the policy only admits and settles), so this reads
    their state as they keep it, here and nowhere else: ``MemoryCounters``' budgets, and Redis's
    keys (the budget's named by the store's own ``budget_key``)."""
    now = int(time.time())
    check = Check(scope, None, None, 0, None, 0, period, 0)
    store = policy.store
    if isinstance(store, MemoryCounters):
        windows = {f"{scope}:rpm": 0, f"{scope}:tpm": 0}
        for name, _, count in store.recent_counts(now):
            if name in windows:
                windows[name] += count
        spent, reserved = store._budgets.get(check.budget_key, [0, 0])
        return Counted(*windows.values(), spent, reserved, 0)
    assert isinstance(store, ResilientCounters) and not store.outage.down
    client = store.redis.client
    counts = {}
    for kind in ("rpm", "tpm"):
        buckets = await client.hgetall(f"tg:rl:{scope}:{kind}")
        counts[kind] = sum(int(n) for s, n in buckets.items() if int(s) > now - WINDOW_SECONDS)
    budget = await client.hgetall(store.redis.budget_key(check, store.redis.epoch))
    spent, reserved = (int(budget.get(name, 0)) for name in (b"spent", b"reserved"))
    return Counted(*counts.values(), spent, reserved, store.in_flight)
