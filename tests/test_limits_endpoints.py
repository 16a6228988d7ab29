"""Rate limits and budgets keep one account with the ledger beyond chat and /v1/messages
(tests/test_limits_accounting.py): on the Responses API and the media endpoints, across budget
periods, and through Redis trouble in the middle of a fallback. Calls go through the real ASGI
app in process, upstreams faked with ``httpx.MockTransport``; Redis is a private redis-server of
this module's own, never a shared one.

1. A derandomized property test of sequences of ``/v1/responses`` (JSON and streamed; bridged to
   chat completions or to Anthropic, or served natively; stored or not, and continuing a stored
   response), embeddings, images, speech and transcriptions, on models alone or whose first
   deployment fails every attempt (5xx, 429, connection refused) and falls back to one on a
   second upstream, with requests per minute, tokens per minute and budgets on tenant and key:
   each call refused with the API's 429 exactly when a model of the counters says (a fallback
   admitted on its own prices, its request counted once; a continued response on its input
   after the conversation the gateway replays), answered by the model that served it, one
   ledger row with the status its caller was told (upstreams failing, retried or not, and
   clients leaving mid-stream included), a refused call stores nothing and reaches no upstream,
   a continued one sends the upstream its conversation, and once settled the counters equal to
   the ledger.
2. Daily and monthly budgets across their period's end: a period's counter loads its own rows
   only, and a call admitted before midnight and settled after it counts, in the counters and in
   the ledger, in the period it was admitted in.
3. Redis unreachable, or back empty, between a call's admission and its fallback's: the call is
   answered, one row, and once Redis is back the counters are rebuilt equal to the ledger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from django.db.models import Sum
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.limits_accounts import (
    FIRST,
    GONE,
    MARK,
    SECOND,
    Accounts,
    Attempt,
    Limits,
    ScopeLimit,
    Upstreams,
    answer_attempt,
    counted,
    mark,
    set_limits,
)
from support.limits_endpoint_calls import (
    CONFIG,
    FAILING_FIRST,
    FALLBACKS,
    HOSTS,
    IMAGES,
    KINDS,
    MODELS,
    RESPONSES,
    SPEECH,
    EndpointCall,
    answer,
)
from support.private_services import PrivateRedis, private_redis
from support.redis_db import flush

from conftest import TenantKey, examples
from gateway import runtime
from gateway.calls import pipeline
from gateway.limits import policy as policy_module
from gateway.limits.counters import MemoryCounters, RedisCounters
from gateway.limits.policy import Policy, period_of, to_units
from gateway.limits.resilient_counters import ResilientCounters
from gateway.models import StoredResponse, UsageRecord

RETRIED = (500, 429)


# --- the calls ------------------------------------------------------------------------------------


def attempts(streams: bool) -> st.SearchStrategy[Attempt]:
    """An attempt's answer: tokens used, a failure (retried, or the caller's), a hang (a
    client that leaves: before the answer, or mid-stream), a stream cut short."""
    tokens = {"prompt": st.integers(1, 90), "completion": st.integers(0, 300)}
    answered = st.builds(Attempt, **tokens)
    failed = st.builds(Attempt, status=st.sampled_from([*RETRIED, 400]))
    hangs = st.builds(Attempt, hangs=st.just(True), events=st.integers(0, 3 if streams else 0))
    cut = st.builds(Attempt, cut=st.just(True), events=st.integers(1, 3), **tokens)
    return st.one_of(answered, answered, answered, failed, hangs, cut if streams else failed)


def planned_calls() -> st.SearchStrategy[EndpointCall]:
    def plan(path: str, stream: bool) -> st.SearchStrategy[EndpointCall]:
        some = st.lists(attempts(stream or path == SPEECH), min_size=1, max_size=3)
        responses = st.sampled_from([True, True, False]) if path == RESPONSES else st.just(False)
        return st.builds(
            EndpointCall,
            path=st.just(path),
            stream=st.just(stream),
            model=st.sampled_from([*MODELS[path], *FALLBACKS[path]]),
            size=st.integers(1, 4) if path == IMAGES else st.integers(1, 300),
            max_tokens=st.integers(1, 300),
            hd=st.booleans(),
            # Some calls fail every attempt on their first upstream (to their fallback).
            first=some | st.lists(st.sampled_from(FAILING_FIRST), min_size=1, max_size=3),
            second=st.lists(attempts(stream or path == SPEECH), min_size=1, max_size=2),
            store=responses,
            follows=responses,
        )

    return st.sampled_from(KINDS).flatmap(lambda kind: plan(*kind))


def stored_responses() -> st.SearchStrategy[EndpointCall]:
    """A bridged response answered and stored, for the calls after it to continue."""
    return st.builds(
        EndpointCall,
        path=st.just(RESPONSES),
        stream=st.booleans(),
        model=st.sampled_from(["gpt-alone", "claude-alone", "gpt-then-claude"]),
        size=st.integers(1, 300),
        max_tokens=st.integers(1, 300),
        hd=st.just(False),
        first=st.builds(Attempt, prompt=st.integers(1, 90), completion=st.integers(0, 300)).map(
            lambda attempt: [attempt]
        ),
        store=st.just(True),
    )


@st.composite
def sequences(draw: st.DrawFn) -> tuple[Limits, list[EndpointCall]]:
    """Calls (half the sequences start with a response stored, for the responses after it to
    continue), and limits in the measure of the first (``first_asks``, drawn later): none, room
    for one to four calls like it, or far more; requests per minute from one call up."""
    calls = draw(st.lists(planned_calls(), min_size=1, max_size=6))
    calls = [*draw(st.lists(stored_responses(), max_size=1)), *calls]
    room = draw(st.lists(st.sampled_from([1, 1.5, 2, 2.5, 3, 4]), min_size=3, max_size=3))
    limits: Limits = {
        "rpm": draw(st.none() | st.integers(1, 5)),
        "tpm": draw(st.sampled_from([None, 0, 10**9])),  # 0: in the measure of the first
        "budget": draw(st.sampled_from([None, 0, 10**8])),
        "key_rpm": draw(st.none() | st.integers(1, 6)),
        "key_budget": draw(st.sampled_from([None, 0])),
    }
    limits["room"] = int(room[0] * 10)  # tenths of the first call, for the "0"s above
    limits["key_room"] = int(room[1] * 10)
    return limits, calls


def measured(limits: Limits, tokens: int, reserve: int) -> Limits:
    """``limits`` with each 0 made room for ``room`` tenths of a call asking ``tokens`` and
    ``reserve``: the budgets in 0.0001 USD, as the admin keeps them."""
    room, key_room = limits.pop("room") or 10, limits.pop("key_room") or 10
    if limits["tpm"] == 0:
        limits["tpm"] = math.ceil(tokens * room / 10)
    if limits["budget"] == 0:
        limits["budget"] = math.ceil(reserve * room / 10 / 10_000)
    if limits["key_budget"] == 0:
        limits["key_budget"] = math.ceil(reserve * key_room / 10 / 10_000)
    return limits


# --- the counters -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """This module's own redis-server, on a spare port (stopped and started by its tests)."""
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Callable[[], Policy]:
    """A policy on new counters: in memory, or in the private Redis, emptied, as production
    has them (fail open)."""
    if request.param == "memory":
        return lambda: Policy(MemoryCounters())
    server: PrivateRedis = request.getfixturevalue("redis_server")

    def on_redis() -> Policy:
        if server.process is None:
            server.start()
        flush(server.url)
        return Policy(ResilientCounters(RedisCounters(server.url, timeout=0.5)))

    return on_redis


def ledger_cost(**filters: Any) -> int:
    """The ledger's cost, in budget units, of the rows ``filters`` select."""
    total = UsageRecord.objects.filter(**filters).aggregate(cost=Sum("cost_usd"))["cost"]
    return to_units(total or Decimal(0))


# --- 1. the Responses API and the media endpoints -------------------------------------------------


def test_responses_and_media_keep_the_counters_to_the_ledger(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
) -> None:
    alice = tenants["alice"]
    sent: list[bytes] = []  # what the upstreams were sent of the call being made

    def answer_and_keep(request: httpx.Request, attempt: Attempt) -> httpx.Response:
        sent.append(request.content)
        return answer(request, attempt)

    upstreams = Upstreams(answer_and_keep, HOSTS)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx

    def one_call(
        current: runtime.Runtime,
        planned: EndpointCall,
        scopes: list[ScopeLimit],
        accounts: Accounts,
        kept: list[tuple[str, list[Any]]],
    ) -> None:
        """Make the call, hold what it did to ``accounts``, and count it there; ``kept``: the
        bridged responses stored so far, which a call that ``follows`` continues (the last)."""
        if planned.follows and kept:
            planned = replace(planned, previous=kept[-1])
        stored_before = set(StoredResponse.objects.values_list("id", flat=True))
        leave = upstreams.start(*planned.plans(HOSTS))
        sent.clear()
        reply = run(send(planned.path, planned.options(), alice.raw, leave=leave))
        run(current.policy.drain())
        current.ledger.flush()
        rows = list(UsageRecord.objects.order_by("id")[accounts.rows :])
        assert len(rows) == 1, rows
        accounts.rows += 1
        [row] = rows
        stored = list(StoredResponse.objects.exclude(id__in=stored_before))
        described = (planned, reply.status, reply.body[-300:], row.status_code, row.error_type)
        refused = accounts.refusal(scopes, *planned.asks(planned.model))
        if refused is not None:
            assert (upstreams.asked, told(planned.path, reply)) == ({}, 429), described
            assert orjson.loads(reply.body)["error"]["code"] == refused, described
            assert (row.status_code, row.error_type) == (429, refused), described
            assert stored == [], described
            return
        fallback = planned.fallback_model
        fell_back = planned.falls_back and not accounts.refusal(
            scopes, *planned.asks(fallback or ""), request=False
        )
        serving = fallback if fell_back else planned.model
        assert fallback is None or (SECOND in upstreams.asked) == fell_back, described
        what = (row.served_model, row.fallback, row.attempts)
        assert what == (serving, fell_back, sum(upstreams.asked.values())), described
        # A continued response: every attempt sent its upstream the conversation before it.
        replayed = set(MARK.findall(orjson.dumps(planned.history)))
        assert all(replayed <= set(MARK.findall(content)) for content in sent), described
        if row.usage_estimated and planned.path == RESPONSES and "anthropic" not in row.provider:
            assert row.prompt_tokens == planned.prompt, described  # the conversation's included
        if upstreams.hung:  # its client went away
            assert (row.status_code, row.error_type) == GONE, described
        else:
            status = told(planned.path, reply)
            assert row.request_id == reply.headers["x-request-id"], described
            assert reply.headers["x-tollgate-model"] == serving, described
            if status == 502 and reply.status == 200:  # a stream that failed once started
                assert 400 <= row.status_code != 500, described
            else:
                assert row.status_code == status, described
            if planned.store and status == 200:
                native = row.provider == "native"
                assert [one.native for one in stored] == [native], described
        if not planned.store:
            assert stored == [], described
        assert len(stored) <= 1, described
        for response in stored:
            if not response.native:
                assert response.conversation[: len(planned.history)] == planned.history
                kept.append((response.id, response.conversation))
        accounts.count(row)

    @examples(200)
    @given(sequences())
    def sequence(limits_and_calls: tuple[Limits, list[EndpointCall]]) -> None:
        limits, calls = limits_and_calls
        UsageRecord.objects.all().delete()
        StoredResponse.objects.all().delete()
        tracebacks.records.clear()
        current = gateway_runtime(upstreams, CONFIG)
        current.policy = backend()
        scopes = set_limits(alice, measured(dict(limits), *calls[0].asks(calls[0].model)))
        accounts = Accounts()
        kept: list[tuple[str, list[Any]]] = []
        try:
            for n, planned in enumerate(calls):
                one_call(current, replace(planned, mark=mark(n)), scopes, accounts, kept)
            assert ledger_cost() == accounts.spent
            for scope in scopes:
                held = run(counted(current.policy, scope.scope))
                assert held == accounts.settled_in(scope), (scope, accounts)
            assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]
        finally:
            run(current.policy.aclose())

    sequence()


# --- 2. budget periods ----------------------------------------------------------------------------


class Clock(datetime):
    """``datetime`` as policy.py and the pipeline read it (``now``): at ``Clock.at``."""

    at: ClassVar[datetime]

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return datetime.fromtimestamp(cls.at.timestamp(), tz)  # a datetime, as the ledger keeps


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> type[Clock]:
    monkeypatch.setattr(policy_module, "datetime", Clock)
    monkeypatch.setattr(pipeline, "datetime", Clock)
    return Clock


PERIOD_ENDS = {
    "daily": datetime(2031, 5, 17, tzinfo=UTC),
    "monthly": datetime(2031, 6, 1, tzinfo=UTC),
}
"""The midnight each period's tests cross: the end of a day, the end of a month."""


def chat_body(chars: int = 40, max_tokens: int = 100) -> dict[str, Any]:
    return {
        "model": "gpt-alone",
        "messages": [{"role": "user", "content": "x" * chars}],
        "max_tokens": max_tokens,
    }


ANSWERED = [Attempt(prompt=10, completion=50)]
"""A chat call's answer: 10 + 50 tokens, 110e-6 USD on gpt-alone (11,000 units)."""


def spend_at(who: TenantKey, when: datetime, usd: str) -> None:
    """A ledger row of ``who``'s, written at ``when``."""
    UsageRecord.objects.create(
        request_id=f"req_{when.timestamp():.0f}_{usd}",
        tenant=who.tenant,
        api_key=who.key,
        requested_model="gpt-alone",
        cost_usd=Decimal(usd),
        status_code=200,
        latency_ms=1,
        created_at=when,
    )


def rows_of_period(period: str, when: datetime) -> dict[str, datetime]:
    """The ledger filter of the ``period`` containing ``when``."""
    _, start = period_of(period, when)
    assert start is not None
    end = (
        start + timedelta(days=1)
        if period == "daily"
        else (start + timedelta(days=32)).replace(day=1)
    )
    return {"created_at__gte": start, "created_at__lt": end}


@pytest.mark.parametrize("period", ["daily", "monthly"])
def test_a_budget_period_counts_its_own_spending_only(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    backend: Callable[[], Policy],
    clock: type[Clock],
    period: str,
) -> None:
    """Rows of the period before are not loaded; the period full refuses; the next one, loaded
    from its own rows, admits."""
    alice = tenants["alice"]
    midnight = PERIOD_ENDS[period]
    scope = f"tenant:{alice.tenant.pk}"
    set_limits(
        alice, {"rpm": None, "tpm": None, "budget": 10, "key_rpm": None, "key_budget": None}, period
    )
    spend_at(alice, midnight - timedelta(days=40), "5")  # long before: nothing of this period
    spend_at(alice, midnight - timedelta(hours=1), "0.0009")  # 90,000 of the 100,000 units
    upstreams = Upstreams(answer_attempt, (FIRST,))
    current = gateway_runtime(upstreams, CONFIG)
    current.policy = backend()
    try:
        clock.at = midnight - timedelta(seconds=30)
        upstreams.start(ANSWERED)
        refused = run(send("/v1/chat/completions", {"json": chat_body()}, alice.raw))
        assert (refused.status, orjson.loads(refused.body)["error"]["code"]) == (
            429,
            "insufficient_quota",
        )
        held = run(counted(current.policy, scope, period_of(period, clock.at)[0]))
        assert (held.spent, held.reserved) == (90_000, 0)  # this period's row only

        clock.at = midnight + timedelta(seconds=30)
        for _ in range(2):
            upstreams.start(ANSWERED)
            assert run(send("/v1/chat/completions", {"json": chat_body()}, alice.raw)).status == 200
        run(current.policy.drain())
        current.ledger.flush()
        held = run(counted(current.policy, scope, period_of(period, clock.at)[0]))
        assert (held.spent, held.reserved) == (22_000, 0)
        assert held.spent == ledger_cost(**rows_of_period(period, clock.at))
    finally:
        run(current.policy.aclose())


@pytest.mark.parametrize("period", ["daily", "monthly"])
def test_a_call_admitted_before_midnight_counts_in_its_period(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    backend: Callable[[], Policy],
    clock: type[Clock],
    period: str,
) -> None:
    """Admitted at 23:59:59, answered at 00:00:01: its cost and its ledger row belong to the
    period it was admitted in (its reservation there, released there), not to the next, whose
    counter, loaded from its own rows, starts without it."""
    alice = tenants["alice"]
    midnight = PERIOD_ENDS[period]
    scope = f"tenant:{alice.tenant.pk}"
    set_limits(
        alice, {"rpm": None, "tpm": None, "budget": 10, "key_rpm": None, "key_budget": None}, period
    )
    before, after = (
        period_of(period, midnight - timedelta(seconds=1))[0],
        period_of(period, midnight)[0],
    )

    def past_midnight(request: httpx.Request, attempt: Attempt) -> httpx.Response:
        clock.at = midnight + timedelta(seconds=1)
        return answer_attempt(request, attempt)

    upstreams = Upstreams(past_midnight, (FIRST,))
    current = gateway_runtime(upstreams, CONFIG)
    current.policy = backend()
    try:
        clock.at = midnight - timedelta(seconds=1)
        upstreams.start(ANSWERED)
        assert run(send("/v1/chat/completions", {"json": chat_body()}, alice.raw)).status == 200
        run(current.policy.drain())
        current.ledger.flush()
        held = run(counted(current.policy, scope, before))
        assert (held.spent, held.reserved) == (11_000, 0)
        assert ledger_cost(**rows_of_period(period, midnight - timedelta(seconds=1))) == 11_000

        upstreams.start(ANSWERED)  # the next period's first call: its counter loads
        assert run(send("/v1/chat/completions", {"json": chat_body()}, alice.raw)).status == 200
        run(current.policy.drain())
        current.ledger.flush()
        held = run(counted(current.policy, scope, after))
        assert (held.spent, held.reserved) == (11_000, 0)
        assert ledger_cost(**rows_of_period(period, midnight)) == 11_000
    finally:
        run(current.policy.aclose())


# --- 3. Redis trouble during a fallback -----------------------------------------------------------


@pytest.mark.parametrize("trouble", ["unreachable", "back_empty"])
def test_redis_trouble_between_a_call_and_its_fallback_leaves_the_counters_to_the_ledger(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    redis_server: PrivateRedis,
    trouble: str,
) -> None:
    """The first model fails every attempt (500); as its last fails, Redis goes away (the
    fallback is admitted in memory) or comes back empty (a new epoch, rebuilt from the ledger).
    The call is answered by its fallback, with one row; once Redis is back, the next call
    rebuilds the counters: they say what the ledger says, nothing reserved or in flight."""
    alice = tenants["alice"]
    limits = {"rpm": 100, "tpm": None, "budget": 100, "key_rpm": None, "key_budget": 50}
    scopes = set_limits(alice, limits)
    if redis_server.process is None:
        redis_server.start()
    flush(redis_server.url)
    failing = Attempt(status=500)

    def trouble_on_the_last_failure(request: httpx.Request, attempt: Attempt) -> httpx.Response:
        if request.url.host == FIRST and upstreams.asked[FIRST] == 3:
            if trouble == "unreachable":
                redis_server.stop()
            else:
                flush(redis_server.url)
        return answer_attempt(request, attempt)

    upstreams = Upstreams(trouble_on_the_last_failure, (FIRST, SECOND))
    current = gateway_runtime(upstreams, CONFIG)
    counters = ResilientCounters(RedisCounters(redis_server.url, timeout=0.5))
    current.policy = Policy(counters)
    body = chat_body() | {"model": "gpt-then-claude"}
    try:
        upstreams.start([failing], ANSWERED)
        reply = run(send("/v1/chat/completions", {"json": body}, alice.raw))
        run(current.policy.drain())
        assert (reply.status, reply.headers["x-tollgate-model"]) == (200, "claude-second")
        assert upstreams.asked == {FIRST: 3, SECOND: 1}
        assert counters.outage.down == (trouble == "unreachable")
        current.ledger.flush()  # its row written, as the ledger writer does within its interval

        if redis_server.process is None:
            redis_server.start()  # back, and empty
        counters.outage._retry_at = 0.0  # tried again at the next call, not a second later
        upstreams.start([], ANSWERED)
        reply = run(
            send(
                "/v1/chat/completions",
                {"json": chat_body() | {"model": "claude-second"}},
                alice.raw,
            )
        )
        assert reply.status == 200
        run(current.policy.drain())
        current.ledger.flush()
        rows = list(UsageRecord.objects.order_by("id"))
        assert [(row.served_model, row.fallback, row.status_code) for row in rows] == [
            ("claude-second", True, 200),
            ("claude-second", False, 200),
        ]
        for scope in scopes:
            held = run(counted(current.policy, scope.scope))
            assert (held.spent, held.reserved, held.in_flight) == (ledger_cost(), 0, 0), scope
        assert not counters.outage.down
        expected = ("tollgate.outage", "tollgate.counters")  # Redis unavailable, then rebuilt
        assert not [r for r in tracebacks.records if r.name not in expected]
    finally:
        run(current.policy.aclose())
